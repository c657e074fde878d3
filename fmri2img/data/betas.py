"""The beta cache (docs/contracts.md, section 3) and the loader every decoder uses.

Layout: ``<cache_root>/betas/<subject>/<key>/`` with

* one ``<beta_file with / replaced by __>.npy`` per source file: float32 (n_volumes, n_voxels),
  percent signal change of the cache's voxels, rows in file order. Plain ``.npy`` because
  it memory-maps with no extra dependency, so :func:`load_betas` reads only the rows it needs
  (a Parquet/Arrow column store would have to decode whole columns of 15k voxels);
* ``voxels.npy``: int16 (n_voxels, 3) ijk in C order of every voxel a region can name: ``nsdgeneral
  == 1`` and every voxel labelled by the ROI volumes present (:mod:`fmri2img.data.regions`), so a
  region is a column subset and adding one reads no session again;
* ``labels.npy``: int16 (n_voxels, 3), each voxel's nsdgeneral / prf-visualrois / streams label
  (:data:`~fmri2img.data.regions.ABSENT_LABEL` where the release lacks the volume);
  ``ncsnr.npy``: float32 (n_voxels,), the release's noise-ceiling SNR, when it has ``ncsnr.nii.gz``;
* ``valid.npy``: bool (n_voxels,), False for voxels that are NaN or all-zero in *any* source
  file, so the same voxels are dropped from every session;
* ``meta.json``: the options, the ROI files' and every source file's SHA-256, the invalid voxels.

``<key>`` depends on the options only (which ROI volumes exist is one); the sources' SHA-256 and the
voxel set decide what is rebuilt, so a rerun with unchanged inputs reads nothing and writes
nothing, and a changed file is rebuilt. Files are built one session at a time: peak memory is one
session's masked betas per job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fmri2img.core.errors import ChecksumError, InputError, MismatchError, MissingInputError
from fmri2img.core.files import dumps_json, load_npy, read_json, save_npy, sha256_json, write_json
from fmri2img.core.memo import Memo, digest
from fmri2img.data import nsd, nsd_constants, regions

log = logging.getLogger(__name__)

#: Version of the cache layout; part of the key, so a layout change never reuses old files.
CACHE_FORMAT = 2

#: Standard deviations below this are treated as 1 when z-scoring (constant voxel in a session).
MIN_STD = 1e-8


def cache_options(subject: str, atlases: Sequence[str] = ()) -> dict[str, Any]:
    """Options that define a cache entry (and its key); ``atlases``: the release-relative ROI volumes
    that widen its voxel set beyond nsdgeneral (:func:`fmri2img.data.regions.atlas_files`)."""
    return {
        "cache_format": CACHE_FORMAT,
        "mask": nsd_constants.NSDGENERAL.format(subject=subject),
        "mask_value": nsd_constants.NSDGENERAL_INSIDE,
        "atlases": [str(a) for a in atlases],
        "int16_scale": nsd_constants.BETA_SCALE,
        "dtype": "float32",
        "units": "percent signal change",
    }


def index_atlases(subject: str, sources: Mapping[str, str]) -> list[str]:
    """The ROI volumes among an index's hashed sources, in :data:`~fmri2img.data.regions.ATLASES` order."""
    names = [template.format(subject=subject) for template, _, _ in regions.ATLASES.values()]
    return [name for name in names if name in sources]


def cache_dir(cache_root: str | os.PathLike, subject: str, options: dict[str, Any] | None = None) -> Path:
    """``<cache_root>/betas/<subject>/<key>`` with ``key = voxels-<sha256(options)[:12]>``."""
    options = options if options is not None else cache_options(subject)
    return Path(cache_root) / "betas" / subject / f"voxels-{sha256_json(options)[:12]}"


def index_cache_dir(cache_root: str | os.PathLike, index: pd.DataFrame) -> Path:
    """The cache folder an index was built with (its ROI volumes are among its sources)."""
    subject = str(index["subject"].iloc[0])
    return cache_dir(cache_root, subject, cache_options(subject, index_atlases(subject, index.attrs.get("sources", {}))))


def npy_name(beta_file: str) -> str:
    """Cache file name of a source beta file (``/`` replaced by ``__``)."""
    return beta_file.replace("/", "__") + ".npy"


@dataclass
class BetaCache:
    """What :func:`build_beta_cache` did.

    Attributes
    ----------
    path : Path
        The cache folder.
    n_voxels, n_valid : int
        Mask voxels and voxels kept after dropping NaN / all-zero ones.
    invalid_by_file : dict
        Source file -> number of NaN / all-zero voxels in it.
    rebuilt : list of str
        Source files (re)built in this call; empty for a no-op rerun.
    """

    path: Path
    n_voxels: int
    n_valid: int
    invalid_by_file: dict[str, int] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        return read_json(meta_path)
    except InputError:
        return None  # corrupt meta: rebuild everything


def _npy_ok(path: Path, shape: tuple[int, int]) -> bool:
    try:
        array = load_npy(path, mmap=True)
    except InputError:
        return False
    except MissingInputError:
        return False
    return array.shape == shape and array.dtype == np.float32


def build_beta_cache(
    subject: str,
    data_root: str | os.PathLike,
    cache_root: str | os.PathLike,
    beta_files: Sequence[str],
    sources: dict[str, str],
    *,
    jobs: int = 1,
    progress: bool = True,
) -> BetaCache:
    """Build (or update) the beta cache of ``subject`` from ``beta_files``, one session at a time.

    Parameters
    ----------
    beta_files : sequence of str
        Source beta files relative to ``data_root`` (sessions, NSD-Imagery), in cache order.
    sources : dict
        Relative path -> SHA-256 of at least the mask, the ROI files present
        (:func:`fmri2img.data.regions.atlas_files`) and every beta file (hashed once by the caller).
    jobs : int
        Sessions read in parallel (threads); memory grows with ``jobs``, never with sessions.
    """
    roi_files = regions.atlas_files(data_root, subject)
    options = cache_options(subject, [roi_files[a] for a in regions.ATLASES if a in roi_files])
    mask_rel = options["mask"]
    missing = [f for f in [mask_rel, *roi_files.values(), *beta_files] if f not in sources]
    if missing:
        raise InputError(f"No SHA-256 given for {missing[0]}; hash every source before caching.")
    folder = cache_dir(cache_root, subject, options)
    mask = nsd.read_mask(nsd.require(data_root, mask_rel))
    infos = {}
    for rel in beta_files:  # cheap header checks first: fail fast, the mask against the betas first
        infos[rel] = nsd.inspect_betas(nsd.require(data_root, rel))
        nsd.check_grid(infos[rel], mask, rel, mask_name=Path(mask_rel).name)
    volumes = regions.voxel_labels(data_root, roi_files, mask.shape)
    voxels = nsd.mask_voxels(regions.cache_voxel_mask(mask, volumes))
    old = _read_meta(folder) or {}
    voxels_sha = digest(voxels)
    reuse_ok = old.get("options") == options and old.get("voxels_sha256") == voxels_sha
    old_files = old.get("files", {}) if reuse_ok else {}

    entries: dict[str, dict[str, Any]] = {}
    todo: list[str] = []
    for rel in beta_files:
        prev = old_files.get(rel)
        if (prev and prev.get("sha256") == sources[rel]
                and _npy_ok(folder / npy_name(rel), (infos[rel].n_volumes, voxels.shape[0]))):
            entries[rel] = prev
        else:
            todo.append(rel)

    if todo:
        entries.update(_build_files(todo, data_root, folder, voxels, sources, jobs,
                                    tqdm(total=len(todo), desc=f"{subject} betas", unit="session", disable=not progress)))

    valid = np.ones(voxels.shape[0], dtype=bool)
    for rel in beta_files:
        valid[np.asarray(entries[rel]["invalid_voxels"], dtype=np.int64)] = False
    if not valid.any():
        raise InputError(f"Every voxel of {subject}'s cache is NaN or all-zero in some beta file; nothing to keep.")
    meta = {
        "subject": subject,
        "options": options,
        "mask": {"file": mask_rel, "sha256": sources[mask_rel]},
        "roi_files": {key: {"file": rel, "sha256": sources[rel]} for key, rel in roi_files.items()},
        "label_names": {atlas: {str(code): name for code, name in regions.atlas_names(data_root, roi_files, atlas).items()}
                        for atlas in regions.ATLASES if atlas in volumes},
        "files": {rel: entries[rel] for rel in beta_files},
        "n_voxels": int(voxels.shape[0]),
        "n_valid": int(valid.sum()),
        "voxels_sha256": voxels_sha,
    }
    # voxel tables first, meta last: meta.json is the commit record of a complete cache.
    _save_voxel_tables(folder, voxels, valid, mask, volumes)
    meta_path = folder / "meta.json"
    if not (meta_path.is_file() and meta_path.read_bytes() == dumps_json(meta).encode("utf-8")):
        write_json(meta_path, meta)
    invalid_by_file = {rel: len(entries[rel]["invalid_voxels"]) for rel in beta_files}
    return BetaCache(folder, int(voxels.shape[0]), int(valid.sum()), invalid_by_file, sorted(todo))


def _save_voxel_tables(folder: Path, voxels: np.ndarray, valid: np.ndarray, mask: np.ndarray,
                       volumes: Mapping[str, np.ndarray]) -> None:
    """``voxels.npy``, ``valid.npy``, ``labels.npy`` and (when the release has it) ``ncsnr.npy``."""
    ijk = tuple(voxels.astype(np.int64).T)
    labels = np.full((len(voxels), len(regions.LABEL_COLUMNS)), regions.ABSENT_LABEL, dtype=np.int16)
    labels[:, 0] = mask[ijk].astype(np.int16) * nsd_constants.NSDGENERAL_INSIDE
    for column, atlas in enumerate(regions.LABEL_COLUMNS[1:], start=1):
        if atlas in volumes:
            labels[:, column] = volumes[atlas][ijk]
    _save_if_changed(folder / "voxels.npy", voxels)
    _save_if_changed(folder / "valid.npy", valid)
    _save_if_changed(folder / "labels.npy", labels)
    if "ncsnr" in volumes:
        _save_if_changed(folder / "ncsnr.npy", volumes["ncsnr"][ijk].astype(np.float32))
    elif (folder / "ncsnr.npy").is_file():
        (folder / "ncsnr.npy").unlink()


def voxel_table(folder: str | os.PathLike) -> regions.VoxelTable:
    """The :class:`~fmri2img.data.regions.VoxelTable` of a cache folder."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None:
        raise MissingInputError(f"Beta cache {folder} has no readable meta.json; rebuild it with `fmri2img index`.")
    names = {atlas: {int(code): name for code, name in table.items()}
             for atlas, table in meta.get("label_names", {}).items()}
    ncsnr = load_npy(folder / "ncsnr.npy") if "ncsnr" in meta.get("roi_files", {}) else None
    if (folder / "labels.npy").is_file():
        labels = load_npy(folder / "labels.npy")
    else:  # a cache written by hand (docs/nsd_data.md): nsdgeneral voxels, no atlas
        labels = np.full((int(meta["n_voxels"]), len(regions.LABEL_COLUMNS)), regions.ABSENT_LABEL, dtype=np.int16)
        labels[:, 0] = nsd_constants.NSDGENERAL_INSIDE
    return regions.VoxelTable(labels=labels, ncsnr=ncsnr, names=names, source=str(folder))


def _build_files(todo: Sequence[str], data_root, folder: Path, voxels: np.ndarray, sources: dict[str, str],
                 jobs: int, bar) -> dict[str, dict[str, Any]]:
    """Read the masked betas of each file of ``todo`` (``jobs`` threads) and save them; their meta entries."""
    def build_one(rel: str) -> tuple[str, dict[str, Any]]:
        X, invalid = nsd.read_masked_betas(Path(data_root) / rel, voxels)
        save_npy(folder / npy_name(rel), X)
        return rel, {
            "sha256": sources[rel],
            "npy": npy_name(rel),
            "n_volumes": int(X.shape[0]),
            "invalid_voxels": np.flatnonzero(invalid).tolist(),
        }

    entries = {}
    try:
        if jobs > 1:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for future in as_completed([pool.submit(build_one, rel) for rel in todo]):
                    rel, entry = future.result()
                    entries[rel] = entry
                    bar.update()
        else:
            for rel in todo:
                rel, entry = build_one(rel)
                entries[rel] = entry
                bar.update()
    finally:
        bar.close()
    return entries


def _save_if_changed(path: Path, array: np.ndarray) -> None:
    if path.is_file():
        try:
            old = load_npy(path)
            if old.dtype == array.dtype and np.array_equal(old, array):
                return
        except InputError:
            pass
    save_npy(path, array)


def verify_beta_cache(folder: str | os.PathLike, sources: dict[str, str], beta_files: Sequence[str]) -> None:
    """Check a cache against the sources' SHA-256 without rebuilding; raise naming the first problem."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None:
        raise MissingInputError(f"Beta cache {folder} has no readable meta.json; rebuild it with `fmri2img index`.")
    mask = meta["mask"]
    if sources.get(mask["file"]) != mask["sha256"]:
        raise ChecksumError(f"{mask['file']} changed since the beta cache {folder} was built; rerun `fmri2img index`.")
    n_voxels = int(meta["n_voxels"])
    tables = [("voxels.npy", np.int16, (n_voxels, 3)), ("valid.npy", np.bool_, (n_voxels,)),
              ("labels.npy", np.int16, (n_voxels, len(regions.LABEL_COLUMNS)))]
    for key, entry in meta.get("roi_files", {}).items():
        if sources.get(entry["file"]) != entry["sha256"]:
            raise ChecksumError(f"{entry['file']} changed since the beta cache {folder} was built; rerun `fmri2img index`.")
        if key == "ncsnr":
            tables.append(("ncsnr.npy", np.float32, (n_voxels,)))
    for name, dtype, shape in tables:
        array = load_npy(folder / name, mmap=True)
        if array.shape != shape or array.dtype != dtype:
            raise MismatchError(f"{folder / name} has shape {array.shape} {array.dtype}; expected {shape} {np.dtype(dtype)}.")
    for rel in beta_files:
        entry = meta["files"].get(rel)
        if entry is None:
            raise MissingInputError(f"Beta cache {folder} has no entry for {rel}; rerun `fmri2img index`.")
        if sources.get(rel) != entry["sha256"]:
            raise ChecksumError(f"{rel} changed since the beta cache was built; rerun `fmri2img index`.")
        if not _npy_ok(folder / entry["npy"], (int(entry["n_volumes"]), n_voxels)):
            raise MismatchError(
                f"{folder / entry['npy']} is missing or not float32 ({entry['n_volumes']}, {n_voxels}); rerun `fmri2img index`."
            )


def _positions(index: pd.DataFrame, rows: Any) -> np.ndarray:
    n = len(index)
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise InputError(f"Boolean rows have shape {rows.shape}; expected ({n},) like the index.")
        return np.flatnonzero(rows)
    if rows.dtype.kind not in "iu":
        raise InputError(f"rows must be a boolean mask or integer positions, got dtype {rows.dtype}.")
    if rows.size and (rows.min() < -n or rows.max() >= n):
        raise InputError(f"Row positions out of range for an index of {n} rows.")
    return rows.astype(np.int64) % max(n, 1)


def load_betas(
    index: pd.DataFrame,
    cache_root: str | os.PathLike,
    rows: Any = None,
    zscore: bool = True,
    memo: Memo | None = None,
) -> np.ndarray:
    """Masked betas of ``index`` rows from the cache, optionally z-scored per session.

    Parameters
    ----------
    index : DataFrame
        The full index of one subject (:func:`fmri2img.data.index.read_index`). Z-scoring
        statistics come from *its* rows, so pass the whole index and select with ``rows``.
    rows : bool array of shape (n_index,) or int array, optional
        Rows to return (positions); all rows if None.
    zscore : bool
        Per source file (= session), per voxel: subtract the mean and divide by the std of that
        file's ``split == 'train'`` rows; files without train rows (NSD-Imagery) use their
        ``attention`` rows (never evaluated). Test rows never enter the statistics.
    memo : Memo, optional
        Keeps the z-scoring statistics of each session for later calls (see :func:`session_stats`).

    Returns
    -------
    X : float32 array of shape (n_rows, n_valid_voxels)
    """
    subjects = index["subject"].unique().tolist()
    if len(subjects) != 1:
        raise InputError(f"The index holds subjects {subjects}; expected exactly one.")
    subject = subjects[0]
    folder = index_cache_dir(cache_root, index)
    meta = _read_meta(folder)
    if meta is None:
        raise MissingInputError(f"Beta cache not found: {folder}; build it with `fmri2img index --subject {subject}`.")
    sources = index.attrs.get("sources", {})
    valid = load_npy(folder / "valid.npy")
    columns = region_columns(index, folder, valid)
    among_valid = np.flatnonzero(np.isin(np.flatnonzero(valid), columns))  # z-scoring stats are over valid voxels
    positions = _positions(index, rows)
    selected = index.iloc[positions]
    X = np.empty((len(selected), len(columns)), dtype=np.float32)
    files = selected["beta_file"].to_numpy()
    for rel in pd.unique(files):
        entry = meta["files"].get(rel)
        if entry is None:
            raise MissingInputError(f"Beta cache {folder} has no {rel}; rebuild it with `fmri2img index`.")
        if rel in sources and sources[rel] != entry["sha256"]:
            raise MismatchError(
                f"Beta cache {folder} was built from another version of {rel} than this index; rerun `fmri2img index`."
            )
        data = load_npy(folder / entry["npy"], mmap=True)
        out_rows = np.flatnonzero(files == rel)
        volumes = selected["beta_volume"].to_numpy(np.int64)[out_rows]
        block = np.asarray(data[volumes][:, columns], dtype=np.float32)
        if zscore:
            mean, std = session_stats(index, rel, data, valid, (str(folder / entry["npy"]), entry["sha256"]), memo)
            block = (block - mean[among_valid]) / std[among_valid]
        X[out_rows] = block
    return X


def region_columns(index: pd.DataFrame, folder: str | os.PathLike, valid: np.ndarray | None = None) -> np.ndarray:
    """Sorted cache columns (int64) of the index's region and voxel selection
    (:func:`fmri2img.data.regions.restrict`; nsdgeneral, all voxels by default), valid voxels only."""
    folder = Path(folder)
    valid = load_npy(folder / "valid.npy") if valid is None else valid
    region, selection = regions.region_of(index)
    table = voxel_table(folder)
    subject = str(index["subject"].iloc[0])
    chosen = regions.select_voxels(regions.VoxelTable(table.labels[valid], None if table.ncsnr is None
                                                      else table.ncsnr[valid], table.names, table.source),
                                   region, selection, subject)
    return np.flatnonzero(valid)[chosen]


def region_info(index: pd.DataFrame, cache_root: str | os.PathLike) -> dict[str, Any]:
    """Region, selection, voxel count and median ncsnr / noise ceilings of the index's region."""
    folder = index_cache_dir(cache_root, index)
    columns = region_columns(index, folder)
    region, selection = regions.region_of(index)
    return {"region": region, "voxel_selection": selection, **regions.region_summary(voxel_table(folder), columns)}


def _reference_volumes(index: pd.DataFrame, beta_file: str) -> np.ndarray:
    """Sorted volumes of ``beta_file``'s train rows (or attention rows if it has none)."""
    in_file = (index["beta_file"] == beta_file).to_numpy()
    reference = in_file & (index["split"] == "train").to_numpy()
    if not reference.any():
        reference = in_file & (index["condition"] == "attention").to_numpy()
    if not reference.any():
        raise InputError(
            f"Cannot z-score {beta_file}: the index has no 'train' or 'attention' rows from it; "
            "pass the full index (select with rows=) or use zscore=False."
        )
    return np.sort(index["beta_volume"].to_numpy(np.int64)[reference])


def session_stats(index: pd.DataFrame, beta_file: str, data: np.ndarray, valid: np.ndarray,
                  identity: tuple[str, str] | None = None, memo: Memo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and std (float32, shape (n_valid,)) of ``beta_file``'s train rows (or
    attention rows if it has no train rows); constant voxels get std 1. With ``memo``, computed
    once per (``identity`` of the cache file: path and SHA-256, reference volumes, voxel mask)."""
    volumes = _reference_volumes(index, beta_file)
    if memo is None:
        return _stats_of(data, volumes, valid)
    key = digest(identity, volumes, np.ascontiguousarray(valid))
    return memo.get("session_stats", key, lambda: _stats_of(data, volumes, valid))


def _stats_of(data: np.ndarray, volumes: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(data[volumes], dtype=np.float64)[:, valid]
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    std[std < MIN_STD] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
