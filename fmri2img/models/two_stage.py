"""``two_stage`` decoder: PCA + residual MLP to a latent, then a projection to CLIP space.

Architecture (p voxels, k = ``n_components``, h = ``hidden_dim``, l = ``latent_dim``,
d embedding dims, b batch)::

    stage 1 (voxels -> latent)
      x (b, p) -> Standardize (training mean/std, buffers)                  (b, p)
               -> PCA projection x @ components.T / pca_scale (buffers)     (b, k)
               -> Linear(k, h) -> Dropout                                   (b, h)
               -> n_blocks x residual block (LayerNorm, GELU, Dropout)      (b, h)
               -> LayerNorm -> Linear(h, l)                  latent z       (b, l)
    stage 2 (latent -> CLIP space)
      z (b, l) -> LayerNorm -> Linear(l, d), zero-initialised              (b, d)
               -> * y_scale + y_mean (training target statistics, buffers)  (b, d)
               -> L2 normalise                               output         (b, d), unit norm

The PCA (fitted on the standardised training trials, components stored as buffers,
signs fixed so each component's largest-|loading| is positive) keeps ``k`` directions;
``pca_scale`` is one scalar (the RMS standard deviation of the kept scores) so the MLP sees
inputs of unit scale without whitening away the variance ordering. The zero-initialised
projection starts the model at the normalised mean embedding (CLIP embeddings share a large
common component) and learns deviations from it. Outputs are unit vectors:
the loss is ``cosine_weight * (1 - cos) + contrastive_weight * InfoNCE`` (CLIP-style symmetric
cross-entropy over the mini-batch, learnable temperature initialised at 0.07), the recipe that
lifts retrieval in MindEye (Scotti et al. 2023). Both terms ignore the target's norm.

Defaults (p ~ 2,000, n ~ 2,700, d = 512 in the demo): k = 256, h = l = 256, about 0.5 M
parameters, at most 30 epochs with early stopping (patience 5), batch 128 (the demo's ablation
config: batch 256, lr 2e-3, projects/imagery/configs/ablation.yaml). Note the PCA only helps when the betas have low-rank structure (real fMRI); on isotropic
noise it discards signal.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from fmri2img.core.constants import INIT_SEED
from fmri2img.core.errors import InputError
from fmri2img.models.base import BaseDecoder
from fmri2img.models.decoder import ResidualBlock, Standardize, TorchDecoder, set_target_statistics
from fmri2img.models.losses import CLIP_INIT_TEMPERATURE, EPS, CosineInfoNCELoss


def fit_pca(X: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of centred ``X`` (n, p) in float64, from the top eigenvectors of the smaller of
    the covariance ``Xc.T @ Xc`` (p, p) and the Gram matrix ``Xc @ Xc.T`` (n, n).

    Only the top ``n_components`` eigenpairs are computed (``scipy.linalg.eigh`` with
    ``subset_by_index``; faster than a full SVD, docs/performance.md).

    Returns
    -------
    components : array of shape (n_components, p), float32
        Orthonormal rows, by decreasing variance; signs fixed so the largest-|loading| entry
        of each row is positive.
    explained_variance : array of shape (n_components,), float64
    """
    n, p = X.shape
    k = int(n_components)
    if not 1 <= k <= min(n, p):
        raise InputError(f"n_components must be in [1, {min(n, p)}] for X of shape {X.shape}, got {n_components}.")
    Xc = X.astype(np.float64)
    Xc = Xc - Xc.mean(axis=0)
    small = Xc.T @ Xc if p <= n else Xc @ Xc.T
    m = small.shape[0]
    eigvals, eigvecs = scipy.linalg.eigh(small, subset_by_index=[m - k, m - 1])
    eigvals, eigvecs = np.clip(eigvals[::-1], 0.0, None), eigvecs[:, ::-1]
    if p <= n:
        vt = eigvecs.T
    else:  # right singular vectors from left ones: v = Xc.T u / s
        vt = (Xc.T @ eigvecs / np.sqrt(np.maximum(eigvals, 1e-300))).T
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    vt = vt * signs[:, None]
    return vt.astype(np.float32), eigvals / max(n - 1, 1)


class TwoStageNet(nn.Module):
    """The ``two_stage`` network: raw betas (b, p) -> unit embeddings (b, d); see the module docstring."""

    def __init__(
        self, n_features: int, n_targets: int, n_components: int, hidden_dim: int, latent_dim: int, n_blocks: int,
        dropout: float,
    ):
        super().__init__()
        self.input_norm = Standardize(n_features)
        self.register_buffer("components", torch.zeros(n_components, n_features))
        self.register_buffer("pca_scale", torch.ones(1))
        self.stem = nn.Linear(n_components, hidden_dim)
        self.stem_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([ResidualBlock(hidden_dim, dropout) for _ in range(n_blocks)])
        self.to_latent = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, latent_dim))
        self.to_clip = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, n_targets))
        nn.init.zeros_(self.to_clip[1].weight)
        nn.init.zeros_(self.to_clip[1].bias)
        self.register_buffer("y_mean", torch.zeros(n_targets))
        self.register_buffer("y_scale", torch.ones(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: raw betas (b, p) -> scaled PCA scores (b, n_components); buffers only,
        the same in train and eval mode (``train_module`` computes it once per row, not per epoch)."""
        return self.input_norm(x) @ self.components.T / self.pca_scale

    def encode_features(self, z: torch.Tensor) -> torch.Tensor:
        """Stage 1 from PCA scores: (b, n_components) -> latent (b, latent_dim)."""
        h = self.stem_drop(self.stem(z))
        for block in self.blocks:
            h = block(h)
        return self.to_latent(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1: raw betas (b, p) -> latent (b, latent_dim)."""
        return self.encode_features(self.features(x))

    def from_features(self, z: torch.Tensor) -> torch.Tensor:
        """PCA scores (b, n_components) -> unit embeddings (b, d)."""
        return F.normalize(self.to_clip(self.encode_features(z)) * self.y_scale + self.y_mean, dim=1, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x))


class TwoStageDecoder(TorchDecoder, BaseDecoder):
    """Two-stage decoder (registry name ``two_stage``): PCA + residual MLP -> latent -> CLIP space.

    Parameters
    ----------
    n_components : int
        PCA components kept (capped at ``min(n_train - 1, n_voxels)``).
    hidden_dim, latent_dim : int
        Width of the residual MLP and of the latent.
    n_blocks : int
        Residual blocks in stage 1.
    dropout : float
        Dropout probability.
    epochs, lr, weight_decay, batch_size, patience : training hyper-parameters
        As in :class:`~fmri2img.models.mlp.MLPDecoder` (AdamW, early stopping on the validation
        cosine distance ``1 - cos``, :func:`~fmri2img.models.losses.early_stopping_criterion`).
    cosine_weight, contrastive_weight : float
        Loss weights of ``1 - cos`` and of the InfoNCE term.
    temperature : float
        Initial InfoNCE temperature (learned during training; final value in ``history_``).
    seed, device, progress
        As in :class:`~fmri2img.models.mlp.MLPDecoder`.

    Attributes
    ----------
    module_ : TwoStageNet
        Maps raw X (b, p) to unit-norm Y (b, d); ``module_.encode`` gives the stage-1 latent.
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss`` (the monitored ``1 - cos``),
        ``val_cosine``, ``temperature``.
    explained_variance_ratio_ : float
        Share of the standardised training variance kept by the PCA (after ``fit`` only).
    best_epoch_ : int
        The restored epoch: the best trained one (a warning is logged when it does not beat the
        untrained model, which predicts a constant).
    n_features_in_, n_targets_, n_components_ : int
    """

    name = "two_stage"

    def __init__(
        self,
        n_components: int = 256,
        hidden_dim: int = 256,
        latent_dim: int = 256,
        n_blocks: int = 2,
        dropout: float = 0.2,
        epochs: int = 30,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 128,
        patience: int = 5,
        cosine_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        temperature: float = CLIP_INIT_TEMPERATURE,
        seed: int = INIT_SEED,
        device: str = "cpu",
        progress: bool = True,
    ):
        self.n_components = n_components
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        self.n_blocks = n_blocks
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.cosine_weight = cosine_weight
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.seed = seed
        self.device = device
        self.progress = progress

    def _build_module(self, n_features: int, n_targets: int, n_components: int) -> TwoStageNet:
        return TwoStageNet(
            n_features, n_targets, int(n_components), int(self.hidden_dim), int(self.latent_dim),
            int(self.n_blocks), float(self.dropout),
        )

    def _dims_from_data(self, X: np.ndarray) -> dict:
        return {"n_components": int(max(1, min(int(self.n_components), X.shape[0] - 1, X.shape[1])))}

    def _dims_from_state(self, state: dict) -> dict:
        n_components, n_features = state["components"].shape
        n_targets = int(state["to_clip.1.weight"].shape[0])
        return {"n_features": int(n_features), "n_targets": n_targets, "n_components": int(n_components)}

    def _init_module(self, module: TwoStageNet, X: np.ndarray, Y: np.ndarray) -> None:
        module.input_norm.set_statistics(X)
        set_target_statistics(module, Y)
        Xs = module.input_norm(torch.from_numpy(X)).double().numpy()
        components, explained = fit_pca(Xs, module.components.shape[0])
        module.components.copy_(torch.from_numpy(components))
        module.pca_scale.fill_(max(float(np.sqrt(explained.mean())), EPS))
        total = Xs.var(axis=0, ddof=1).sum() if Xs.shape[0] > 1 else 0.0
        self.explained_variance_ratio_ = float(explained.sum() / total) if total > 0 else float("nan")
        self.n_components_ = int(components.shape[0])

    def _make_loss(self, module: TwoStageNet) -> CosineInfoNCELoss:
        return CosineInfoNCELoss(self.cosine_weight, self.contrastive_weight, self.temperature)

    def load_state_dict(self, state, n_features=None, n_targets=None):
        super().load_state_dict(state, n_features, n_targets)
        self.n_components_ = int(self.module_.components.shape[0])
        return self
