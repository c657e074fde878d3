"""Readers of the NSD perception release (layout: docs/contracts.md, section 1).

Every reader takes a path inside an NSD download (or the synthetic world), checks what it reads
and raises one of the package's errors with the file and the expectation on bad input. Beta files
are streamed: a few volumes at a time, keeping only the ``nsdgeneral`` voxels, so memory never
holds more than one session's masked betas.

Beta value rule (documented in docs/nsd_data.md):

* ``int16`` (the release's encoding) is percent signal change x :data:`BETA_SCALE`; divided on read.
* ``float32``/``float64`` are accepted as percent signal change already, but only if every finite
  value lies within +-:data:`FLOAT_PSC_MAX_ABS` (the range NSD's own int16 encoding can express);
  larger values mean the file holds unscaled x300 betas and is refused.
* Any other dtype is refused. ``Inf`` anywhere is refused. A voxel that is NaN in every volume of a
  file (how masked-out voxels appear in float exports) or zero in every volume is reported as
  invalid and dropped downstream; a NaN in only some volumes of a voxel is refused.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from fmri2img.core.config import check_choice
from fmri2img.core.errors import CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd_constants
from fmri2img.data.matfile import loadmat_v5

#: Largest |percent signal change| that NSD's int16 x 300 encoding can express (32767 / 300).
FLOAT_PSC_MAX_ABS = float(np.iinfo(np.int16).max) / nsd_constants.BETA_SCALE

#: Upper bound on the bytes of raw beta data read at once (a chunk of volumes).
READ_CHUNK_BYTES = 128 * 1024 * 1024

#: Errors that a truncated or corrupt (gzipped) NIfTI raises somewhere inside nibabel.
#: nibabel's HeaderDataError: a header field it cannot decode ("data code 132 not recognized"; found by fuzzing).
NIFTI_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError,
                 nib.spatialimages.HeaderDataError)
#: Errors h5py raises on a damaged HDF5 file: OSError (superblock), KeyError and RuntimeError (object
#: headers, symbol tables: "message not aligned", "bad symbol table node signature"; found by fuzzing).
HDF5_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


def check_root(data_root: str | os.PathLike) -> Path:
    """The data root as a :class:`Path`; raise :class:`MissingInputError` if it is not a folder."""
    root = Path(data_root)
    if not root.is_dir():
        raise MissingInputError(f"Data root not found: {root}; expected an NSD download or `fmri2img synth` output.")
    return root


def require(data_root: str | os.PathLike, relative: str) -> Path:
    """``data_root / relative``; raise :class:`MissingInputError` naming it if it is not a file."""
    path = Path(data_root) / relative
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected it in the NSD layout (docs/nsd_data.md).")
    return path


# --- experiment design ---------------------------------------------------------------


@dataclass(frozen=True)
class ExpDesign:
    """Contents of ``nsd_expdesign.mat``, kept 1-based as in the file.

    Attributes
    ----------
    masterordering : int array of shape (n_trials,)
        Trial -> column of ``subjectim`` (1-based).
    subjectim : int array of shape (8, n_per_subject)
        Subject x image slot -> 73k id (1-based).
    sharedix : int array of shape (n_shared,)
        73k ids (1-based) of the shared images.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray

    def shared_nsd_ids(self) -> np.ndarray:
        """0-based 73k ids of the shared images, sorted."""
        return np.sort(self.sharedix - 1)


def read_expdesign(path: str | os.PathLike) -> ExpDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5) and check its shapes and 1-based values."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected nsd_expdesign.mat.")
    mat = loadmat_v5(path, ("masterordering", "subjectim", "sharedix"))
    if mat is None:
        raise CorruptFileError(f"{path} is a MATLAB v7.3 file; expected MATLAB v5 (as released by NSD).")
    for key in ("masterordering", "subjectim", "sharedix"):
        if key not in mat:
            raise CorruptFileError(f"{path} has no variable {key!r}; expected masterordering, subjectim, sharedix.")
    order, subjectim, sharedix = (_whole_numbers(mat[key], key, path)
                                  for key in ("masterordering", "subjectim", "sharedix"))
    order, sharedix = order.ravel(), sharedix.ravel()
    if subjectim.ndim != 2 or subjectim.shape[0] != len(nsd_constants.ALL_SUBJECTS):
        raise CorruptFileError(f"{path}: subjectim has shape {subjectim.shape}; expected (8, n_images).")
    if order.size == 0 or order.min() < 1 or order.max() > subjectim.shape[1]:
        raise CorruptFileError(
            f"{path}: masterordering values must be 1-based columns of subjectim (1..{subjectim.shape[1]})."
        )
    if subjectim.min() < 1 or sharedix.size == 0 or sharedix.min() < 1:
        raise CorruptFileError(f"{path}: subjectim and sharedix must hold 1-based 73k ids.")
    return ExpDesign(masterordering=order, subjectim=subjectim, sharedix=sharedix)


def _whole_numbers(value, key: str, path: Path, what: str = "variable") -> np.ndarray:
    """A MATLAB variable or table column as int64; refuse text, cells, NaN/Inf and values beyond int32."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise CorruptFileError(f"{path}: {what} {key!r} holds {array.dtype} values (text, NaN or Inf); "
                               "expected finite integers.")
    if array.size and (np.abs(array).max() > np.iinfo(np.int32).max or (array != np.round(array)).any()):
        raise CorruptFileError(f"{path}: {what} {key!r} holds non-integer or out-of-range values; "
                               "expected integer ids.")
    return array.astype(np.int64)


def nsd_trials(design: ExpDesign, subject: str, n_trials: int) -> pd.DataFrame:
    """The first ``n_trials`` NSD trials of ``subject``.

    Returns
    -------
    DataFrame of shape (n_trials, 5)
        ``trial`` (1-based), ``session`` (1-based), ``beta_volume`` (0-based within the session
        file), ``nsd_id`` (0-based 73k id), ``is_shared1000``.
    """
    s = nsd_constants.subject_number(subject)
    if n_trials > design.masterordering.size:
        raise MismatchError(
            f"{n_trials} trials have betas for {subject} but nsd_expdesign.mat orders only "
            f"{design.masterordering.size}; expected at most that many."
        )
    trial = np.arange(1, n_trials + 1)
    ids = design.subjectim[s - 1, design.masterordering[:n_trials] - 1] - 1
    shared = set((design.sharedix - 1).tolist())
    return pd.DataFrame(
        {
            "trial": trial,
            "session": (trial - 1) // nsd_constants.TRIALS_PER_SESSION + 1,
            "beta_volume": (trial - 1) % nsd_constants.TRIALS_PER_SESSION,
            "nsd_id": ids,
            "is_shared1000": np.array([i in shared for i in ids.tolist()], dtype=bool),
        }
    )


def read_stim_info(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``nsd_stim_info_merged.csv`` (columns ``nsdId`` 0-based, ``shared1000``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected nsd_stim_info_merged.csv.")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"Cannot parse {path} as CSV: {exc}".splitlines()[0]) from None
    for column in ("nsdId", "shared1000"):
        if column not in table.columns:
            raise CorruptFileError(f"{path} has no column {column!r}; expected NSD's nsd_stim_info_merged.csv.")
    return table


def check_stim_info(stim_info: pd.DataFrame, design: ExpDesign, path: str = "nsd_stim_info_merged.csv") -> None:
    """Raise :class:`MismatchError` if the CSV's ``shared1000`` flags disagree with ``sharedix``."""
    ids = _whole_numbers(stim_info["nsdId"].to_numpy(), "nsdId", Path(path), "column")
    flagged = np.sort(ids[stim_info["shared1000"].astype(bool).to_numpy()])
    if not np.array_equal(flagged, design.shared_nsd_ids()):
        raise MismatchError(
            f"{path}: {flagged.size} images flagged shared1000 but nsd_expdesign.mat lists "
            f"{design.sharedix.size} different or more; expected the same set."
        )


def read_responses(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``responses.tsv`` and number its trials.

    Returns
    -------
    DataFrame
        ``trial`` (1-based within the subject: session block of 750, then run/trial order),
        ``run`` (1-based within session), ``nsd_id`` (0-based, from ``73KID``).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"Cannot parse {path} as TSV: {exc}".splitlines()[0]) from None
    for column in ("SESSION", "RUN", "TRIAL", "73KID"):
        if column not in table.columns:
            raise CorruptFileError(f"{path} has no column {column!r}; expected SUBJECT SESSION RUN TRIAL 73KID ...")
    for column in ("SESSION", "RUN", "TRIAL", "73KID"):
        table[column] = _whole_numbers(table[column].to_numpy(), column, path, "column")
    table = table.sort_values(["SESSION", "RUN", "TRIAL"], kind="stable")
    within = table.groupby("SESSION").cumcount().to_numpy()
    return pd.DataFrame(
        {
            "trial": (table["SESSION"].to_numpy(np.int64) - 1) * nsd_constants.TRIALS_PER_SESSION + within + 1,
            "run": table["RUN"].to_numpy(np.int64),
            "nsd_id": table["73KID"].to_numpy(np.int64) - 1,
        }
    )


def count_stimulus_images(path: str | os.PathLike) -> int:
    """Number of images in ``nsd_stimuli.hdf5['imgBrick']`` (read from the header only)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected nsd_stimuli.hdf5.")
    try:
        with h5py.File(path, "r") as fh:
            if "imgBrick" not in fh:
                raise CorruptFileError(f"{path} has no dataset 'imgBrick'; expected NSD's nsd_stimuli.hdf5.")
            shape = fh["imgBrick"].shape
    except CorruptFileError:
        raise
    except HDF5_ERRORS as exc:
        raise CorruptFileError(f"Cannot open {path} as HDF5: {exc}.") from None
    if len(shape) != 4 or shape[-1] != 3:
        raise CorruptFileError(f"{path}: imgBrick has shape {shape}; expected (n_images, H, W, 3).")
    return int(shape[0])


# --- masks -----------------------------------------------------------------------------


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read ``nsdgeneral.nii.gz`` -> bool array of shape (X, Y, Z), True where the value is 1.

    The release holds 1 inside the ROI and 0 / -1 outside; only exactly 1 counts as inside.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected the nsdgeneral ROI mask.")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except NIFTI_ERRORS as exc:
        raise CorruptFileError(f"Cannot read {path} as NIfTI (truncated or corrupt?): {exc}.") from None
    if data.ndim != 3:
        raise InputError(f"Expected a 3D mask, got shape {data.shape} from {path.name}.")
    mask = data == nsd_constants.NSDGENERAL_INSIDE
    if not mask.any():
        raise InputError(f"{path.name} has no voxel with value {nsd_constants.NSDGENERAL_INSIDE}; expected an ROI mask.")
    return mask


def mask_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxel coordinates of a mask: int16 array of shape (n_voxels, 3), ijk in C order."""
    return np.argwhere(mask).astype(np.int16)


# --- betas -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BetaInfo:
    """Header facts of a beta file (no data read).

    Attributes
    ----------
    grid : tuple of int
        Spatial shape (X, Y, Z) in NIfTI order (HDF5 files are transposed back).
    n_volumes : int
        Number of trials (volumes).
    dtype : numpy dtype
        On-disk dtype (``int16`` for the release; float if already percent signal change).
    kind : str
        ``'nifti'`` or ``'hdf5'``.
    """

    grid: tuple[int, int, int]
    n_volumes: int
    dtype: np.dtype
    kind: str


def beta_kind(path: str | os.PathLike) -> str:
    """``'hdf5'`` for ``.hdf5``/``.h5`` files, ``'nifti'`` for ``.nii``/``.nii.gz``."""
    name = Path(path).name
    if name.endswith((".hdf5", ".h5")):
        return "hdf5"
    if name.endswith((".nii.gz", ".nii")):
        return "nifti"
    raise InputError(f"Unknown beta file type {name!r}; expected .nii.gz or .hdf5.")


def _check_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype == np.int16 or dtype.kind == "f":
        return
    raise InputError(
        f"{path.name} holds {dtype} betas; expected int16 (percent signal change x {nsd_constants.BETA_SCALE:g}) "
        "or float percent signal change."
    )


def inspect_betas(path: str | os.PathLike) -> BetaInfo:
    """Read a beta file's header: grid, volume count and dtype; refuse wrong ranks and dtypes."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected a beta file.")
    kind = beta_kind(path)
    if kind == "nifti":
        try:
            img = nib.load(path)
            shape = img.shape
            dtype = np.dtype(img.get_data_dtype())
            slope, inter = img.dataobj.slope, img.dataobj.inter
        except NIFTI_ERRORS as exc:
            raise CorruptFileError(f"Cannot read {path} as NIfTI (truncated or corrupt?): {exc}.") from None
        if len(shape) != 4:
            raise InputError(f"Expected 4D betas (X, Y, Z, trials), got shape {shape} from {path.name}.")
        if dtype == np.int16 and (slope != 1 or inter != 0):
            dtype = np.dtype(np.float64)  # scaled on read: judge the values as floats
        info = BetaInfo(grid=tuple(int(s) for s in shape[:3]), n_volumes=int(shape[3]), dtype=dtype, kind=kind)
    else:
        try:
            with h5py.File(path, "r") as fh:
                if "betas" not in fh:
                    raise CorruptFileError(f"{path} has no dataset 'betas'; expected NSD's betas_sessionNN.hdf5.")
                shape, dtype = fh["betas"].shape, np.dtype(fh["betas"].dtype)
        except CorruptFileError:
            raise
        except HDF5_ERRORS as exc:
            raise CorruptFileError(f"Cannot open {path} as HDF5 (truncated or corrupt?): {exc}.") from None
        if len(shape) != 4:
            raise InputError(f"Expected 4D betas (trials, Z, Y, X), got shape {shape} from {path.name}.")
        info = BetaInfo(grid=(int(shape[3]), int(shape[2]), int(shape[1])), n_volumes=int(shape[0]),
                        dtype=dtype, kind=kind)
    _check_dtype(info.dtype, path)
    return info


def check_grid(info: BetaInfo, mask: np.ndarray, path: str | os.PathLike, mask_name: str = "nsdgeneral.nii.gz") -> None:
    """Raise :class:`MismatchError` if the beta grid differs from the mask grid."""
    if tuple(info.grid) != tuple(mask.shape):
        raise MismatchError(
            f"{Path(path).name} has grid {info.grid} (X, Y, Z) but {mask_name} has {mask.shape}; "
            "expected the same func1pt8mm grid."
        )


def _bbox(voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = voxels.min(axis=0).astype(np.int64)
    hi = voxels.max(axis=0).astype(np.int64) + 1
    return lo, hi


def read_masked_betas(path: str | os.PathLike, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stream one beta file and keep only ``voxels``.

    Parameters
    ----------
    path : path
        ``.nii.gz`` (X, Y, Z, trials) or ``.hdf5`` (dataset ``betas``: trials, Z, Y, X).
    voxels : int array of shape (n_voxels, 3)
        ijk (X, Y, Z order) of the voxels to keep, e.g. :func:`mask_voxels`.

    Returns
    -------
    X : float32 array of shape (n_volumes, n_voxels)
        Percent signal change (see the module docstring for the dtype rule); invalid voxels are 0.
    invalid : bool array of shape (n_voxels,)
        Voxels that are NaN in every volume or zero in every volume of this file.
    """
    path = Path(path)
    info = inspect_betas(path)
    voxels = np.asarray(voxels, dtype=np.int64)
    if voxels.size and ((voxels < 0).any() or (voxels >= np.asarray(info.grid)).any()):
        raise MismatchError(f"Voxel coordinates fall outside the grid {info.grid} of {path.name}.")
    lo, hi = _bbox(voxels)
    rel = voxels - lo
    box_bytes = int(np.prod(hi - lo)) * info.dtype.itemsize if info.kind == "hdf5" else (
        int(np.prod(info.grid)) * info.dtype.itemsize)
    step = max(1, READ_CHUNK_BYTES // max(box_bytes, 1))
    n, n_vox = info.n_volumes, voxels.shape[0]
    out = np.empty((n, n_vox), dtype=np.float32)
    nan_count = np.zeros(n_vox, dtype=np.int64)
    nonzero = np.zeros(n_vox, dtype=bool)
    is_float = info.dtype.kind == "f"
    try:
        if info.kind == "nifti":
            img = nib.load(path, keep_file_open=True)  # forward seeks in the gzip stream, no re-reads
            for t0 in range(0, n, step):
                t1 = min(n, t0 + step)
                block = np.asarray(img.dataobj[..., t0:t1])  # whole volumes: contiguous in the file
                _store(out, t0, t1, block[voxels[:, 0], voxels[:, 1], voxels[:, 2], :].T, is_float,
                       nan_count, nonzero, path)
        else:
            with h5py.File(path, "r") as fh:
                dset = fh["betas"]
                for t0 in range(0, n, step):
                    t1 = min(n, t0 + step)
                    block = dset[t0:t1, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]  # bounding box only
                    _store(out, t0, t1, block[:, rel[:, 2], rel[:, 1], rel[:, 0]], is_float,
                           nan_count, nonzero, path)
    except (CorruptFileError, InputError):
        raise
    except (*NIFTI_ERRORS, KeyError, RuntimeError) as exc:
        raise CorruptFileError(f"Cannot read betas from {path} (truncated or corrupt?): {exc}.") from None
    all_nan = nan_count == n
    partial = (nan_count > 0) & ~all_nan
    if partial.any():
        raise InputError(
            f"{path.name}: {int(partial.sum())} voxels are NaN in some but not all volumes; "
            "expected finite betas (or voxels NaN in every volume, which are dropped)."
        )
    return out, all_nan | ~nonzero


def _store(out, t0, t1, values, is_float, nan_count, nonzero, path):
    if is_float:
        values = values.astype(np.float32)
        nan = np.isnan(values)
        if np.isinf(values).any():
            raise InputError(f"{path.name} contains Inf betas; expected finite percent signal change.")
        finite = np.where(nan, 0.0, values)
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        if peak > FLOAT_PSC_MAX_ABS:
            raise InputError(
                f"{path.name} holds float betas up to |{peak:.4g}|; expected percent signal change within "
                f"+-{FLOAT_PSC_MAX_ABS:.1f} (unscaled int16 x {nsd_constants.BETA_SCALE:g} betas must be stored as int16)."
            )
        nan_count += nan.sum(axis=0)
        out[t0:t1] = finite
    else:
        out[t0:t1] = values.astype(np.float32) / np.float32(nsd_constants.BETA_SCALE)
        finite = values
    nonzero |= (finite != 0).any(axis=0)


def session_beta_file(data_root: str | os.PathLike, subject: str, session: int, beta_format: str = "auto") -> str | None:
    """Release-relative path of a session's beta file, or ``None`` if it is absent.

    ``beta_format``: ``'nifti'``, ``'hdf5'`` or ``'auto'`` (HDF5 if present: it supports bounding-box
    reads; else NIfTI).
    """
    candidates = {
        "hdf5": [nsd_constants.BETAS_HDF5],
        "nifti": [nsd_constants.BETAS_NII],
        "auto": [nsd_constants.BETAS_HDF5, nsd_constants.BETAS_NII],
    }
    check_choice("beta format", beta_format, candidates, error=InputError)
    for template in candidates[beta_format]:
        rel = template.format(subject=subject, session=session)
        if (Path(data_root) / rel).is_file():
            return rel
    return None


def list_sessions(data_root: str | os.PathLike, subject: str, beta_format: str = "auto") -> list[tuple[int, str]]:
    """Sessions 1..N with a beta file, as (session, relative path); the sessions must be contiguous."""
    n_max = nsd_constants.NSD_SESSIONS[subject] if subject in nsd_constants.NSD_SESSIONS else 0
    found = [(s, session_beta_file(data_root, subject, s, beta_format)) for s in range(1, n_max + 1)]
    present = [(s, rel) for s, rel in found if rel is not None]
    if not present:
        folder = Path(data_root) / nsd_constants.BETAS_DIR.format(subject=subject)
        raise MissingInputError(
            f"No beta files in {folder}; expected betas_session01.nii.gz or .hdf5 (format {beta_format})."
        )
    last = present[-1][0]
    gaps = [s for s, rel in found if rel is None and s < last]
    if gaps:
        missing = nsd_constants.BETAS_NII.format(subject=subject, session=gaps[0])
        raise MissingInputError(
            f"Session {gaps[0]} of {subject} has no beta file ({Path(data_root) / missing} or .hdf5) "
            f"but session {last} has; expected sessions 1..{last}."
        )
    return present
