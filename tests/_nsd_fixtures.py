"""Tiny NSD / NSD-Imagery release trees in the layout of docs/contracts.md section 1, for tests.

Written directly with nibabel / h5py / scipy.io / pandas / PIL, independent of the package's
synthetic world, so the readers are tested against the published layout, not against our own writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from PIL import Image

from _imagery_release import build_release

from fmri2img.data import nsd_constants

GRID = (6, 7, 5)
N_SHARED = 20
N_PER_SUBJECT = 120
IMAGERY_TASKS = (("vision", 8), ("imagery", 16), ("attention", 16))  # hand tables: task, trials per stimulus (720)


@dataclass
class Release:
    """What was written, for trusted references in the tests."""

    root: Path
    mask: dict[str, np.ndarray] = field(default_factory=dict)  # subject -> int16 (X, Y, Z)
    betas: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # subject -> session -> int16 (X,Y,Z,750)
    imagery: dict[str, np.ndarray] = field(default_factory=dict)  # subject -> int16 (X, Y, Z, n)
    imagery_trials: dict[str, pd.DataFrame] = field(default_factory=dict)
    subjectim: np.ndarray | None = None
    masterordering: np.ndarray | None = None
    sharedix: np.ndarray | None = None


def _nifti(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0]))
    img.header.set_data_dtype(data.dtype)
    nib.save(img, path)


def stimuli_table() -> pd.DataFrame:
    rows = []
    for k in range(6):
        rows.append(("A", f"shape{k}", f"a{k}", f"images/shape{k}.png", "", ""))
    for k in range(6):
        rows.append(("B", f"scene{k}", f"b{k}", f"images/scene{k}.png", "", str(2 * k)))  # shared ids 0,2,..,10
    for k in range(6):
        rows.append(("C", f"word{k}", f"c{k}", "", f"word number {k}", ""))
    return pd.DataFrame(rows, columns=["stim_set", "stim_name", "cue", "image", "text", "nsd_id"])


def make_release(
    root: str | Path,
    subjects: tuple[str, ...] = ("subj01",),
    n_sessions: int = 2,
    beta_format: str = "nifti",
    imagery: bool = True,
    responses: bool = True,
    zero_voxel: bool = False,
    grid: tuple[int, int, int] = GRID,
    seed: int = 0,
) -> Release:
    """Write a tiny release under ``root``; ``beta_format`` in {'nifti', 'hdf5', 'both'}.

    ``zero_voxel``: make the first mask voxel all-zero in session 1 only (it must be dropped everywhere).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rel = Release(root=root)
    n_trials = n_sessions * nsd_constants.TRIALS_PER_SESSION

    # experiment design: shared images (0-based ids 0..N_SHARED-1) first in every subject's list
    n_unique = N_PER_SUBJECT - N_SHARED
    subjectim = np.zeros((8, N_PER_SUBJECT), dtype=np.int64)
    for s in range(8):
        subjectim[s, :N_SHARED] = np.arange(N_SHARED)
        subjectim[s, N_SHARED:] = N_SHARED + s * n_unique + np.arange(n_unique)
    subjectim += 1  # 1-based
    n_images = N_SHARED + 8 * n_unique
    masterordering = rng.integers(1, N_PER_SUBJECT + 1, size=n_trials)
    masterordering[:N_PER_SUBJECT] = rng.permutation(N_PER_SUBJECT) + 1  # every image at least once
    sharedix = np.arange(1, N_SHARED + 1)
    rel.subjectim, rel.masterordering, rel.sharedix = subjectim, masterordering, sharedix
    exp = root / nsd_constants.EXPDESIGN
    exp.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(exp, {"masterordering": masterordering[None, :].astype(float),
                           "subjectim": subjectim.astype(float), "sharedix": sharedix[None, :].astype(float)})
    info = pd.DataFrame({"nsdId": np.arange(n_images), "cocoId": 1000 + np.arange(n_images),
                         "shared1000": np.arange(n_images) < N_SHARED})
    for s in range(1, 9):
        info[f"subject{s}"] = np.isin(np.arange(n_images) + 1, subjectim[s - 1]).astype(int)
    info.to_csv(root / nsd_constants.STIM_INFO, index=False)
    stim = root / nsd_constants.STIMULI_HDF5
    stim.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(stim, "w") as fh:
        fh.create_dataset("imgBrick", data=rng.integers(0, 255, size=(n_images, 4, 4, 3), dtype=np.uint8))

    for subject in subjects:
        s = nsd_constants.subject_number(subject)
        mask = np.zeros(grid, dtype=np.int16)
        mask[1:-1, 1:-1, 1:-1] = 1
        mask[0, 0, 0] = -1
        mask[2, 3, 2] = 0
        rel.mask[subject] = mask
        _nifti(root / nsd_constants.NSDGENERAL.format(subject=subject), mask)
        _nifti(root / nsd_constants.BRAINMASK.format(subject=subject), (mask != 0).astype(np.uint8))
        rel.betas[subject] = {}
        for session in range(1, n_sessions + 1):
            data = rng.integers(-900, 900, size=(*grid, nsd_constants.TRIALS_PER_SESSION), dtype=np.int16)
            data += np.int16(300 * session)  # a session offset, so z-scoring per session matters
            if zero_voxel and session == 1:
                i, j, k = np.argwhere(mask == 1)[0]
                data[i, j, k, :] = 0
            rel.betas[subject][session] = data
            if beta_format in ("nifti", "both"):
                _nifti(root / nsd_constants.BETAS_NII.format(subject=subject, session=session), data)
            if beta_format in ("hdf5", "both"):
                path = root / nsd_constants.BETAS_HDF5.format(subject=subject, session=session)
                path.parent.mkdir(parents=True, exist_ok=True)
                with h5py.File(path, "w") as fh:
                    fh.create_dataset("betas", data=data.transpose(3, 2, 1, 0))  # (trials, Z, Y, X)
        if responses:
            t = np.arange(n_trials)
            within = t % nsd_constants.TRIALS_PER_SESSION
            run = within * nsd_constants.RUNS_PER_SESSION // nsd_constants.TRIALS_PER_SESSION + 1
            table = pd.DataFrame({"SUBJECT": s, "SESSION": t // nsd_constants.TRIALS_PER_SESSION + 1, "RUN": run})
            table["TRIAL"] = table.groupby(["SESSION", "RUN"]).cumcount() + 1
            table["73KID"] = subjectim[s - 1, masterordering - 1]
            table["10KID"] = masterordering
            table["ISOLD"] = 0
            table["ISCORRECT"] = 1
            table["RT"] = 800.0
            path = root / nsd_constants.RESPONSES.format(subject=subject)
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, sep="\t", index=False)
        if imagery:  # the release as published (tests/_imagery_release.py); rewrites nsd_stimuli.hdf5 (73k ids)
            fx = build_release(root, subject, grid=grid, seed=seed)
            rel.imagery[subject] = fx.betas
            rel.imagery_trials[subject] = fx.truth
    return rel


def write_hand_tables(root: str | Path, subject: str = "subj01", seed: int = 0) -> pd.DataFrame:
    """The hand-written override tables of docs/nsd_data.md, section 4 (``--imagery-trials``): a trial table
    ``nsdimagery_trials_<subject>.tsv`` (720 rows), ``stimuli.tsv`` and its PNGs; returns the trial table."""
    root, rng = Path(root), np.random.default_rng(seed)
    stimuli = stimuli_table()
    rows = [(task, set_name, name, cue) for name, cue, set_name in zip(stimuli["stim_name"], stimuli["cue"],
                                                                          stimuli["stim_set"])
            for task, n in IMAGERY_TASKS for _ in range(n)]
    trials = pd.DataFrame([rows[i] for i in rng.permutation(len(rows))],
                          columns=["task", "stim_set", "stim_name", "cue"])
    trials.insert(0, "beta_index", np.arange(1, len(trials) + 1))
    trials.insert(1, "run", (np.arange(len(trials)) * nsd_constants.IMAGERY_RUNS) // len(trials) + 1)
    trials.insert(2, "trial", trials.groupby("run").cumcount() + 1)
    path = root / nsd_constants.IMAGERY_TRIALS.format(subject=subject)
    path.parent.mkdir(parents=True, exist_ok=True)
    trials.to_csv(path, sep="\t", index=False)
    folder = root / nsd_constants.IMAGERY_STIMULI_DIR
    (folder / "images").mkdir(parents=True, exist_ok=True)
    stimuli.to_csv(root / nsd_constants.IMAGERY_STIMULI_TABLE, sep="\t", index=False)
    for image in stimuli["image"]:
        if image:
            Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(folder / image)
    return trials


def masked(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Trusted reference: (X, Y, Z, T) int16 -> (T, n_voxels) percent signal change, C-order voxels."""
    ijk = np.argwhere(mask == 1)
    return (data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :].T / nsd_constants.BETA_SCALE).astype(np.float32)
