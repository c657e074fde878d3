"""The ``adapt`` stage (H3): lightweight adapters on a frozen perception decoder, and the
full fine-tuning baseline they are compared with.

For every NSD-Imagery fold ``k`` (cross-validation, so every imagery stimulus is evaluated
exactly once by a model that never saw it):

* training rows: *imagery* trials of the other folds' stimuli, a seeded ``imagery_fraction``
  of each stimulus' trials (condition adapters also get the same stimuli's *vision* trials,
  condition 0, so one adapter serves both domains);
* early stopping on a seeded ``val_stimulus_fraction`` of those training stimuli (held out
  whole, stimulus-disjoint from the rest of training and from fold ``k``), scored on each
  stimulus' mean, as evaluation scores them (:func:`fmri2img.data.trials.stimulus_means`);
* ``linear`` / ``mlp`` adapters map the frozen decoder's output to the target embedding
  (the base is run under ``no_grad``; its weights are hashed before and after to
  prove they did not change); ``finetune`` trains a copy of the whole decoder on the same
  rows (the baseline of H3);
* learning rates ``lr, lr/10, ...`` (``lr_steps``) are each tried from the same seeded start;
  the one whose kept state scores best on the early-stopping stimuli is kept.

Output: ``<output_dir>/checkpoints/adapter_best.pt`` (flat state dict: ``fold<k>.<name>``
tensors) and ``metadata.json`` (base checkpoint hash, type, fraction, folds, seeds, times,
parameter counts, held-out fold scores).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from fmri2img.core import tracking
from fmri2img.core.config import check_choice, check_fraction, check_positive
from fmri2img.core.constants import DEFAULT_CACHE_ROOT, DEFAULT_EXPERIMENT, INIT_SEED
from fmri2img.core.errors import ConfigError, MismatchError
from fmri2img.core.files import ensure_dir, sha256_file, write_json
from fmri2img.core.memo import Memo
from fmri2img.core.vocab import ADAPTER_TYPES, DEVICES
from fmri2img.data import regions
from fmri2img.data.schema import read_index
from fmri2img.data.trials import Dataset, adapter_fold_rows, imagery_folds, load_rows, stimulus_means
from fmri2img.embeddings.cache import load_embedding_set
from fmri2img.models.adapters import build_adapter
from fmri2img.models.checkpoint import ADAPTER_FILE, WEIGHTS_FILE, load_checkpoint, save_state
from fmri2img.models.loop import TrainSpec, count_parameters, deterministic, predict_module, train_module
from fmri2img.models.losses import CosineInfoNCELoss, CosineMSELoss
from fmri2img.models.predictors import base_module

#: Ratio between consecutive learning rates of the search (one decade).
LR_STEP_FACTOR = 10.0


@dataclass(frozen=True)
class AdaptConfig:
    """Adapter training options (roadmap defaults: 50 epochs, lr 1e-3, batch 32; here 1e-3 is the
    largest of the ``lr_steps`` rates tried per fold)."""

    adapter: str = "linear"  # one of ADAPTER_TYPES
    condition: bool = False
    imagery_fraction: float = 0.2
    epochs: int = 50
    #: the largest learning rate tried; ``lr_steps`` decades are tried (see :func:`learning_rates`)
    lr: float = 1e-3
    #: learning rates tried per fold: lr, lr/10, ... (``lr_steps`` values); the one whose kept
    #: state scores best on the validation stimuli wins (ties: the larger). AdamW's step is
    #: absolute, so no one rate suits every model (docs/performance.md, "Adapters"). The search
    #: time counts in ``train_seconds`` (adapters and fine-tune alike).
    lr_steps: int = 3
    batch_size: int = 32
    weight_decay: float = 1e-4
    patience: int = 10
    loss: Literal["cosine_mse", "contrastive"] = "cosine_mse"
    #: early stopping on ~5 of the ~12 training stimuli (fewer made the selected epoch noise;
    #: calibrated on the synthetic world, docs/performance.md)
    val_stimulus_fraction: float = 0.4
    hidden_dim: int = 128
    #: rank of the ``linear`` adapter's update, ``W = I + U V^T`` with ``U, V`` of shape (dim, rank),
    #: still identity at initialisation; 0 = a full ``dim x dim`` matrix. Rank 8 (8.7k parameters
    #: at dim 512: the roadmap's "<1% overhead" of a ridge decoder) beat the full matrix on
    #: held-out imagery stimuli of the synthetic world.
    rank: int = 8
    device: str = "cpu"
    seed: int = INIT_SEED
    folds: tuple[int, ...] | None = None

    def validate(self) -> None:
        check_fraction("imagery_fraction", self.imagery_fraction)
        check_fraction("val_stimulus_fraction", self.val_stimulus_fraction)
        for name in ("epochs", "batch_size", "patience", "hidden_dim", "lr_steps"):
            check_positive(name, getattr(self, name))
        check_positive("rank", self.rank, allow_zero=True)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("adapter", self.adapter, ADAPTER_TYPES)
        if self.adapter == "finetune" and self.condition:
            raise ConfigError("--condition applies to 'linear' and 'mlp' adapters, not to 'finetune'.")
        check_choice("device", self.device, DEVICES)

    @property
    def name(self) -> str:
        return self.adapter + ("_condition" if self.condition else "")


def learning_rates(config: AdaptConfig) -> tuple[float, ...]:
    """``(lr, lr / 10, ..., lr / 10**(lr_steps - 1))``: the rates tried per fold, largest first."""
    return tuple(config.lr / LR_STEP_FACTOR**k for k in range(config.lr_steps))


def _state_hash(module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class AdaptResult:
    checkpoint: Path
    metadata: dict[str, Any]
    run_id: str | None = None
    #: per-epoch records of the kept learning rate's fit, per fold
    histories: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    #: the trained module of each fold (adapter, or fine-tuned copy of the decoder's module)
    modules: dict[int, Any] = dataclasses.field(default_factory=dict)


def _fit_fold(config: AdaptConfig, base, train: Dataset, val: Dataset, lr: float, rng, *, desc: str,
              progress: bool):
    """One adapter (or fine-tuned copy of ``base``) trained at ``lr``; returns (module, history).
    Call inside :func:`~fmri2img.models.loop.deterministic`."""
    spec = TrainSpec(epochs=config.epochs, lr=lr, weight_decay=config.weight_decay, batch_size=config.batch_size,
                     patience=config.patience, device=config.device, progress=progress, desc=desc)
    loss = CosineInfoNCELoss() if config.loss == "contrastive" else CosineMSELoss()
    if config.adapter == "finetune":
        module = copy.deepcopy(base)
        for p in module.parameters():
            p.requires_grad_(True)
        Xv, Yv, _ = stimulus_means(val.X, val.Y, val.rows, val.condition)
        return module, train_module(module, loss, Dataset(train.X, train.Y), Dataset(Xv, Yv), spec, rng)
    module = build_adapter(config.adapter, train.Y.shape[1], condition=config.condition,
                           hidden_dim=config.hidden_dim, rank=config.rank)
    P_val, Yv, cond_v = stimulus_means(predict_module(base, val.X), val.Y, val.rows, val.condition)
    fit = Dataset(predict_module(base, train.X), train.Y, condition=train.condition if config.condition else None)
    stop = Dataset(P_val, Yv, condition=cond_v if config.condition else None)
    return module, train_module(module, loss, fit, stop, spec, rng)


def _fold_data(index: pd.DataFrame, fold: int, config: AdaptConfig, cache_root, embeddings, n_voxels: int,
               checkpoint, memo: Memo | None) -> tuple[Dataset, Dataset, list[str]]:
    """Training and early-stopping trials of hold-out ``fold`` (condition ids attached)."""
    train_mask, val_mask, val_stimuli = adapter_fold_rows(
        index, fold, with_vision=config.condition, imagery_fraction=config.imagery_fraction,
        val_stimulus_fraction=config.val_stimulus_fraction, seed=config.seed + fold)
    train = load_rows(index, train_mask, cache_root, embeddings, memo=memo)
    val = load_rows(index, val_mask, cache_root, embeddings, memo=memo)
    if train.X.shape[1] != n_voxels:
        raise MismatchError(f"Checkpoint {checkpoint} expects {n_voxels} voxels; "
                            f"the index's beta cache has {train.X.shape[1]}.")
    for data in (train, val):
        data.condition = (data.rows["condition"] == "imagery").to_numpy().astype(np.int64)
    return train, val, val_stimuli


def _train_fold(config: AdaptConfig, base, train: Dataset, val: Dataset, fold: int, progress: bool):
    """Every learning rate of :func:`learning_rates` from the same seeded start; the one whose kept
    state scores best on the early-stopping stimuli wins (ties: the larger). Returns (lr, module,
    history, tried)."""
    tried = []  # (kept state's validation criterion, lr, module, history), largest lr first
    for lr in learning_rates(config):
        with deterministic(config.seed + fold, config.device) as rng:  # same start for every lr
            module, history = _fit_fold(config, base, train, val, lr, rng,
                                        desc=f"{config.name} fold {fold} lr {lr:g}", progress=progress)
        tried.append((history.best_val_loss, lr, module, history))
    chosen = min(range(len(tried)), key=lambda i: (tried[i][0], i))
    _, lr, module, history = tried[chosen]
    return lr, module, history, tried


def _fold_record(fold, seconds, train: Dataset, val_stimuli, lr, history, tried) -> dict[str, Any]:
    return {"fold": fold, "train_seconds": seconds, "n_train_trials": int(len(train.X)),
            "n_train_stimuli": int(len(np.unique(train.rows["stimulus_id"]))),
            "val_stimuli": val_stimuli, "epochs_run": len(history),
            "lr": lr, "best_epoch": history.best_epoch, "best_val_cosine": history.best_val_cosine,
            "initial_val_cosine": history.initial_val_cosine,
            "lr_search": [{"lr": t[1], "val_loss": t[0], "best_epoch": t[3].best_epoch} for t in tried]}


def train_adapters(
    index_path: str | Path,
    checkpoint: str | Path,
    output_dir: str | Path,
    config: AdaptConfig,
    *,
    model_type: str | None = None,
    cache_root: str | Path = DEFAULT_CACHE_ROOT,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run=None,
    progress: bool = True,
    memo: Memo | None = None,
    track: bool = True,
) -> AdaptResult:
    """Train one adapter (or fine-tuned copy) per held-out imagery fold; write ``adapter_best.pt``.

    Logs into an MLflow run of its own (a child of ``parent_run`` when given), or none with
    ``track=False`` (an ablation cell logs the returned histories and modules into its own run).
    """
    config.validate()
    index = read_index(index_path)
    subject = str(index["subject"].iloc[0])
    decoder, base_meta = load_checkpoint(checkpoint, expected_decoder=model_type)
    index = regions.for_checkpoint(index, base_meta)
    if base_meta.get("train_on", "perception") != "perception":
        raise MismatchError(f"Adapters sit on a perception-only decoder; {checkpoint} was trained "
                            f"'{base_meta.get('train_on')}'.")
    embeddings = load_embedding_set(cache_root, base_meta["embedding_set"])
    folds = list(config.folds) if config.folds is not None else imagery_folds(index)
    out_dir = ensure_dir(Path(output_dir) / "checkpoints")
    params = {"stage": "adapt", "index": str(index_path), "checkpoint": str(checkpoint),
              "config": dataclasses.asdict(config), "subject": subject}
    tags = {"subject": subject, "decoder": base_meta["decoder"], "configuration": f"adapter_{config.name}"
            if config.adapter != "finetune" else "finetune"}
    state: dict[str, torch.Tensor] = {}
    fold_info, histories, modules = [], {}, {}
    opened = tracking.run("adapt", params, tracking_uri=tracking_uri, experiment=experiment,
                          run_name=f"adapt-{config.name}-{base_meta['decoder']}-{subject}", tags=tags,
                          parent=parent_run) if track else contextlib.nullcontext(tracking.NULL_RUN)
    with opened as run:
        base = base_module(decoder).cpu().eval()
        base_hash = _state_hash(base)
        for p in base.parameters():
            p.requires_grad_(False)
        for fold in folds:
            train, val, val_stimuli = _fold_data(index, fold, config, cache_root, embeddings,
                                                 base_meta["n_voxels"], checkpoint, memo)
            start, cpu_start = time.perf_counter(), time.process_time()
            lr, module, history, tried = _train_fold(config, base, train, val, fold, progress)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            if _state_hash(base) != base_hash:
                raise RuntimeError("The frozen base decoder changed during adapter training.")
            for key, tensor in module.cpu().state_dict().items():
                state[f"fold{fold}.{key}"] = tensor.detach().cpu().clone().contiguous()
            run.log_history(history, prefix=f"fold{fold}/")
            histories[fold], modules[fold] = list(history), module
            fold_info.append({**_fold_record(fold, seconds, train, val_stimuli, lr, history, tried),
                              "train_cpu_seconds": cpu_seconds})
        weights = out_dir / ADAPTER_FILE
        weights_sha256 = save_state(weights, state)
        metadata = _metadata(config, checkpoint, base_meta, embeddings, subject, folds, fold_info,
                             count_parameters(module), count_parameters(base), weights_sha256, run.run_id)
        write_json(out_dir / "metadata.json", metadata)
        run.log_metrics({"train_seconds_total": metadata["train_seconds_total"],
                         "parameter_overhead": metadata["parameter_overhead"],
                         "n_trainable_parameters": metadata["n_trainable_parameters"]})
        run.log_artifacts(out_dir, "adapter")
    return AdaptResult(checkpoint=weights, metadata=metadata, run_id=run.run_id, histories=histories,
                       modules=modules)


def _metadata(config, checkpoint, base_meta, embeddings, subject, folds, fold_info, n_trainable, n_base,
              weights_sha256, run_id) -> dict[str, Any]:
    """The adapters' metadata.json (base checkpoint hash, type, folds, seeds, times, parameter counts)."""
    base_path = Path(checkpoint)
    base_weights = base_path if base_path.is_file() else base_path / WEIGHTS_FILE
    seconds = [f["train_seconds"] for f in fold_info]
    return {
        "adapter": config.adapter, "condition": config.condition, "name": config.name,
        "config": dataclasses.asdict(config), "dim": int(embeddings.vectors.shape[1]),
        "base_checkpoint": str(checkpoint), "base_checkpoint_sha256": sha256_file(base_weights),
        "base_decoder": base_meta["decoder"], "embedding_set": base_meta["embedding_set"],
        "n_voxels": base_meta["n_voxels"], "subject": subject, "folds": folds,
        "fold_details": fold_info, "seeds": {"init": config.seed, "split": base_meta.get("seeds", {}).get("split")},
        "train_seconds_total": float(sum(seconds)),
        "train_cpu_seconds_total": float(sum(f["train_cpu_seconds"] for f in fold_info)),
        "train_seconds_mean": float(np.mean(seconds)), "train_seconds_std": float(np.std(seconds)),
        "n_trainable_parameters": int(n_trainable), "n_base_parameters": int(n_base),
        "parameter_overhead": float(n_trainable / n_base) if config.adapter != "finetune" else 1.0,
        "weights_sha256": weights_sha256,
        "mlflow_run_id": run_id,
    }
