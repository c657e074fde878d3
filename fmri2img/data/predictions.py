"""The predictions folder: a model's outputs per stimulus, the contract of ``fmri2img reconstruct`` (which
writes it) and ``fmri2img eval --predictions`` (which scores it, for this toolkit's decoders and any other
model alike). Documented in ``docs/comparing.md``::

    <folder>/
      embeddings.npz                      optional: predicted embeddings, one row per (test set, stimulus)
          stimulus_id : str array (n,)    ids of the trial index (``stimulus_id`` column)
          test_set    : str array (n,)    one of shared1000, imagery_vision, imagery
          embedding   : float array (n, d)
      images/<test_set>/<stimulus_id>.png optional: one RGB reconstruction per stimulus (square, any side)
      reconstruct.json                    written by ``fmri2img reconstruct`` (provenance; not read here)

At least one of the two must be present. Row order, file order and image side are free; every id must be
a stimulus of the index's test set (checked by the reader of the index, :func:`check_ids`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmri2img.core.errors import CorruptFileError, InputError, MissingInputError
from fmri2img.core.files import atomic_path, write_bytes
from fmri2img.core.vocab import TEST_SETS

#: File and folder names of the contract.
EMBEDDINGS_FILE = "embeddings.npz"
IMAGES_DIR = "images"
NPZ_KEYS = ("stimulus_id", "test_set", "embedding")


@dataclass
class PredictionSet:
    """What a predictions folder holds.

    Attributes
    ----------
    embeddings : dict test set -> (ids, array of shape (n, d))
    images : dict test set -> dict stimulus id -> image file
    root : Path
    """

    root: Path
    embeddings: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    images: dict[str, dict[str, Path]] = field(default_factory=dict)

    @property
    def test_sets(self) -> list[str]:
        """Test sets with embeddings or images, in :data:`~fmri2img.core.vocab.TEST_SETS` order."""
        return [t for t in TEST_SETS if t in self.embeddings or t in self.images]


def _check_test_set(name: str, where: Path) -> None:
    if name not in TEST_SETS:
        raise InputError(f"Unknown test set {name!r} in {where}; expected one of {', '.join(TEST_SETS)}.")


def _read_embeddings(path: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise InputError(f"{path} lacks array(s) {missing}; expected {list(NPZ_KEYS)} (docs/comparing.md).")
            ids, sets, emb = (npz[k] for k in NPZ_KEYS)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(f"Cannot read {path} as an NPZ of plain arrays: {str(exc).splitlines()[0]}") from None
    if ids.ndim != 1 or sets.shape != ids.shape or emb.ndim != 2 or emb.shape[0] != ids.shape[0] or not emb.size:
        raise InputError(f"{path}: expected stimulus_id (n,), test_set (n,) and embedding (n, d), got shapes "
                         f"{ids.shape}, {sets.shape} and {emb.shape}.")
    if not np.issubdtype(emb.dtype, np.floating) or not np.all(np.isfinite(emb)):
        raise InputError(f"{path}: expected finite float embeddings, got dtype {emb.dtype} (or NaN / inf).")
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in dict.fromkeys(str(s) for s in sets):
        _check_test_set(name, path)
        rows = np.flatnonzero(sets.astype(str) == name)
        row_ids = [str(s) for s in ids[rows]]
        if len(set(row_ids)) != len(row_ids):
            dup = next(s for s in row_ids if row_ids.count(s) > 1)
            raise InputError(f"{path}: stimulus {dup!r} appears twice in test set {name!r}; expected one row each.")
        out[name] = (row_ids, emb[rows].astype(np.float32))
    return out


def read_predictions(folder: str | Path) -> PredictionSet:
    """Read the index of a predictions folder (embeddings loaded, images listed); a path to an ``.npz``
    file instead reads those embeddings alone.

    Raises
    ------
    MissingInputError
        No such folder, or neither ``embeddings.npz`` nor ``images/``.
    InputError, CorruptFileError
        Unknown test set, malformed NPZ, a file in ``images/`` that is not ``<test_set>/<id>.png``.
    """
    root = Path(folder)
    if root.is_file() and root.suffix == ".npz":
        return PredictionSet(root.parent, embeddings=_read_embeddings(root))
    if not root.is_dir():
        raise MissingInputError(f"Predictions folder not found: {root}; expected {EMBEDDINGS_FILE} and/or "
                                f"{IMAGES_DIR}/<test_set>/<stimulus_id>.png (docs/comparing.md).")
    out = PredictionSet(root)
    if (root / EMBEDDINGS_FILE).is_file():
        out.embeddings = _read_embeddings(root / EMBEDDINGS_FILE)
    images = root / IMAGES_DIR
    if images.is_dir():
        for entry in sorted(images.iterdir()):
            _check_test_set(entry.name, images)
            files = sorted(entry.iterdir()) if entry.is_dir() else []
            bad = next((f for f in files if f.suffix.lower() != ".png" or not f.is_file()), None)
            if bad is not None:
                raise InputError(f"Unexpected file {bad}; expected only <stimulus_id>.png images in {entry}.")
            if files:
                out.images[entry.name] = {f.stem: f for f in files}
        out.images = {name: out.images[name] for name in TEST_SETS if name in out.images}  # report order
    if not out.test_sets:
        raise MissingInputError(f"{root} holds no predictions: expected {EMBEDDINGS_FILE} and/or "
                                f"{IMAGES_DIR}/<test_set>/<stimulus_id>.png (docs/comparing.md).")
    return out


def check_ids(given: Sequence[str], known: Sequence[str], test_set: str, where: str | Path) -> None:
    """Refuse predictions for stimuli that are not in the index's test set (InputError naming one)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InputError(f"{where}: {len(unknown)} prediction(s) for stimulus ids not in test set {test_set!r} of "
                         f"the index (e.g. {unknown[0]!r}); expected ids among its {len(set(known))} stimuli.")


def load_images(files: Sequence[Path]) -> np.ndarray:
    """Read PNGs into one uint8 batch (n, H, H, 3); all must be square RGB(A) images of one size."""
    out = []
    for path in files:
        try:
            with Image.open(io.BytesIO(Path(path).read_bytes())) as img:
                mode = img.mode
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise CorruptFileError(f"Cannot decode image {path}: {exc}.") from None
        if mode not in ("RGB", "RGBA", "L", "P") or arr.shape[0] != arr.shape[1]:
            raise InputError(f"Image {path} is {mode} of {arr.shape[1]} x {arr.shape[0]} px; expected a square "
                             "RGB image.")
        if out and arr.shape != out[0].shape:
            raise InputError(f"Image {path} has shape {arr.shape}, expected {out[0].shape} like {files[0]}.")
        out.append(arr)
    return np.stack(out)


def write_embeddings(folder: str | Path, embeddings: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> Path:
    """Write ``embeddings.npz`` (test set -> (ids, (n, d) array)) atomically; returns its path."""
    ids, sets, rows = [], [], []
    for test_set, (set_ids, emb) in embeddings.items():
        ids += list(set_ids)
        sets += [test_set] * len(set_ids)
        rows.append(np.asarray(emb, np.float32))
    path = Path(folder) / EMBEDDINGS_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, stimulus_id=np.array(ids, dtype=str), test_set=np.array(sets, dtype=str),
                 embedding=np.concatenate(rows))
    return path


def write_image(folder: str | Path, test_set: str, stimulus_id: str, image: np.ndarray) -> Path:
    """Write one reconstruction as ``images/<test_set>/<stimulus_id>.png`` atomically."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return write_bytes(Path(folder) / IMAGES_DIR / test_set / f"{stimulus_id}.png", buffer.getvalue())


__all__ = ["EMBEDDINGS_FILE", "IMAGES_DIR", "NPZ_KEYS", "PredictionSet", "check_ids", "load_images",
           "read_predictions", "write_embeddings", "write_image"]
