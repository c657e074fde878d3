"""The embedding-set cache: ``<cache_root>/clip/<tag>/`` (contracts, section 4).

One folder per model identity::

    embeddings.npy   float32 (n, d), every row L2-normalised
    ids.json         {"stimulus_ids": [...], "content_sha256": [...], "modality": ["image"|"text", ...]}
    meta.json        {model, pretrained, checkpoint_sha256, preprocessing, open_clip_version, dim, tag,
                      n, embeddings_sha256, ...}

Each entry is keyed by the SHA-256 of its content (image bytes or text) and the set's model
identity (:data:`IDENTITY_KEYS` of ``meta``): :func:`merge_embedding_sets` refuses to mix sets of
different identities, and an entry whose content hash changed is replaced, never reused.
Rows are sorted by stimulus id, so the same inputs always give byte-identical files.

The synthetic world's planted latents are exposed as the set ``synthetic-truth``
(:func:`synthetic_truth_set`) so every later stage runs on the demo without CLIP weights.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmri2img.core.constants import SYNTHETIC_TRUTH_EMBEDDINGS
from fmri2img.core.errors import ChecksumError, CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.core.files import load_npy, read_json, save_npy, sha256_bytes, sha256_file, write_json

#: Sub-folder of the cache root holding the embedding sets.
CLIP_SUBDIR = "clip"

#: File names of one set (contracts, section 4).
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
#: Keys of ids.json, one list each, aligned with the rows of embeddings.npy.
IDS_KEYS = ("stimulus_ids", "content_sha256", "modality")

#: Meta keys that identify the model that made a set; sets differing in any of them never mix.
IDENTITY_KEYS = ("model", "pretrained", "checkpoint_sha256", "init", "open_clip_version")

#: Allowed modalities of an entry.
MODALITIES = ("image", "text")

#: Tolerance on row norms when checking that vectors are L2-normalised (float32 rounding).
NORM_TOLERANCE = 1e-4

#: Synthetic world ground truth (contracts, section 1).
TRUTH_LATENTS = "truth/latents.npy"
TRUTH_IDS = "truth/stimulus_ids.json"

#: Stimulus-id prefix of NSD-Imagery set C (conceptual, words only; contracts, section 2).
TEXT_ID_PREFIX = "img-C-"

_TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def l2_normalize(vectors: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """Return ``vectors`` as float32 with unit L2 norm per row.

    Parameters
    ----------
    vectors : array of shape (n, d)
    what : str
        Name used in the error message.

    Returns
    -------
    array of shape (n, d), float32
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise InputError(f"Expected {what} of shape (n, d), got shape {vectors.shape}.")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise InputError(f"Row {int(bad[0])} of {what} has zero or non-finite norm; cannot L2-normalise it.")
    return (vectors / norms).astype(np.float32)


def identity_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The model identity of a set: the :data:`IDENTITY_KEYS` of its ``meta``."""
    return {key: meta.get(key) for key in IDENTITY_KEYS}


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a safe folder name, else raise :class:`InputError`."""
    if not isinstance(tag, str) or not _TAG_PATTERN.match(tag) or ".." in tag:
        raise InputError(
            f"Invalid embedding-set tag {tag!r}; expected letters, digits and '._+-' (e.g. 'ViT-B-32__openai')."
        )
    return tag


def set_dir(cache_root: str | Path, tag: str) -> Path:
    """Folder of the set ``tag``: ``<cache_root>/clip/<tag>``."""
    return Path(cache_root) / CLIP_SUBDIR / check_tag(tag)


@dataclass(frozen=True, eq=False)
class EmbeddingSet:
    """Embeddings of stimuli, tied to the model that made them.

    Attributes
    ----------
    ids : tuple of str, length n
        Stimulus ids (contracts, section 2), unique, sorted.
    vectors : array of shape (n, d), float32
        L2-normalised embeddings, row i belongs to ``ids[i]``.
    modality : tuple of str, length n
        ``"image"`` or ``"text"`` per entry.
    content_sha256 : tuple of str, length n
        SHA-256 of what was embedded (image bytes or text) per entry.
    meta : dict
        ``model``, ``pretrained``, ``checkpoint_sha256``, ``preprocessing``, ``open_clip_version``,
        ``dim``, ``tag`` and more (see the module docstring).
    computed : tuple of str
        Ids (re)computed by the call that returned this object; empty for a set read from disk.
        Never saved.
    """

    ids: tuple[str, ...]
    vectors: np.ndarray
    modality: tuple[str, ...]
    content_sha256: tuple[str, ...]
    meta: dict[str, Any]
    computed: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors)
        where = f"embedding set {self.meta.get('tag')!r}"
        if vectors.dtype != np.float32 or vectors.ndim != 2:
            raise InputError(f"Expected float32 vectors of shape (n, d) in {where}, got {vectors.dtype} {vectors.shape}.")
        n = vectors.shape[0]
        for name in ("ids", "modality", "content_sha256"):
            if len(getattr(self, name)) != n:
                raise InputError(f"{where}: {len(getattr(self, name))} {name} for {n} vectors; expected one per row.")
        if len(set(self.ids)) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise InputError(f"{where}: stimulus id {dup!r} appears more than once; expected unique ids.")
        bad = [m for m in self.modality if m not in MODALITIES]
        if bad:
            raise InputError(f"{where}: modality {bad[0]!r}; expected one of {', '.join(MODALITIES)}.")
        if n:
            norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
            worst = int(np.argmax(np.abs(norms - 1.0)))
            if not abs(norms[worst] - 1.0) <= NORM_TOLERANCE:
                raise InputError(f"{where}: vector of {self.ids[worst]!r} has norm {norms[worst]:.6g}; expected 1.")

    @property
    def tag(self) -> str:
        return str(self.meta.get("tag"))

    @property
    def dim(self) -> int:
        return int(np.asarray(self.vectors).shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def _row(self) -> dict[str, int]:
        return {stimulus_id: i for i, stimulus_id in enumerate(self.ids)}

    def __contains__(self, stimulus_id: object) -> bool:
        return stimulus_id in self._row

    def rows(self, stimulus_ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``stimulus_ids``; :class:`InputError` names the first missing id."""
        rows = []
        for stimulus_id in stimulus_ids:
            row = self._row.get(stimulus_id)
            if row is None:
                raise InputError(
                    f"Stimulus {stimulus_id!r} has no embedding in set {self.tag!r} ({len(self)} entries); "
                    f"expected every stimulus to be embedded (run `fmri2img embed` on its index)."
                )
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def lookup(self, stimulus_ids: Iterable[str]) -> np.ndarray:
        """Embeddings of ``stimulus_ids`` in that order.

        Returns
        -------
        Y : array of shape (len(stimulus_ids), d), float32
        """
        return np.asarray(self.vectors)[self.rows(stimulus_ids)].astype(np.float32, copy=True)

    def subset(self, stimulus_ids: Iterable[str]) -> EmbeddingSet:
        """A new set with only ``stimulus_ids`` (same meta; rows sorted by id)."""
        keep = np.sort(self.rows(sorted(set(stimulus_ids))))
        return _with_rows(self, keep)


def _with_rows(emb: EmbeddingSet, rows: np.ndarray) -> EmbeddingSet:
    vectors = np.asarray(emb.vectors)[rows]
    meta = dict(emb.meta, n=int(len(rows)))
    return EmbeddingSet(
        ids=tuple(emb.ids[i] for i in rows),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        modality=tuple(emb.modality[i] for i in rows),
        content_sha256=tuple(emb.content_sha256[i] for i in rows),
        meta=meta,
    )


def make_embedding_set(
    ids: Sequence[str],
    vectors: np.ndarray,
    modality: Sequence[str],
    content_sha256: Sequence[str],
    meta: Mapping[str, Any],
    computed: Sequence[str] = (),
    normalize: bool = True,
) -> EmbeddingSet:
    """Build a set with rows sorted by stimulus id, vectors L2-normalised (``normalize``; unit
    vectors of existing sets are taken as they are, so merging never moves them by a float32
    rounding) and ``meta`` completed (``dim``, ``n``).

    Parameters
    ----------
    ids : sequence of str, length n
    vectors : array of shape (n, d)
    modality, content_sha256 : sequences of str, length n
    meta : mapping
        Must contain ``tag``; should contain the :data:`IDENTITY_KEYS`.
    """
    ids = [str(i) for i in ids]
    if not len(ids):
        vectors = np.zeros((0, int(meta.get("dim", 0))), np.float32)
    elif normalize:
        vectors = l2_normalize(vectors)
    else:
        vectors = np.asarray(vectors, dtype=np.float32)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable") if ids else np.zeros(0, np.int64)
    full_meta = {k: v for k, v in meta.items() if k != "embeddings_sha256"}  # set again on save
    check_tag(str(full_meta.get("tag")))
    full_meta["dim"] = int(vectors.shape[1])
    full_meta["n"] = len(ids)
    return EmbeddingSet(
        ids=tuple(ids[i] for i in order),
        vectors=np.ascontiguousarray(vectors[order]),
        modality=tuple(str(modality[i]) for i in order),
        content_sha256=tuple(str(content_sha256[i]) for i in order),
        meta=full_meta,
        computed=tuple(sorted(str(c) for c in computed)),
    )


def merge_embedding_sets(base: EmbeddingSet, new: EmbeddingSet) -> EmbeddingSet:
    """Union of two sets made by the same model; entries of ``new`` replace those of ``base``.

    Raises
    ------
    MismatchError
        If the sets were made with different models (any of :data:`IDENTITY_KEYS` differs) or
        have different dimensions.
    """
    check_same_model(base.meta, new.meta, where=f"embedding set {base.tag!r}")
    if len(base) and len(new) and base.dim != new.dim:
        raise MismatchError(f"Cannot merge embedding sets of dimension {base.dim} and {new.dim}.")
    replaced = set(new.ids)
    keep = [i for i, stimulus_id in enumerate(base.ids) if stimulus_id not in replaced]
    vectors = np.concatenate([np.asarray(base.vectors)[keep], np.asarray(new.vectors)], axis=0)
    meta = dict(base.meta)
    meta.update(new.meta)
    return make_embedding_set(
        ids=[base.ids[i] for i in keep] + list(new.ids),
        vectors=vectors,
        modality=[base.modality[i] for i in keep] + list(new.modality),
        content_sha256=[base.content_sha256[i] for i in keep] + list(new.content_sha256),
        meta=meta,
        computed=new.computed,
        normalize=False,
    )


def check_same_model(existing: Mapping[str, Any], wanted: Mapping[str, Any], where: str) -> None:
    """Raise :class:`MismatchError` naming the first identity key where ``existing`` and ``wanted`` differ."""
    have, want = identity_of(existing), identity_of(wanted)
    for key in IDENTITY_KEYS:
        if have[key] != want[key]:
            raise MismatchError(
                f"{where} was made with {key}={have[key]!r}, expected {key}={want[key]!r}; "
                f"embeddings of different models never mix (delete the folder or rerun with --rebuild)."
            )


def save_embedding_set(cache_root: str | Path, emb: EmbeddingSet) -> Path:
    """Write ``emb`` to ``<cache_root>/clip/<tag>/`` and return the folder.

    Each file is written atomically; ``meta.json`` comes last and records the SHA-256 of
    ``embeddings.npy``, so a set torn by a crash is detected on load.
    """
    folder = set_dir(cache_root, emb.tag)
    save_npy(folder / EMBEDDINGS_FILE, np.asarray(emb.vectors, dtype=np.float32))
    write_json(
        folder / IDS_FILE,
        {"stimulus_ids": list(emb.ids), "content_sha256": list(emb.content_sha256), "modality": list(emb.modality)},
    )
    meta = dict(emb.meta, dim=emb.dim, n=len(emb), embeddings_sha256=sha256_file(folder / EMBEDDINGS_FILE))
    write_json(folder / META_FILE, meta)
    return folder


def load_embedding_set(cache_root: str | Path, tag: str, mmap: bool = False) -> EmbeddingSet:
    """Read the set ``tag`` from ``<cache_root>/clip/<tag>/``.

    Parameters
    ----------
    cache_root : path
    tag : str
        E.g. ``ViT-B-32__openai``, ``ViT-B-32__ckpt-<sha12>`` or ``synthetic-truth``.
    mmap : bool
        Memory-map the vectors read-only instead of reading them.

    Raises
    ------
    MissingInputError
        If the folder or one of its files is missing.
    CorruptFileError, ChecksumError
        If the files disagree with each other or ``embeddings.npy`` changed since it was written.
    """
    folder = set_dir(cache_root, tag)
    if not folder.is_dir():
        how = (
            "fmri2img embed --synthetic-truth" if tag == SYNTHETIC_TRUTH_EMBEDDINGS else "fmri2img embed"
        )
        raise MissingInputError(f"Embedding set {tag!r} not found at {folder}; create it with `{how}`.")
    meta = read_json(folder / META_FILE)
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{folder / META_FILE} holds a {type(meta).__name__}; expected a JSON object.")
    ids = read_json(folder / IDS_FILE)
    if not isinstance(ids, dict) or not all(isinstance(ids.get(k), list) for k in IDS_KEYS):
        raise CorruptFileError(f"{folder / IDS_FILE} is not an object of lists; expected keys {', '.join(IDS_KEYS)}.")
    path = folder / EMBEDDINGS_FILE
    expected_sha = meta.get("embeddings_sha256")
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise ChecksumError(
            f"{path} does not match {folder / META_FILE} (torn write?); rerun `fmri2img embed` with --rebuild."
        )
    vectors = load_npy(path, mmap=mmap)
    try:
        stimulus_ids = tuple(str(i) for i in ids["stimulus_ids"])
        emb = EmbeddingSet(
            ids=stimulus_ids,
            vectors=vectors,
            modality=tuple(ids["modality"]),
            content_sha256=tuple(ids["content_sha256"]),
            meta=dict(meta),
        )
    except (KeyError, TypeError) as exc:
        raise CorruptFileError(
            f"{folder / IDS_FILE} lacks {exc}; expected keys stimulus_ids, content_sha256, modality."
        ) from None
    except InputError as exc:
        raise CorruptFileError(f"{folder} ({IDS_FILE}, {EMBEDDINGS_FILE}): {exc}") from None
    if meta.get("tag") != tag:
        raise CorruptFileError(f"{folder / META_FILE} says tag {meta.get('tag')!r}; expected {tag!r}.")
    return emb


def modality_of_id(stimulus_id: str) -> str:
    """``"text"`` for NSD-Imagery set C ids (``img-C-*``), ``"image"`` otherwise."""
    return "text" if stimulus_id.startswith(TEXT_ID_PREFIX) else "image"


def synthetic_truth_set(data_root: str | Path, cache_root: str | Path) -> EmbeddingSet:
    """Expose the synthetic world's planted latents as the embedding set ``synthetic-truth``.

    Reads ``<data_root>/truth/latents.npy`` (float32 (n, d)) and ``truth/stimulus_ids.json``,
    writes them to ``<cache_root>/clip/synthetic-truth/`` (rewritten only when the source files
    changed) and returns the set. These are not CLIP embeddings: they let every stage run on
    the demo without weights; real experiments use a real CLIP model.
    """
    data_root = Path(data_root)
    latents_path, ids_path = data_root / TRUTH_LATENTS, data_root / TRUTH_IDS
    for path in (latents_path, ids_path):
        if not path.is_file():
            raise MissingInputError(
                f"File not found: {path}; expected the synthetic world's ground truth (run `fmri2img synth`)."
            )
    sources = {TRUTH_LATENTS: sha256_file(latents_path), TRUTH_IDS: sha256_file(ids_path)}
    folder = set_dir(cache_root, SYNTHETIC_TRUTH_EMBEDDINGS)
    if (folder / META_FILE).is_file():
        try:
            cached = load_embedding_set(cache_root, SYNTHETIC_TRUTH_EMBEDDINGS)
        except (InputError, MissingInputError):
            cached = None
        if cached is not None and cached.meta.get("sources") == sources:
            return cached
    latents = load_npy(latents_path)
    ids = read_json(ids_path)
    if not isinstance(ids, list) or latents.ndim != 2 or len(ids) != latents.shape[0]:
        raise CorruptFileError(
            f"{ids_path} lists {len(ids) if isinstance(ids, list) else type(ids).__name__} ids for "
            f"latents of shape {latents.shape} in {latents_path}; expected one id per row."
        )
    vectors = l2_normalize(latents, what=str(latents_path))
    meta = {
        "tag": SYNTHETIC_TRUTH_EMBEDDINGS,
        "model": SYNTHETIC_TRUTH_EMBEDDINGS,
        "pretrained": None,
        "checkpoint_sha256": None,
        "init": None,
        "open_clip_version": None,
        "preprocessing": "none (planted latents of the synthetic world, re-normalised to unit length)",
        "sources": sources,
        "note": (
            "Synthetic ground-truth latents, not CLIP embeddings: they let the demo run without "
            "weights. Real experiments use a real CLIP model (fmri2img embed --pretrained openai "
            "or --checkpoint FILE)."
        ),
    }
    emb = make_embedding_set(
        ids=ids,
        vectors=vectors,
        modality=[modality_of_id(str(i)) for i in ids],
        content_sha256=[sha256_bytes(row.tobytes()) for row in np.asarray(latents, dtype=np.float32)],
        meta=meta,
        computed=ids,
    )
    save_embedding_set(cache_root, emb)
    return emb
