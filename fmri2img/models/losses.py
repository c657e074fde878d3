"""Losses of the torch decoders and adapters: per-sample terms combined with :func:`weighted_mean`,
so that ``sample_weight`` weights every per-sample loss.

* :func:`cosine_loss`, :func:`mse_loss` (per sample);
* :class:`InfoNCELoss`: CLIP-style symmetric cross-entropy with a learnable temperature;
* :class:`CosineMSELoss`, :class:`CosineInfoNCELoss`: the decoders' weighted combinations;
* :func:`early_stopping_criterion`: what early stopping monitors for a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fmri2img.core.errors import InputError

#: CLIP's initial temperature, 0.07 (Radford et al. 2021, "Learning Transferable Visual
#: Models From Natural Language Supervision", section 2.5).
CLIP_INIT_TEMPERATURE = 0.07

#: Upper clamp of the learnable logit scale 1/T (CLIP clips it at 100 to keep training stable).
CLIP_MAX_LOGIT_SCALE = 100.0

#: Denominator guard of cosine similarities and normalisations.
EPS = 1e-8

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-sample ``values`` (n,), weighted by ``weight`` (n,) when given."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(EPS)


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``1 - cos(pred_i, target_i)``, shape (n,)."""
    return 1.0 - F.cosine_similarity(pred, target, dim=1, eps=EPS)


def mse_loss(pred: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Per-sample mean squared error over dimensions of ``(pred - target) / scale``, shape (n,)."""
    return (((pred - target) / scale) ** 2).mean(dim=1)


#: Two targets with a cosine at least this high are the same stimulus (float32 rounding of a
#: unit vector's self-similarity is ~1e-7); InfoNCE does not use them as each other's negatives.
SAME_TARGET_COSINE = 1.0 - 1e-5


class InfoNCELoss(nn.Module):
    """CLIP-style symmetric InfoNCE on L2-normalised outputs with a learnable temperature.

    ``logits = exp(logit_scale) * normalize(pred) @ normalize(target).T`` of shape (n, n);
    the per-sample loss is the mean of the cross-entropy of row ``i`` (pred -> targets) and
    of column ``i`` (target -> preds) with label ``i``. The other rows of the mini-batch are
    the negatives, except rows with the same target (repeats of one stimulus: NSD shows each
    image 3 times, NSD-Imagery repeats each stimulus many times): those are masked out, so a
    trial is never pushed away from its own stimulus's embedding.

    Parameters
    ----------
    init_temperature : float
        Initial temperature T (``logit_scale = log(1/T)`` is the learnable parameter).
    max_logit_scale : float
        Clamp of ``exp(logit_scale)``.
    """

    def __init__(self, init_temperature: float = CLIP_INIT_TEMPERATURE, max_logit_scale: float = CLIP_MAX_LOGIT_SCALE):
        super().__init__()
        if init_temperature <= 0:
            raise InputError(f"Temperature must be positive, got {init_temperature}.")
        self.max_logit_scale = float(max_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32))

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().exp().clamp(max=self.max_logit_scale))

    def per_sample(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample symmetric cross-entropy, shape (n,)."""
        scale = self.logit_scale.exp().clamp(max=self.max_logit_scale)
        target_n = F.normalize(target, dim=1, eps=EPS)
        logits = scale * F.normalize(pred, dim=1, eps=EPS) @ target_n.T
        labels = torch.arange(pred.shape[0], device=pred.device)
        with torch.no_grad():
            repeat = (target_n @ target_n.T) >= SAME_TARGET_COSINE
            repeat.fill_diagonal_(False)
        logits = logits.masked_fill(repeat, float("-inf"))
        rows = F.cross_entropy(logits, labels, reduction="none")
        cols = F.cross_entropy(logits.T, labels, reduction="none")
        return 0.5 * (rows + cols)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return weighted_mean(self.per_sample(pred, target), weight)


def weighted_cosine_distance(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - cos`` averaged over the batch with ``weight``: a per-sample criterion, so its value
    on a validation set does not depend on how the rows are batched."""
    return weighted_mean(cosine_loss(pred, target), weight)


def early_stopping_criterion(loss_fn: "LossFn") -> "LossFn":
    """What early stopping monitors for a training loss: :func:`weighted_cosine_distance` when
    the loss scores the direction of the prediction (a :class:`CosineMSELoss` with a cosine
    term, or any loss with an :class:`InfoNCELoss` term); otherwise the loss itself.

    Every evaluation metric (CLIP cosine, retrieval, two-way identification) ignores the
    prediction's norm, so early stopping monitors the same thing; the MSE term only regularises
    the norm. InfoNCE is moreover not comparable from epoch to epoch (its temperature is
    learned, and on a validation set its value depends on which rows share a batch; measured
    consequences: docs/performance.md, "Training"). A pure MSE loss (``cosine_weight=0``, e.g.
    fitting an affine map) is monitored as is.
    """
    if isinstance(loss_fn, nn.Module) and any(isinstance(m, InfoNCELoss) for m in loss_fn.modules()):
        return weighted_cosine_distance
    if isinstance(loss_fn, CosineMSELoss) and loss_fn.cosine_weight > 0:
        return weighted_cosine_distance
    return loss_fn


class CosineMSELoss(nn.Module):
    """``cosine_weight * (1 - cos) + mse_weight * mse((pred - target) / scale)``, weighted mean."""

    def __init__(self, cosine_weight: float = 1.0, mse_weight: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.cosine_weight = float(cosine_weight)
        self.mse_weight = float(mse_weight)
        self.scale = float(scale)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        per_sample = torch.zeros(pred.shape[0], device=pred.device, dtype=pred.dtype)
        if self.cosine_weight:
            per_sample = per_sample + self.cosine_weight * cosine_loss(pred, target)
        if self.mse_weight:
            per_sample = per_sample + self.mse_weight * mse_loss(pred, target, self.scale)
        return weighted_mean(per_sample, weight)


class CosineInfoNCELoss(nn.Module):
    """``cosine_weight * (1 - cos) + contrastive_weight * InfoNCE`` (learnable temperature)."""

    def __init__(
        self, cosine_weight: float = 1.0, contrastive_weight: float = 1.0,
        init_temperature: float = CLIP_INIT_TEMPERATURE,
    ):
        super().__init__()
        self.cosine_weight = float(cosine_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.infonce = InfoNCELoss(init_temperature)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        per_sample = self.cosine_weight * cosine_loss(pred, target)
        if self.contrastive_weight:
            per_sample = per_sample + self.contrastive_weight * self.infonce.per_sample(pred, target)
        return weighted_mean(per_sample, weight)


