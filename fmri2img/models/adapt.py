"""The ``adapt`` stage (H3): lightweight adapters on a frozen perception decoder, and the
full fine-tuning baseline they are compared with.

For every NSD-Imagery fold ``k`` (cross-validation, so every imagery stimulus is evaluated
exactly once by a model that never saw it):

* training rows: *imagery* trials of the other folds' stimuli, a seeded ``imagery_fraction``
  of each stimulus' trials (condition adapters also get the same stimuli's *vision* trials,
  condition 0, so one adapter serves both domains);
* early stopping on a seeded ``val_stimulus_fraction`` of those training stimuli (held out
  whole, stimulus-disjoint from the rest of training and from fold ``k``), scored on each
  stimulus' mean, as evaluation scores them (:func:`fmri2img.models.training.stimulus_means`);
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

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fmri2img.config import check_fraction, check_positive
from fmri2img.constants import DEFAULT_CACHE_ROOT, DEFAULT_EXPERIMENT, INIT_SEED
from fmri2img.data import selection
from fmri2img.errors import ConfigError, CorruptFileError, MismatchError, MissingInputError

ADAPTER_FILE = "adapter_best.pt"
ADAPTER_TYPES = ("linear", "mlp", "finetune")


@dataclass(frozen=True)
class AdaptConfig:
    """Adapter training options (roadmap defaults: 50 epochs, lr 1e-3, batch 32; here 1e-3 is the
    largest of the ``lr_steps`` rates tried per fold)."""

    adapter: Literal["linear", "mlp", "finetune"] = "linear"
    condition: bool = False
    imagery_fraction: float = 0.2
    epochs: int = 50
    #: the largest learning rate tried; ``lr_steps`` decades are tried (see :func:`learning_rates`)
    lr: float = 1e-3
    #: learning rates tried per fold: lr, lr/10, ... (``lr_steps`` values); the one whose kept
    #: state scores best on the validation stimuli wins (ties: the larger). AdamW's step is
    #: absolute, so no one rate suits every model: at 1e-3 a ridge decoder (weights RMS ~3e-4
    #: on the demo world) and the condition adapters never beat their initial state, at 1e-4
    #: to 1e-5 they do. The search time counts in ``train_seconds`` (adapters and fine-tune alike).
    lr_steps: int = 3
    batch_size: int = 32
    weight_decay: float = 1e-4
    patience: int = 10
    loss: Literal["cosine_mse", "contrastive"] = "cosine_mse"
    #: early stopping on ~5 of the ~12 training stimuli: with 0.2 (2 stimuli) the selected epoch
    #: was noise and adapters that hurt held-out stimuli were kept (calibrated on the synthetic world)
    val_stimulus_fraction: float = 0.4
    hidden_dim: int = 128
    #: rank of the ``linear`` adapter's update, ``W = I + U V^T`` with ``U, V`` of shape
    #: (dim, rank), still identity at initialisation; 0 = a full ``dim x dim`` matrix. Rank 8
    #: (8.7k parameters at dim 512: the roadmap's "<1% overhead" of a ridge decoder) beat the
    #: full matrix on held-out imagery stimuli of the synthetic world (~30 training trials).
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
        if self.adapter not in ADAPTER_TYPES:
            raise ConfigError(f"Unknown adapter {self.adapter!r}. Choose one of {', '.join(map(repr, ADAPTER_TYPES))}.")
        if self.adapter == "finetune" and self.condition:
            raise ConfigError("--condition applies to 'linear' and 'mlp' adapters, not to 'finetune'.")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"Invalid device {self.device!r}; choose one of 'cpu', 'cuda'.")

    @property
    def name(self) -> str:
        return self.adapter + ("_condition" if self.condition else "")


#: Ratio between consecutive learning rates of the search (one decade).
LR_STEP_FACTOR = 10.0


def learning_rates(config: AdaptConfig) -> tuple[float, ...]:
    """``(lr, lr / 10, ..., lr / 10**(lr_steps - 1))``: the rates tried per fold, largest first."""
    return tuple(config.lr / LR_STEP_FACTOR**k for k in range(config.lr_steps))


def _state_hash(module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_adapter(config: AdaptConfig, dim: int):
    """A fresh (identity-initialised) adapter module for ``config``."""
    from fmri2img.models.registry import adapter_class

    cls = adapter_class(config.adapter)
    kwargs: dict[str, Any] = {"n_conditions": 2 if config.condition else None}
    if config.adapter == "mlp":
        kwargs["hidden_dim"] = config.hidden_dim
    if config.adapter == "linear" and config.rank:
        kwargs["rank"] = config.rank
    return cls(dim, **kwargs)


def _loss(config: AdaptConfig):
    from fmri2img.models.torch_utils import CosineInfoNCELoss, CosineMSELoss

    return CosineInfoNCELoss() if config.loss == "contrastive" else CosineMSELoss()


def _fold_rows(index, fold: int, config: AdaptConfig, rng_seed: int):
    """(train_mask, val_mask) of imagery (and, with conditions, vision) rows for hold-out ``fold``."""
    train_folds = selection.training_folds(index, fold)
    ids = index["stimulus_id"].to_numpy()
    conditions = ["imagery", "perception"] if config.condition else ["imagery"]
    pool = np.zeros(len(index), dtype=bool)
    for condition in conditions:
        pool |= selection.imagery_rows(index, condition, train_folds)
    stimuli = np.unique(ids[pool])
    rng = np.random.default_rng(rng_seed)
    n_val = max(1, int(round(config.val_stimulus_fraction * len(stimuli))))
    if n_val >= len(stimuli):
        raise ConfigError(f"Too few training stimuli ({len(stimuli)}) to hold out {n_val} for early stopping.")
    val_stimuli = set(rng.choice(stimuli, size=n_val, replace=False).tolist())
    is_val = np.isin(ids, list(val_stimuli))
    train = selection.subsample_by_fraction(pool & ~is_val, config.imagery_fraction, rng_seed, groups=ids)
    val = pool & is_val
    return train, val, sorted(val_stimuli)


@dataclass
class AdaptResult:
    checkpoint: Path
    metadata: dict[str, Any]
    run_id: str | None = None


def _fit_fold(config: AdaptConfig, base, train, val, cond_train, cond_val, lr: float, rng, *, desc: str,
              progress: bool):
    """One adapter (or fine-tuned copy of ``base``) trained at ``lr``; returns (module, history).
    Call inside :func:`~fmri2img.models.torch_utils.deterministic`."""
    from fmri2img.models.torch_utils import predict_module, train_module
    from fmri2img.models.training import stimulus_means

    common = dict(rng=rng, epochs=config.epochs, lr=lr, weight_decay=config.weight_decay,
                  batch_size=config.batch_size, patience=config.patience, device=config.device,
                  progress=progress, desc=desc)
    if config.adapter == "finetune":
        module = copy.deepcopy(base)
        for p in module.parameters():
            p.requires_grad_(True)
        Xv, Yv, _ = stimulus_means(val.X, val.Y, val.rows, cond_val)
        return module, train_module(module, _loss(config), train.X, train.Y, Xv, Yv, **common)
    module = build_adapter(config, train.Y.shape[1])
    P_train = predict_module(base, train.X)
    P_val, Yv, cond_v = stimulus_means(predict_module(base, val.X), val.Y, val.rows, cond_val)
    return module, train_module(module, _loss(config), P_train, train.Y, P_val, Yv,
                                condition=cond_train if config.condition else None,
                                condition_val=cond_v if config.condition else None, **common)


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
) -> AdaptResult:
    """Train one adapter (or fine-tuned copy) per held-out imagery fold; write ``adapter_best.pt``."""
    import torch

    from fmri2img import tracking
    from fmri2img.data.index import read_index
    from fmri2img.embeddings.cache import load_embedding_set
    from fmri2img.io import ensure_dir, sha256_file, write_json
    from fmri2img.models.checkpoint import load_checkpoint
    from fmri2img.models.predictors import base_module
    from fmri2img.models.torch_utils import count_parameters, deterministic
    from fmri2img.models.training import load_rows

    config.validate()
    index = read_index(index_path)
    subject = str(index["subject"].iloc[0])
    decoder, base_meta = load_checkpoint(checkpoint, expected_decoder=model_type)
    if base_meta.get("train_on", "perception") != "perception":
        raise MismatchError(f"Adapters sit on a perception-only decoder; {checkpoint} was trained "
                            f"'{base_meta.get('train_on')}'.")
    embedding_set = load_embedding_set(cache_root, base_meta["embedding_set"])
    folds = list(config.folds) if config.folds is not None else selection.imagery_folds(index)
    base_path = Path(checkpoint)
    base_weights = base_path if base_path.is_file() else base_path / "best.pt"
    out_dir = ensure_dir(Path(output_dir) / "checkpoints")
    params = {"stage": "adapt", "index": str(index_path), "checkpoint": str(checkpoint),
              "config": dataclasses.asdict(config), "subject": subject}
    tags = {"subject": subject, "decoder": base_meta["decoder"], "configuration": f"adapter_{config.name}"
            if config.adapter != "finetune" else "finetune"}
    state: dict[str, torch.Tensor] = {}
    fold_info = []
    with tracking.run("adapt", params, tracking_uri=tracking_uri, experiment=experiment,
                      run_name=f"adapt-{config.name}-{base_meta['decoder']}-{subject}", tags=tags,
                      parent=parent_run) as run:
        base = base_module(decoder).cpu().eval()
        base_hash = _state_hash(base)
        for p in base.parameters():
            p.requires_grad_(False)
        n_base = count_parameters(base)
        for fold in folds:
            train_mask, val_mask, val_stimuli = _fold_rows(index, fold, config, config.seed + fold)
            train = load_rows(index, train_mask, cache_root, embedding_set)
            val = load_rows(index, val_mask, cache_root, embedding_set)
            if train.X.shape[1] != base_meta["n_voxels"]:
                raise MismatchError(f"Checkpoint {checkpoint} expects {base_meta['n_voxels']} voxels; "
                                    f"the index's beta cache has {train.X.shape[1]}.")
            cond_train = (train.rows["condition"] == "imagery").to_numpy().astype(np.int64)
            cond_val = (val.rows["condition"] == "imagery").to_numpy().astype(np.int64)
            start = time.perf_counter()
            tried = []  # (kept state's validation criterion, lr, module, history), largest lr first
            for lr in learning_rates(config):
                with deterministic(config.seed + fold, config.device) as rng:  # same start for every lr
                    module, history = _fit_fold(config, base, train, val, cond_train, cond_val, lr, rng,
                                                desc=f"{config.name} fold {fold} lr {lr:g}", progress=progress)
                tried.append((history.best_val_loss, lr, module, history))
            chosen = min(range(len(tried)), key=lambda i: (tried[i][0], i))
            _, lr, module, history = tried[chosen]
            n_trainable = count_parameters(module)
            seconds = time.perf_counter() - start
            if _state_hash(base) != base_hash:
                raise RuntimeError("The frozen base decoder changed during adapter training.")
            module = module.cpu()
            for key, tensor in module.state_dict().items():
                state[f"fold{fold}.{key}"] = tensor.detach().cpu().clone().contiguous()
            run.log_history(history, prefix=f"fold{fold}/")
            fold_info.append({"fold": fold, "train_seconds": seconds, "n_train_trials": int(train_mask.sum()),
                              "n_train_stimuli": int(len(np.unique(train.rows["stimulus_id"]))),
                              "val_stimuli": val_stimuli, "epochs_run": len(history),
                              "lr": lr, "best_epoch": history.best_epoch, "best_val_cosine": history.best_val_cosine,
                              "initial_val_cosine": history.initial_val_cosine,
                              "lr_search": [{"lr": t[1], "val_loss": t[0], "best_epoch": t[3].best_epoch}
                                            for t in tried]})
        weights = out_dir / ADAPTER_FILE
        import io as _io

        from fmri2img.io import write_bytes

        # Serialise in memory: torch.save names the zip's root folder after the target file,
        # so saving to a temporary name would make the bytes differ between runs.
        buffer = _io.BytesIO()
        torch.save(state, buffer)
        write_bytes(weights, buffer.getvalue())
        seconds = [f["train_seconds"] for f in fold_info]
        metadata = {
            "adapter": config.adapter, "condition": config.condition, "name": config.name,
            "config": dataclasses.asdict(config), "dim": int(embedding_set.vectors.shape[1]),
            "base_checkpoint": str(checkpoint), "base_checkpoint_sha256": sha256_file(base_weights),
            "base_decoder": base_meta["decoder"], "embedding_set": base_meta["embedding_set"],
            "n_voxels": base_meta["n_voxels"], "subject": subject, "folds": folds,
            "fold_details": fold_info, "seeds": {"init": config.seed, "split": base_meta.get("seeds", {}).get("split")},
            "train_seconds_total": float(sum(seconds)),
            "train_seconds_mean": float(np.mean(seconds)), "train_seconds_std": float(np.std(seconds)),
            "n_trainable_parameters": int(n_trainable), "n_base_parameters": int(n_base),
            "parameter_overhead": float(n_trainable / n_base) if config.adapter != "finetune" else 1.0,
            "weights_sha256": sha256_file(weights),
            "mlflow_run_id": run.run_id,
        }
        write_json(out_dir / "metadata.json", metadata)
        run.log_metrics({"train_seconds_total": metadata["train_seconds_total"],
                         "parameter_overhead": metadata["parameter_overhead"],
                         "n_trainable_parameters": n_trainable})
        run.log_artifacts(out_dir, "adapter")
    return AdaptResult(checkpoint=weights, metadata=metadata, run_id=run.run_id)


def load_adapters(path: str | Path, base_checkpoint: str | Path, expected_type: str | None = None):
    """Load ``adapter_best.pt`` (+ metadata.json beside it) for ``base_checkpoint``.

    Returns ``(modules_by_fold, metadata)``; ``finetune`` entries are state dicts to load
    into a copy of the base module. Refuses an adapter trained on another base (by SHA-256).
    """
    import torch

    from fmri2img.io import read_json, sha256_file

    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise MissingInputError(f"Adapter checkpoint not found: {path}; expected {ADAPTER_FILE} from `fmri2img adapt`.")
    meta = read_json(path.parent / "metadata.json")
    if expected_type is not None and meta.get("adapter") != expected_type:
        raise MismatchError(f"{path} is a '{meta.get('adapter')}' adapter, not '{expected_type}'.")
    base_path = Path(base_checkpoint)
    base_weights = base_path if base_path.is_file() else base_path / "best.pt"
    actual = sha256_file(base_weights)
    if actual != meta.get("base_checkpoint_sha256"):
        raise MismatchError(f"Adapter {path} was trained on another base checkpoint "
                            f"(SHA-256 {str(meta.get('base_checkpoint_sha256'))[:12]}...), not {base_weights} "
                            f"({actual[:12]}...).")
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 38": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - bytes that are no torch file raise IndexError, KeyError, ...
        raise CorruptFileError(
            f"Cannot load {path}: it holds pickled Python objects or is not a torch file (refused by "
            "weights_only=True); expected a flat state dict of tensors from `fmri2img adapt`.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(f"{path} is not a flat state dict of tensors.")
    by_fold: dict[int, dict[str, Any]] = {}
    for key, tensor in state.items():
        head, _, name = key.partition(".")
        by_fold.setdefault(int(head[4:]), {})[name] = tensor
    return by_fold, meta


def adapter_predictor(decoder, adapter_path: str | Path, base_checkpoint: str | Path,
                      expected_type: str | None = None):
    """A :class:`~fmri2img.models.predictors.Predictor` applying the per-fold adapters."""
    from fmri2img.models.predictors import Predictor, adapted_fn, base_module, module_fn

    states, meta = load_adapters(adapter_path, base_checkpoint, expected_type)
    config = AdaptConfig(**{k: (tuple(v) if k == "folds" and v is not None else v)
                            for k, v in meta["config"].items()})
    fold_models = {}
    for fold, state in states.items():
        if config.adapter == "finetune":
            module = copy.deepcopy(base_module(decoder)).cpu()
            module.load_state_dict(state)
            fold_models[fold] = module_fn(module)
        else:
            module = build_adapter(config, meta["dim"])
            module.load_state_dict(state)
            fold_models[fold] = adapted_fn(decoder, module, config.condition)
    return Predictor(fold_models=fold_models), meta
