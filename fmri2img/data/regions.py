"""Regions of interest and voxel selection (docs/regions.md).

A **region** is a name: ``nsdgeneral``; a visual area of ``prf-visualrois`` (``V1`` = V1v + V1d,
``V2``, ``V3``, ``hV4``); a stream of ``streams`` (``early``, ``midventral``, ``midlateral``,
``midparietal``, ``ventral``, ``lateral``, ``parietal``); or a union of these written with ``+``
(``V1+V2+V3``). Label codes come from the release's label tables (``*.mgz.ctab``) when present,
else from the published codes (:data:`~fmri2img.data.nsd_constants.PRF_VISUALROIS_CODES`,
:data:`~fmri2img.data.nsd_constants.STREAMS_CODES`).

A **voxel selection** picks voxels within a region: ``all``, ``ncsnr>=T`` (noise-ceiling SNR at
least ``T``) or ``top-K`` (the ``K`` voxels of highest ncsnr, ties in voxel order). ncsnr is a
property of the release (``ncsnr.nii.gz``, computed by NSD from all trials of all sessions,
test images included), not fitted on a study's training data: selecting by it uses no label and
no decoder, but it has seen the test trials' betas, as in NSD's own papers.

The beta cache holds each subject's voxels once: the union of ``nsdgeneral`` and every labelled
voxel of the atlases present, with each voxel's labels and ncsnr (:mod:`fmri2img.data.betas`).
A region is then a column subset of that cache: adding a region reads no session file again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from fmri2img.core import vocab
from fmri2img.core.errors import ConfigError, CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd, nsd_constants

#: The region every stage uses unless told otherwise (the decoding literature's default) and its selection.
DEFAULT_REGION, DEFAULT_SELECTION = vocab.DEFAULT_REGION, vocab.DEFAULT_VOXEL_SELECTION

#: Atlases (label volumes) a region can come from: name -> (volume template, label-table template,
#: published codes). Their order is the column order of the cache's ``labels.npy`` after nsdgeneral.
ATLASES = {
    "prf-visualrois": (nsd_constants.PRF_VISUALROIS, nsd_constants.PRF_VISUALROIS_CTAB,
                       nsd_constants.PRF_VISUALROIS_CODES),
    "streams": (nsd_constants.STREAMS, nsd_constants.STREAMS_CTAB, nsd_constants.STREAMS_CODES),
}

#: Region name -> (atlas, label names). ``nsdgeneral`` is the mask itself.
REGIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nsdgeneral": ("nsdgeneral", ()),
    "V1": ("prf-visualrois", ("V1v", "V1d")),
    "V2": ("prf-visualrois", ("V2v", "V2d")),
    "V3": ("prf-visualrois", ("V3v", "V3d")),
    "hV4": ("prf-visualrois", ("hV4",)),
    **{name: ("streams", (name,)) for name in nsd_constants.STREAMS_CODES.values()},
}

#: Column of each atlas in a cache's ``labels.npy`` (int16, value -2 where the atlas is absent).
LABEL_COLUMNS = ("nsdgeneral", *ATLASES)
ABSENT_LABEL = -2

_THRESHOLD = re.compile(r"^ncsnr>=(?P<t>[0-9]*\.?[0-9]+)$")
_TOP = re.compile(r"^top-(?P<k>[1-9][0-9]*)$")


def parse_region(name: str) -> str:
    """The canonical name of a region (union parts in :data:`REGIONS` order, duplicates dropped).

    Raises :class:`ConfigError` naming the valid regions for an unknown part.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"Invalid region {name!r}; expected a name such as 'ventral' or 'V1+V2+V3'.")
    parts = [p.strip() for p in name.split("+")]
    for part in parts:
        if part not in REGIONS:
            raise ConfigError(f"Unknown region {part!r} in {name!r}; choose from {', '.join(REGIONS)} "
                              "or a union joined by '+' (e.g. 'V1+V2+V3').")
    return "+".join(r for r in REGIONS if r in parts)


def parse_regions(names: Sequence[str]) -> list[str]:
    """The canonical names of a study's regions (:func:`parse_region` each); :class:`ConfigError` for none
    or for a region named twice (``'V3+V1'`` and ``'V1+V3'`` are one region)."""
    if not names:
        raise ConfigError("regions: expected at least one region, e.g. [nsdgeneral].")
    canonical = [parse_region(r) for r in names]
    if len(set(canonical)) < len(canonical):
        raise ConfigError(f"regions: {list(names)} names a region twice; expected distinct regions.")
    return canonical


@dataclass(frozen=True)
class Selection:
    """A parsed voxel selection: ``method`` ``all`` / ``threshold`` / ``top``, its ``value``."""

    method: str
    value: float | int | None = None

    @property
    def needs_ncsnr(self) -> bool:
        return self.method != "all"


def parse_selection(text: str) -> Selection:
    """``'all'``, ``'ncsnr>=T'`` (T >= 0) or ``'top-K'`` (K >= 1) -> :class:`Selection`."""
    spec = str(text).replace(" ", "")
    if spec == "all":
        return Selection("all")
    if match := _THRESHOLD.match(spec):
        return Selection("threshold", float(match["t"]))
    if match := _TOP.match(spec):
        return Selection("top", int(match["k"]))
    raise ConfigError(f"Invalid voxel selection {text!r}; expected 'all', 'ncsnr>=T' (e.g. 'ncsnr>=0.2') "
                      "or 'top-K' (e.g. 'top-1000').")


def tag(region: str, selection: str) -> str:
    """Folder-safe name of a (region, selection) pair; empty for the default (``nsdgeneral``, ``all``)."""
    region, spec = parse_region(region), str(selection).replace(" ", "")
    parse_selection(spec)
    if (region, spec) == (DEFAULT_REGION, DEFAULT_SELECTION):
        return ""
    return region if spec == DEFAULT_SELECTION else f"{region}__{spec.replace('>=', 'ge')}"


# ----------------------------------------------------------------------------- release files


def read_label_table(path: str | os.PathLike) -> dict[int, str]:
    """A label table (``<code> <name> [r g b a]`` per line, ``#`` comments) -> ``{code: name}``
    for codes > 0."""
    path = Path(path)
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            code = int(fields[0])
        except ValueError:
            raise CorruptFileError(f"{path}, line {number}: {fields[0]!r} is not a label code; "
                                   "expected '<code> <name>' per line.") from None
        if code > 0:
            if len(fields) < 2:
                raise CorruptFileError(f"{path}, line {number}: label {code} has no name.")
            names[code] = fields[1]
    return names


def read_volume(path: str | os.PathLike, grid: tuple[int, ...], what: str) -> np.ndarray:
    """A 3-D NIfTI volume of shape ``grid`` (the nsdgeneral grid); one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected {what}.")
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except nsd.NIFTI_ERRORS as exc:
        raise CorruptFileError(f"Cannot read {path} as NIfTI (truncated or corrupt?): {exc}.") from None
    if tuple(data.shape) != tuple(grid):
        raise MismatchError(f"{path} has grid {tuple(data.shape)}; expected {tuple(grid)} like nsdgeneral.nii.gz "
                            f"({what} must be on the func1pt8mm grid of the betas).")
    return data


def atlas_files(data_root: str | os.PathLike, subject: str) -> dict[str, str]:
    """Release-relative paths of the ROI files present for ``subject``: atlas volumes and label
    tables (keys ``<atlas>`` and ``<atlas>.ctab``) and ``ncsnr``."""
    root, found = Path(data_root), {}
    for atlas, (volume, table, _) in ATLASES.items():
        for key, template in ((atlas, volume), (f"{atlas}.ctab", table)):
            rel = template.format(subject=subject)
            if (root / rel).is_file():
                found[key] = rel
    rel = nsd_constants.NCSNR.format(subject=subject)
    if (root / rel).is_file():
        found["ncsnr"] = rel
    return found


def atlas_names(data_root: str | os.PathLike, files: Mapping[str, str], atlas: str) -> dict[int, str]:
    """``{code: name}`` of ``atlas``: its label table when present, else the published codes."""
    table = files.get(f"{atlas}.ctab")
    return read_label_table(Path(data_root) / table) if table else dict(ATLASES[atlas][2])


def voxel_labels(data_root: str | os.PathLike, files: Mapping[str, str], grid: tuple[int, ...]
                 ) -> dict[str, np.ndarray]:
    """The atlas volumes present (int16, shape ``grid``) and ``ncsnr`` (float32) when present."""
    out = {}
    for atlas in ATLASES:
        if atlas in files:
            out[atlas] = read_volume(Path(data_root) / files[atlas], grid, f"the {atlas} label volume").astype(np.int16)
    if "ncsnr" in files:
        ncsnr = read_volume(Path(data_root) / files["ncsnr"], grid, "the voxels' noise-ceiling SNR").astype(np.float32)
        out["ncsnr"] = np.where(np.isfinite(ncsnr), ncsnr, 0.0).astype(np.float32)
    return out


def cache_voxel_mask(nsdgeneral: np.ndarray, volumes: Mapping[str, np.ndarray]) -> np.ndarray:
    """Voxels a subject's cache holds: nsdgeneral plus every voxel an atlas labels (code > 0)."""
    mask = nsdgeneral.copy()
    for atlas in ATLASES:
        if atlas in volumes:
            mask |= volumes[atlas] > 0
    return mask


# ----------------------------------------------------------------------------- columns of a region


@dataclass(frozen=True)
class VoxelTable:
    """What a beta cache knows of its voxels (``labels.npy``, ``ncsnr.npy``, meta's label names).

    labels : int16 array of shape (n_voxels, len(LABEL_COLUMNS)); ``ABSENT_LABEL`` where an atlas is absent
    ncsnr : float32 array of shape (n_voxels,) or None
    names : dict atlas -> {code: name}
    source : str, where it came from (for messages)
    """

    labels: np.ndarray
    ncsnr: np.ndarray | None
    names: Mapping[str, Mapping[int, str]]
    source: str


def region_mask(table: VoxelTable, region: str, subject: str = "") -> np.ndarray:
    """Bool (n_voxels,): the voxels of ``region`` (a canonical name or union)."""
    mask = np.zeros(len(table.labels), dtype=bool)
    for part in parse_region(region).split("+"):
        atlas, wanted = REGIONS[part]
        column = table.labels[:, LABEL_COLUMNS.index(atlas)]
        if atlas == "nsdgeneral":
            mask |= column == nsd_constants.NSDGENERAL_INSIDE
            continue
        if (column == ABSENT_LABEL).all():
            rel = ATLASES[atlas][0].format(subject=subject or "subjXX")
            raise MissingInputError(f"Region {part!r} needs {rel}, which the release ({table.source}) lacks.")
        names = {name: code for code, name in table.names.get(atlas, {}).items()}
        missing = [n for n in wanted if n not in names]
        if missing:
            raise InputError(f"The {atlas} label table of {table.source} has no label {missing[0]!r}; "
                             f"it names {', '.join(sorted(names)) or 'none'}.")
        mask |= np.isin(column, [names[n] for n in wanted])
    return mask


def select_voxels(table: VoxelTable, region: str, selection: str, subject: str = "") -> np.ndarray:
    """Sorted positions (int64) of the voxels of ``region`` kept by ``selection``.

    Raises :class:`InputError` when the region (or its selection) has no voxel for this subject,
    or a ``top-K`` asks for more voxels than the region has.
    """
    inside = region_mask(table, region, subject)
    who = f"{subject} " if subject else ""
    if not inside.any():
        raise InputError(f"Region {region!r} has no voxels for {who}in {table.source}; "
                         "choose another region or check the ROI files.")
    spec = parse_selection(selection)
    if not spec.needs_ncsnr:
        return np.flatnonzero(inside)
    if table.ncsnr is None:
        raise MissingInputError(f"Voxel selection {selection!r} needs {nsd_constants.NCSNR.format(subject=subject or 'subjXX')}, "
                                f"which the release ({table.source}) lacks.")
    candidates = np.flatnonzero(inside)
    values = table.ncsnr[candidates]
    if spec.method == "threshold":
        kept = candidates[values >= spec.value]
    else:
        if spec.value > len(candidates):
            raise InputError(f"Voxel selection {selection!r} asks for {spec.value} voxels but region {region!r} has "
                             f"{len(candidates)} for {who}; expected K <= {len(candidates)}.")
        kept = np.sort(candidates[np.argsort(-values, kind="stable")[:spec.value]])
    if kept.size == 0:
        raise InputError(f"Voxel selection {selection!r} keeps no voxel of region {region!r} for {who}"
                         f"(max ncsnr {values.max():.3g}); expected a lower threshold.")
    return kept


def noise_ceiling(ncsnr: np.ndarray, n_trials: int | float = 1) -> np.ndarray:
    """Noise ceiling (percent of variance) of the mean of ``n_trials`` trials:
    ``100 ncsnr^2 / (ncsnr^2 + 1/n)`` [Allen et al. 2022, Methods]."""
    if not n_trials > 0:
        raise InputError(f"Invalid n_trials={n_trials!r}; expected a positive number of averaged trials.")
    s2 = np.square(np.asarray(ncsnr, dtype=np.float64))
    return 100.0 * s2 / (s2 + 1.0 / n_trials)


def region_summary(table: VoxelTable, columns: np.ndarray, repeats: Sequence[int] = (1, nsd_constants.MAX_REPEATS)
                   ) -> dict[str, float | int | None]:
    """Voxel count and median ncsnr / noise ceiling (per number of averaged trials) of ``columns``."""
    out: dict[str, float | int | None] = {"n_voxels": int(len(columns))}
    if table.ncsnr is None:
        out["median_ncsnr"] = None
        out.update({f"median_noise_ceiling_{n}trial_pct": None for n in repeats})
        return out
    ncsnr = table.ncsnr[columns]
    out["median_ncsnr"] = float(np.median(ncsnr))
    for n in repeats:
        out[f"median_noise_ceiling_{n}trial_pct"] = float(np.median(noise_ceiling(ncsnr, n)))
    return out


# ----------------------------------------------------------------------------- an index restricted to a region


#: Keys of ``DataFrame.attrs`` through which an index names its region (plain strings, so pandas
#: can compare and copy them when it propagates attrs).
ATTR_REGION, ATTR_SELECTION = "region", "voxel_selection"


def restrict(index: pd.DataFrame, region: str = DEFAULT_REGION, selection: str = DEFAULT_SELECTION) -> pd.DataFrame:
    """A shallow copy of ``index`` whose betas (:func:`fmri2img.data.betas.load_betas`) are the
    voxels of ``region`` kept by ``selection`` (both validated here)."""
    region = parse_region(region)
    parse_selection(selection)
    view = index.copy(deep=False)
    view.attrs = {**index.attrs, ATTR_REGION: region, ATTR_SELECTION: str(selection).replace(" ", "")}
    return view


def for_checkpoint(index: pd.DataFrame, meta: Mapping[str, object]) -> pd.DataFrame:
    """``index`` restricted to the region and selection a checkpoint was trained on (its metadata;
    checkpoints without them used nsdgeneral, all voxels)."""
    return restrict(index, str(meta.get("region") or DEFAULT_REGION), str(meta.get("voxel_selection") or DEFAULT_SELECTION))


def region_of(index: pd.DataFrame) -> tuple[str, str]:
    """(region, selection) of an index (the defaults unless :func:`restrict` set them)."""
    return (index.attrs.get(ATTR_REGION, DEFAULT_REGION), index.attrs.get(ATTR_SELECTION, DEFAULT_SELECTION))
