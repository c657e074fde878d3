"""File formats of the synthetic world, each written deterministically (same array, same bytes):
NIfTI-1, HDF5, MATLAB v5, PNG and text tables, the int16 beta volume they share, and NSD's own
tables of a design (``nsd_stim_info_merged.csv``, ``responses.tsv``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy.io import savemat

from fmri2img import __version__
from fmri2img.data import nsd_constants

#: Voxel size of the func1pt8mm space in mm [NSD manual, "Betas"].
VOXEL_MM = 1.8

#: Trials per run in an NSD session: 12 runs of 62 or 63 trials summing to 750 [NSD manual,
#: "nsd_expdesign.mat"]. Which runs hold 63 is this generator's choice (the odd ones).
RUN_TRIALS = (63, 62) * (nsd_constants.RUNS_PER_SESSION // 2)

#: First fake COCO id written to nsd_stim_info_merged.csv (real COCO ids are < 600,000).
FAKE_COCO_ID_BASE = 1_000_000


#: HDF5 chunk shape of the betas (trials, z, y, x-row): every chunk holds all trials of one row
#: of voxels, so voxel-wise reads touch few chunks (the real file is chunked for voxel reads).
def hdf5_chunks(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (shape[0], 1, 1, shape[3])


def affine() -> np.ndarray:
    return np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])


def write_nifti(path: Path, data: np.ndarray) -> None:
    """NIfTI-1 (.nii.gz, gzip mtime 0 via nibabel, so deterministic), no intensity scaling."""
    img = nib.Nifti1Image(data, affine())
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))


def write_hdf5(path: Path, name: str, data: np.ndarray, chunks: tuple[int, ...] | None) -> None:
    """One dataset, no timestamps (``track_times=False``), so files are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", track_order=False) as fh:
        fh.create_dataset(name, data=data, chunks=chunks, track_times=False)


def write_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """MATLAB v5 via scipy, with the header's creation date replaced by a fixed text."""
    buf = io.BytesIO()
    savemat(buf, arrays, format="5", do_compression=False, oned_as="row")
    data = bytearray(buf.getvalue())
    header = f"MATLAB 5.0 MAT-file, written by fmri2img {__version__} (synthetic NSD world)".encode()
    data[:116] = header.ljust(116, b" ")[:116]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def write_table(path: Path, frame, sep: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame.to_csv(sep=sep, index=False, lineterminator="\n"), encoding="utf-8")


def to_int16(psc: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int16)
    return np.clip(np.rint(psc * nsd_constants.BETA_SCALE), info.min, info.max).astype(np.int16)


class VolumeWriter:
    """Fills an int16 (X, Y, Z, T) Fortran-ordered volume voxel-block by voxel-block.

    Fortran order (X, Y, Z, T) is both what NIfTI stores and, transposed, the C-ordered
    (T, Z, Y, X) array h5py writes, so neither writer copies the volume.
    """

    def __init__(self, grid: tuple[int, int, int], n_trials: int, roi: np.ndarray, brain: np.ndarray):
        self.grid = grid
        self.vol = np.zeros((*grid, n_trials), dtype=np.int16, order="F")
        self.flat = self.vol.reshape((-1, n_trials), order="F")  # view: rows = voxels (F order)
        roi_ijk = np.nonzero(roi)  # C order, the row order of G
        self.roi_rows = np.ravel_multi_index(roi_ijk, grid, order="F")
        other = brain.astype(bool) & ~roi.astype(bool)
        self.other_rows = np.ravel_multi_index(np.nonzero(other), grid, order="F")


def _trial_reps(design, row: int, n_trials: int) -> dict[int, list[int]]:
    """0-based nsd id -> sorted 1-based trial numbers (within the first ``n_trials``)."""
    reps: dict[int, list[int]] = {}
    shown = design.subjectim[row, design.masterordering[:n_trials]]
    for t, nsd_id in enumerate(shown, start=1):
        reps.setdefault(int(nsd_id), []).append(t)
    return reps


def stim_info_table(design, n_design_sessions: int, n_written: dict[str, int]) -> pd.DataFrame:
    """``nsd_stim_info_merged.csv`` of a design: ids, shared1000 flags, which subject saw each image
    and the trials of its repeats (within the sessions written)."""
    n_pool = len(design.nsd_ids)
    is_shared = np.zeros(n_pool, dtype=bool)
    is_shared[design.shared] = True
    cols: dict[str, Any] = {
        "cocoId": FAKE_COCO_ID_BASE + design.nsd_ids,
        "cocoSplit": np.where(design.nsd_ids % 2 == 0, "train2017", "val2017"),
        "nsdId": design.nsd_ids,
        "shared1000": is_shared,
    }
    rep_cols: dict[str, np.ndarray] = {}
    for row, subject in enumerate(nsd_constants.ALL_SUBJECTS):
        seen = np.zeros(n_pool, dtype=np.int64)
        seen[design.subjectim[row]] = 1
        cols[f"subject{row + 1}"] = seen
        n_trials = n_written.get(subject, n_design_sessions) * nsd_constants.TRIALS_PER_SESSION
        reps = np.zeros((n_pool, nsd_constants.MAX_REPEATS), dtype=np.int64)
        for nsd_id, trials in _trial_reps(design, row, n_trials).items():
            reps[nsd_id, :len(trials)] = trials
        for k in range(nsd_constants.MAX_REPEATS):
            rep_cols[f"subject{row + 1}_rep{k}"] = reps[:, k]
    cols.update(rep_cols)
    frame = pd.DataFrame(cols)
    frame.insert(0, "", np.arange(n_pool))  # the real file starts with an unnamed index column
    return frame


def responses_table(design, row: int, n_sessions: int, rng: np.random.Generator, subject: str) -> pd.DataFrame:
    """Behaviour table of the trials done (``responses.tsv``); recognition simulated (80% correct,
    drawn from ``rng``)."""
    n = n_sessions * nsd_constants.TRIALS_PER_SESSION
    col = design.masterordering[:n]
    ids = design.subjectim[row, col]
    session = np.arange(n) // nsd_constants.TRIALS_PER_SESSION + 1
    within = np.arange(n) % nsd_constants.TRIALS_PER_SESSION
    run_starts = np.cumsum((0,) + RUN_TRIALS[:-1])
    run = np.searchsorted(run_starts, within, side="right")
    trial = within - run_starts[run - 1] + 1
    first_session: dict[int, int] = {}
    is_old = np.zeros(n, dtype=np.int64)
    is_old_current = np.zeros(n, dtype=np.int64)
    seen_in: dict[int, set[int]] = {}
    for t, (nsd_id, s) in enumerate(zip(ids.tolist(), session.tolist())):
        if nsd_id in first_session:
            is_old[t] = 1
            is_old_current[t] = int(s in seen_in[nsd_id])
        else:
            first_session[nsd_id] = s
        seen_in.setdefault(nsd_id, set()).add(s)
    correct = (rng.random(n) < 0.8).astype(np.int64)
    said_old = np.where(correct == 1, is_old, 1 - is_old)
    return pd.DataFrame({
        "SUBJECT": nsd_constants.subject_number(subject),
        "SESSION": session,
        "RUN": run,
        "TRIAL": trial,
        "TIME": np.round(738000.0 + session + within * 4.0 / 86400.0, 6),
        "ISOLD": is_old,
        "ISCORRECT": correct,
        "RT": np.round(np.exp(rng.normal(6.8, 0.3, size=n)), 1),
        "CHANGEMIND": 0,
        "ISOLDCURRENT": is_old_current,
        "ISCORRECTCURRENT": (said_old == is_old_current).astype(np.int64),
        "MISSINGDATA": 0,
        "73KID": ids + 1,
        "10KID": col + 1,
    })
