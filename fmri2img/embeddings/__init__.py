"""CLIP embeddings of the stimuli, computed once and cached per model (contracts, section 4).

:func:`embed_stimuli` is what ``fmri2img embed`` calls. Later stages only need
:func:`load_embedding_set` and :meth:`EmbeddingSet.lookup`; importing this package does not
import torch or open_clip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fmri2img.embeddings.cache import (
    TRUTH_IDS,
    EmbeddingSet,
    check_same_model,
    load_embedding_set,
    make_embedding_set,
    merge_embedding_sets,
    save_embedding_set,
    set_dir,
    synthetic_truth_set,
)
from fmri2img.errors import ConfigError, InputError

#: Defaults of :func:`embed_stimuli` (repeated from :mod:`fmri2img.embeddings.clip`, which imports torch lazily).
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_BATCH_SIZE = 64


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def embed_stimuli(
    index_paths: Iterable[str | os.PathLike],
    data_root: str | os.PathLike,
    cache_root: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    synthetic_truth: bool = False,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    rebuild: bool = False,
    random_init: bool = False,
    hub_cache_dir: str | os.PathLike | None = None,
) -> EmbeddingSet:
    """Embed every stimulus of the given trial indexes and update the cache.

    Entries already cached for the same model and the same content (SHA-256 of image bytes or
    text) are reused; only new or changed stimuli are encoded (and the model is loaded only
    if there is something to encode).

    Parameters
    ----------
    index_paths : iterable of path
        Trial-index Parquet files (contracts, section 2).
    data_root : path
        Root that ``image_ref`` paths are relative to.
    cache_root : path
        The set is written to ``<cache_root>/clip/<tag>/``.
    model : str
        open_clip architecture, default ``ViT-B-32`` (512-D).
    pretrained : str, optional
        Hub tag; the default (``openai``) when neither ``checkpoint`` nor ``random_init`` is given.
    checkpoint : path, optional
        Local open_clip state-dict file.
    synthetic_truth : bool
        Return the synthetic world's planted latents (set ``synthetic-truth``) instead of CLIP
        embeddings, after checking that they cover every stimulus of the indexes.
    device : {"cpu", "cuda"}
    batch_size : int
        Images / texts per forward pass.
    progress : bool
        Show tqdm progress bars on stderr.
    rebuild : bool
        Ignore (and replace) an existing set of this model instead of updating it.
    random_init : bool
        Random weights with the init seed (tests and smoke runs only).
    hub_cache_dir : path, optional
        Cache folder of hub weights.

    Returns
    -------
    EmbeddingSet
        The whole cached set (a superset of the indexes' stimuli); ``.computed`` lists the ids
        encoded by this call.
    """
    from fmri2img.embeddings.stimuli import StimulusReader, list_stimuli

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"Invalid batch size {batch_size!r}; expected a positive integer.")
    stimuli = list_stimuli(index_paths)
    if synthetic_truth:
        if checkpoint or pretrained or random_init:
            raise ConfigError("--synthetic-truth uses the planted latents; do not combine it with model weights.")
        truth = synthetic_truth_set(data_root, cache_root)
        missing = next((s.stimulus_id for s in stimuli if s.stimulus_id not in truth), None)
        if missing is not None:
            raise InputError(
                f"Stimulus {missing!r} of the index has no planted latent in {Path(data_root) / TRUTH_IDS}; "
                f"the synthetic-truth set only covers the synthetic world's stimuli."
            )
        return truth

    from fmri2img.embeddings.clip import check_device, load_clip, model_identity, model_tag

    check_device(device)
    identity = model_identity(model, pretrained, checkpoint, random_init)
    tag = model_tag(identity)
    existing = None
    if not rebuild and set_dir(cache_root, tag).is_dir():
        existing = load_embedding_set(cache_root, tag)
        check_same_model(existing.meta, identity, where=f"Embedding set {set_dir(cache_root, tag)}")

    with StimulusReader(data_root) as reader:
        hashes = [reader.content_sha256(s) for s in _progress(stimuli, len(stimuli), "hash stimuli", progress)]
        todo = []
        for stimulus, digest in zip(stimuli, hashes):
            if existing is not None and stimulus.stimulus_id in existing:
                row = int(existing.rows([stimulus.stimulus_id])[0])
                if existing.content_sha256[row] == digest:
                    continue
            todo.append((stimulus, digest))
        if not todo and existing is not None:
            return existing

        encoder = load_clip(model, pretrained, checkpoint, random_init, device, hub_cache_dir, identity=identity)
        vectors: dict[str, np.ndarray] = {}
        images = [s for s, _ in todo if s.modality == "image"]
        texts = [s for s, _ in todo if s.modality == "text"]
        bar = _progress(None, len(todo), f"CLIP {tag}", progress)
        for batch in _batches(images, batch_size):
            out = encoder.encode_images([reader.image(s) for s in batch])
            vectors.update({s.stimulus_id: row for s, row in zip(batch, out)})
            bar.update(len(batch))
        for batch in _batches(texts, batch_size):
            out = encoder.encode_texts([str(s.text) for s in batch])
            vectors.update({s.stimulus_id: row for s, row in zip(batch, out)})
            bar.update(len(batch))
        bar.close()

    ids = [s.stimulus_id for s, _ in todo]
    new = make_embedding_set(
        ids=ids,
        vectors=np.stack([vectors[i] for i in ids]) if ids else np.zeros((0, encoder.dim), np.float32),
        modality=[s.modality for s, _ in todo],
        content_sha256=[digest for _, digest in todo],
        meta=encoder.meta(),
        computed=ids,
    )
    result = merge_embedding_sets(existing, new) if existing is not None else new
    save_embedding_set(cache_root, result)
    return result


__all__ = [
    "EmbeddingSet",
    "embed_stimuli",
    "load_embedding_set",
    "merge_embedding_sets",
    "save_embedding_set",
    "synthetic_truth_set",
]

