"""The one reader of MATLAB v5 files (``nsd_expdesign.mat``, NSD-Imagery's design and pair lists).

:func:`scipy.io.loadmat` does the reading. Before it sees the bytes, :func:`check_mat5_tags` walks the
file's data elements (MATLAB "MAT-File Format" reference, "Data Element Format") and refuses any whose
data type is not a MAT v5 type: on such a file scipy 1.x crashes the interpreter (segmentation fault in
``scipy.io.matlab._mio5_utils``; found by fuzzing, issue 25: a ``C_pair_list.mat`` whose miDOUBLE tag 9
had become 25). Every other decoding failure of a damaged file becomes one :class:`CorruptFileError`.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import scipy.io

from fmri2img.core.errors import CorruptFileError
from fmri2img.core.files import read_bytes

#: MAT v5 data types (MAT-File Format, Table 1-1): miINT8..miSINGLE 1-7, miDOUBLE 9, miINT64 12, miUINT64 13,
#: miMATRIX 14, miCOMPRESSED 15, miUTF8 16, miUTF16 17, miUTF32 18.
MAT5_TYPES = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18))
MI_MATRIX, MI_COMPRESSED = 14, 15
#: The 128-byte header: 116 text + 8 subsystem offset + 2 version + 2 endian indicator.
HEADER_BYTES = 128
#: Version field of a v5/v7 file (a v7.3 file, HDF5, says 0x0200 and is read with h5py).
VERSION_5 = 0x0100
#: Deepest nesting of miMATRIX elements followed (NSD's files nest 2 deep: cell -> matrix).
MAX_DEPTH = 32


def check_mat5_tags(data: bytes, path: Path) -> None:
    """Raise :class:`CorruptFileError` if an element of MAT v5 ``data`` has an unknown type or overruns
    its parent. Files that are not v5 (too short, v4, v7.3) are left to scipy's own checks."""
    if len(data) < HEADER_BYTES:
        return
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None or struct.unpack_from(order + "H", data, 124)[0] != VERSION_5:
        return
    _walk(data, HEADER_BYTES, len(data), order, path, 0)


def _walk(data: bytes, pos: int, end: int, order: str, path: Path, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CorruptFileError(f"Cannot read {path} as a MATLAB file: elements nested over {MAX_DEPTH} deep.")
    while pos + 8 <= end:
        first, size = struct.unpack_from(order + "II", data, pos)
        if first >> 16:  # small data element: size in the upper 16 bits, up to 4 bytes inside the tag
            mdtype, size, start, stop = first & 0xFFFF, first >> 16, pos + 4, pos + 8
        else:
            mdtype, start = first, pos + 8
            stop = start + size if mdtype == MI_COMPRESSED else start + size + (-size % 8)
        if mdtype not in MAT5_TYPES:
            raise CorruptFileError(f"Cannot read {path} as a MATLAB file: the element at byte {pos} has data type "
                                   f"{mdtype}; expected a MAT v5 type (1-7, 9, 12-18). Truncated or corrupt?")
        if start + size > end:
            raise CorruptFileError(f"Cannot read {path} as a MATLAB file: the element at byte {pos} runs past "
                                   "its end (truncated or corrupt?).")
        if mdtype == MI_MATRIX:
            _walk(data, start, start + size, order, path, depth + 1)
        elif mdtype == MI_COMPRESSED:
            try:
                inner = zlib.decompress(data[start:start + size])
            except zlib.error as exc:
                raise CorruptFileError(f"Cannot read {path} as a MATLAB file: compressed element at byte {pos}: "
                                       f"{exc}.") from None
            _walk(inner, 0, len(inner), order, path, depth + 1)
        pos = stop


def loadmat_v5(path: str | Path, names: tuple[str, ...]) -> dict | None:
    """Variables ``names`` of a MATLAB v5 file (:func:`scipy.io.loadmat`); ``None`` for a v7.3 (HDF5) file.

    Raises :class:`CorruptFileError` naming the file for any damage: unknown element types (checked
    first, see the module docstring) and whatever scipy raises (``MatReadError``, ``ValueError``,
    ``EOFError``, even ``UnboundLocalError``, all found by fuzzing).
    """
    path = Path(path)
    data = read_bytes(path, "a MATLAB file")
    check_mat5_tags(data, path)
    try:
        return scipy.io.loadmat(io.BytesIO(data), variable_names=list(names))
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        return None
    except Exception as exc:  # noqa: BLE001 - any decoding failure of a damaged file, see above
        raise CorruptFileError(
            f"Cannot read {path} as a MATLAB file (truncated or corrupt?): {type(exc).__name__}: {exc}."
        ) from None
