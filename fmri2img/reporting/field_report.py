"""Tables and the reconstruction figure of the field's battery (:mod:`fmri2img.evaluation.field_metrics`).

* :func:`battery_rows` flattens metric records into the tidy ``field_table.csv`` (one row per source,
  test set, stimulus group and metric: value, 95 % CI, chance, n, p, the metric's direction and, for a
  metric that could not be computed, the reason in ``note``; never dropped).
* :func:`format_battery_markdown` writes it for a paper or the report, the not-computed reasons included.
* :func:`reconstruction_grid` is the figure every paper of the field shows: one row per stimulus, ground
  truth then each test set's reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fmri2img.evaluation.field_metrics import METRIC_LABELS
from fmri2img.reporting.style import new_figure, style_context

#: Columns of ``field_table.csv``, in order; the first four name a cell.
FIELD_COLUMNS = ("source", "test_set", "stimulus_group", "metric", "label", "value", "ci_low", "ci_high", "chance",
                 "n", "p_value", "higher_is_better", "note")

#: Decimals of the markdown table (two-way and retrieval as percentages with one).
FIELD_DECIMALS = 3

#: Metrics shown as percentages, as the papers do (and every ``retrieval_*`` n-way metric).
PERCENT_METRICS = ("alexnet2", "alexnet5", "inception_v3", "clip")

#: Side of one image of the reconstruction grid, inches.
GRID_CELL_IN = 1.1


def _label(metric: str) -> str:
    """Display label; n-way retrieval of any n (``retrieval_image_20`` -> ``Image retrieval (20-way)``)."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    parts = metric.split("_")
    if len(parts) == 3 and parts[0] == "retrieval" and parts[2].isdigit():
        return f"{parts[1].capitalize()} retrieval ({parts[2]}-way)"
    return metric


def battery_rows(records: Mapping[str, Mapping[str, Any]], *, source: str, test_set: str,
                 stimulus_group: str) -> list[dict[str, Any]]:
    """Tidy rows (:data:`FIELD_COLUMNS`) of one battery (metric name -> record)."""
    rows = []
    for metric, rec in records.items():
        rows.append({"source": source, "test_set": test_set, "stimulus_group": stimulus_group, "metric": metric,
                     "label": _label(metric), "value": rec["value"], "ci_low": rec["ci_low"],
                     "ci_high": rec["ci_high"], "chance": rec["chance"], "n": rec["n"], "p_value": rec["p_value"],
                     "higher_is_better": rec["higher_is_better"], "note": rec["note"]})
    return rows


def battery_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame with :data:`FIELD_COLUMNS` (in that order)."""
    return pd.DataFrame(list(rows), columns=list(FIELD_COLUMNS))


def _number(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if metric in PERCENT_METRICS or metric.startswith("retrieval_"):
        return f"{100 * float(value):.1f}%"
    return f"{float(value):.{FIELD_DECIMALS}f}"


def format_battery_markdown(table: pd.DataFrame) -> str:
    """A markdown table of ``field_table.csv``: one line per (source, test set, group, metric).

    ``value`` and ``95% CI`` as the papers print them (two-way and retrieval in percent), the chance
    level beside, arrows for the direction, and the reason of every metric not computed.
    """
    head = "| source | test set | stimuli | metric | value | 95% CI | chance | n | note |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for rec in table.to_dict("records"):
        metric = rec["metric"]
        arrow = "↑" if rec["higher_is_better"] else "↓"
        ci = "" if pd.isna(rec["ci_low"]) or rec["ci_low"] is None else \
            f"[{_number(rec['ci_low'], metric)}, {_number(rec['ci_high'], metric)}]"
        value = _number(rec["value"], metric) or "not computed"
        note = "" if rec["note"] is None or (isinstance(rec["note"], float) and math.isnan(rec["note"])) \
            else str(rec["note"]).replace("|", "/")
        lines.append(f"| {rec['source']} | {rec['test_set']} | {rec['stimulus_group']} | {rec['label']} {arrow} | "
                     f"{value} | {ci} | {_number(rec['chance'], metric)} | {rec['n']} | {note} |")
    return "\n".join(lines) + "\n"


def reconstruction_grid(stimulus_ids: Sequence[str], truths: Mapping[str, np.ndarray],
                        columns: Mapping[str, Mapping[str, np.ndarray]],
                        labels: Mapping[str, str] | None = None) -> Figure:
    """Ground truth beside each set of reconstructions, one row per stimulus.

    Parameters
    ----------
    stimulus_ids : sequence of str
        Rows, in order.
    truths : mapping stimulus id -> uint8 array (H, W, 3)
        Ground-truth images; a stimulus without one (conceptual set C) shows an empty cell.
    columns : mapping column title (e.g. a test set) -> mapping stimulus id -> uint8 array (H, W, 3)
        Reconstructions; a missing one shows an empty cell.
    labels : mapping stimulus id -> str, optional
        Row labels (default: the ids).

    Returns
    -------
    matplotlib Figure
    """
    titles = ["ground truth", *columns]
    sources = [truths, *columns.values()]
    n_rows = max(1, len(stimulus_ids))
    with style_context():
        fig = new_figure(GRID_CELL_IN * len(titles) + 1.0, GRID_CELL_IN * n_rows + 0.3)
        axes = np.atleast_2d(fig.subplots(n_rows, len(titles), squeeze=False))
        for row, stimulus_id in enumerate(stimulus_ids):
            for col, (title, source) in enumerate(zip(titles, sources)):
                ax = axes[row, col]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                image = source.get(stimulus_id)
                if image is not None:
                    ax.imshow(np.asarray(image, np.uint8), interpolation="nearest")
                else:
                    ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes, fontsize=6)
                if row == 0:
                    ax.set_title(title, fontsize=7)
                if col == 0:
                    ax.set_ylabel((labels or {}).get(stimulus_id, stimulus_id), fontsize=6)
    return fig


__all__ = ["FIELD_COLUMNS", "PERCENT_METRICS", "battery_frame", "battery_rows", "format_battery_markdown",
           "reconstruction_grid"]


#: Test sets of the report's battery summary, in column order.
SUMMARY_TEST_SETS = ("shared1000", "imagery_vision", "imagery")


def battery_summary_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """report.md lines of an ablation's battery (``field_table.csv`` rows with subject and decoder):
    per decoder and metric, the mean over subjects of each test set's value (stimulus group ``all``),
    the chance level, and each metric not computed once with its reason."""
    table = pd.DataFrame(list(rows))
    table = table[table["stimulus_group"] == "all"]
    done, missing = table[table["value"].notna()], table[table["value"].isna()]
    lines = ["## The field's reconstruction battery (perception-only decoders)", "",
             "Mean over subjects (per-subject values with 95% CIs: `field_table.csv`; the protocol: "
             "docs/comparing.md).", "",
             "| decoder | metric | " + " | ".join(SUMMARY_TEST_SETS) + " | chance |", "|---|---|" + "---|" * 4]
    for (decoder, metric), part in done.groupby(["decoder", "metric"], sort=False):
        means = part.groupby("test_set")["value"].mean()
        cells = [_number(means.get(t), metric) or "n/a" for t in SUMMARY_TEST_SETS]
        arrow = "↑" if bool(part["higher_is_better"].iloc[0]) else "↓"
        chance = _number(part["chance"].dropna().mean() if part["chance"].notna().any() else None, metric)
        lines.append(f"| {decoder} | {_label(metric)} {arrow} | " + " | ".join(cells) + f" | {chance} |")
    lines += [""] if len(missing) else []
    for metric, part in missing.groupby("metric", sort=False):
        lines.append(f"- {_label(metric)}: {str(part['note'].iloc[0]).replace('|', '/')}")
    return lines + [""]
