"""NSD-Imagery of the synthetic world, written in the layout of the release as published.

What :func:`fmri2img.data.nsd_imagery_release.read_release` reads (docs/nsd_imagery_release.md gives the
sources): ``designmatrixGLMsingle.mat`` (variable ``stimulus``, a 1 x 12 cell: 240 TRs for vision and
imagery runs, 480 for attention runs), the pair lists ``{A,B,C}_pair_list.mat`` (6 x 3 cells: id, target,
cue), the target PNGs under ``rawtargetimages/set{A,B}/`` (set B ``sharedSSSS_nsdNNNNN.png`` shows
``imgBrick[NNNNN - 1]``: 1-based, as the reader settles by content), one behaviour TSV per run and subject
(48 rows, :data:`BEHAVIOUR_COLUMNS`) and 720 betas per subject in the release's block order, chronological
within a run, with two betas (cue epoch, detection epoch) per attention trial.

The design is one for all subjects (the release has one design file); behaviour values are seeded per subject.
This generator's own choices (no source fixes them): the design column layout (vision 0-5, attention cue 6-11
and detection 12-17, imagery of set A 18-23, B 24-29, C 30-35), evenly spaced onsets, and every behaviour value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.data import nsd_constants
from fmri2img.sim.formats import write_mat, write_table

#: Target files of set A in cue order H R V L P E [NSDI-repro, docs/nsd_imagery_release.md].
TARGETS_A = ("bar_000.0deg_450L_43W.png", "bar_045.0deg_450L_43W.png", "bar_090.0deg_450L_43W.png",
             "bar_135.0deg_450L_43W.png", "crs_000.0deg_450L_43W.png", "crs_045.0deg_450L_43W.png")
#: Columns of ``nsdimagery_subjXX_<run>.tsv`` [NSDI-repro].
BEHAVIOUR_COLUMNS = ("SUBJECT", "SESSION", "RUN", "TRIAL", "CONDITION", "CUE", "FRAMEFILE", "IMAGEFILE",
                     "GROUNDTRUTH", "ISCORRECT", "CHANGEMIND", "TOTAL1", "TOTAL2", "BUTTON", "TRIALONSET",
                     "TRIALEND", "IMAGEONSET", "IMAGESERIESENDS", "FINALDECISIONTIME", "RT")
#: TRs of a run's design cell per task [NSDI-repro: 240 and 480 rows].
RUN_TRS = {"vision": 240, "imagery": 240, "attention": 480}
N_DESIGN_COLUMNS = 36
#: Onset spacing (TRs) per task and the detection epoch's delay after the cue epoch (this generator's choice).
ONSET_STEP = {"vision": 4, "imagery": 5, "attention": 10}
FIRST_VISION_ONSET = 12
DETECTION_DELAY = 3


def release_names(stimuli: list[dict[str, Any]], shared: np.ndarray) -> list[dict[str, Any]]:
    """The 18 stimuli (table order A, B, C) renamed as in the release: cue letters of
    :data:`~fmri2img.data.nsd_constants.IMAGERY_CUES`, set A/B target file names, ids as the index makes them."""
    out = []
    position = {int(i): k + 1 for k, i in enumerate(shared)}  # 1-based rank among the shared images
    for k, stim in enumerate(stimuli):
        stim_set, i = stim["stim_set"], k % nsd_constants.IMAGERY_STIMULI_PER_SET
        entry = {**stim, "cue": nsd_constants.IMAGERY_CUES[stim_set][i]}
        if stim_set == "A":
            entry["image"] = TARGETS_A[i]
        elif stim_set == "B":
            entry["image"] = f"shared{position[stim['nsd_id']]:04d}_nsd{stim['nsd_id'] + 1:05d}.png"
        else:
            entry["image"] = ""
        if stim_set != "C":
            entry["stim_name"] = Path(entry["image"]).stem
            entry["image"] = nsd_constants.IMAGERY_TARGET_IMAGE.format(stim_set=stim_set, name=entry["image"])
            if stim_set == "A":
                entry["stimulus_id"] = f"img-A-{entry['stim_name']}"
        out.append(entry)
    return out


def _columns(task: str, stim_set: str) -> np.ndarray:
    if task == "vision":
        return np.arange(6)
    if task == "attention":
        return np.arange(6, 12)
    start = 18 + 6 * "ABC".index(stim_set)
    return np.arange(start, start + 6)


def make_design(seed_rng: np.random.Generator) -> tuple[list[np.ndarray], pd.DataFrame]:
    """The 12 design cells and one row per beta volume (720), in beta order.

    Returns
    -------
    cells : list of 12 float arrays of shape (n_TRs, 36)
    events : DataFrame of shape (720, 8)
        ``run`` (1-based), ``run_name``, ``task``, ``stim_set``, ``trial`` (1-based), ``cue``, ``epoch``
        (``cue`` / ``detection`` in attention runs, else empty) and ``stim_index`` (0..17, table order).
    """
    cells, rows = [], []
    for number, name in enumerate(nsd_constants.IMAGERY_RUN_NAMES, start=1):
        task, stim_set = nsd_constants.IMAGERY_RUN_TASKS[name[:3]], name[3]
        cues = nsd_constants.IMAGERY_CUES[stim_set]
        order = seed_rng.permutation(np.repeat(np.arange(len(cues)), nsd_constants.IMAGERY_REPEATS_PER_RUN))
        onsets = ONSET_STEP[task] * np.arange(len(order)) + (FIRST_VISION_ONSET if task == "vision" else 0)
        cell = np.zeros((RUN_TRS[task], N_DESIGN_COLUMNS))
        columns = _columns(task, stim_set)
        base = "ABC".index(stim_set) * nsd_constants.IMAGERY_STIMULI_PER_SET
        for k, (i, t) in enumerate(zip(order, onsets)):
            cell[t, columns[i]] = 1.0
            epochs = nsd_constants.IMAGERY_ATTENTION_EPOCHS if task == "attention" else ("",)
            if task == "attention":
                cell[t + DETECTION_DELAY, columns[i] + 6] = 1.0
            rows += [(number, name, task, stim_set, k + 1, cues[i], epoch, base + i) for epoch in epochs]
        cells.append(cell)
    events = pd.DataFrame(rows, columns=["run", "run_name", "task", "stim_set", "trial", "cue", "epoch", "stim_index"])
    return cells, events


def behaviour_table(events: pd.DataFrame, run_name: str, subject: str, rng: np.random.Generator) -> pd.DataFrame:
    """``nsdimagery_<subject>_<run_name>.tsv``: 48 rows of :data:`BEHAVIOUR_COLUMNS` (values seeded)."""
    trials = events[(events["run_name"] == run_name) & (events["epoch"] != "detection")]
    n, task = len(trials), trials["task"].iloc[0]
    onset = ONSET_STEP[task] * np.arange(n) + (FIRST_VISION_ONSET if task == "vision" else 0.0)
    correct = rng.integers(0, 2, n)
    return pd.DataFrame({
        "SUBJECT": nsd_constants.subject_number(subject), "SESSION": 1, "RUN": trials["run"].to_numpy(),
        "TRIAL": trials["trial"].to_numpy(), "CONDITION": trials["cue"].to_numpy(), "CUE": trials["cue"].to_numpy(),
        "FRAMEFILE": [f"frame_{run_name}_{k:02d}.png" for k in range(n)], "IMAGEFILE": "NaN", "GROUNDTRUTH": 1,
        "ISCORRECT": correct, "CHANGEMIND": rng.integers(0, 2, n), "TOTAL1": rng.integers(0, 4, n),
        "TOTAL2": rng.integers(0, 4, n), "BUTTON": np.where(correct == 1, 1, 2), "TRIALONSET": onset.astype(float),
        "TRIALEND": onset + 3.0, "IMAGEONSET": "NaN", "IMAGESERIESENDS": "NaN", "FINALDECISIONTIME": onset + 2.5,
        "RT": np.round(rng.uniform(300.0, 2500.0, n), 1),
    }, columns=list(BEHAVIOUR_COLUMNS))


def write_shared(root: Path, cells: list[np.ndarray], stimuli: list[dict[str, Any]]) -> None:
    """The design matrix and the three pair lists (MATLAB v5 cells)."""
    cell = np.empty((1, len(cells)), dtype=object)
    for k, matrix in enumerate(cells):
        cell[0, k] = matrix
    write_mat(root / nsd_constants.IMAGERY_DESIGN, {"stimulus": cell})
    for stim_set in nsd_constants.IMAGERY_SETS:
        members = [s for s in stimuli if s["stim_set"] == stim_set]
        pairs = np.empty((len(members), 3), dtype=object)
        for i, stim in enumerate(members):
            target = Path(stim["image"]).name if stim_set != "C" else stim["text"]
            pairs[i] = [float(i + 1), target, stim["cue"]]
        write_mat(root / nsd_constants.IMAGERY_PAIR_LIST.format(stim_set=stim_set), {"pair_list": pairs})


def write_behaviour(root: Path, events: pd.DataFrame, subject: str, rng: np.random.Generator) -> None:
    """The 12 behaviour TSVs of ``subject``."""
    for run_name in nsd_constants.IMAGERY_RUN_NAMES:
        write_table(root / nsd_constants.IMAGERY_BDATA.format(subject=subject, run=run_name),
                    behaviour_table(events, run_name, subject, rng), sep="\t")


def betas_path(subject: str, ext: str) -> str:
    """Release-relative path of the subject's GLMdenoise_RR imagery betas (``ext``: ``nii.gz`` or ``hdf5``)."""
    return nsd_constants.IMAGERY_BETAS_IN.format(subject=subject, variant=nsd_constants.IMAGERY_GLM_VARIANTS[0],
                                                 ext=ext)
