"""The ``embed`` stage: CLIP embeddings of the stimuli, computed once and cached per model
(contracts, section 4).

:func:`embed_stimuli` updates the cache; :func:`run_embed` (what ``fmri2img embed`` calls) does
that inside an MLflow run. Later stages only need
:func:`~fmri2img.embeddings.cache.load_embedding_set`.

Measured exception to imports at the top: :mod:`fmri2img.embeddings.clip` (open_clip and torch,
about 4.4 s of imports on 2 cores) is imported only when a CLIP model has to encode something.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmri2img.core import tracking
from fmri2img.core.constants import DEFAULT_CLIP_MODEL, DEFAULT_EMBED_BATCH_SIZE
from fmri2img.core.errors import ConfigError, InputError
from fmri2img.data.stimuli import StimulusReader, list_stimuli
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


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def embed_stimuli(
    index_paths: Iterable[str | os.PathLike],
    data_root: str | os.PathLike,
    cache_root: str | os.PathLike,
    model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    synthetic_truth: bool = False,
    device: str = "cpu",
    batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
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
        Trial-index Parquet files (contracts, section 2); ``image_ref`` paths are relative to
        ``data_root``; the set is written to ``<cache_root>/clip/<tag>/``.
    model, pretrained, checkpoint, random_init
        open_clip architecture (default ``ViT-B-32``, 512-D) and its weights: a hub tag (default
        ``openai``), a local state-dict file, or random weights with the init seed (tests only).
    synthetic_truth : bool
        Return the synthetic world's planted latents (set ``synthetic-truth``) instead of CLIP
        embeddings, after checking that they cover every stimulus of the indexes.
    device, batch_size, progress, hub_cache_dir
        Where the model runs, images / texts per forward pass, tqdm bars on stderr, hub cache.
    rebuild : bool
        Ignore (and replace) an existing set of this model instead of updating it.

    Returns
    -------
    EmbeddingSet
        The whole cached set (a superset of the indexes' stimuli); ``.computed`` lists the ids
        encoded by this call.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"Invalid batch size {batch_size!r}; expected a positive integer.")
    stimuli = list_stimuli(index_paths)
    if synthetic_truth:
        if checkpoint or pretrained or random_init:
            raise ConfigError("--synthetic-truth uses the planted latents; do not combine it with model weights.")
        return _truth_covering(stimuli, data_root, cache_root)

    from fmri2img.embeddings import clip  # measured exception: see the module docstring

    clip.check_device(device)
    identity = clip.model_identity(model, pretrained, checkpoint, random_init)
    tag = clip.model_tag(identity)
    existing = None
    if not rebuild and set_dir(cache_root, tag).is_dir():
        existing = load_embedding_set(cache_root, tag)
        check_same_model(existing.meta, identity, where=f"Embedding set {set_dir(cache_root, tag)}")
    with StimulusReader(data_root) as reader:
        todo = _changed(stimuli, existing, reader, progress)
        if not todo and existing is not None:
            return existing
        encoder = clip.load_clip(model, pretrained, checkpoint, random_init, device, hub_cache_dir, identity=identity)
        vectors = _encode(encoder, reader, [s for s, _ in todo], batch_size, f"CLIP {tag}", progress)
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


def _truth_covering(stimuli, data_root, cache_root) -> EmbeddingSet:
    """The synthetic-truth set, after checking it covers every stimulus."""
    truth = synthetic_truth_set(data_root, cache_root)
    missing = next((s.stimulus_id for s in stimuli if s.stimulus_id not in truth), None)
    if missing is not None:
        raise InputError(
            f"Stimulus {missing!r} of the index has no planted latent in {Path(data_root) / TRUTH_IDS}; "
            f"the synthetic-truth set only covers the synthetic world's stimuli."
        )
    return truth


def _changed(stimuli, existing: EmbeddingSet | None, reader: StimulusReader, progress: bool) -> list:
    """(stimulus, content SHA-256) of the stimuli not in ``existing`` with the same content."""
    hashes = [reader.content_sha256(s) for s in _progress(stimuli, len(stimuli), "hash stimuli", progress)]
    todo = []
    for stimulus, digest in zip(stimuli, hashes):
        if existing is not None and stimulus.stimulus_id in existing:
            row = int(existing.rows([stimulus.stimulus_id])[0])
            if existing.content_sha256[row] == digest:
                continue
        todo.append((stimulus, digest))
    return todo


def _encode(encoder, reader: StimulusReader, stimuli, batch_size: int, desc: str, progress: bool) -> dict:
    """Stimulus id -> embedding of each stimulus (images first, then texts, in batches)."""
    vectors: dict[str, np.ndarray] = {}
    images = [s for s in stimuli if s.modality == "image"]
    texts = [s for s in stimuli if s.modality == "text"]
    bar = _progress(None, len(stimuli), desc, progress)
    for batch in _batches(images, batch_size):
        out = encoder.encode_images([reader.image(s) for s in batch])
        vectors.update({s.stimulus_id: row for s, row in zip(batch, out)})
        bar.update(len(batch))
    for batch in _batches(texts, batch_size):
        out = encoder.encode_texts([str(s.text) for s in batch])
        vectors.update({s.stimulus_id: row for s, row in zip(batch, out)})
        bar.update(len(batch))
    bar.close()
    return vectors


def run_embed(index_paths: Sequence[str | os.PathLike], data_root: str | os.PathLike, cache_root: str | os.PathLike,
              *, tracking_uri: str | None = None, **options) -> EmbeddingSet:
    """:func:`embed_stimuli` inside an MLflow run ``embed`` (params, set identity, counts, ids)."""
    params = {"index": [str(p) for p in index_paths], "data_root": str(data_root), "cache_root": str(cache_root),
              **{k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k != "progress"}}
    with tracking.run("embed", params, tracking_uri=tracking_uri) as run:
        emb = embed_stimuli(index_paths, data_root, cache_root, **options)
        meta = {k: v for k, v in emb.meta.items() if k != "embeddings_sha256"}
        run.log_params(meta, prefix="embeddings.")
        run.log_metrics({"n_stimuli": len(emb), "n_computed": len(emb.computed), "dim": emb.dim})
        run.log_dict({"stimulus_ids": list(emb.ids), "modality": list(emb.modality)}, "embeddings/ids.json")
    return emb
