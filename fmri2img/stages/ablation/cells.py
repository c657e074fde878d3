"""The work of an ablation: its inputs (world, indices, embeddings), the perception-only
checkpoints and the cells, each reused when its key is unchanged."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmri2img.core import tracking_layout
from fmri2img.core.constants import DEFAULT_SUBJECTS, SYNTHETIC_TRUTH_EMBEDDINGS
from fmri2img.core.errors import ConfigError, MissingInputError
from fmri2img.core.files import read_json, sha256_file, sha256_json, write_json
from fmri2img.core.memo import Memo
from fmri2img.core.vocab import ADAPTER_CONFIGURATIONS, CONDITION_IDS
from fmri2img.data import regions
from fmri2img.data.betas import load_betas
from fmri2img.data.index import build_index
from fmri2img.data.schema import read_index
from fmri2img.data.trials import imagery_folds
from fmri2img.embeddings.cache import load_embedding_set, set_dir, synthetic_truth_set
from fmri2img.models.checkpoint import METADATA_FILE, WEIGHTS_FILE, load_adapters, load_checkpoint
from fmri2img.models.predictors import AdaptedModule, Predictor, adapter_predictor, base_module, decoder_fn
from fmri2img.sim.world import write_world
from fmri2img.stages.ablation.cell_log import EXAMPLE_ROWS, CellWork, history_curves, log_cell_run
from fmri2img.stages.ablation.field import run_field_battery, runs_battery
from fmri2img.stages.ablation.matrix import (
    AblationConfig,
    Cell,
    adapter_dir,
    base_checkpoint_dir,
    cell_commands,
    cell_dir,
    code_sha256,
    index_path,
    mixed_checkpoint_dir,
    train_config,
)
from fmri2img.stages.adapt import train_adapters
from fmri2img.stages.evaluate import evaluate_predictor
from fmri2img.stages.train import train_decoder

#: Per-epoch history of a perception-only checkpoint's training, next to its weights.
HISTORY_FILE = "history.json"
#: Role tag of the perception-only checkpoints' training runs (children of the ablation run, not cells).
ROLE_CHECKPOINT = "checkpoint"


def ensure_inputs(config: AblationConfig, *, progress: bool = True) -> dict[str, Any]:
    """World, indices and embedding set for every subject; returns their fingerprints."""
    root = Path(config.data_root)
    if config.synthesize and not (root / "nsddata").exists():
        # Always the default subjects (plus any others asked for), in that order: the world's
        # design depends on which subjects it holds, so `ablate --subject subj01` must see the
        # same world (and reproduce the same numbers) as the full demo.
        world_subjects = tuple(DEFAULT_SUBJECTS) + tuple(s for s in config.subjects if s not in DEFAULT_SUBJECTS)
        kwargs = {"subjects": world_subjects, "progress": progress}
        if config.synth_seed is not None:
            kwargs["seed"] = config.synth_seed
        if config.synth_imagery_strength is not None:
            kwargs["imagery_strength"] = config.synth_imagery_strength
        write_world(root, **kwargs)
    fingerprints: dict[str, Any] = {}
    for subject in config.subjects:
        path = build_index(subject, config.data_root, config.cache_root, output=index_path(config, subject),
                           manifest_dir=config.manifest_dir, progress=progress, folds=config.folds)
        fingerprints[subject] = {"index_sha256": sha256_file(path)}
    embeddings = ensure_embeddings(config)
    for subject in config.subjects:
        fingerprints[subject]["embedding_set"] = embeddings
    return fingerprints


def ensure_embeddings(config: AblationConfig) -> dict[str, Any]:
    """Make sure the embedding set exists; return its identity (tag + content hash)."""
    if config.embedding_set == SYNTHETIC_TRUTH_EMBEDDINGS:
        synthetic_truth_set(config.data_root, config.cache_root)
    else:
        try:
            load_embedding_set(config.cache_root, config.embedding_set)
        except MissingInputError:
            raise ConfigError(
                f"Embedding set {config.embedding_set!r} is not in {config.cache_root}/clip; compute it first with "
                "`fmri2img embed --index ... --model ... --checkpoint ...`.") from None
    folder = set_dir(config.cache_root, config.embedding_set)
    return {"tag": config.embedding_set, "sha256": sha256_file(folder / "embeddings.npy")}


def ensure_base_checkpoint(config: AblationConfig, cell: Cell, fingerprint: dict[str, Any],
                           parent_run, force: bool, progress: bool, memo: Memo | None = None) -> Path:
    """Train (or reuse) the perception-only checkpoint of the cell's decoder, subject and region."""
    cfg = train_config(config, cell)
    key = sha256_json({"train": dataclasses.asdict(cfg), "inputs": fingerprint, "code": code_sha256()})
    out = base_checkpoint_dir(config, cell)
    meta_path = out / "metadata.json"
    if not force and meta_path.is_file() and (out / "best.pt").is_file():
        if read_json(meta_path).get("ablation_key") == key:
            return out / "best.pt"
    result = train_decoder(index_path(config, cell.subject), out, cfg, cache_root=config.cache_root,
                           tracking_uri=parent_run.tracking_uri, parent_run=parent_run, progress=progress,
                           extra_metadata={"ablation_key": key}, memo=memo,
                           run_tags={tracking_layout.ROLE_TAG: ROLE_CHECKPOINT})
    write_json(out / HISTORY_FILE, result.history)  # the cells built on it show this curve
    return result.checkpoint


def run_cell(config: AblationConfig, cell: Cell, fingerprint: dict[str, Any], parent_run_id: str,
             tracking_uri: str, force: bool = False, progress: bool = False,
             memo: Memo | None = None) -> dict[str, Any]:
    """Run one cell (train what it needs, evaluate) unless its key is unchanged; return its record."""
    out = cell_dir(config, cell)
    try:
        return _run_cell(config, cell, fingerprint, parent_run_id, tracking_uri, force, progress, out, memo)
    except BaseException:
        # Ctrl-C or an error: remove the cell's partial outputs (kill -9 cannot clean up, but a
        # cell without cell.json is never trusted and reruns from scratch).
        if not (out / "cell.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
        raise


def cell_key(config: AblationConfig, cell: Cell, fingerprint: dict[str, Any]) -> str:
    """What a cell's results depend on: config, inputs, code and its perception-only checkpoint."""
    base_ckpt = base_checkpoint_dir(config, cell) / WEIGHTS_FILE
    key_parts = {"cell": dataclasses.asdict(cell), "inputs": fingerprint, "code": code_sha256(),
                 "mode": config.mode, "eval": dataclasses.asdict(config.eval), "folds": config.folds,
                 "train": dataclasses.asdict(train_config(config, cell)),
                 "base_checkpoint": read_json(base_ckpt.parent / METADATA_FILE).get("weights_sha256")}
    if cell.configuration == "mixed":
        key_parts["imagery_weight"] = config.imagery_weight
    if cell.configuration in ADAPTER_CONFIGURATIONS:
        key_parts["adapt"] = dataclasses.asdict(config.adapt)
    if runs_battery(config, cell):
        key_parts["field_battery"] = dataclasses.asdict(config.field_battery)
    return sha256_json(key_parts)


def _mixed_predictor(config, cell, index, example, progress, memo) -> tuple[Predictor, CellWork]:
    """One model per held-out imagery fold (H2), each trained on the other folds' imagery too."""
    fold_models, work, seconds = {}, CellWork(), 0.0
    for fold in imagery_folds(index):
        cfg = train_config(config, cell, train_on="mixed", holdout_fold=fold, imagery_weight=config.imagery_weight)
        out = mixed_checkpoint_dir(config, cell, fold)
        result = train_decoder(index_path(config, cell.subject), out, cfg, cache_root=config.cache_root,
                               progress=progress, memo=memo, track=False)
        fold_model, _ = load_checkpoint(result.checkpoint, expected_decoder=cell.decoder)
        fold_models[fold] = decoder_fn(fold_model)
        seconds += result.metadata["train_seconds"]
        work.curves.update(history_curves(result.history, f"fold{fold}/"))
        work.models[f"decoder_fold{fold}"] = (base_module(fold_model), example)
        work.artifacts[f"fold{fold}"] = [out / METADATA_FILE]
    work.extra["train_seconds_total"] = seconds
    return Predictor(fold_models=fold_models), work


def _adapter_predictor(config, cell, decoder, example, progress, memo) -> tuple[Predictor, CellWork]:
    """Per-fold adapters (or fine-tuned copies) on the perception-only checkpoint (H3)."""
    base_ckpt = base_checkpoint_dir(config, cell) / WEIGHTS_FILE
    kind, cond = ADAPTER_CONFIGURATIONS[cell.configuration]
    acfg = dataclasses.replace(config.adapt, adapter=kind, condition=cond, device=config.device)
    result = train_adapters(index_path(config, cell.subject), base_ckpt, adapter_dir(config, cell), acfg,
                            model_type=cell.decoder, cache_root=config.cache_root, progress=progress, memo=memo,
                            track=False)
    states, ameta = load_adapters(result.checkpoint, base_ckpt, kind)
    work = CellWork(extra={k: ameta[k] for k in ("train_seconds_total", "n_trainable_parameters",
                                                 "n_base_parameters", "parameter_overhead")})
    # fold models that never beat their initial state on the validation stimuli (the identity
    # adapter, the unchanged decoder copy): the report names such no-ops
    work.extra["n_fold_models"] = len(ameta["fold_details"])
    work.extra["n_folds_kept_initial"] = sum(f.get("best_epoch") == -1 for f in ameta["fold_details"])
    # H3 chooses among adapters on these (their folds' validation stimuli), never on test scores
    work.extra["val_cosine_mean"] = float(np.mean([f["best_val_cosine"] for f in ameta["fold_details"]]))
    work.extra["train_cpu_seconds_total"] = ameta.get("train_cpu_seconds_total")
    condition = CONDITION_IDS["imagery"] if cond else None
    for fold, module in result.modules.items():
        work.curves.update(history_curves(result.histories[fold], f"fold{fold}/"))
        work.models[f"{'decoder' if kind == 'finetune' else 'adapted'}_fold{fold}"] = (
            module if kind == "finetune" else AdaptedModule(base_module(decoder), module, condition), example)
        work.extra[f"fold{fold}/lr"] = next(f["lr"] for f in ameta["fold_details"] if f["fold"] == fold)
    work.artifacts["adapter"] = [result.checkpoint.parent / "metadata.json"]
    return adapter_predictor(decoder, states, ameta), work


def _run_cell(config, cell, fingerprint, parent_run_id, tracking_uri, force, progress, out, memo) -> dict[str, Any]:
    key = cell_key(config, cell, fingerprint)
    marker = out / "cell.json"
    if not force and marker.is_file() and (out / "metrics.json").is_file():
        record = read_json(marker)
        if record.get("key") == key:
            return {**record, "skipped": True}
    started, start = time.time(), time.perf_counter()
    base_ckpt = base_checkpoint_dir(config, cell) / WEIGHTS_FILE
    index = read_index(index_path(config, cell.subject))
    decoder, meta = load_checkpoint(base_ckpt, expected_decoder=cell.decoder)
    index = regions.for_checkpoint(index, meta)
    embeddings = load_embedding_set(config.cache_root, meta["embedding_set"])
    example = load_betas(index, config.cache_root, rows=np.arange(EXAMPLE_ROWS), zscore=meta.get("zscore", True),
                         memo=memo)
    if cell.configuration == "perception_only":
        predictor = Predictor(single=decoder_fn(decoder))
        work = CellWork(models={"decoder": (base_module(decoder), example)})
    elif cell.configuration == "mixed":
        predictor, work = _mixed_predictor(config, cell, index, example, progress, memo)
    else:
        predictor, work = _adapter_predictor(config, cell, decoder, example, progress, memo)
    history = base_ckpt.parent / HISTORY_FILE
    if history.is_file():  # the perception-only checkpoint's training, which every cell starts from
        work.curves.update(history_curves(read_json(history), "base/"))
    result = evaluate_predictor(
        index, predictor, embeddings, out, decoder=cell.decoder, configuration=cell.configuration,
        n_voxels=meta["n_voxels"], mode=config.mode, zscore=meta.get("zscore", True), options=config.eval,
        cache_root=config.cache_root, memo=memo,
        info={"cell": cell.name, "index": str(index_path(config, cell.subject)),
              "base_checkpoint": str(base_ckpt), "embedding_set": meta["embedding_set"],
              # wall times vary run to run: they go to timings.json, never into metrics files
              **{k: v for k, v in work.extra.items() if "seconds" not in k and "/" not in k}})
    if runs_battery(config, cell):
        work.artifacts["field"] = run_field_battery(config, cell, base_ckpt, out)
    ended, seconds = time.time(), time.perf_counter() - start  # the run's Duration: the cell's whole work
    run_id = log_cell_run(config, cell, parent_run_id=parent_run_id, tracking_uri=tracking_uri, key=key, meta=meta,
                          result=result, work=work, index=index, index_file=index_path(config, cell.subject),
                          eval_dir=out, start_time=started, end_time=ended)
    extra = {k: v for k, v in work.extra.items() if "/" not in k}
    record = {"cell": dataclasses.asdict(cell), "key": key, "mlflow_run_id": run_id,
              "seconds": seconds, "commands": cell_commands(config, cell), "region_info": meta.get("region_info"),
              **extra}
    write_json(marker, record)
    return {**record, "skipped": False}
