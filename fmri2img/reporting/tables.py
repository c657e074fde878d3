"""Read the tidy ``results_table.csv`` (docs/contracts.md section 6) and format it.

* :func:`read_results_table` validates the contract (file, columns, numbers, unique cells)
  and raises :class:`~fmri2img.core.errors.MissingInputError` / :class:`~fmri2img.core.errors.SchemaError`
  with one line naming the file and the expected columns.
* :func:`summary_rows` reduces a table holding several subjects to one row per cell
  (group-level rows if the table has them, else the mean over subjects).
* :func:`format_latex` (booktabs) and :func:`format_markdown` write the paper table:
  value [95% CI] per configuration x decoder, one column per test set and metric.

Display orders and labels live here so figures and tables agree.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fmri2img.core.errors import CorruptFileError, MissingInputError, SchemaError
from fmri2img.core.vocab import (
    BASELINES,
    CONFIGURATIONS,
    DECODERS,
    DEFAULT_REGION,
    METRICS,
    REGION_COLUMNS,
    RESULTS_COLUMNS,
    STIMULUS_TYPES,
    TEST_SETS,
)

#: File name of the tidy table (docs/contracts.md section 6).
RESULTS_TABLE = "results_table.csv"

#: Text columns that identify a cell; ``decoder`` may be empty (shared baselines).
KEY_COLUMNS = RESULTS_COLUMNS[:6]
NUMERIC_COLUMNS = RESULTS_COLUMNS[6:]
#: Optional column naming the test behind p_value/p_holm; when absent the test is inferred
#: (rows with a chance level: permutation test vs chance; others: paired t-test on stimuli).
TEST_COLUMN = "test"

#: Decoder label of rows whose ``decoder`` cell is empty (baselines shared by all decoders).
NO_DECODER = "none"

#: Subject label of group-level rows in a cross-subject summary table.
GROUP_SUBJECT = "group"

#: Significance threshold applied to ``p_holm`` for the asterisks.
ALPHA = 0.05

#: Two-sided 95% interval (the CIs of the table are 95% bootstrap CIs, issue 6).
CI_LEVEL = 0.95

#: Display orders (docs/contracts.md section 6); values not listed follow, sorted.
ORDERS = {
    "configuration": (*CONFIGURATIONS, *BASELINES),
    "test_set": TEST_SETS,
    "stimulus_type": ("all", *STIMULUS_TYPES),
    "decoder": (*DECODERS, NO_DECODER),
    "metric": METRICS,
}

LABELS = {
    "configuration": {
        "perception_only": "Perception only",
        "mixed": "Mixed",
        "adapter_linear": "Adapter (linear)",
        "adapter_mlp": "Adapter (MLP)",
        "adapter_mlp_condition": "Adapter (MLP+cond.)",
        "finetune": "Fine-tune",
        "baseline_ground_truth": "Ground truth",
        "baseline_random": "Random",
        "baseline_mean_embedding": "Mean embedding",
    },
    "test_set": {
        "shared1000": "Perception (shared1000)",
        "imagery_vision": "Perception (imagery stimuli)",
        "imagery": "Imagery",
    },
    "decoder": {"ridge": "Ridge", "mlp": "MLP", "two_stage": "Two-stage", NO_DECODER: "Baselines"},
    "stimulus_type": {
        "all": "All", "natural": "Natural", "simple": "Simple", "complex": "Complex",
        "conceptual": "Conceptual",
    },
    "metric": {
        "cosine": "CLIP cosine",
        "cosine_per_trial": "CLIP cosine (per trial)",
        "two_way": "Two-way identification",
        "ssim": "SSIM",
        "pixcorr": "PixCorr",
        "pixel_mse": "Pixel MSE",
    },
}

#: Short labels for panel titles of multi-panel figures.
SHORT_LABELS = {
    "test_set": {"shared1000": "shared1000", "imagery_vision": "imagery-vision", "imagery": "imagery"},
}

#: How the tests are named in captions and table notes (issue 6, "Statistics").
PAIRED_TEST = "paired t-test on stimuli (repeats averaged), Holm-corrected"
PERMUTATION_TEST = "permutation test against chance (stimulus labels shuffled), Holm-corrected"

#: Decimals of values and CIs in the tables.
TABLE_DECIMALS = 2

_RETRIEVAL = re.compile(r"^retrieval_at_(\d+)$")


def retrieval_k(metric: str) -> int | None:
    """K of a ``retrieval_at_K`` metric name, else ``None``."""
    match = _RETRIEVAL.match(metric)
    return int(match.group(1)) if match else None


def label(kind: str, value: str, short: bool = False) -> str:
    """Human-readable label of a category value (unknown values: underscores -> spaces)."""
    if kind == "metric" and retrieval_k(value) is not None:
        return f"Retrieval@{retrieval_k(value)}"
    if short and value in SHORT_LABELS.get(kind, {}):
        return SHORT_LABELS[kind][value]
    return LABELS.get(kind, {}).get(value, str(value).replace("_", " "))


def ordered(kind: str, values: Iterable[str]) -> list[str]:
    """Distinct ``values`` in the display order of ``kind``; unknown values follow, sorted."""
    present = set(values)
    known = [v for v in ORDERS.get(kind, ()) if v in present]
    rest = sorted(present - set(known), key=lambda v: (retrieval_k(v) or 0, v))
    return known + rest


def read_results_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate ``results_table.csv``.

    Parameters
    ----------
    path : path-like
        The CSV file, or an ablation folder that contains :data:`RESULTS_TABLE`.

    Returns
    -------
    table : DataFrame of shape (n_rows, >= 13)
        Key columns as ``str`` (empty ``decoder`` -> :data:`NO_DECODER`), numeric columns as
        ``float64`` (empty cells -> NaN: "not applicable").
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_TABLE
    expected = ", ".join(RESULTS_COLUMNS)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected a tidy {RESULTS_TABLE} with columns {expected}.")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"Cannot parse {path} as CSV ({exc}); expected columns {expected}.".replace("\n", " ")) from None
    missing = [c for c in RESULTS_COLUMNS if c not in raw.columns]
    if missing:
        raise SchemaError(f"{path} lacks column(s) {', '.join(missing)}; expected columns {expected}.")
    if raw.empty:
        raise SchemaError(f"{path} has no rows; expected one row per (subject, decoder, configuration, test_set, stimulus_type, metric).")
    table = raw.copy()
    for col in KEY_COLUMNS:
        table[col] = table[col].astype(str).str.strip()
    table["decoder"] = table["decoder"].where(table["decoder"] != "", NO_DECODER)
    for col in KEY_COLUMNS:
        empty = table[col] == ""
        if empty.any():
            raise SchemaError(f"{path} has {int(empty.sum())} row(s) with an empty {col!r}; expected a value in every key column ({', '.join(KEY_COLUMNS)}).")
    for col in NUMERIC_COLUMNS:
        text = table[col].astype(str).str.strip()
        numbers = pd.to_numeric(text.where(text != "", None), errors="coerce").astype("float64")
        bad = numbers.isna() & (text != "") & ~text.str.lower().isin(["nan", "na", "null", "none"])
        if bad.any():
            raise SchemaError(f"{path}: column {col!r} holds non-numeric value {text[bad].iloc[0]!r}; expected a number or an empty cell.")
        table[col] = numbers
    if TEST_COLUMN in table.columns:
        table[TEST_COLUMN] = table[TEST_COLUMN].astype(str).str.strip()
    keys = [*KEY_COLUMNS, *(c for c in REGION_COLUMNS if c in table.columns)]
    for col in keys[len(KEY_COLUMNS):]:
        table[col] = table[col].astype(str).str.strip()
    dup = table.duplicated(keys)
    if dup.any():
        first = table.loc[dup, keys].iloc[0].tolist()
        raise SchemaError(f"{path} has {int(dup.sum())} duplicate row(s), e.g. {first}; "
                          f"expected one row per ({', '.join(keys)}).")
    return table.reset_index(drop=True)


def primary_region(table: pd.DataFrame) -> str | None:
    """The region a table's figures show: nsdgeneral when present, else the first region in row
    order; None for tables without a ``region`` column or without a named region."""
    if "region" not in table.columns:
        return None
    named = [r for r in dict.fromkeys(table["region"].astype(str)) if r]
    return (DEFAULT_REGION if DEFAULT_REGION in named else named[0]) if named else None


def primary_region_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`primary_region` and the rows of no region (baselines); tables of one
    region are returned as they are. The other regions are compared in ``h1_ratio_by_region``."""
    region = primary_region(table)
    if region is None:
        return table
    keep = table["region"].astype(str).isin([region, ""])
    return table[keep].reset_index(drop=True)


def spread_shared_baselines(table: pd.DataFrame) -> pd.DataFrame:
    """Copy rows without a decoder (:data:`NO_DECODER`) to every decoder of the table, so
    decoder-independent baselines appear next to each decoder. Tables with no real decoder
    are returned unchanged."""
    decoders = [d for d in table["decoder"].unique() if d != NO_DECODER]
    shared = table[table["decoder"] == NO_DECODER]
    if shared.empty or not decoders:
        return table
    copies = [shared.assign(decoder=d) for d in decoders]
    out = pd.concat([table[table["decoder"] != NO_DECODER], *copies], ignore_index=True)
    return out.drop_duplicates(list(KEY_COLUMNS), keep="first").reset_index(drop=True)


def individual_subjects(table: pd.DataFrame) -> list[str]:
    """Subjects of the table other than the group-level label, in sorted order."""
    return sorted(s for s in table["subject"].unique() if s != GROUP_SUBJECT)


def summary_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per (decoder, configuration, test_set, stimulus_type, metric).

    * Group-level rows (``subject == "group"``) if the table has them, as given.
    * One subject: its rows, as given.
    * Several subjects and no group rows: the mean over subjects, with a 95% t-interval
      over subjects as CI (NaN with a single subject in a cell) and no p-values.

    Returns
    -------
    rows : DataFrame
        Same columns as ``table`` (``subject`` holds the label used).
    note : str
        One sentence for captions saying which of the three cases applies.
    """
    group = table[table["subject"] == GROUP_SUBJECT]
    if not group.empty:
        return group.reset_index(drop=True), "Group-level rows of the table (subject 'group')."
    subjects = individual_subjects(table)
    if len(subjects) == 1:
        return table.reset_index(drop=True), f"Subject {subjects[0]}."
    keys = [c for c in KEY_COLUMNS if c != "subject"]
    rows = []
    for key, cell in table.groupby(keys, sort=True, dropna=False):
        values = cell["value"].dropna().to_numpy(dtype=float)
        n_subj = values.size
        mean = float(values.mean()) if n_subj else math.nan
        if n_subj >= 2:
            half = stats.t.ppf(0.5 + CI_LEVEL / 2, n_subj - 1) * values.std(ddof=1) / math.sqrt(n_subj)
            low, high = mean - half, mean + half
        else:
            low = high = math.nan
        chance = cell["chance"].dropna()
        row = dict(zip(keys, key, strict=True))
        row.update(
            subject=f"mean of {len(subjects)}", value=mean, ci_low=low, ci_high=high,
            chance=float(chance.mean()) if len(chance) else math.nan,
            n=float(n_subj), p_value=math.nan, p_holm=math.nan,
        )
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))
    note = (
        f"Mean over subjects {', '.join(subjects)}; error bars/CIs are 95% t-intervals over "
        "subjects (no test at this level, so no significance marks)."
    )
    return out, note


def significant(p_holm: float | np.ndarray) -> bool | np.ndarray:
    """Whether a Holm-corrected p-value is below :data:`ALPHA` (NaN -> False); elementwise
    (a bool array) for an array of p-values."""
    p = np.asarray(p_holm, dtype=float)
    below = np.isfinite(p) & (p < ALPHA)
    return bool(below) if below.ndim == 0 else below


def tests_used(rows: pd.DataFrame) -> list[str]:
    """Names of the tests behind the p-values of ``rows`` (those with a finite ``p_holm``).

    Uses the optional :data:`TEST_COLUMN` when present; otherwise rows with a chance level
    were tested against chance by permutation and the others by a paired t-test on stimuli.
    """
    tested = rows[np.isfinite(rows["p_holm"].to_numpy(dtype=float))]
    if tested.empty:
        return []
    if TEST_COLUMN in tested.columns and (tested[TEST_COLUMN] != "").any():
        return sorted(set(tested.loc[tested[TEST_COLUMN] != "", TEST_COLUMN]))
    names = []
    has_chance = np.isfinite(tested["chance"].to_numpy(dtype=float))
    if (~has_chance).any():
        names.append(PAIRED_TEST)
    if has_chance.any():
        names.append(PERMUTATION_TEST)
    return names


def format_value(value: float, low: float, high: float, decimals: int = TABLE_DECIMALS) -> str:
    """``"0.23 [0.15, 0.31]"``; ``"--"`` for NaN (not applicable); no CI part if the CI is NaN."""
    if not np.isfinite(value):
        return "--"
    text = f"{value:.{decimals}f}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.{decimals}f}, {high:.{decimals}f}]"
    return text


def table_layout(rows: pd.DataFrame, metrics: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """Row keys (decoder, configuration), column keys (test_set, metric) and cell texts.

    Only ``stimulus_type == "all"`` rows of ``metrics`` are used. Cells: ``(text, significant)``.
    """
    use = rows[(rows["stimulus_type"] == "all") & rows["metric"].isin(metrics)]
    row_keys = [
        (d, c)
        for d in ordered("decoder", use["decoder"])
        for c in ordered("configuration", use.loc[use["decoder"] == d, "configuration"])
    ]
    col_keys = [
        (t, m)
        for t in ordered("test_set", use["test_set"])
        for m in [m for m in metrics if ((use["test_set"] == t) & (use["metric"] == m)).any()]
    ]
    cells = {}
    for rec in use.itertuples(index=False):
        cells[(rec.decoder, rec.configuration, rec.test_set, rec.metric)] = (
            format_value(rec.value, rec.ci_low, rec.ci_high), significant(rec.p_holm)
        )
    return row_keys, col_keys, cells


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters (``_`` -> ``\\_`` etc.)."""
    replacements = {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    }
    return "".join(replacements.get(ch, ch) for ch in str(text))


def _note(rows: pd.DataFrame, metrics: Sequence[str], subject_note: str) -> str:
    use = rows[(rows["stimulus_type"] == "all") & rows["metric"].isin(metrics)]
    tests = tests_used(use)
    sig = f"* p_holm < {ALPHA} ({'; '.join(tests)})." if tests else "No p-values in the table: no marks."
    return (
        f"{subject_note} Values: estimate [95% CI]; -- = not applicable. {sig}"
    )


def format_latex(rows: pd.DataFrame, metrics: Sequence[str], subject_note: str = "") -> str:
    """The summary table as a booktabs ``tabular`` (``DataFrame.to_latex``; needs
    ``\\usepackage{booktabs}``).

    Parameters
    ----------
    rows : DataFrame
        Summary rows (see :func:`summary_rows`).
    metrics : sequence of str
        Metrics to show, in column order (within each test set).
    subject_note : str
        Sentence placed in the note under the table.
    """
    row_keys, col_keys, cells = table_layout(rows, metrics)
    body = [[escape_latex(text) + ("$^{*}$" if sig else "")
             for text, sig in (cells.get((d, c, t, m), ("--", False)) for t, m in col_keys)] for d, c in row_keys]
    index = pd.MultiIndex.from_tuples([(escape_latex(label("decoder", d)), escape_latex(label("configuration", c)))
                                       for d, c in row_keys], names=["Decoder", "Configuration"])
    columns = pd.MultiIndex.from_tuples([(escape_latex(label("test_set", t)), escape_latex(label("metric", m)))
                                         for t, m in col_keys])
    tex = pd.DataFrame(body, index=index, columns=columns).to_latex(
        escape=False, multicolumn=True, multicolumn_format="c", multirow=False,
        column_format="ll" + "c" * len(col_keys))
    return ("% Generated by fmri2img figures; requires \\usepackage{booktabs}.\n" + tex
            + "% " + escape_latex(_note(rows, metrics, subject_note)) + "\n")


def format_markdown(rows: pd.DataFrame, metrics: Sequence[str], subject_note: str = "") -> str:
    """The same summary table as :func:`format_latex`, as a Markdown pipe table."""
    row_keys, col_keys, cells = table_layout(rows, metrics)
    header = ["Decoder", "Configuration"] + [f"{label('test_set', t)}: {label('metric', m)}" for t, m in col_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + [":---:"] * len(col_keys)) + "|"]
    for d, c in row_keys:
        parts = [label("decoder", d), label("configuration", c)]
        for t, m in col_keys:
            text, sig = cells.get((d, c, t, m), ("--", False))
            parts.append(text + (" *" if sig else ""))
        lines.append("| " + " | ".join(p.replace("|", "\\|") for p in parts) + " |")
    lines += ["", _note(rows, metrics, subject_note)]
    return "\n".join(lines) + "\n"
