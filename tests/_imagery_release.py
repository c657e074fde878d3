"""A tiny NSD-Imagery release in the published layout, for tests (and the fuzz tests of a later issue).

Written directly with scipy.io / h5py / nibabel / pandas / PIL, never through ``fmri2img synth``, so the
reader is tested against the layout described in docs/nsd_imagery_release.md, not against our own
writer. Everything a test may break lives in :class:`ImageryFixture` (behaviour tables, design cells,
pair lists) and is written again by the ``write_*`` functions after a change.

Facts this builder takes from the sources: run names and order, 48 trials per run (6 cues x 8), the
behaviour columns, ``stimulus`` as a 1 x 12 cell (240 TRs for vision/imagery runs, 480 for attention,
design at 1 s), 3-s events with an attention trial's detection epoch right after its cue epoch, pair
lists as (id, target, cue) cells, the target file names. Its own choices (not in any source): the design
column layout (vision 0-5, attention cue 6-11 / detection 12-17, imagery A 18-23, B 24-29, C 30-35, as
one reproduction reports), the set C words per letter, blank-trial positions and all behaviour values.
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

from fmri2img.data import nsd_constants as C

GRID = (3, 2, 2)
TARGETS = {
    "A": ("bar_000.0deg_450L_43W.png", "bar_045.0deg_450L_43W.png", "bar_090.0deg_450L_43W.png",
          "bar_135.0deg_450L_43W.png", "crs_000.0deg_450L_43W.png", "crs_045.0deg_450L_43W.png"),
    "B": ("shared0385_nsd28752.png", "shared0413_nsd30857.png", "shared0741_nsd53882.png",
          "shared0842_nsd61178.png", "shared0907_nsd65873.png", "shared0000_nsd00000.png"),
    "C": ("stripes", "zebra", "mammal", "yellow", "banana", "fruit"),  # letter pairing: fixture's own choice
}
BEHAVIOUR_COLUMNS = ("SUBJECT", "SESSION", "RUN", "TRIAL", "CONDITION", "CUE", "FRAMEFILE", "IMAGEFILE",
                     "GROUNDTRUTH", "ISCORRECT", "CHANGEMIND", "TOTAL1", "TOTAL2", "BUTTON", "TRIALONSET",
                     "TRIALEND", "IMAGEONSET", "IMAGESERIESENDS", "FINALDECISIONTIME", "RT")
N_COLUMNS = 36
RUN_TRS = {"vision": 240, "imagery": 240, "attention": 480}
BRICK_SIZE = 12        # side of the fixture's imgBrick images
BRICK_IMAGES = 73_000  # imgBrick rows (unwritten chunks read as zeros; the file stays small)


@dataclass
class ImageryFixture:
    """What was written, and the trusted truth per beta volume."""

    root: Path
    subject: str
    variant: str
    behaviour: dict[str, pd.DataFrame] = field(default_factory=dict)
    design: list[np.ndarray] = field(default_factory=list)
    pair_lists: dict[str, np.ndarray] = field(default_factory=dict)
    truth: pd.DataFrame | None = None          # beta_volume, run_name, task, epoch, stim_set, cue, trial, onset_tr
    brick: dict[int, np.ndarray] = field(default_factory=dict)  # imgBrick id -> image
    betas: np.ndarray | None = None            # int16 (X, Y, Z, 720)

    def path(self, what: str, **kw) -> Path:
        """Absolute path of a release file: 'design', 'bdata' (run=), 'pair_list' (stim_set=),
        'betas' (ext=), 'target' (stim_set=, name=), 'stimuli'."""
        rel = {
            "design": lambda: C.IMAGERY_DESIGN,
            "bdata": lambda: C.IMAGERY_BDATA.format(subject=self.subject, run=kw["run"]),
            "pair_list": lambda: C.IMAGERY_PAIR_LIST.format(stim_set=kw["stim_set"]),
            "betas": lambda: C.IMAGERY_BETAS_IN.format(subject=self.subject, variant=self.variant, ext=kw["ext"]),
            "target": lambda: C.IMAGERY_TARGET_IMAGE.format(stim_set=kw["stim_set"], name=kw["name"]),
            "stimuli": lambda: C.STIMULI_HDF5,
        }[what]()
        return self.root / rel


def _run_layout(name: str) -> tuple[str, str, list[int]]:
    task, stim_set = C.IMAGERY_RUN_TASKS[name[:3]], name[3]
    if task == "vision":
        return task, stim_set, list(range(6))
    if task == "attention":
        return task, stim_set, list(range(6, 12))
    return task, stim_set, list(range(18 + 6 * "ABC".index(stim_set), 24 + 6 * "ABC".index(stim_set)))


def _onsets(task: str, rng: np.random.Generator) -> np.ndarray:
    if task == "vision":  # 60 slots of 4 s: 3 blank first, 5 blank inside, 4 blank last
        inner = rng.choice(np.arange(3, 56), size=5, replace=False)
        slots = [s for s in range(60) if s >= 3 and s < 56 and s not in inner]
        return 4 * np.array(slots)
    if task == "imagery":
        return 5 * np.arange(C.IMAGERY_TRIALS_PER_RUN)
    return 10 * np.arange(C.IMAGERY_TRIALS_PER_RUN)  # cue epoch; detection epoch 3 s later


def _behaviour(name: str, subject: str, number: int, letters: np.ndarray, onsets: np.ndarray,
               rng: np.random.Generator) -> pd.DataFrame:
    task = C.IMAGERY_RUN_TASKS[name[:3]]
    cues = letters.copy()
    if task == "vision":  # half the vision trials show another set member's cue
        swap = rng.permutation(len(letters))[: len(letters) // 2]
        pool = sorted(set(letters))
        cues[swap] = [pool[(pool.index(c) + 1) % len(pool)] for c in letters[swap]]
    n = len(letters)
    correct = rng.integers(0, 2, n)
    return pd.DataFrame({
        "SUBJECT": int(subject[4:]), "SESSION": 1, "RUN": number, "TRIAL": np.arange(1, n + 1),
        "CONDITION": letters, "CUE": cues, "FRAMEFILE": [f"frame_{name}_{k:02d}.png" for k in range(n)],
        "IMAGEFILE": "NaN", "GROUNDTRUTH": (cues == letters).astype(int), "ISCORRECT": correct,
        "CHANGEMIND": rng.integers(0, 2, n), "TOTAL1": rng.integers(0, 4, n), "TOTAL2": rng.integers(0, 4, n),
        "BUTTON": np.where(correct == 1, 1, 2), "TRIALONSET": onsets.astype(float), "TRIALEND": onsets + 3.0,
        "IMAGEONSET": "NaN", "IMAGESERIESENDS": "NaN", "FINALDECISIONTIME": onsets + 2.5,
        "RT": np.round(rng.uniform(300, 2500, n), 1),
    }, columns=list(BEHAVIOUR_COLUMNS))


def _smooth_image(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((BRICK_SIZE, BRICK_SIZE), Image.Resampling.BICUBIC))


def build_release(root: str | Path, subject: str = "subj01", *, grid: tuple[int, int, int] = GRID,
                  beta_formats: tuple[str, ...] = ("nifti",), variant: str = C.IMAGERY_GLM_VARIANTS[0],
                  order: str = "chronological", signal: float = 0.0, seed: int = 0) -> ImageryFixture:
    """Write a complete release under ``root`` and return what was written.

    ``beta_formats``: any of 'nifti' (``.nii.gz``) and 'hdf5'. ``order``: within-run beta order
    ('chronological' as GLMsingle writes, or 'by_condition'). ``signal``: amplitude of a per-cue voxel
    pattern added to the betas (0: pure noise).
    """
    rng = np.random.default_rng(seed)
    fx = ImageryFixture(root=Path(root), subject=subject, variant=variant)
    truth = []
    for number, name in enumerate(C.IMAGERY_RUN_NAMES, start=1):
        task, stim_set, columns = _run_layout(name)
        letters = rng.permutation(np.repeat(np.array(C.IMAGERY_CUES[stim_set]), C.IMAGERY_REPEATS_PER_RUN))
        onsets = _onsets(task, rng)
        fx.behaviour[name] = _behaviour(name, subject, number, letters, onsets, rng)
        cell = np.zeros((RUN_TRS[task], N_COLUMNS))
        events = []
        for k, (letter, t) in enumerate(zip(letters, onsets)):
            col = columns[C.IMAGERY_CUES[stim_set].index(letter)]
            if task == "attention":
                events += [(t, col, k, "cue"), (t + 3, col + 6, k, "detection")]
            else:
                events.append((t, col, k, None))
        for t, col, _, _ in events:
            cell[t, col] = 1.0
        fx.design.append(cell)
        if order == "by_condition":
            events.sort(key=lambda e: (e[1], e[0]))
        truth += [dict(run_name=name, run=number, task=task, epoch=ep, stim_set=stim_set, cue=letters[k],
                       trial=k + 1, onset_tr=int(t), design_column=col) for t, col, k, ep in events]
    fx.truth = pd.DataFrame(truth).assign(beta_volume=lambda d: np.arange(len(d)))
    for stim_set in "ABC":
        pl = np.empty((C.IMAGERY_STIMULI_PER_SET, 3), dtype=object)
        for i, (target, cue) in enumerate(zip(TARGETS[stim_set], C.IMAGERY_CUES[stim_set])):
            pl[i] = [float(i + 1), target, cue]
        fx.pair_lists[stim_set] = pl
    _write_images(fx, rng)
    _write_betas(fx, grid, beta_formats, signal, rng)
    write_all(fx)
    return fx


def _write_images(fx: ImageryFixture, rng: np.random.Generator) -> None:
    for name in TARGETS["A"]:
        write_png(fx.path("target", stim_set="A", name=name), _smooth_image(rng))
    for name in TARGETS["B"]:
        number = int(name.split("_nsd")[1][:5])
        for i in range(max(0, number - 3), number + 4):
            fx.brick.setdefault(i, _smooth_image(rng))
        # the release names are 1-based: file nsdN shows imgBrick[N - 1]; nsd00000 is no NSD image
        image = fx.brick[number - 1] if number > 0 else _smooth_image(rng)
        write_png(fx.path("target", stim_set="B", name=name), image)
    write_brick(fx)


def write_png(path: Path, image: np.ndarray, size: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC).save(path)


def write_brick(fx: ImageryFixture) -> None:
    path = fx.path("stimuli")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset("imgBrick", shape=(BRICK_IMAGES, BRICK_SIZE, BRICK_SIZE, 3), dtype=np.uint8,
                               chunks=(1, BRICK_SIZE, BRICK_SIZE, 3), fillvalue=0)
        for i, image in fx.brick.items():
            ds[i] = image


def _write_betas(fx, grid, beta_formats, signal, rng) -> None:
    n_vox = int(np.prod(grid))
    patterns = {c: rng.standard_normal(n_vox) for cues in C.IMAGERY_CUES.values() for c in cues}
    X = rng.standard_normal((C.IMAGERY_BETAS, n_vox))
    if signal:
        X += signal * np.stack([patterns[c] for c in fx.truth["cue"]])
    fx.betas = np.round(X * 300).astype(np.int16).T.reshape(*grid, C.IMAGERY_BETAS)
    for fmt in beta_formats:
        path = fx.path("betas", ext={"nifti": "nii.gz", "hdf5": "hdf5"}[fmt])
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "nifti":
            img = nib.Nifti1Image(fx.betas, np.diag([1.8, 1.8, 1.8, 1.0]))
            img.header.set_data_dtype(np.int16)
            nib.save(img, path)
        else:
            with h5py.File(path, "w") as fh:
                fh.create_dataset("betas", data=np.transpose(fx.betas, (3, 2, 1, 0)))


def write_behaviour(fx: ImageryFixture, run: str) -> None:
    path = fx.path("bdata", run=run)
    path.parent.mkdir(parents=True, exist_ok=True)
    fx.behaviour[run].to_csv(path, sep="\t", index=False)


def write_design(fx: ImageryFixture, v73: bool = False) -> None:
    path = fx.path("design")
    path.parent.mkdir(parents=True, exist_ok=True)
    if v73:
        write_cell_v73(path, "stimulus", fx.design)
        return
    cell = np.empty((1, len(fx.design)), dtype=object)
    for k, matrix in enumerate(fx.design):
        cell[0, k] = matrix
    scipy.io.savemat(path, {"stimulus": cell})


def write_cell_v73(path: Path, name: str, matrices: list[np.ndarray]) -> None:
    """A MATLAB v7.3 file (HDF5 with the 128-byte MAT header in a 512-byte user block) holding the
    1 x n cell ``name``: object references to double matrices, stored transposed as MATLAB does."""
    with h5py.File(path, "w", userblock_size=512) as fh:
        refs = fh.create_group("#refs#")
        ref_list = []
        for k, matrix in enumerate(matrices):
            ds = refs.create_dataset(f"m{k}", data=np.asarray(matrix, dtype=np.float64).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
            ref_list.append(ds.ref)
        cell = fh.create_dataset(name, data=np.array(ref_list, dtype=h5py.ref_dtype).reshape(len(matrices), 1))
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)


def write_pair_list(fx: ImageryFixture, stim_set: str) -> None:
    path = fx.path("pair_list", stim_set=stim_set)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"pair_list": fx.pair_lists[stim_set]})


def write_all(fx: ImageryFixture) -> None:
    """Write the behaviour of every run, the design and the pair lists from ``fx``."""
    for run in fx.behaviour:
        write_behaviour(fx, run)
    write_design(fx)
    for stim_set in fx.pair_lists:
        write_pair_list(fx, stim_set)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to the first ``keep`` fraction of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
