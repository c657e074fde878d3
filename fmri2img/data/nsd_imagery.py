"""Hand-written NSD-Imagery tables: the override ``fmri2img index --imagery-trials FILE``.

The default reader is :mod:`fmri2img.data.nsd_imagery_release` (the release as published). These
readers serve layouts that differ from it: a trial table (one row per beta volume) and a stimulus
table ``stimuli.tsv``, both documented in docs/nsd_data.md, section 4.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fmri2img.core.errors import CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd_constants

TRIAL_COLUMNS = ("beta_index", "run", "trial", "task", "stim_set", "stim_name", "cue")
STIMULUS_COLUMNS = ("stim_set", "stim_name", "cue", "image", "text", "nsd_id")

#: Trial table task -> index condition (vision trials are perception of the same stimuli).
TASK_CONDITION = {"vision": "perception", "imagery": "imagery", "attention": "attention"}


def _read_tsv(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected the NSD-Imagery {what} (docs/nsd_data.md).")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"Cannot parse {path} as TSV: {exc}".splitlines()[0]) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CorruptFileError(f"{path} has no column {missing[0]!r}; expected columns {', '.join(columns)}.")
    return table


def _ints(table: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Column ``column`` as int64; values that are no integer, or outside the index's int32, are refused."""
    text = table[column].str.strip()
    valid = text.str.fullmatch(r"-?[0-9]{1,10}")
    values = pd.to_numeric(text.where(valid), errors="coerce")
    valid &= values.abs() <= np.iinfo(np.int32).max
    if not valid.all():
        bad = table[column][~valid].iloc[0]
        raise CorruptFileError(f"{path}: column {column!r} has value {bad!r}; expected an integer "
                               f"(at most {np.iinfo(np.int32).max} in magnitude).")
    return values.to_numpy(np.int64)


def read_trials(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check ``nsdimagery_trials_subjXX.tsv``.

    Returns
    -------
    DataFrame of shape (n_trials, 7)
        Columns of :data:`TRIAL_COLUMNS`, sorted by ``beta_index`` (1..n_trials, each once).
    """
    path = Path(path)
    table = _read_tsv(path, TRIAL_COLUMNS, "trial table")
    if table.empty:
        raise InputError(f"{path} has no trials; expected one row per beta volume.")
    for column in ("beta_index", "run", "trial"):
        table[column] = _ints(table, column, path)
    bad_task = sorted(set(table["task"]) - set(TASK_CONDITION))
    if bad_task:
        raise InputError(f"{path}: task {bad_task[0]!r}; expected one of {', '.join(TASK_CONDITION)}.")
    bad_set = sorted(set(table["stim_set"]) - set(nsd_constants.IMAGERY_SETS))
    if bad_set:
        raise InputError(f"{path}: stim_set {bad_set[0]!r}; expected one of {', '.join(nsd_constants.IMAGERY_SETS)}.")
    if (table["stim_name"].str.strip() == "").any():
        raise InputError(f"{path}: a row has an empty stim_name; expected a name from stimuli.tsv on every row.")
    table = table.sort_values("beta_index", kind="stable").reset_index(drop=True)
    expected = np.arange(1, len(table) + 1)
    if not np.array_equal(table["beta_index"].to_numpy(), expected):
        raise InputError(f"{path}: beta_index must number the volumes 1..{len(table)} once each.")
    return table[list(TRIAL_COLUMNS)]


def read_stimuli(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check the stimulus table ``stimuli.tsv``.

    Returns
    -------
    DataFrame
        Columns of :data:`STIMULUS_COLUMNS` plus ``stimulus_id``, ``stimulus_type``; ``nsd_id`` is a
        nullable ``Int64`` (0-based 73k id; set B only, empty for a target that is no NSD image).
    """
    path = Path(path)
    table = _read_tsv(path, STIMULUS_COLUMNS, "stimulus table")
    bad_set = sorted(set(table["stim_set"]) - set(nsd_constants.IMAGERY_SETS))
    if bad_set:
        raise InputError(f"{path}: stim_set {bad_set[0]!r}; expected one of {', '.join(nsd_constants.IMAGERY_SETS)}.")
    duplicated = table["stim_name"][table["stim_name"].duplicated()]
    if not duplicated.empty:
        raise InputError(f"{path}: stimulus {duplicated.iloc[0]!r} is listed twice; expected unique names.")
    nsd_ids = []
    for set_name, name, value in zip(table["stim_set"], table["stim_name"], table["nsd_id"]):
        value = value.strip()
        if set_name == "B" and value:  # empty: a set B target that is no NSD image (the release's cue T)
            if not value.isdigit():
                raise InputError(f"{path}: set B stimulus {name!r} has nsd_id {value!r}; expected a 0-based 73k id "
                                 "or empty.")
            nsd_ids.append(int(value))
        else:
            nsd_ids.append(None)
    table["nsd_id"] = pd.array(nsd_ids, dtype="Int64")
    table["stimulus_type"] = table["stim_set"].map(nsd_constants.IMAGERY_SETS)
    table["stimulus_id"] = [
        stimulus_id(s, n, i) for s, n, i in zip(table["stim_set"], table["stim_name"], nsd_ids)
    ]
    return table


def stimulus_id(stim_set: str, stim_name: str, nsd_id: int | None = None) -> str:
    """Stable stimulus id (contracts section 2): ``nsd-<id:05d>`` for set B, ``img-<set>-<name>`` else."""
    if stim_set == "B" and nsd_id is not None:
        return f"nsd-{int(nsd_id):05d}"
    return f"img-{stim_set}-{stim_name}"


def join_trials(trials: pd.DataFrame, stimuli: pd.DataFrame, trials_path: str = "trial table") -> pd.DataFrame:
    """Attach each trial's stimulus (by ``stim_name``); every trial's stimulus must be in the table."""
    known = stimuli.set_index("stim_name")
    unknown = sorted(set(trials["stim_name"]) - set(known.index))
    if unknown:
        raise InputError(f"{trials_path}: stimulus {unknown[0]!r} is not in stimuli.tsv; expected a listed name.")
    merged = trials.merge(
        stimuli[["stim_name", "stim_set", "image", "text", "nsd_id", "stimulus_id", "stimulus_type"]],
        on="stim_name", how="left", suffixes=("", "_stim"),
    )
    clash = merged["stim_set"] != merged["stim_set_stim"]
    if clash.any():
        row = merged[clash].iloc[0]
        raise MismatchError(
            f"{trials_path}: stimulus {row['stim_name']!r} has set {row['stim_set']} but stimuli.tsv says "
            f"{row['stim_set_stim']}; expected the same set."
        )
    merged["condition"] = merged["task"].map(TASK_CONDITION)
    return merged.drop(columns=["stim_set_stim"])
