"""Read NSD-Imagery as published: one row per beta volume (720 per subject), verified before it is returned.

Files read (release-relative, docs/nsd_imagery_release.md gives the sources):

* ``nsddata_betas/ppdata/subjXX/func1pt8mm/nsdimagerybetas_<variant>/betas_nsdimagery.{nii.gz,hdf5}``
  (header and completeness only; ``<variant>`` is ``fithrf_GLMdenoise_RR`` (default) or ``fithrf``);
* ``nsddata/experiments/nsdimagery/designmatrixGLMsingle.mat``: variable ``stimulus``, a 1 x 12 cell of
  TR x condition onset matrices in run order (the design GLMsingle was fit with);
* ``nsddata/experiments/nsdimagery/{A,B,C}_pair_list.mat``: variable ``pair_list``, rows (id, target, cue);
* ``nsddata/bdata/nsdimagery/nsdimagery_subjXX_<run>.tsv``: the behaviour of each of the 12 runs;
* ``nsddata/experiments/nsdimagery/rawtargetimages/set{A,B}/<target>`` and, for the set B ids,
  ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``.

The runs are, in acquisition (and beta) order, :data:`fmri2img.data.nsd_constants.IMAGERY_RUN_NAMES`.
Beta ``k`` of a vision/imagery run is its ``k``-th onset in time, which is behavioural trial ``k``; an
attention trial has two betas (cue epoch, then detection epoch). Every invariant is checked first; a
failure raises one of the project's exceptions with one line naming the invariant, the file and the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.config import check_choice
from fmri2img.core.errors import CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd_constants, nsd_imagery, nsd_imagery_verify
from fmri2img.data.nsd_imagery_mat import read_design, read_pair_list

__all__ = ["BEHAVIOUR_REQUIRED", "DEFAULT_VARIANT", "INDEX_COLUMNS", "MAPPING_COLUMNS", "ImageryRelease", "RunSpec",
           "beta_file", "build_mapping", "concept_word", "format_mapping", "index_frame", "index_frame_from_tables",
           "read_behaviour", "read_release", "run_onsets", "run_specs"]

DEFAULT_VARIANT = nsd_constants.IMAGERY_GLM_VARIANTS[0]
BETA_FORMATS = ("auto", "nifti", "hdf5")
_BETA_EXT = {"nifti": "nii.gz", "hdf5": "hdf5"}
#: Behavioural columns the mapping needs; every other column of the TSV is carried through unchanged.
BEHAVIOUR_REQUIRED = ("CONDITION", "CUE", "ISCORRECT", "BUTTON", "RT")
#: Parsed behavioural columns: output name -> (TSV column, pandas dtype).
BEHAVIOUR_PARSED = {"button": ("BUTTON", "Float64"), "rt": ("RT", "Float64"),
                    "is_correct": ("ISCORRECT", "Float64"), "change_mind": ("CHANGEMIND", "Float64")}
#: The mapping's own columns (the raw TSV columns follow, upper-case as in the release).
MAPPING_COLUMNS = ("beta_volume", "run", "run_name", "trial", "task", "epoch", "stim_set", "cue", "cue_shown",
                   "stimulus", "stimulus_file", "nsd_id", "design_column", "onset_tr",
                   "button", "rt", "is_correct", "change_mind")
#: Columns of :func:`index_frame` and :func:`index_frame_from_tables` (what ``fmri2img index`` consumes).
INDEX_COLUMNS = ("beta_index", "run", "trial", "task", "epoch", "stim_set", "stim_name", "cue", "image", "text",
                 "nsd_id", "stimulus_id", "stimulus_type", "condition", "button", "rt", "is_correct")


@dataclass(frozen=True)
class RunSpec:
    """One of the 12 runs: 1-based number, name (``imgA_2``), task, stimulus set and beta count."""

    number: int
    name: str
    task: str
    stim_set: str
    n_betas: int


def run_specs() -> tuple[RunSpec, ...]:
    """The 12 runs in beta order, from :data:`~fmri2img.data.nsd_constants.IMAGERY_RUN_NAMES`."""
    specs = []
    for number, name in enumerate(nsd_constants.IMAGERY_RUN_NAMES, start=1):
        task = nsd_constants.IMAGERY_RUN_TASKS[name[:3]]
        n_betas = nsd_constants.IMAGERY_TRIALS_PER_RUN * nsd_constants.IMAGERY_BETAS_PER_TRIAL[task]
        specs.append(RunSpec(number, name, task, name[3], n_betas))
    return tuple(specs)


@dataclass(frozen=True)
class ImageryRelease:
    """What :func:`read_release` returns.

    Attributes
    ----------
    table : DataFrame of shape (720, n_columns)
        One row per beta volume, sorted by ``beta_volume``: :data:`MAPPING_COLUMNS`, then the raw
        behavioural columns of the TSV (upper-case). Attention rows repeat their trial's behaviour.
    metadata : dict
        Subject, GLM variant, beta file, grid, run order, within-run order, the set B id convention,
        where each set C text came from (``text_source``) and notes.
    sources : tuple of str
        Release-relative paths of every file read (for hashing).
    """

    table: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()


# --- files ----------------------------------------------------------------------------------------


def beta_file(data_root: str | os.PathLike, subject: str, variant: str = DEFAULT_VARIANT,
              beta_format: str = "auto") -> str:
    """Release-relative path of the subject's ``betas_nsdimagery`` file (``auto``: HDF5 if present)."""
    check_choice("NSD-Imagery GLM variant", variant, nsd_constants.IMAGERY_GLM_VARIANTS, error=InputError)
    check_choice("beta format", beta_format, BETA_FORMATS, error=InputError)
    kinds = ("hdf5", "nifti") if beta_format == "auto" else (beta_format,)
    rels = [nsd_constants.IMAGERY_BETAS_IN.format(subject=subject, variant=variant, ext=_BETA_EXT[k]) for k in kinds]
    for rel in rels:
        if (Path(data_root) / rel).is_file():
            return rel
    raise MissingInputError(
        f"File not found: {Path(data_root) / rels[-1]}; expected the NSD-Imagery betas of {subject} "
        f"({' or '.join(Path(r).name for r in rels)})."
    )


def _require(root: Path, rel: str, what: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected {what} (docs/nsd_imagery_release.md).")
    return path


# --- behaviour ------------------------------------------------------------------------------------


def read_behaviour(path: str | os.PathLike) -> pd.DataFrame:
    """Read one run's ``nsdimagery_subjXX_<run>.tsv``: 48 rows in trial order.

    Rows are sorted by ``TRIAL`` when the column exists (distinct integers; the release numbers 1..48);
    ``CONDITION`` and ``CUE`` are stripped strings. Every column is kept.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"Cannot parse {path} as TSV: {exc}".splitlines()[0]) from None
    missing = [c for c in BEHAVIOUR_REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"{path} has no column {missing[0]!r}; expected the NSD-Imagery behaviour columns "
                         f"{', '.join(BEHAVIOUR_REQUIRED)}.")
    if len(table) != nsd_constants.IMAGERY_TRIALS_PER_RUN:
        raise InputError(f"{path} has {len(table)} trial rows; expected {nsd_constants.IMAGERY_TRIALS_PER_RUN} per run.")
    for column in ("CONDITION", "CUE"):
        table[column] = table[column].str.strip()
    if "TRIAL" in table.columns:
        trial = pd.to_numeric(table["TRIAL"], errors="coerce")
        if trial.isna().any() or trial.duplicated().any():
            bad = table["TRIAL"][trial.isna() | trial.duplicated(keep=False)].iloc[0]
            raise InputError(f"{path}: column TRIAL holds {bad!r} twice or as a non-number; expected distinct "
                             "trial numbers (1..48).")
        table = table.assign(_order=trial).sort_values("_order", kind="stable").drop(columns="_order")
    return table.reset_index(drop=True)


def _parse_behaviour(rows: pd.DataFrame) -> dict[str, pd.Series]:
    parsed = {}
    for name, (column, dtype) in BEHAVIOUR_PARSED.items():
        values = rows[column] if column in rows.columns else pd.Series([""] * len(rows))
        parsed[name] = pd.to_numeric(values.replace({"": None, "NaN": None, "nan": None}),
                                     errors="coerce").astype(dtype).reset_index(drop=True)
    return parsed


# --- design cells -> trials -------------------------------------------------------------------------


def run_onsets(cell: np.ndarray, spec: RunSpec, design_name: str) -> np.ndarray:
    """Onsets of one design cell, in time order: int array of shape (n_betas, 2), columns (TR, column).

    Checks the cell's onset count against the run's block size and that no two onsets share a TR.
    """
    onsets = np.argwhere(np.asarray(cell) != 0)  # row-major: sorted by TR, then column
    if len(onsets) != spec.n_betas:
        per_trial = nsd_constants.IMAGERY_BETAS_PER_TRIAL[spec.task]
        raise InputError(
            f"{design_name}: design cell {spec.number} ({spec.name}) has {len(onsets)} onsets; expected "
            f"{spec.n_betas} ({nsd_constants.IMAGERY_TRIALS_PER_RUN} trials x {per_trial} beta{'s' if per_trial > 1 else ''})."
        )
    trs, counts = np.unique(onsets[:, 0], return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{design_name}: design cell {spec.number} ({spec.name}) has {counts.max()} onsets at "
                         f"TR {trs[counts > 1][0]}; expected one event per TR.")
    return onsets.astype(np.int64)


def _trial_rows(spec: RunSpec, onsets: np.ndarray, design_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Behavioural row (0-based) and epoch of each onset (``''`` outside attention runs)."""
    if spec.task != "attention":
        return np.arange(len(onsets)), np.full(len(onsets), "", dtype=object)
    cue_cols, det_cols = set(onsets[0::2, 1]), set(onsets[1::2, 1])
    if cue_cols & det_cols:
        col = sorted(cue_cols & det_cols)[0]
        raise InputError(
            f"{design_name}: design cell {spec.number} ({spec.name}) uses column {col} for both epochs; expected "
            "onsets alternating cue epoch / detection epoch in disjoint column sets (2 betas per trial)."
        )
    epochs = np.tile(np.array(nsd_constants.IMAGERY_ATTENTION_EPOCHS, dtype=object), nsd_constants.IMAGERY_TRIALS_PER_RUN)
    return np.repeat(np.arange(nsd_constants.IMAGERY_TRIALS_PER_RUN), 2), epochs


def _check_conditions(rows: pd.DataFrame, spec: RunSpec, cues: tuple[str, ...], path: str) -> None:
    """Every CONDITION is a cue of the run's set, each exactly 8 times."""
    unknown = rows.loc[~rows["CONDITION"].isin(cues), "CONDITION"]
    if not unknown.empty:
        raise InputError(f"{path}: CONDITION {unknown.iloc[0]!r} in row {unknown.index[0] + 1} is no cue of set "
                         f"{spec.stim_set}; expected one of {' '.join(cues)} ({spec.stim_set}_pair_list.mat).")
    counts = rows["CONDITION"].value_counts()
    bad = [c for c in cues if counts.get(c, 0) != nsd_constants.IMAGERY_REPEATS_PER_RUN]
    if bad:
        raise InputError(f"{path}: CONDITION {bad[0]!r} occurs {counts.get(bad[0], 0)} times; expected "
                         f"{nsd_constants.IMAGERY_REPEATS_PER_RUN} (six conditions x 8 = 48 trials).")


def _check_column_function(frame: pd.DataFrame, design_name: str, bdata: dict[str, str]) -> None:
    """Onset order = behavioural order: the design column of each onset maps to one CONDITION.

    Keyed by (set, task, column) across runs (imgX_1 and imgX_2 share their columns; vision columns may be
    shared by the three sets), and the other way round within each run (a CONDITION has one column).
    Attention runs are checked on their cue epochs only: what the detection columns code is not documented.
    """
    checked = frame[frame["epoch"].fillna("cue") == "cue"]
    for key, group in checked.groupby(["stim_set", "task", "design_column"], sort=True):
        if group["cue"].nunique() > 1:
            first = group.iloc[0]
            other = group[group["cue"] != first["cue"]].iloc[0]
            raise MismatchError(
                f"{design_name}: column {key[2]} (set {key[0]}, {key[1]}) maps to CONDITION {first['cue']!r} "
                f"({bdata[first['run_name']]} trial {first['trial']}) and {other['cue']!r} "
                f"({bdata[other['run_name']]} trial {other['trial']}); expected one CONDITION per column "
                "(beta k = k-th onset = behavioural row k)."
            )
    for (run_name, cue), group in checked.groupby(["run_name", "cue"], sort=True):
        if group["design_column"].nunique() > 1:
            cols = sorted(group["design_column"].unique())
            raise MismatchError(f"{bdata[run_name]}: CONDITION {cue!r} has onsets in design columns {cols[0]} and "
                                f"{cols[1]} of {design_name}; expected one column per CONDITION.")


def build_mapping(design: list[np.ndarray], behaviour: dict[str, pd.DataFrame], cues: dict[str, tuple[str, ...]],
                  design_name: str, bdata: dict[str, str]) -> pd.DataFrame:
    """Map every onset of the 12 design cells to its run, behavioural trial and CONDITION (chronological).

    Parameters
    ----------
    design : list of 12 arrays of shape (n_TRs, n_conditions)
        The cells of ``stimulus``, in run order.
    behaviour : dict
        Run name -> its behaviour table (:func:`read_behaviour`).
    cues : dict
        Stimulus set -> its cue letters (from the pair lists).
    design_name, bdata : str, dict
        The design file and run name -> behaviour file, for the messages.

    Returns
    -------
    DataFrame of shape (720, n_columns)
        Columns ``run``, ``run_name``, ``task``, ``stim_set``, ``epoch``, ``onset_tr``, ``design_column``,
        ``row`` (0-based behavioural row), ``trial``, ``cue``, ``cue_shown``, in chronological order per run.
    """
    specs = run_specs()
    if len(design) != len(specs):
        raise InputError(f"{design_name}: `stimulus` has {len(design)} cells; expected {len(specs)} (one per run).")
    parts = []
    for spec, cell in zip(specs, design):
        rows = behaviour[spec.name]
        _check_conditions(rows, spec, cues[spec.stim_set], bdata[spec.name])
        onsets = run_onsets(cell, spec, design_name)
        row, epoch = _trial_rows(spec, onsets, design_name)
        trial = np.arange(1, len(rows) + 1)  # 1-based position in trial order
        parts.append(pd.DataFrame({
            "run": spec.number, "run_name": spec.name, "task": spec.task, "stim_set": spec.stim_set,
            "epoch": pd.array([e or None for e in epoch], dtype="string"),
            "onset_tr": onsets[:, 0], "design_column": onsets[:, 1], "row": row, "trial": trial[row],
            "cue": rows["CONDITION"].to_numpy()[row], "cue_shown": rows["CUE"].to_numpy()[row],
        }))
    frame = pd.concat(parts, ignore_index=True)
    _check_column_function(frame, design_name, bdata)
    return frame


# --- stimuli ----------------------------------------------------------------------------------------


def concept_word(label: str) -> str | None:
    """The word of a set C pair-list target (``'banana'``, ``'banana0000_nsd00000.png'`` -> ``'banana'``)."""
    stem = re.sub(r"\.(png|jpg)$", "", str(label).strip(), flags=re.IGNORECASE)
    stem = re.sub(r"\d+_nsd\d+$", "", stem).strip(" _-")
    return stem.lower() if re.fullmatch(r"[A-Za-z][A-Za-z \-]*", stem) else None


def _stimuli(root: Path, pairs: dict[str, pd.DataFrame], stimuli_hdf5: str, progress: bool):
    """Per (set, cue): stimulus, stimulus_file (release-relative), nsd_id, text; plus metadata."""
    rows, text_source, targets = [], {}, {}
    for stim_set, table in sorted(pairs.items()):
        for cue, label in zip(table["cue"], table["target"]):
            if stim_set == "C":
                word = concept_word(label)
                text_source[cue] = "pair_list" if word else "cue_letter"
                rows.append((stim_set, cue, word or cue, None, word or cue))
                continue
            rel = nsd_constants.IMAGERY_TARGET_IMAGE.format(stim_set=stim_set, name=label)
            if not Path(label).suffix and (root / f"{rel}.png").is_file():
                label, rel = f"{label}.png", f"{rel}.png"  # a pair list may name the target without extension
            _require(root, rel, f"the set {stim_set} target image of cue {cue} ({stim_set}_pair_list.mat)")
            rows.append((stim_set, cue, label, rel, None))
            if stim_set == "B":
                targets[label] = root / rel
    stim = pd.DataFrame(rows, columns=["stim_set", "cue", "stimulus", "stimulus_file", "text"])
    ids = nsd_imagery_verify.verify_set_b_ids(targets, root / stimuli_hdf5, progress=progress)
    stim["nsd_id"] = pd.array([ids.nsd_ids.get(s) if st == "B" else None
                               for st, s in zip(stim["stim_set"], stim["stimulus"])], dtype="Int64")
    meta = {"text_source": text_source, "nsd_id_convention": ids.convention,
            "set_b_not_in_nsd": sorted(n for n, i in ids.nsd_ids.items() if i is None)}
    return stim, meta


# --- the reader ---------------------------------------------------------------------------------------


def _reorder(frame: pd.DataFrame, within_run_order: str) -> pd.DataFrame:
    check_choice("within-run order", within_run_order, nsd_imagery_verify.WITHIN_RUN_ORDERS, error=InputError)
    if within_run_order == "by_condition":
        frame = frame.sort_values(["run", "design_column", "onset_tr"], kind="stable")
    return frame.reset_index(drop=True).assign(beta_volume=np.arange(len(frame)))


def read_release(data_root: str | os.PathLike, subject: str, variant: str = DEFAULT_VARIANT,
                 beta_format: str = "auto", within_run_order: str = "chronological",
                 stimuli_hdf5: str = nsd_constants.STIMULI_HDF5, progress: bool = True) -> ImageryRelease:
    """Read and verify a subject's NSD-Imagery release; map each of the 720 beta volumes.

    Parameters
    ----------
    data_root : path-like
        The release root (holding ``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``).
    subject : str
        ``subj01`` .. ``subj08``.
    variant : {'fithrf_GLMdenoise_RR', 'fithrf'}
        GLM variant (folder ``nsdimagerybetas_<variant>``).
    beta_format : {'auto', 'nifti', 'hdf5'}
        Which beta file to check (``auto``: HDF5 if present, else ``.nii.gz``).
    within_run_order : {'chronological', 'by_condition'}
        Order of a run's betas: onset order (what GLMsingle writes; default) or grouped by design column.
        :func:`fmri2img.data.nsd_imagery_verify.check_within_run_order` tests it on the betas.
    stimuli_hdf5 : str
        Release-relative path of ``nsd_stimuli.hdf5`` (set B ids are checked against it).

    Returns
    -------
    ImageryRelease
    """
    root = Path(data_root)
    nsd_constants.subject_number(subject)
    beta_rel = beta_file(root, subject, variant, beta_format)
    bdata = {s.name: nsd_constants.IMAGERY_BDATA.format(subject=subject, run=s.name) for s in run_specs()}
    pair_rels = {s: nsd_constants.IMAGERY_PAIR_LIST.format(stim_set=s) for s in nsd_constants.IMAGERY_SETS}
    _require(root, nsd_constants.IMAGERY_DESIGN, "the NSD-Imagery design matrix (variable `stimulus`)")
    for stim_set, rel in pair_rels.items():
        _require(root, rel, f"the set {stim_set} cue/target pair list")
    for name, rel in bdata.items():
        _require(root, rel, f"the behaviour of run {name}")
    info = nsd_imagery_verify.check_beta_file(root / beta_rel, nsd_constants.IMAGERY_BETAS, progress=progress)
    design = read_design(root / nsd_constants.IMAGERY_DESIGN)
    pairs = {s: read_pair_list(root / rel, s) for s, rel in pair_rels.items()}
    behaviour = {name: read_behaviour(root / rel) for name, rel in bdata.items()}
    cues = {s: tuple(p["cue"]) for s, p in pairs.items()}
    frame = _reorder(build_mapping(design, behaviour, cues, nsd_constants.IMAGERY_DESIGN, bdata), within_run_order)
    stim, stim_meta = _stimuli(root, pairs, stimuli_hdf5, progress)
    table = _assemble(frame, stim, behaviour)
    metadata = {
        "subject": subject, "variant": variant, "beta_file": beta_rel, "beta_format": info.kind,
        "grid": list(info.grid), "n_volumes": info.n_volumes, "run_order": list(nsd_constants.IMAGERY_RUN_NAMES),
        "within_run_order": within_run_order, **stim_meta,
        "notes": [f"set C cue {c}: no word in C_pair_list.mat, the letter stands in"
                  for c, s in sorted(stim_meta["text_source"].items()) if s == "cue_letter"],
    }
    sources = (beta_rel, nsd_constants.IMAGERY_DESIGN, *pair_rels.values(), *bdata.values(),
               *sorted(stim["stimulus_file"].dropna()), stimuli_hdf5)
    return ImageryRelease(table=table, metadata=metadata, sources=tuple(sources))


def _assemble(frame: pd.DataFrame, stim: pd.DataFrame, behaviour: dict[str, pd.DataFrame]) -> pd.DataFrame:
    pieces = [behaviour[name].iloc[frame.loc[idx, "row"].to_numpy()].set_axis(idx)
              for name, idx in frame.groupby("run_name", sort=False).groups.items()]
    raw = pd.concat(pieces).sort_index()
    table = frame.merge(stim, on=["stim_set", "cue"], how="left", validate="many_to_one")
    table = table.assign(**_parse_behaviour(raw))
    extra = [c for c in raw.columns if c not in table.columns]
    return pd.concat([table[list(MAPPING_COLUMNS)], raw[extra]], axis=1)


# --- views ---------------------------------------------------------------------------------------------


def format_mapping(table: pd.DataFrame, columns: tuple[str, ...] | None = None, max_rows: int | None = None) -> str:
    """The mapping as a plain-text table (one line per beta volume), for ``index --dry-run``."""
    columns = columns or ("beta_volume", "run", "run_name", "trial", "task", "epoch", "stim_set", "cue",
                          "stimulus", "nsd_id", "design_column", "onset_tr", "button", "rt", "is_correct")
    shown = table.loc[:, list(columns)]
    if max_rows is not None and len(shown) > max_rows:
        shown = shown.head(max_rows)
    text = shown.astype(object).where(shown.notna(), "-").to_string(index=False)
    if max_rows is not None and len(table) > max_rows:
        text += f"\n... {len(table) - max_rows} more rows"
    return text


def index_frame(release: ImageryRelease) -> pd.DataFrame:
    """The release in the columns ``fmri2img index`` consumes (:data:`INDEX_COLUMNS`).

    ``beta_index`` is 1-based (volume ``beta_index - 1``); ``trial`` is the behavioural trial of its run;
    ``stim_name`` is the target file's stem (sets A, B) or the word (set C); ``image`` is release-relative
    (sets A, B); ``text`` is the set C word (or letter); ``condition`` maps vision to perception.
    """
    t = release.table
    frame = pd.DataFrame({
        "beta_index": t["beta_volume"].astype(np.int64) + 1, "run": t["run"].astype(np.int64),
        "trial": t["trial"].astype(np.int64), "task": t["task"], "epoch": t["epoch"], "stim_set": t["stim_set"],
        "stim_name": [s if st == "C" else re.sub(r"\.(png|jpg)$", "", s, flags=re.IGNORECASE)
                      for s, st in zip(t["stimulus"], t["stim_set"])],
        "cue": t["cue"], "image": t["stimulus_file"].fillna(""),
        "text": [s if st == "C" else "" for s, st in zip(t["stimulus"], t["stim_set"])],
        "nsd_id": t["nsd_id"].astype("Int64"), "button": t["button"], "rt": t["rt"], "is_correct": t["is_correct"],
    })
    return _finish_index_frame(frame)


def index_frame_from_tables(data_root: str | os.PathLike, trials: str = nsd_constants.IMAGERY_TRIALS,
                            stimuli: str = nsd_constants.IMAGERY_STIMULI_TABLE) -> pd.DataFrame:
    """The hand-written override (``--imagery-trials``) in the same columns as :func:`index_frame`.

    Reads the trial and stimulus tables of docs/contracts.md with :mod:`fmri2img.data.nsd_imagery`;
    ``image`` becomes release-relative (``nsddata_stimuli/stimuli/nsdimagery/<image>``).
    """
    root = Path(data_root)
    joined = nsd_imagery.join_trials(nsd_imagery.read_trials(root / trials), nsd_imagery.read_stimuli(root / stimuli),
                                     trials)
    frame = joined[["beta_index", "run", "trial", "task", "stim_set", "stim_name", "cue", "text", "nsd_id"]].copy()
    frame["image"] = [f"{nsd_constants.IMAGERY_STIMULI_DIR}/{i.strip()}" if i.strip() else "" for i in joined["image"]]
    return _finish_index_frame(frame)


def _finish_index_frame(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("epoch", "button", "rt", "is_correct"):  # not in the hand-written tables
        if column not in frame.columns:
            frame[column] = pd.array([None] * len(frame), dtype="string" if column == "epoch" else "Float64")
    frame["stimulus_type"] = frame["stim_set"].map(nsd_constants.IMAGERY_SETS)
    frame["stimulus_id"] = [nsd_imagery.stimulus_id(s, n, None if pd.isna(i) else int(i))
                            for s, n, i in zip(frame["stim_set"], frame["stim_name"], frame["nsd_id"])]
    frame["condition"] = frame["task"].map(nsd_imagery.TASK_CONDITION)
    return frame.loc[:, list(INDEX_COLUMNS)].reset_index(drop=True)
