"""Small, safe file helpers used by every stage.

* Every file appears atomically: it is written to a temporary file in the same folder and
  renamed into place (``os.replace`` is atomic on POSIX), so a crash never leaves a
  half-written result under the final name.
* JSON is written deterministically (sorted keys, fixed float formatting), so the same
  inputs give byte-identical files.
* Arrays are never pickled: ``np.load(..., allow_pickle=False)`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmri2img.core.errors import ChecksumError, CorruptFileError, MissingInputError, OutputError, PathEscapeError

#: Read size for streamed hashing (8 MiB: large enough to be I/O bound, small in memory).
HASH_CHUNK_BYTES = 8 * 1024 * 1024

#: Prefix of temporary files; a crash can leave one behind, never a file under its final name.
TMP_PREFIX = ".fmri2img-tmp-"


#: Mode of a new file before the umask, as ``open()`` creates it (POSIX ``creat``: 0666).
NEW_FILE_MODE = 0o666


def current_umask() -> int:
    """The process' file-mode creation mask, read without changing it where the OS allows
    (``/proc/self/status`` on Linux; elsewhere set and restored at once)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and check it is writable; raise :class:`OutputError` if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Cannot create output folder {path}: {exc.strerror or exc}; expected a writable folder path "
            "(no regular file on the way)."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder {path} is not writable; expected a writable folder.")
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`OutputError` unless ``path`` (a file to be written) can be created.

    Creates nothing: the nearest existing ancestor must be a writable folder. Called before
    any heavy work so an unusable output location fails at once, not after the beta cache.
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"Cannot write {path}: {ancestor} is not a folder; expected a writable output location.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {path}: folder {ancestor} is not writable; expected a writable output location.")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``final`` is left untouched. The file gets the mode ``open()`` would have given it
    (0666 less the umask), not the temporary file's private 0600.
    """
    final = Path(final)
    ensure_dir(final.parent)
    suffix = suffix if suffix is not None else "".join(final.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the mode a plain open() would
        os.chmod(tmp_path, NEW_FILE_MODE & ~current_umask())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``final``."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``final``."""
    return write_bytes(final, text.encode("utf-8"))


def plain_data(obj: Any) -> Any:
    """Plain data (dict, list, str, int, float, bool, None) for JSON or YAML: tuples become lists,
    numpy scalars/arrays and paths plain values, non-finite floats None."""
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_data(obj.tolist())
    if isinstance(obj, np.generic):
        return plain_data(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/Inf; null means "not available"
    return obj


def dumps_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, 2-space indent, trailing newline, NaN -> null."""
    return json.dumps(plain_data(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(final: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as deterministic JSON."""
    return write_text(final, dumps_json(obj))


def read_bytes(path: str | os.PathLike, what: str = "a file") -> bytes:
    """The bytes of ``path``; a missing, unreadable or non-regular file raises the package's errors
    (naming the file and ``what`` was expected) instead of an ``OSError`` traceback."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected {what}.")
    try:
        return path.read_bytes()
    except OSError as exc:  # permission denied, I/O error, a folder swapped in since the check
        raise CorruptFileError(f"Cannot read {path}: {exc.strerror or exc}; expected {what}, readable.") from None


def read_text(path: str | os.PathLike, what: str = "a UTF-8 text file") -> str:
    """The text of ``path`` decoded as UTF-8; bytes that are not UTF-8 raise :class:`CorruptFileError`
    naming the file and the offset (not a ``UnicodeDecodeError`` traceback)."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(
            f"{path} is not UTF-8 text (byte {data[exc.start:exc.start + 1]!r} at offset {exc.start}); "
            f"expected {what}."
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; missing or undecodable files raise the package's errors."""
    text = read_text(path, "a JSON file")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"Cannot parse {path} as JSON: {exc}.") from None


def save_npy(final: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically save one array as ``.npy`` (no pickle)."""
    with atomic_path(final, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array), allow_pickle=False)
    return Path(final)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` without pickle; ``mmap=True`` memory-maps it read-only."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}; expected a .npy array.")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(f"Cannot read {path} as a .npy array: {exc}.") from None


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, streamed in :data:`HASH_CHUNK_BYTES` chunks."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"File not found: {path}.")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """SHA-256 hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """SHA-256 of the deterministic JSON form of ``obj`` (a stable key for options/configs)."""
    return sha256_bytes(dumps_json(obj).encode("utf-8"))


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` if ``path``'s SHA-256 differs from ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} changed since it was recorded: SHA-256 {actual[:12]}..., expected {expected[:12]}..."
        )


def resolve_under(root: str | os.PathLike, relative: str) -> Path:
    """Resolve ``relative`` under ``root`` and refuse paths that escape it (``../``, absolute)."""
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        raise PathEscapeError(f"Path {relative!r} escapes the data root {root}; expected a path inside it.")
    return candidate
