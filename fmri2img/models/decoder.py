"""What the torch decoders share: input and target normalisation, the residual block, and the
:class:`TorchDecoder` mixin with ``fit`` / ``predict`` / ``state_dict`` / ``load_state_dict``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmri2img.core.errors import InputError, MismatchError
from fmri2img.data.trials import Dataset
from fmri2img.models.base import check_sample_weight, check_xy
from fmri2img.models.loop import (
    TrainSpec,
    deterministic,
    holdout_split,
    predict_module,
    resolve_device,
    train_module,
)
from fmri2img.models.losses import EPS

log = logging.getLogger(__name__)

#: Fraction of training rows held out for early stopping when no validation set is given
#: (the conventional 90/10 split; rows drawn with a generator seeded by the decoder's seed).
DEFAULT_VAL_FRACTION = 0.1


class Standardize(nn.Module):
    """``(x - mean) / scale`` with ``mean`` and ``scale`` (shape (p,)) stored as buffers."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    def set_statistics(self, X: np.ndarray) -> None:
        """Set mean and standard deviation (ddof 0; constant columns get scale 1) from ``X`` (n, p)."""
        X64 = X.astype(np.float64)
        mean = X64.mean(axis=0)
        scale = X64.std(axis=0)
        scale[scale < EPS] = 1.0
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.scale.copy_(torch.from_numpy(scale.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _check_stats_rows(stats_rows: Any, n: int) -> np.ndarray | None:
    """None or a boolean mask of shape (n,) selecting at least 2 rows."""
    if stats_rows is None:
        return None
    mask = np.asarray(stats_rows)
    if mask.dtype != bool or mask.shape != (n,) or mask.sum() < 2:
        raise InputError(f"Expected stats_rows as a boolean mask of shape ({n},) selecting at least 2 rows, "
                         f"got {mask.dtype} {mask.shape} with {int(mask.sum()) if mask.dtype == bool else '?'} rows.")
    return mask


def set_target_statistics(module: nn.Module, Y: np.ndarray) -> None:
    """Fill ``module.y_mean`` (d,) with the column means of ``Y`` and ``module.y_scale`` (1,)
    with the square root of the mean column variance (the RMS standard deviation)."""
    Y64 = Y.astype(np.float64)
    module.y_mean.copy_(torch.from_numpy(Y64.mean(axis=0).astype(np.float32)))
    module.y_scale.fill_(max(float(np.sqrt(Y64.var(axis=0).mean())), EPS))


class ResidualBlock(nn.Module):
    """Pre-norm residual block: ``x + Dropout(Linear(Dropout(GELU(Linear(LayerNorm(x))))))``, (b, h) -> (b, h)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm(x))))))


class RidgeModule(torch.nn.Module):
    """``((x - mean) / scale) @ weight + bias``; x: (batch, n_voxels) -> (batch, n_dims)."""

    def __init__(self, mean, scale, coef, intercept) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.array(mean, dtype=np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.array(scale, dtype=np.float32)))
        self.weight = torch.nn.Parameter(torch.as_tensor(np.array(coef, dtype=np.float32)))
        self.bias = torch.nn.Parameter(torch.as_tensor(np.array(intercept, dtype=np.float32)))

    def forward(self, x):
        return ((x - self.mean) / self.scale) @ self.weight + self.bias


class TorchDecoder:
    """Mixin with the shared ``fit`` / ``predict`` / ``state_dict`` of the torch decoders.

    A subclass (also a :class:`~fmri2img.models.base.BaseDecoder`) defines ``_build_module(
    n_features, n_targets, **dims)``, ``_dims_from_data(X)``, ``_dims_from_state(state)``,
    ``_init_module(module, X, Y)`` (statistics from training rows) and ``_make_loss(module)``, and
    has the parameters ``epochs, lr, weight_decay, batch_size, patience, seed, device, progress``.
    """

    def fit(self, X, Y, X_val=None, Y_val=None, sample_weight=None, stats_rows=None, val_sample_weight=None):
        """Fit on ``X`` (n, p) betas and ``Y`` (n, d) embeddings; return ``self``.

        Parameters
        ----------
        X : array of shape (n_trials, n_voxels)
        Y : array of shape (n_trials, n_dims)
        X_val, Y_val : arrays of shape (n_val, n_voxels) / (n_val, n_dims), optional
            Early-stopping set. When omitted, a seeded :data:`DEFAULT_VAL_FRACTION` of the
            training rows is held out (trial-wise; pass a stimulus-disjoint split for real data).
        sample_weight : array of shape (n_trials,), optional
            Per-trial loss weight (e.g. the imagery weight of mixed training).
        stats_rows : bool array of shape (n_trials,), optional
            Rows whose statistics define the feature space: input standardisation, the
            two-stage PCA basis and the output statistics (default: all training rows). Mixed
            training passes its perception trials: the few imagery stimuli, repeated many times
            and z-scored against another session's statistics, otherwise bend that space
            (measured: docs/performance.md, "Training").
        val_sample_weight : array of shape (n_val,), optional
            Weights of the early-stopping rows ``X_val`` (mixed training weights its held-out
            imagery stimuli against the perception validation trials).
        """
        X, Y = check_xy(X, Y)
        w = check_sample_weight(sample_weight, X.shape[0])
        ref = _check_stats_rows(stats_rows, X.shape[0])
        device = resolve_device(self.device)
        if (X_val is None) != (Y_val is None):
            raise InputError("Pass both X_val and Y_val, or neither.")
        with deterministic(self.seed, device) as rng:
            if X_val is None:
                train_idx, val_idx = holdout_split(X.shape[0], DEFAULT_VAL_FRACTION, rng)
                X_tr, Y_tr, X_va, Y_va = X[train_idx], Y[train_idx], X[val_idx], Y[val_idx]
                ref = None if ref is None else ref[train_idx]
                w_tr = None if w is None else w[train_idx]
                w_va = None if w is None else w[val_idx]
                if w_va is not None and w_va.sum() <= 0:
                    w_va = None
            else:
                X_va, Y_va = check_xy(X_val, Y_val, name="X_val")
                if X_va.shape[1] != X.shape[1] or Y_va.shape[1] != Y.shape[1]:
                    raise InputError(
                        f"Validation shapes {X_va.shape}/{Y_va.shape} do not match training shapes {X.shape}/{Y.shape}."
                    )
                X_tr, Y_tr, w_tr = X, Y, w
                w_va = check_sample_weight(val_sample_weight, X_va.shape[0])
            X_ref, Y_ref = (X_tr, Y_tr) if ref is None else (X_tr[ref], Y_tr[ref])
            module = self._build_module(X.shape[1], Y.shape[1], **self._dims_from_data(X_ref))
            self._init_module(module, X_ref, Y_ref)
            loss_fn = self._make_loss(module)
            spec = TrainSpec(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                             batch_size=self.batch_size, patience=self.patience, device=device,
                             progress=self.progress, desc=self.name, keep_initial=False)
            history = train_module(module, loss_fn, Dataset(X_tr, Y_tr, sample_weight=w_tr),
                                   Dataset(X_va, Y_va, sample_weight=w_va), spec, rng)
        self.module_ = module.cpu().eval()
        self.loss_ = loss_fn.cpu() if isinstance(loss_fn, nn.Module) else loss_fn
        self.history_ = history
        self.best_epoch_ = history.best_epoch
        best_loss = history.best_val_loss
        if best_loss >= history.initial_val_loss:
            log.warning("%s: no epoch beat the untrained model (a constant prediction) on the validation "
                        "rows: criterion %.4f at epoch %d vs %.4f at initialisation. Too little or too noisy "
                        "training data for this decoder?", self.name, best_loss, self.best_epoch_,
                        history.initial_val_loss)
        self.n_features_in_ = int(X.shape[1])
        self.n_targets_ = int(Y.shape[1])
        return self

    def predict(self, X) -> np.ndarray:
        """Decode ``X`` (n_trials, n_voxels) into float32 embeddings (n_trials, n_dims)."""
        self._check_is_fitted()
        X, _ = check_xy(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"Expected X with {self.n_features_in_} voxels (as in training), got {X.shape[1]}.")
        self.module_.cpu()
        return predict_module(self.module_, X)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` of everything ``predict`` needs (weights and normalisation buffers)."""
        self._check_is_fitted()
        return {k: v.detach().cpu().clone() for k, v in self.module_.state_dict().items()}

    def load_state_dict(
        self, state: dict[str, torch.Tensor], n_features: int | None = None, n_targets: int | None = None
    ):
        """Rebuild ``module_`` from ``state`` and the parameters alone (no fit); return ``self``.

        ``n_features`` / ``n_targets`` are optional checks against the shapes found in ``state``.
        """
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"Expected a flat dict of tensors for {type(self).__name__}.load_state_dict.")
        try:
            dims = self._dims_from_state(state)
        except KeyError as exc:
            raise MismatchError(f"State is not a {self.name} decoder's: missing {exc.args[0]!r}.") from None
        for label, given, found in (("voxels", n_features, dims["n_features"]), ("dims", n_targets, dims["n_targets"])):
            if given is not None and int(given) != found:
                raise MismatchError(f"State holds a {self.name} decoder for {found} {label}, expected {given}.")
        module = self._build_module(**dims)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise MismatchError(f"State does not match {self!r}: {detail}") from None
        self.module_ = module.cpu().eval()
        self.history_ = []
        self.n_features_in_ = dims["n_features"]
        self.n_targets_ = dims["n_targets"]
        return self
