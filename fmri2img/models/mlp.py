"""``mlp`` decoder: a residual MLP from masked betas to embeddings, trained with cosine + MSE.

Architecture (p voxels, h = ``hidden_dim``, d embedding dims, b batch)::

    x (b, p) -> Standardize (training mean/std, buffers)           (b, p)
             -> Linear(p, h) -> Dropout                           (b, h)
             -> n_blocks x [x + Drop(Linear(Drop(GELU(Linear(LayerNorm(x))))))]   (b, h)
             -> LayerNorm -> Linear(h, d), zero-initialised       (b, d)
             -> * y_scale + y_mean (training target statistics, buffers)    (b, d)

The zero-initialised head makes the untrained model predict the mean training embedding
(the baseline any decoder must beat). The MSE term is computed on targets divided by
``y_scale`` (the RMS standard deviation of the training embeddings), so the loss weights
do not depend on the embedding model's scale.

Defaults are sized for the demo (p ~ 2,000 voxels, n ~ 2,700 trials, d = 512): h = 256,
about 0.9 M parameters, at most 30 epochs with early stopping (patience 5), batch 128.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fmri2img.core.constants import INIT_SEED
from fmri2img.models.base import BaseDecoder
from fmri2img.models.decoder import ResidualBlock, Standardize, TorchDecoder, set_target_statistics
from fmri2img.models.losses import CosineMSELoss


class MLPNet(nn.Module):
    """The ``mlp`` decoder's network: raw betas (b, p) -> embeddings (b, d); see the module docstring."""

    def __init__(self, n_features: int, n_targets: int, hidden_dim: int, n_blocks: int, dropout: float):
        super().__init__()
        self.input_norm = Standardize(n_features)
        self.stem = nn.Linear(n_features, hidden_dim)
        self.stem_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([ResidualBlock(hidden_dim, dropout) for _ in range(n_blocks)])
        self.out_norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, n_targets)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("y_mean", torch.zeros(n_targets))
        self.register_buffer("y_scale", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem_drop(self.stem(self.input_norm(x)))
        for block in self.blocks:
            h = block(h)
        return self.head(self.out_norm(h)) * self.y_scale + self.y_mean


class MLPDecoder(TorchDecoder, BaseDecoder):
    """Residual MLP decoder (registry name ``mlp``), trained with cosine + MSE, AdamW, early stopping.

    Parameters
    ----------
    hidden_dim : int
        Width h of the residual stream.
    n_blocks : int
        Number of residual blocks.
    dropout : float
        Dropout probability (stem and blocks).
    epochs : int
        Maximum number of epochs.
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    batch_size : int
        Mini-batch size.
    patience : int
        Stop after this many epochs without a lower validation cosine distance ``1 - cos`` (what
        every evaluation metric scores; with ``cosine_weight=0`` the loss itself); the best
        epoch is kept (:func:`~fmri2img.models.losses.early_stopping_criterion`).
    cosine_weight, mse_weight : float
        Loss = ``cosine_weight * (1 - cos) + mse_weight * mse(scaled)`` per trial.
    seed : int
        Seeds initialisation, dropout, the hold-out split and the batch order.
    device : str
        ``"cpu"`` or ``"cuda"``; the fitted ``module_`` is always returned on CPU.
    progress : bool
        Show a per-epoch progress bar on stderr.

    Attributes
    ----------
    module_ : MLPNet
        Maps raw X (b, p) to Y (b, d), normalisation included: ``module_(torch.from_numpy(X))``
        equals ``predict(X)``.
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss`` (the monitored criterion), ``val_cosine``.
    best_epoch_ : int
        The restored epoch: the best trained one (a warning is logged when it does not beat the
        untrained model, which predicts a constant).
    n_features_in_, n_targets_ : int
    """

    name = "mlp"

    def __init__(
        self,
        hidden_dim: int = 256,
        n_blocks: int = 2,
        dropout: float = 0.2,
        epochs: int = 30,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 128,
        patience: int = 5,
        cosine_weight: float = 1.0,
        mse_weight: float = 1.0,
        seed: int = INIT_SEED,
        device: str = "cpu",
        progress: bool = True,
    ):
        self.hidden_dim = hidden_dim
        self.n_blocks = n_blocks
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.cosine_weight = cosine_weight
        self.mse_weight = mse_weight
        self.seed = seed
        self.device = device
        self.progress = progress

    def _build_module(self, n_features: int, n_targets: int) -> MLPNet:
        return MLPNet(n_features, n_targets, int(self.hidden_dim), int(self.n_blocks), float(self.dropout))

    def _dims_from_data(self, X: np.ndarray) -> dict:
        return {}

    def _dims_from_state(self, state: dict) -> dict:
        return {"n_features": int(state["input_norm.mean"].shape[0]), "n_targets": int(state["y_mean"].shape[0])}

    def _init_module(self, module: MLPNet, X: np.ndarray, Y: np.ndarray) -> None:
        module.input_norm.set_statistics(X)
        set_target_statistics(module, Y)

    def _make_loss(self, module: MLPNet) -> CosineMSELoss:
        return CosineMSELoss(self.cosine_weight, self.mse_weight, scale=float(module.y_scale))
