"""The MATLAB files of NSD-Imagery: the GLMsingle design cells and the cue/target pair lists.

Read with :func:`scipy.io.loadmat` (MATLAB v5/v7, what the public reproductions load); a v7.3 file
(HDF5) falls back to :mod:`h5py`, whose cell arrays are object references and whose matrices are
stored transposed.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse

from fmri2img.core.errors import CorruptFileError, InputError, MissingInputError
from fmri2img.data import nsd_constants
from fmri2img.data.matfile import loadmat_v5
from fmri2img.data.nsd import HDF5_ERRORS


def _cells_v73(path: Path, name: str) -> list:
    """Elements of the cell variable ``name`` of a v7.3 file, in MATLAB (column-major) order."""
    try:
        with h5py.File(path, "r") as fh:
            if name not in fh:
                raise InputError(f"{path} has no variable {name!r}; expected the NSD-Imagery {name}.")
            refs = np.asarray(fh[name])
            if refs.dtype != h5py.ref_dtype:
                raise InputError(f"{path}: variable {name!r} is no cell array; expected a MATLAB cell.")
            # h5py shape is MATLAB's reversed, so C-order over it is MATLAB's column-major order
            return [_deref(fh[ref]) for ref in refs.ravel()]
    except InputError:
        raise
    except HDF5_ERRORS as exc:
        raise CorruptFileError(f"Cannot open {path} as a MATLAB v7.3 (HDF5) file: {exc}.") from None


def _deref(obj) -> object:
    if isinstance(obj, h5py.Group) and "MATLAB_sparse" in obj.attrs:  # sparse: CSC parts, transposed names
        n_rows = int(obj.attrs["MATLAB_sparse"])
        jc = np.asarray(obj["jc"])
        data = np.asarray(obj["data"]) if "data" in obj else np.ones(len(obj["ir"]))
        return scipy.sparse.csc_array((data, np.asarray(obj["ir"]), jc), shape=(n_rows, len(jc) - 1)).toarray()
    value = np.asarray(obj)
    if obj.attrs.get("MATLAB_class", b"") in (b"char", "char"):
        return "".join(map(chr, value.T.ravel()))
    return value.T


def load_cells(path: str | os.PathLike, name: str) -> tuple[list, tuple[int, ...]]:
    """The elements of MATLAB cell variable ``name`` and the cell's shape, any MAT version.

    Returns
    -------
    cells : list
        Elements in column-major order: 2D arrays (dense; sparse ones converted), strings or numbers.
    shape : tuple of int
        The cell's MATLAB shape.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected a MATLAB file with variable {name!r}.")
    mat = loadmat_v5(path, (name,))
    if mat is None:
        try:
            with h5py.File(path, "r") as fh:
                shape = tuple(reversed(fh[name].shape)) if name in fh else ()
        except HDF5_ERRORS as exc:
            raise CorruptFileError(f"Cannot read {path} as a MATLAB v7.3 (HDF5) file: {exc}.") from None
        return _cells_v73(path, name), shape
    if name not in mat:
        raise InputError(f"{path} has no variable {name!r}; expected the NSD-Imagery {name}.")
    value = mat[name]
    if value.dtype != object:
        raise InputError(f"{path}: variable {name!r} is a {value.dtype} array; expected a MATLAB cell.")
    cells = []
    for item in value.ravel(order="F"):
        if scipy.sparse.issparse(item):
            cells.append(item.toarray())
        elif np.asarray(item).dtype.kind in "US":
            cells.append("".join(np.asarray(item).ravel()))
        else:
            cells.append(np.asarray(item))
    return cells, value.shape


def read_design(path: str | os.PathLike) -> list[np.ndarray]:
    """The ``stimulus`` cells of ``designmatrixGLMsingle.mat``: one (n_TRs, n_conditions) array per run."""
    cells, shape = load_cells(path, "stimulus")
    if len(cells) != nsd_constants.IMAGERY_RUNS or min(shape, default=0) != 1:
        raise InputError(f"{path}: `stimulus` is a {'x'.join(map(str, shape))} cell; expected 1x{nsd_constants.IMAGERY_RUNS} "
                         "(one TR x condition matrix per run).")
    design = []
    for k, cell in enumerate(cells, start=1):
        cell = np.asarray(cell)
        if cell.ndim != 2 or cell.dtype.kind not in "biuf":
            raise InputError(f"{path}: `stimulus` cell {k} is a {cell.dtype} array of shape {cell.shape}; "
                             "expected a 2D numeric TR x condition matrix.")
        design.append(cell)
    return design


def _text(item) -> str:
    if isinstance(item, str):
        return item.strip()
    value = np.asarray(item).ravel()
    if value.size != 1:
        return ""
    return str(value[0]).strip()


def read_pair_list(path: str | os.PathLike, stim_set: str) -> pd.DataFrame:
    """The cue/target pairs of one set from ``<set>_pair_list.mat`` (cell ``pair_list``: id, target, cue).

    Returns
    -------
    DataFrame of shape (6, 3)
        Columns ``id`` (as written), ``target`` (file name for sets A/B, concept for C) and ``cue``
        (a letter), in pair-list order.
    """
    cells, shape = load_cells(path, "pair_list")
    if len(shape) != 2 or shape[1] < 3 or shape[0] != nsd_constants.IMAGERY_STIMULI_PER_SET:
        raise InputError(f"{path}: `pair_list` is a {'x'.join(map(str, shape))} cell; expected "
                         f"{nsd_constants.IMAGERY_STIMULI_PER_SET}x3 (id, target, cue) for set {stim_set}.")
    n = shape[0]
    grid = [[cells[col * n + row] for col in range(3)] for row in range(n)]  # column-major -> rows
    table = pd.DataFrame([[_text(a), _text(b), _text(c)] for a, b, c in grid], columns=["id", "target", "cue"])
    bad = table[(table["cue"] == "") | (table["target"] == "")]
    if not bad.empty:
        raise InputError(f"{path}: pair {bad.index[0] + 1} has target {bad['target'].iloc[0]!r} and cue "
                         f"{bad['cue'].iloc[0]!r}; expected a target and a cue letter in every row.")
    for column in ("cue", "target"):
        dup = table[column][table[column].duplicated()]
        if not dup.empty:
            raise InputError(f"{path}: {column} {dup.iloc[0]!r} is listed twice; expected unique {column}s "
                             f"in set {stim_set}.")
    return table
