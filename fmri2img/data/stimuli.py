"""The stimuli to embed, listed from trial-index Parquet files (contracts, section 2).

Each unique ``stimulus_id`` has either an ``image_ref`` (``<hdf5 path>#<row>`` into NSD's
``imgBrick``, or a PNG path relative to the data root) or a ``text`` (NSD-Imagery set C).
Images are read one at a time: :class:`StimulusReader` keeps the HDF5 file open and reads
only the requested row of ``imgBrick`` (73k x 425 x 425 x 3 in the real release), never the
whole brick.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fmri2img.core.errors import CorruptFileError, InputError, MissingInputError, SchemaError
from fmri2img.core.files import resolve_under, sha256_bytes

#: Index columns this module reads (contracts, section 2).
REQUIRED_COLUMNS = ("stimulus_id", "image_ref", "text")

#: Dataset of NSD's stimulus file holding the images (NSD data manual, "nsd_stimuli.hdf5").
IMG_BRICK_DATASET = "imgBrick"

#: Separator between an HDF5 path and a row number in ``image_ref``.
HDF5_REF_SEPARATOR = "#"

#: Prefixes hashed together with the content, so an image and a text never share a key.
_IMAGE_PREFIX = b"image-rgb-uint8:"
_PNG_PREFIX = b"image-file:"
_TEXT_PREFIX = b"text:"


@dataclass(frozen=True)
class Stimulus:
    """One stimulus to embed.

    Attributes
    ----------
    stimulus_id : str
        ``nsd-00042``, ``img-A-<name>``, ``img-C-<name>``.
    modality : str
        ``"image"`` (has ``image_ref``) or ``"text"`` (has ``text`` only).
    image_ref : str or None
        ``<relative .hdf5 path>#<row>`` or a relative PNG path.
    text : str or None
        The words of a conceptual stimulus.
    """

    stimulus_id: str
    modality: str
    image_ref: str | None = None
    text: str | None = None


def _clean(value: Any) -> str | None:
    """Normalise a nullable string cell: None / NaN / '' -> None."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def _read_index(path: Path):
    if not path.is_file():
        raise MissingInputError(f"Index file not found: {path}; expected a trial-index Parquet (fmri2img index).")
    try:
        table = pd.read_parquet(path, columns=None)
    except Exception as exc:  # pyarrow raises many types for a broken file
        raise CorruptFileError(f"Cannot read {path} as Parquet: {str(exc).splitlines()[0]}.") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise SchemaError(f"Index {path} lacks column(s) {', '.join(missing)}; expected the trial-index schema.")
    return table


def list_stimuli(index_paths: Iterable[str | Path]) -> list[Stimulus]:
    """Unique stimuli of one or more trial indexes, sorted by ``stimulus_id``.

    Parameters
    ----------
    index_paths : iterable of path
        Trial-index Parquet files (contracts, section 2).

    Returns
    -------
    list of Stimulus

    Raises
    ------
    InputError
        If a stimulus has neither image nor text, or two rows give one id different content.
    """
    paths = [Path(p) for p in index_paths]
    if not paths:
        raise InputError("No index file given; expected at least one --index PATH.")
    seen: dict[str, tuple[Stimulus, Path]] = {}
    for path in paths:
        table = _read_index(path)
        unique = table[list(REQUIRED_COLUMNS)].drop_duplicates()
        for stimulus_id, image_ref, text in unique.itertuples(index=False, name=None):
            stimulus_id = _clean(stimulus_id)
            if stimulus_id is None:
                raise SchemaError(f"Index {path} has a row without stimulus_id; expected one per row.")
            image_ref, text = _clean(image_ref), _clean(text)
            if image_ref is not None:
                stim = Stimulus(stimulus_id, "image", image_ref=image_ref)
            elif text is not None:
                stim = Stimulus(stimulus_id, "text", text=text)
            else:
                raise InputError(
                    f"Stimulus {stimulus_id!r} in {path} has neither image_ref nor text; expected one of them."
                )
            previous = seen.get(stimulus_id)
            if previous is not None and previous[0] != stim:
                raise InputError(
                    f"Stimulus {stimulus_id!r} is {previous[0].image_ref or previous[0].text!r} in {previous[1]} "
                    f"but {stim.image_ref or stim.text!r} in {path}; expected one content per id."
                )
            seen[stimulus_id] = (stim, path)
    return [seen[k][0] for k in sorted(seen)]


def is_hdf5_ref(image_ref: str) -> bool:
    """Whether ``image_ref`` names a row of an HDF5 file (``<file>.hdf5#<row>``), not a PNG."""
    return HDF5_REF_SEPARATOR in image_ref and image_ref.split(HDF5_REF_SEPARATOR)[0].endswith((".hdf5", ".h5"))


class StimulusReader:
    """Reads stimulus contents under a data root, one at a time (a context manager).

    HDF5 files are opened once and kept open until :meth:`close`; each image is one row
    read from ``imgBrick``.
    """

    def __init__(self, data_root: str | Path):
        self.data_root = data_root
        self._files: dict[Path, Any] = {}

    def __enter__(self) -> StimulusReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._files.values():
            with contextlib.suppress(Exception):
                handle.close()
        self._files.clear()

    def _hdf5(self, relative: str):
        path = resolve_under(self.data_root, relative)
        handle = self._files.get(path)
        if handle is None:
            if not path.is_file():
                raise MissingInputError(f"Stimulus file not found: {path}; expected NSD's nsd_stimuli.hdf5.")
            try:
                handle = h5py.File(path, "r")
            except OSError as exc:
                raise CorruptFileError(f"Cannot open {path} as HDF5: {exc}.") from None
            if IMG_BRICK_DATASET not in handle:
                handle.close()
                raise CorruptFileError(f"{path} has no dataset {IMG_BRICK_DATASET!r}; expected NSD's stimulus file.")
            self._files[path] = handle
        return path, handle[IMG_BRICK_DATASET]

    def _brick_row(self, image_ref: str) -> np.ndarray:
        relative, _, row_text = image_ref.rpartition(HDF5_REF_SEPARATOR)
        try:
            row = int(row_text)
        except ValueError:
            raise InputError(f"Bad image_ref {image_ref!r}; expected '<file>.hdf5#<row>'.") from None
        path, brick = self._hdf5(relative)
        if not (0 <= row < brick.shape[0]):
            raise InputError(f"image_ref {image_ref!r}: row {row} outside {path} imgBrick with {brick.shape[0]} images.")
        if brick.ndim != 4 or brick.shape[-1] != 3 or brick.dtype != np.uint8:
            raise CorruptFileError(
                f"{path} imgBrick is {brick.dtype} {brick.shape}; expected uint8 (n_images, H, W, 3)."
            )
        return np.asarray(brick[row])  # reads this one image only

    def _png_bytes(self, image_ref: str) -> tuple[Path, bytes]:
        path = resolve_under(self.data_root, image_ref)
        if not path.is_file():
            raise MissingInputError(f"Stimulus image not found: {path} (image_ref {image_ref!r}).")
        return path, path.read_bytes()

    def content_sha256(self, stimulus: Stimulus) -> str:
        """SHA-256 of what is embedded: the image's pixels (HDF5) or file bytes (PNG), or the text."""
        if stimulus.modality == "text":
            return sha256_bytes(_TEXT_PREFIX + str(stimulus.text).encode("utf-8"))
        if is_hdf5_ref(stimulus.image_ref):
            pixels = self._brick_row(stimulus.image_ref)
            shape = ("x".join(str(s) for s in pixels.shape) + ":").encode()
            return sha256_bytes(_IMAGE_PREFIX + shape + np.ascontiguousarray(pixels).tobytes())
        _, data = self._png_bytes(stimulus.image_ref)
        return sha256_bytes(_PNG_PREFIX + data)

    def image(self, stimulus: Stimulus):
        """The stimulus as an RGB ``PIL.Image``."""
        if stimulus.modality != "image":
            raise InputError(f"Stimulus {stimulus.stimulus_id!r} is text, not an image.")
        if is_hdf5_ref(stimulus.image_ref):
            return Image.fromarray(self._brick_row(stimulus.image_ref)).convert("RGB")
        path, data = self._png_bytes(stimulus.image_ref)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise CorruptFileError(f"Cannot decode image {path}: {exc}.") from None


def check_images(images: Any, name: str) -> np.ndarray:
    """Validate a batch of square RGB images: uint8, or float in [0, 1].

    Parameters
    ----------
    images : array of shape (n, H, H, 3)
    name : str
        Used in the error message.

    Returns
    -------
    images : the same array (not copied)

    Raises
    ------
    InputError
        Wrong shape (not 4-D, not square, not 3 channels, no image), dtype, or values.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[1] != arr.shape[2] or 0 in arr.shape:
        raise InputError(f"Expected {name} as square RGB images of shape (n, H, H, 3), got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"Expected {name} as uint8 or float images in [0, 1], got dtype {arr.dtype}.")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise InputError(f"Expected float {name} in [0, 1], got values in [{arr.min()}, {arr.max()}].")
    return arr
