"""Content checks of an NSD-Imagery release: a complete beta file, set B ids by image, beta order by response.

Used by :mod:`fmri2img.data.nsd_imagery_release`. Each check settles by content what the sources leave
open (docs/nsd_imagery_release.md) instead of guessing:

* :func:`check_beta_file`: the header's shape *and* that the data behind it is all there (a truncated
  ``.nii.gz`` still has a valid header).
* :func:`verify_set_b_ids`: whether the number in ``sharedNNNN_nsdNNNNN.png`` is a 0- or 1-based 73k id,
  by correlating each target PNG with ``imgBrick`` of ``nsd_stimuli.hdf5`` at neighbouring ids.
* :func:`within_run_order_check`: whether the betas of a run are in onset order ("chronological", what
  GLMsingle writes) or grouped by design column, from the split-half reliability of the vision runs.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from fmri2img.core.config import check_choice
from fmri2img.core.errors import CorruptFileError, Fmri2imgError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd

#: Side of the square both images are resized to before correlating them (pixels).
COMPARE_SIZE = 64
#: A target PNG matches an imgBrick image when their correlation is at least this (same image,
#: resampled: ~0.95-1.0; unrelated natural images: |r| < 0.5) and beats the runner-up by MATCH_MARGIN.
MATCH_MIN_R = 0.8
MATCH_MARGIN = 0.1
#: ... or is a near copy: its distance ``1 - r`` at least this many times smaller than the runner-up's
#: (similar-looking neighbours, as in the synthetic world, where two ids reached r = 1.00 and 0.92).
MATCH_DISTANCE_RATIO = 10.0
#: Ids tried on each side of the number in the file name.
NEIGHBOURS = 2
#: Offsets (id in imgBrick minus number in the name) of the two possible conventions.
ID_CONVENTIONS = {0: "0-based", -1: "1-based"}
_SETB_NAME = re.compile(r"^shared(\d+)_nsd(\d+)\.png$")

#: Within-run beta orders: onset order, or grouped by design column (onset order within a column).
WITHIN_RUN_ORDERS = ("chronological", "by_condition")
#: Label permutations of the order check's null distribution, and its significance level.
ORDER_PERMUTATIONS = 200
ORDER_ALPHA = 0.01
_GZIP_CHUNK = 1 << 22


# --- the beta file -------------------------------------------------------------------------------


def _nifti_data_bytes(path: Path) -> int:

    header = nib.load(path).header
    return int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize


def _check_gzip_complete(path: Path, expected: int, progress: bool) -> None:
    """Raise :class:`CorruptFileError` if ``path`` inflates to fewer than ``expected`` bytes.

    Fast path: the gzip trailer (ISIZE, size mod 2**32) equals the expected size. Otherwise the file is
    inflated in full (multi-member gzip files have no single trailer), which also finds truncation.
    """
    size = path.stat().st_size
    if size >= 4:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") == expected % 2**32:
                return
    total = 0
    with open(path, "rb") as raw, tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                                       desc=f"checking {path.name}", leave=False) as bar:
        try:
            with gzip.GzipFile(fileobj=raw) as fh:
                while chunk := fh.read(_GZIP_CHUNK):
                    total += len(chunk)
                    bar.update(raw.tell() - bar.n)
        except (EOFError, OSError, zlib.error) as exc:
            raise CorruptFileError(
                f"{path} is truncated or corrupt after {total} bytes ({exc}); expected {expected} bytes of NIfTI."
            ) from None
    if total < expected:
        raise CorruptFileError(f"{path} holds {total} bytes of NIfTI; expected {expected} (header + data): truncated.")


def check_beta_file(path: str | os.PathLike, n_volumes: int, progress: bool = True) -> nsd.BetaInfo:
    """Check a ``betas_nsdimagery`` file: header, volume count and completeness of the data.

    Parameters
    ----------
    path : path-like
        ``.nii.gz``, ``.nii`` or ``.hdf5`` (dataset ``betas`` of shape (trials, Z, Y, X)).
    n_volumes : int
        Expected number of volumes (720 for a subject's release).

    Returns
    -------
    BetaInfo
        Grid (X, Y, Z), volume count, dtype and kind, read from the header only.
    """
    path = Path(path)
    info = nsd.inspect_betas(path)  # MissingInputError / CorruptFileError / InputError with the file name
    if info.n_volumes != n_volumes:
        raise InputError(f"{path} has {info.n_volumes} volumes; expected {n_volumes} (one per NSD-Imagery beta).")
    if info.kind == "nifti":
        expected = _nifti_data_bytes(path)
        if path.name.endswith(".gz"):
            _check_gzip_complete(path, expected, progress)
        elif path.stat().st_size < expected:
            raise CorruptFileError(f"{path} has {path.stat().st_size} bytes; expected {expected}: truncated.")
    return info  # a truncated HDF5 file already fails to open in inspect_betas


# --- set B ids by content -------------------------------------------------------------------------


@dataclass(frozen=True)
class SetBIds:
    """Result of :func:`verify_set_b_ids`.

    Attributes
    ----------
    nsd_ids : dict
        Target file name -> 0-based 73k id, or ``None`` for a target that is no NSD image.
    convention : str or None
        ``'0-based'`` or ``'1-based'``: how the numbers in the file names count; ``None`` if no file matched.
    correlations : dict
        Target file name -> {candidate id: correlation}.
    """

    nsd_ids: dict[str, int | None]
    convention: str | None
    correlations: dict[str, dict[int, float]]


def _as_compare(image: np.ndarray) -> np.ndarray:
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB")
    flat = np.asarray(pil.resize((COMPARE_SIZE, COMPARE_SIZE), Image.Resampling.BILINEAR), np.float64).ravel()
    flat = flat - flat.mean()
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 0 else flat


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"Cannot read {path} as an image: {exc}.") from None


def _match(name: str, png: Path, brick: h5py.Dataset) -> tuple[dict[int, float], int | None]:
    number = int(_SETB_NAME.match(name).group(2))
    target = _as_compare(_read_png(png))
    candidates = range(max(0, number - NEIGHBOURS), min(brick.shape[0], number + NEIGHBOURS + 1))
    corr = {i: float(target @ _as_compare(brick[i])) for i in candidates}
    ranked = sorted(corr, key=corr.get, reverse=True)
    if not ranked or corr[ranked[0]] < MATCH_MIN_R:
        return corr, None
    if len(ranked) > 1 and corr[ranked[0]] - corr[ranked[1]] < MATCH_MARGIN:
        if 1.0 - corr[ranked[1]] <= MATCH_DISTANCE_RATIO * max(1.0 - corr[ranked[0]], 1e-9):
            return corr, None  # two (near) copies: ambiguous
    return corr, ranked[0]


def verify_set_b_ids(targets: dict[str, Path], stimuli_hdf5: str | os.PathLike, progress: bool = True) -> SetBIds:
    """Settle the 73k id of each set B target by image content.

    Each ``sharedSSSS_nsdNNNNN.png`` is correlated (after resizing both to :data:`COMPARE_SIZE`) with
    ``imgBrick[i]`` for ``i`` in ``NNNNN - 2 .. NNNNN + 2``. The best match must reach :data:`MATCH_MIN_R`
    by :data:`MATCH_MARGIN` (or be a near copy, :data:`MATCH_DISTANCE_RATIO`), lie at offset 0 (0-based names)
    or -1 (1-based names), and all files must
    agree on the offset. A name with number 0 that matches nothing is a non-NSD image (id ``None``).

    Parameters
    ----------
    targets : dict
        Target file name (``sharedSSSS_nsdNNNNN.png``) -> path of the PNG.
    stimuli_hdf5 : path-like
        ``nsd_stimuli.hdf5`` with dataset ``imgBrick`` of shape (73000, 425, 425, 3) uint8.
    """
    stimuli_hdf5 = Path(stimuli_hdf5)
    if not stimuli_hdf5.is_file():
        raise MissingInputError(
            f"File not found: {stimuli_hdf5}; expected nsd_stimuli.hdf5 to check the set B image ids by content."
        )
    for name in targets:
        if not _SETB_NAME.match(name):
            raise InputError(f"Set B target {name!r}; expected a name like 'shared0385_nsd28752.png'.")
    correlations, best = {}, {}
    try:
        with h5py.File(stimuli_hdf5, "r") as fh:
            if "imgBrick" not in fh or fh["imgBrick"].ndim != 4:
                raise CorruptFileError(f"{stimuli_hdf5} has no 4D dataset 'imgBrick'; expected (73000, 425, 425, 3).")
            for name in tqdm(sorted(targets), desc="set B ids", disable=not progress, leave=False):
                correlations[name], best[name] = _match(name, targets[name], fh["imgBrick"])
    except Fmri2imgError:
        raise
    except nsd.HDF5_ERRORS as exc:
        raise CorruptFileError(f"Cannot open {stimuli_hdf5} as HDF5 (truncated or corrupt?): {exc}.") from None
    return _settle_convention(targets, correlations, best, stimuli_hdf5.name)


def _settle_convention(targets, correlations, best, brick_name) -> SetBIds:
    offsets = {}
    for name in sorted(targets):
        number = int(_SETB_NAME.match(name).group(2))
        corr = correlations[name]
        if best[name] is None:
            if number == 0:
                continue  # e.g. shared0000_nsd00000.png: a set B target that is no NSD image
            top = max(corr, key=corr.get) if corr else None
            raise MismatchError(
                f"{targets[name]} matches no {brick_name} imgBrick image near id {number} (best r="
                f"{corr.get(top, float('nan')):.2f} at id {top}); expected r >= {MATCH_MIN_R} at id {number} "
                f"(0-based name) or {number - 1} (1-based name)."
            )
        offsets[name] = best[name] - number
        if offsets[name] not in ID_CONVENTIONS:
            raise MismatchError(
                f"{targets[name]} matches {brick_name} imgBrick[{best[name]}] (r={corr[best[name]]:.2f}), a "
                f"neighbouring id; expected id {number} (0-based name) or {number - 1} (1-based name)."
            )
    if len(set(offsets.values())) > 1:
        a, b = sorted(offsets, key=offsets.get)[0], sorted(offsets, key=offsets.get)[-1]
        raise MismatchError(
            f"{targets[a]} is {ID_CONVENTIONS[offsets[a]]} but {targets[b]} is {ID_CONVENTIONS[offsets[b]]} "
            f"in {brick_name}; expected one convention for all set B file names."
        )
    offset = next(iter(offsets.values()), None)
    ids = {name: (best[name] if name in offsets else None) for name in targets}
    return SetBIds(nsd_ids=ids, convention=ID_CONVENTIONS.get(offset), correlations=correlations)


# --- within-run beta order by response ------------------------------------------------------------


@dataclass(frozen=True)
class OrderCheck:
    """Result of :func:`within_run_order_check`.

    Attributes
    ----------
    scores : dict
        Order -> split-half condition reliability of the vision runs (mean matched minus mean unmatched
        pattern correlation between odd and even repeats).
    p_values : dict
        Order -> permutation p-value of its score (labels shuffled within runs).
    favoured : str
        The order with the higher score.
    conclusive : bool
        ``True`` when the favoured order is significant at :data:`ORDER_ALPHA` and the other is not.
    """

    scores: dict[str, float]
    p_values: dict[str, float]
    favoured: str
    conclusive: bool


def volume_labels(table: pd.DataFrame, order: str) -> np.ndarray:
    """Cue letter of every beta volume if the betas of each run were in ``order``.

    Parameters
    ----------
    table : DataFrame
        The mapping of :func:`fmri2img.data.nsd_imagery_release.read_release` (columns ``run``,
        ``onset_tr``, ``design_column``, ``cue``, ``beta_volume``), in any within-run order.
    order : {'chronological', 'by_condition'}
    """
    check_choice("within-run order", order, WITHIN_RUN_ORDERS, error=InputError)
    keys = ["onset_tr", "design_column"] if order == "chronological" else ["design_column", "onset_tr"]
    labels = np.empty(len(table), dtype=object)
    for _, block in table.groupby("run", sort=True):
        start = int(block["beta_volume"].min())
        ordered = block.sort_values(keys, kind="stable")["cue"].to_numpy()
        labels[start:start + len(block)] = ordered
    return labels


def _split_half_score(X: np.ndarray, labels: np.ndarray) -> float:
    letters = sorted(set(labels))
    halves = []
    for parity in (0, 1):
        means = []
        for letter in letters:
            rows = np.flatnonzero(labels == letter)[parity::2]
            means.append(X[rows].mean(axis=0))
        P = np.asarray(means)
        P = P - P.mean(axis=0, keepdims=True)
        halves.append(P / (np.linalg.norm(P, axis=1, keepdims=True) + 1e-12))
    R = halves[0] @ halves[1].T
    n = len(letters)
    return float(np.trace(R) / n - (R.sum() - np.trace(R)) / (n * n - n))


def within_run_order_check(X: np.ndarray, table: pd.DataFrame, seed: int = 0) -> OrderCheck:
    """Which within-run order do the vision betas support?

    Parameters
    ----------
    X : array of shape (n_volumes, n_voxels)
        Betas of all volumes of the release, rows in file order (e.g. the nsdgeneral voxels).
    table : DataFrame
        The mapping returned by ``read_release``.
    seed : int
        Seed of the label permutations (the result is deterministic).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != len(table):
        raise InputError(f"Expected betas of shape ({len(table)}, n_voxels), got {X.shape}.")
    blocks = [np.flatnonzero((table["run"] == run).to_numpy()) for run in
              sorted(table.loc[table["task"] == "vision", "run"].unique())]
    rng = np.random.default_rng(seed)
    perms = [[rng.permutation(len(b)) for b in blocks] for _ in range(ORDER_PERMUTATIONS)]
    scores, p_values = {}, {}
    for order in WITHIN_RUN_ORDERS:
        labels = volume_labels(table, order)
        score = np.mean([_split_half_score(X[b], labels[b]) for b in blocks])
        null = [np.mean([_split_half_score(X[b], labels[b][p]) for b, p in zip(blocks, perm)]) for perm in perms]
        scores[order] = float(score)
        p_values[order] = float((1 + np.sum(np.asarray(null) >= score)) / (1 + ORDER_PERMUTATIONS))
    favoured = max(scores, key=scores.get)
    other = next(o for o in WITHIN_RUN_ORDERS if o != favoured)
    conclusive = p_values[favoured] <= ORDER_ALPHA < p_values[other]
    return OrderCheck(scores=scores, p_values=p_values, favoured=favoured, conclusive=conclusive)


def check_within_run_order(X: np.ndarray, table: pd.DataFrame, expected: str, beta_file: str = "betas") -> OrderCheck:
    """Raise :class:`MismatchError` if the betas conclusively favour another within-run order than ``expected``."""
    result = within_run_order_check(X, table)
    if result.conclusive and result.favoured != expected:
        raise MismatchError(
            f"{beta_file}: the vision betas favour within-run order {result.favoured!r} (split-half score "
            f"{result.scores[result.favoured]:.3f}, p={result.p_values[result.favoured]:.3f}) over {expected!r} "
            f"({result.scores[expected]:.3f}, p={result.p_values[expected]:.3f}); expected {expected!r}."
        )
    return result
