"""The ``reconstruct`` stage: predicted embeddings -> images, written as a predictions folder
(:mod:`fmri2img.data.predictions`, the contract ``fmri2img eval --predictions`` scores).

The embeddings come from a decoder checkpoint (decoded test trials, repeats of a stimulus averaged, as
MindEye2 averages its three repeats) or from an ``embeddings.npz`` of the contract (another model's
predictions, or the planted latents). A backend of
:data:`~fmri2img.models.reconstruct.RECONSTRUCTION_BACKENDS` turns them into images: ``synthetic`` (the
synthetic world's renderer, read from ``<data_root>/truth/params.json``) or ``unclip`` (a local diffusers
Stable unCLIP folder). Files: ``embeddings.npz``, ``images/<test_set>/<stimulus_id>.png``,
``reconstruction_grid.png`` (ground truth beside each test set's reconstruction) and ``reconstruct.json``
(written last); all logged to an MLflow run ``reconstruct``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core import tracking
from fmri2img.core.constants import DEFAULT_CACHE_ROOT, DEFAULT_EXPERIMENT
from fmri2img.core.config import check_choice
from fmri2img.core.errors import ConfigError, InputError, MissingInputError
from fmri2img.core.files import read_json, write_json
from fmri2img.core.vocab import MODE_TEST_SETS
from fmri2img.data import regions
from fmri2img.data.predictions import IMAGES_DIR, check_ids, read_predictions, write_embeddings, write_image
from fmri2img.data.schema import read_index
from fmri2img.data.trials import test_set_rows
from fmri2img.models.checkpoint import load_adapters, load_checkpoint
from fmri2img.models.predictors import Predictor, adapter_predictor, decoder_fn
from fmri2img.models.reconstruct import RECONSTRUCTION_BACKENDS, SyntheticRenderer, make_backend, unclip_embedding_dim
from fmri2img.reporting.field_report import reconstruction_grid
from fmri2img.stages.evaluate import image_loader, predict_test_sets
from fmri2img.stages.report import save_figure

#: The synthetic world's parameters file, relative to its data root (written by ``fmri2img synth``).
WORLD_PARAMS = "truth/params.json"

#: Stimuli shown in the reconstruction grid (rows) at most, in index order.
GRID_MAX_STIMULI = 12


def checkpoint_predictor(checkpoint: str | Path, adapter_checkpoint: str | Path | None = None,
                         adapter_type: str | None = None, model_type: str | None = None
                         ) -> tuple[Predictor, dict[str, Any], list[int] | None]:
    """(predictor, checkpoint metadata, folds) as ``fmri2img eval`` decodes a checkpoint: adapters per
    fold, a mixed checkpoint on its hold-out fold only, else the decoder alone."""
    decoder, meta = load_checkpoint(checkpoint, expected_decoder=model_type)
    if adapter_checkpoint is not None:
        states, adapter_meta = load_adapters(adapter_checkpoint, checkpoint, adapter_type)
        return adapter_predictor(decoder, states, adapter_meta), meta, None
    if meta.get("train_on") == "mixed":
        fold = int(meta["holdout_fold"])
        return Predictor(fold_models={fold: decoder_fn(decoder)}), meta, [fold]
    return Predictor(single=decoder_fn(decoder)), meta, None


def stimulus_means(pred: np.ndarray, rows: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Average the trials of each stimulus: (ids in first-seen order, float32 (n_stimuli, d))."""
    ids = rows["stimulus_id"].astype(str).to_numpy()
    order = list(dict.fromkeys(ids))
    return order, np.stack([pred[ids == s].mean(axis=0) for s in order]).astype(np.float32)


def decode_stimuli(index: pd.DataFrame, checkpoint: str | Path, test_sets: Sequence[str], cache_root: str | Path,
                   **predictor_args: Any) -> tuple[dict[str, tuple[list[str], np.ndarray]], dict[str, Any]]:
    """Per-stimulus mean predictions of each test set decoded from a checkpoint, and its metadata."""
    predictor, meta, folds = checkpoint_predictor(checkpoint, **predictor_args)
    index = regions.for_checkpoint(index, meta)
    decoded = predict_test_sets(index, predictor, test_sets, cache_root, folds=folds, zscore=meta.get("zscore", True))
    return {name: stimulus_means(p.pred, p.rows) for name, p in decoded.items() if len(p.rows)}, meta


def _from_file(index: pd.DataFrame, embeddings: str | Path, test_sets: Sequence[str]) -> dict:
    """The test sets of ``test_sets`` in an ``embeddings.npz`` of the contract (ids checked against the index)."""
    path = Path(embeddings)
    if not path.is_file():
        raise MissingInputError(f"Embeddings file not found: {path}; expected an embeddings.npz of the predictions "
                                "contract (docs/comparing.md).")
    staged = read_predictions(path.parent) if path.name == "embeddings.npz" else None
    if staged is None or not staged.embeddings:
        raise InputError(f"Expected {path} to be named embeddings.npz with the arrays of docs/comparing.md.")
    out = {}
    for name, (ids, emb) in staged.embeddings.items():
        if name in test_sets:
            known = index.loc[test_set_rows(index, name, None), "stimulus_id"].astype(str).tolist()
            check_ids(ids, known, name, path)
            out[name] = (ids, emb)
    if not out:
        raise InputError(f"{path} holds none of the test sets {list(test_sets)}; it has {list(staged.embeddings)}.")
    return out


def make_reconstruction_backend(backend: str, data_root: str | Path | None, params: Mapping[str, Any]) -> Any:
    """The backend by name; ``synthetic`` takes the world's parameters from ``<data_root>/truth/params.json``."""
    check_choice("reconstruction backend", backend, RECONSTRUCTION_BACKENDS)
    if backend == "unclip":
        if not params.get("pipeline_dir"):
            raise ConfigError("The unclip backend needs --pipeline-dir: a local folder of a diffusers "
                              "StableUnCLIPImg2ImgPipeline (e.g. stable-diffusion-2-1-unclip, save_pretrained layout).")
        unclip_embedding_dim(params["pipeline_dir"])  # a missing or foreign folder fails before decoding
    if backend != "synthetic":
        return make_backend(backend, **params)
    unknown = sorted(set(params) - {"normalize"})
    if unknown:
        raise ConfigError(f"Unknown parameter(s) {unknown} for backend 'synthetic'; allowed: normalize.")
    world = Path(data_root or ".") / WORLD_PARAMS
    if not world.is_file():
        raise MissingInputError(f"The synthetic backend needs the synthetic world's {world}; the index's data root "
                                "is not a synthetic world (use --backend unclip --pipeline-dir DIR for real data).")
    return SyntheticRenderer.from_world_params(read_json(world), **params)


def grid_figure(index: pd.DataFrame, images: Mapping[str, Mapping[str, np.ndarray]]):
    """The field's figure: ground truth beside each test set's reconstruction, one row per stimulus.

    Rows: the NSD-Imagery stimuli (image sets first, then set C) when ``images`` has an imagery test set, else
    the first shared1000 ones; at most :data:`GRID_MAX_STIMULI`. Ground truths are read from the index's
    data root when it is there.
    """
    # an NSD image reused as NSD-Imagery set B is labelled with its imagery type ("complex")
    imagery_first = np.argsort((index["dataset"] != "nsdimagery").to_numpy(), kind="stable")
    stimuli = index.iloc[imagery_first].drop_duplicates("stimulus_id").set_index("stimulus_id")
    imagery = [name for name in images if name != "shared1000"]
    shown = imagery or list(images)
    ids = list(dict.fromkeys(s for name in shown for s in images[name]))
    ids = sorted(ids, key=lambda s: stimuli.at[s, "stimulus_type"] == "conceptual")[:GRID_MAX_STIMULI]
    columns = {name: images[name] for name in images if any(s in images[name] for s in ids)}
    with_image = [s for s in ids if isinstance(stimuli.at[s, "image_ref"], str)]
    data_root = index.attrs.get("data_root")
    truths = {}
    if data_root and Path(data_root).is_dir() and with_image:
        truths = dict(zip(with_image, image_loader(index, data_root)(with_image)))
    labels = {s: f"{s}\n({stimuli.at[s, 'stimulus_type']})" for s in ids}
    return reconstruction_grid(ids, truths, columns, labels)


def reconstruct(index_path: str | Path, output_dir: str | Path, *, checkpoint: str | Path | None = None,
                embeddings: str | Path | None = None, embedding_set: str | None = None,
                backend: str = "synthetic",
                backend_params: Mapping[str, Any] | None = None, mode: str = "both",
                cache_root: str | Path = DEFAULT_CACHE_ROOT, tracking_uri: str | None = None,
                experiment: str = DEFAULT_EXPERIMENT, track: bool = True, **predictor_args: Any) -> dict[str, Any]:
    """Turn predicted embeddings of the test sets of ``mode`` into images; write a predictions folder.

    Parameters
    ----------
    index_path : path
        Trial index (its stimuli, test sets and data root).
    output_dir : path
        The predictions folder (:mod:`fmri2img.data.predictions`).
    checkpoint, embeddings : path
        Exactly one: a decoder checkpoint (``predictor_args``: ``adapter_checkpoint``, ``adapter_type``,
        ``model_type``), or an ``embeddings.npz`` of the contract.
    embedding_set : str, optional
        With ``embeddings``: the cache tag of their model, recorded in ``reconstruct.json`` (``eval
        --predictions`` then scores the 300-way retrieval against it). A checkpoint records its own.
    backend : {"synthetic", "unclip"}
    backend_params : mapping
        Keyword arguments of the backend's class (unclip: ``pipeline_dir``, ``device``, ``seed``...).
    mode : {"perception", "imagery", "both"}

    Returns
    -------
    dict
        The content of ``reconstruct.json`` (provenance and counts per test set).
    """
    check_choice("mode", mode, MODE_TEST_SETS, error=InputError)
    if (checkpoint is None) == (embeddings is None):
        raise InputError("Give exactly one of --checkpoint (decode the index's test trials) or --embeddings "
                         "(an embeddings.npz of predictions).")
    index = read_index(index_path)
    data_root = index.attrs.get("data_root")
    params = dict(backend_params or {})
    generator = make_reconstruction_backend(backend, data_root, params)  # bad backend options fail early
    test_sets = MODE_TEST_SETS[mode]
    run_params = {"index": str(index_path), "checkpoint": str(checkpoint) if checkpoint else None,
                  "embeddings": str(embeddings) if embeddings else None, "backend": backend, "mode": mode,
                  "backend_params": {k: str(v) for k, v in params.items()},
                  **{k: str(v) for k, v in predictor_args.items() if v is not None}}
    subject = str(index["subject"].iloc[0])
    opened = tracking.run("reconstruct", run_params, tracking_uri=tracking_uri, experiment=experiment,
                          run_name=f"reconstruct-{backend}-{subject}", tags={"subject": subject, "backend": backend}
                          ) if track else contextlib.nullcontext(tracking.NULL_RUN)
    with opened as run:
        meta: dict[str, Any] = {}
        if checkpoint is not None:
            stimuli, meta = decode_stimuli(index, checkpoint, test_sets, cache_root, **predictor_args)
        else:
            stimuli = _from_file(index, embeddings, test_sets)
        images = {name: dict(zip(ids, generator.generate(emb))) for name, (ids, emb) in stimuli.items()}
        info = _write(output_dir, index, stimuli, images)
        info.update({"backend": backend, "backend_params": run_params["backend_params"], "subject": subject,
                     "index": str(index_path), "source": str(checkpoint or embeddings),
                     "embedding_set": meta.get("embedding_set", embedding_set), "decoder": meta.get("decoder")})
        write_json(Path(output_dir) / "reconstruct.json", info)
        run.log_metrics({f"n_images/{name}": n for name, n in info["n_images"].items()})
        run.log_artifacts(output_dir, "reconstruct")
    return info


def _write(output_dir: str | Path, index: pd.DataFrame, stimuli: Mapping[str, tuple[list[str], np.ndarray]],
           images: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """Write embeddings.npz, the PNGs (a test set's old images replaced) and the grid figure."""
    out = Path(output_dir)
    for name in images:
        shutil.rmtree(out / IMAGES_DIR / name, ignore_errors=True)
    write_embeddings(out, stimuli)
    for name, per_set in images.items():
        for stimulus_id, image in per_set.items():
            write_image(out, name, stimulus_id, image)
    save_figure(grid_figure(index, images), out / "reconstruction_grid", ("png",))
    return {"n_images": {name: len(per_set) for name, per_set in images.items()},
            "image_size": int(next(iter(next(iter(images.values())).values())).shape[0])}
