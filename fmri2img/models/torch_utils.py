"""Shared torch plumbing for the torch decoders and adapters.

* :func:`resolve_device` turns ``"cpu"`` / ``"cuda"`` into a :class:`torch.device` (clear
  :class:`~fmri2img.errors.InputError` when CUDA is asked for but absent).
* :func:`deterministic` is a context manager that seeds torch's RNG, pins CPU work to one
  thread and switches on ``torch.use_deterministic_algorithms``; everything it changes is
  restored on exit, so training never leaks global state into the caller.
* :func:`train_module` is the one training loop (AdamW, seeded mini-batches, early stopping on
  validation loss with patience, per-epoch history, a tqdm bar on stderr).
* Losses: :func:`cosine_loss`, :func:`mse_loss` (per sample) and :class:`InfoNCELoss`
  (CLIP-style symmetric cross-entropy with a learnable temperature), combined with
  :func:`weighted_mean` so that ``sample_weight`` weights every per-sample loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fmri2img import interrupts
from fmri2img.errors import InputError, MismatchError
from fmri2img.models.base import check_xy

log = logging.getLogger(__name__)

#: Fraction of training rows held out for early stopping when no validation set is given
#: (the conventional 90/10 split; rows drawn with a generator seeded by the decoder's seed).
DEFAULT_VAL_FRACTION = 0.1

#: CPU threads used while training: one thread makes reductions run in a fixed order, so the
#: same seed gives bit-identical weights on every CPU run (at the demo size training stays fast).
DETERMINISTIC_CPU_THREADS = 1

#: CLIP's initial temperature, 0.07 (Radford et al. 2021, "Learning Transferable Visual
#: Models From Natural Language Supervision", section 2.5).
CLIP_INIT_TEMPERATURE = 0.07

#: Upper clamp of the learnable logit scale 1/T (CLIP clips it at 100 to keep training stable).
CLIP_MAX_LOGIT_SCALE = 100.0

#: Rows per forward pass when predicting (bounds memory, does not change the result).
PREDICT_CHUNK_ROWS = 4096

#: Denominator guard of cosine similarities and normalisations.
EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Devices, seeds, determinism


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the :class:`torch.device` for ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``).

    Raises
    ------
    InputError
        If the name is not a CPU/CUDA device, or CUDA is requested but not available.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"Unknown device {device!r}; expected 'cpu' or 'cuda'.") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"Unsupported device {device!r}; expected 'cpu' or 'cuda'.")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"Device {device!r} requested but CUDA is not available on this machine; use --device cpu."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"Device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist.")
    return resolved


@contextlib.contextmanager
def deterministic(seed: int, device: str | torch.device = "cpu") -> Iterator[np.random.Generator]:
    """Seed torch and yield a numpy Generator; restore all global torch state on exit.

    Inside the block: torch's RNG (CPU, and the CUDA device if ``device`` is CUDA) is seeded
    with ``seed``; on CPU the thread count is :data:`DETERMINISTIC_CPU_THREADS` and
    ``torch.use_deterministic_algorithms(True)`` is on (on CUDA only when
    ``CUBLAS_WORKSPACE_CONFIG`` is set, which cuBLAS needs for it). The yielded
    ``np.random.Generator`` (seeded with ``seed``) is meant for data order and hold-out splits.
    """
    device = resolve_device(device)
    fork_devices = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    previous_threads = torch.get_num_threads()
    previous_mode = torch.get_deterministic_debug_mode()
    use_det = device.type == "cpu" or bool(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    with torch.random.fork_rng(devices=fork_devices):
        try:
            torch.manual_seed(seed)
            if device.type == "cpu":
                torch.set_num_threads(DETERMINISTIC_CPU_THREADS)
            if use_det:
                # Same switch as torch.use_deterministic_algorithms(True) for eager ops, without
                # importing torch._inductor (about 2 s) just to set its config flag.
                torch.set_deterministic_debug_mode("error")
            yield np.random.default_rng(seed)
        finally:
            torch.set_num_threads(previous_threads)
            torch.set_deterministic_debug_mode(previous_mode)


def holdout_split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into sorted (train, val) index arrays, ``val`` about ``fraction * n`` rows.

    At least one row goes to each side; ``n < 2`` raises :class:`InputError`.
    """
    if n < 2:
        raise InputError(f"Need at least 2 training trials to hold out a validation set, got {n}.")
    if not 0.0 < fraction < 1.0:
        raise InputError(f"Validation fraction must be in (0, 1), got {fraction}.")
    n_val = min(max(1, int(round(fraction * n))), n - 1)
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def check_sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    """Validate ``sample_weight`` of shape (n,): finite, non-negative, positive sum; float32."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float32)
    if w.shape != (n,):
        raise InputError(f"Expected sample_weight of shape ({n},), got shape {w.shape}.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InputError("sample_weight must be finite, non-negative and not all zero.")
    return w


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


# --------------------------------------------------------------------------------------------
# Losses (per-sample tensors, then one weighted mean)


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
    learned, and on a validation set its value depends on which rows share a batch):
    monitoring it stopped the demo's mixed two-stage models at epoch 2 (validation cosine 0.76
    of a reachable 0.88). For the MLP the switch from cosine + MSE changed little on the demo
    world (mixed training's imagery gain +27.0% -> +26.9%). A pure MSE loss
    (``cosine_weight=0``, e.g. fitting an affine map) is monitored as is.
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


# --------------------------------------------------------------------------------------------
# Training loop

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class History(list):
    """The per-epoch records of :func:`train_module` (a list of dicts) and which weights it kept.

    Attributes
    ----------
    best_epoch : int
        The epoch whose weights were restored; ``-1`` when the initial weights were kept (only
        with ``train_module(keep_initial=True)``: no epoch beat them on the validation criterion).
    initial_val_loss, initial_val_cosine : float
        The validation criterion and mean cosine of the untrained module.
    """

    def __init__(self, records=(), best_epoch: int = -1, initial_val_loss: float = float("nan"),
                 initial_val_cosine: float = float("nan")):
        super().__init__(records)
        self.best_epoch = int(best_epoch)
        self.initial_val_loss = float(initial_val_loss)
        self.initial_val_cosine = float(initial_val_cosine)

    @property
    def best_val_loss(self) -> float:
        """Validation criterion of the kept weights."""
        return self[self.best_epoch]["val_loss"] if self.best_epoch >= 0 else self.initial_val_loss

    @property
    def best_val_cosine(self) -> float:
        """Mean validation cosine of the kept weights."""
        return self[self.best_epoch]["val_cosine"] if self.best_epoch >= 0 else self.initial_val_cosine


def make_adamw(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused (single-kernel) update on every device that has one (CPU and CUDA).

    On the demo MLP (batch 256, 2,000 voxels, one thread) a training step took 31.5 ms fused vs
    35.7 ms with the multi-tensor (``foreach``) update, itself ~4x faster than the per-parameter
    loop. The fused kernel computes the same update in another operation order (float32
    round-off only) and is deterministic.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of ``module.state_dict()`` (on its device)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _call(forward: Callable[..., torch.Tensor], x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    return forward(x) if condition is None else forward(x, condition=condition)


@torch.no_grad()
def _frozen_features(module: nn.Module, *arrays: torch.Tensor | None) -> tuple[Callable[..., torch.Tensor], list]:
    """``(forward, arrays)`` for training: when ``module`` splits into a frozen, parameter-free
    prefix ``module.features(x)`` and the rest ``module.from_features(z)`` (``forward(x) ==
    from_features(features(x))``), the prefix is computed once per row here, in
    :data:`PREDICT_CHUNK_ROWS` chunks, instead of once per row and epoch (the two-stage PCA
    projection was a quarter of its training flops); otherwise ``(module, arrays)`` unchanged."""
    if not (hasattr(module, "features") and hasattr(module, "from_features")):
        return module, list(arrays)
    was_training = module.training
    module.eval()
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        out.append(torch.cat([module.features(a[start:start + PREDICT_CHUNK_ROWS])
                              for start in range(0, a.shape[0], PREDICT_CHUNK_ROWS)]))
    module.train(was_training)
    return module.from_features, out


def _as_tensor(a: np.ndarray | None, device: torch.device, dtype=torch.float32) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


@torch.no_grad()
def _evaluate(module, forward, loss_fn, X, Y, W, C, batch_size) -> tuple[float, float]:
    """Weighted validation loss (batches in row order, as in training) and mean cosine of
    ``forward`` (``module`` or its part after the frozen features), ``module`` in eval mode."""
    module.eval()
    total, weight_sum, cosines = 0.0, 0.0, []
    for start in range(0, X.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        pred = _call(forward, X[sl], None if C is None else C[sl])
        w = None if W is None else W[sl]
        batch_weight = float(pred.shape[0]) if w is None else float(w.sum())
        total += float(loss_fn(pred, Y[sl], w)) * batch_weight
        weight_sum += batch_weight
        cosines.append(F.cosine_similarity(pred, Y[sl], dim=1, eps=EPS))
    return total / max(weight_sum, EPS), float(torch.cat(cosines).mean())


def train_module(
    module: nn.Module,
    loss_fn: LossFn,
    X: np.ndarray,
    Y: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    *,
    rng: np.random.Generator,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    patience: int,
    device: str | torch.device = "cpu",
    sample_weight: np.ndarray | None = None,
    val_sample_weight: np.ndarray | None = None,
    condition: np.ndarray | None = None,
    condition_val: np.ndarray | None = None,
    progress: bool = True,
    desc: str = "train",
    val_loss_fn: LossFn | None = None,
    keep_initial: bool = True,
) -> History:
    """Train ``module`` to map ``X`` to ``Y`` with AdamW and early stopping; return the history.

    Call it inside :func:`deterministic` for reproducible runs. The module (and ``loss_fn``
    when it is an ``nn.Module`` with parameters, e.g. a learnable temperature) are moved to
    ``device`` and optimised together. After training the weights of the epoch with the lowest
    validation loss are restored (module and loss), the module is left on ``device`` in eval mode.

    Parameters
    ----------
    module : nn.Module
        Maps a float32 batch (b, p) to (b, d); called as ``module(x, condition=c)`` when
        ``condition`` is given.
    loss_fn : callable
        ``loss_fn(pred, target, weight_or_None) -> scalar tensor``.
    X, Y : arrays of shape (n_train, p) and (n_train, d)
    X_val, Y_val : arrays of shape (n_val, p) and (n_val, d)
        Early stopping monitors the (weighted) loss on these rows.
    rng : np.random.Generator
        Draws the mini-batch order of every epoch.
    epochs, lr, weight_decay, batch_size, patience : training hyper-parameters
        Training stops after ``patience`` epochs without a lower validation loss.
    sample_weight, val_sample_weight : arrays of shape (n_train,) / (n_val,), optional
        Per-sample weights of the loss (e.g. an imagery weight in mixed training).
    condition, condition_val : int arrays of shape (n_train,) / (n_val,), optional
        Condition ids passed to the module (adapters with a condition embedding).
    progress : bool
        Show a tqdm bar over epochs on stderr.
    val_loss_fn : callable, optional
        The criterion early stopping monitors on the validation rows; default
        :func:`early_stopping_criterion` of ``loss_fn``.
    keep_initial : bool
        Whether the untrained module competes with the epochs: an identity-initialised adapter
        that only gets worse on the validation rows is returned unchanged. Decoders pass False:
        an untrained decoder predicts a constant, so the best *trained* epoch is kept even when
        it scores worse than the initial weights (``history.initial_val_loss`` tells).

    Returns
    -------
    history : History
        One dict per epoch: ``epoch``, ``train_loss``, ``val_loss`` (``val_loss_fn``), ``val_cosine``
        (and ``temperature`` when the loss has an InfoNCE term); ``history.best_epoch`` is the
        restored epoch (``-1``: the initial weights, only with ``keep_initial``).
    """
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("patience", patience, 1)):
        if int(value) != value or value < low:
            raise InputError(f"Expected {name} to be an integer >= {low}, got {value!r}.")
    if not lr > 0 or weight_decay < 0:
        raise InputError(f"Expected lr > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}.")
    device = resolve_device(device)
    criterion = early_stopping_criterion(loss_fn) if val_loss_fn is None else val_loss_fn
    module.to(device)
    params = list(module.parameters())
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
        params += [p for p in loss_fn.parameters() if p.requires_grad]
    optimizer = make_adamw([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)

    Xt, Yt = _as_tensor(X, device), _as_tensor(Y, device)
    Xv, Yv = _as_tensor(X_val, device), _as_tensor(Y_val, device)
    Wt, Wv = _as_tensor(sample_weight, device), _as_tensor(val_sample_weight, device)
    Ct, Cv = _as_tensor(condition, device, torch.long), _as_tensor(condition_val, device, torch.long)
    forward, (Xt, Xv) = (module, (Xt, Xv)) if Ct is not None else _frozen_features(module, Xt, Xv)
    infonce = None
    if isinstance(loss_fn, nn.Module):
        infonce = next((m for m in loss_fn.modules() if isinstance(m, InfoNCELoss)), None)

    def snapshot() -> dict[str, Any]:
        # tensor clones (same values as copy.deepcopy of the state dict, without its per-object
        # Python overhead: deepcopy was ~5% of a demo subject's training time)
        state = {"module": _clone_state(module)}
        if isinstance(loss_fn, nn.Module):
            state["loss"] = _clone_state(loss_fn)
        return state

    n = Xt.shape[0]
    initial_loss, initial_cosine = _evaluate(module, forward, criterion, Xv, Yv, Wv, Cv, int(batch_size))
    history = History(initial_val_loss=initial_loss, initial_val_cosine=initial_cosine)
    best_loss, best_state, since_best = (initial_loss, snapshot(), 0) if keep_initial else (math.inf, None, 0)
    bar = tqdm(range(int(epochs)), desc=desc, unit="epoch", file=sys.stderr, disable=not progress, leave=False)
    for epoch in bar:
        module.train()
        order = torch.as_tensor(rng.permutation(n), device=device)
        total, weight_sum = 0.0, 0.0
        for start in range(0, n, int(batch_size)):
            interrupts.check()  # a Ctrl-C whose KeyboardInterrupt a finalizer swallowed
            idx = order[start:start + int(batch_size)]
            w = None if Wt is None else Wt[idx]
            if w is not None and float(w.sum()) == 0.0:
                continue
            pred = _call(forward, Xt[idx], None if Ct is None else Ct[idx])
            loss = loss_fn(pred, Yt[idx], w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch_weight = float(idx.shape[0]) if w is None else float(w.sum())
            total += float(loss.detach()) * batch_weight
            weight_sum += batch_weight
        val_loss, val_cosine = _evaluate(module, forward, criterion, Xv, Yv, Wv, Cv, int(batch_size))
        record = {
            "epoch": epoch, "train_loss": total / max(weight_sum, EPS), "val_loss": val_loss, "val_cosine": val_cosine,
        }
        if infonce is not None:
            record["temperature"] = infonce.temperature
        history.append(record)
        bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}", cos=f"{val_cosine:.3f}")
        if val_loss < best_loss:
            best_loss, best_state, since_best = val_loss, snapshot(), 0
            history.best_epoch = epoch
        else:
            since_best += 1
            if since_best >= patience:
                break
    bar.close()
    if best_state is None:
        raise InputError(f"{desc}: the validation criterion was not finite in any of {len(history)} epochs "
                         f"(training diverged); try a lower lr than {lr}.")
    module.load_state_dict(best_state["module"])
    if isinstance(loss_fn, nn.Module):
        loss_fn.load_state_dict(best_state["loss"])
    module.eval()
    return history


@torch.no_grad()
def predict_module(module: nn.Module, X: np.ndarray) -> np.ndarray:
    """Run ``module`` (eval mode, on CPU) over ``X`` (n, p) in chunks; return float32 (n, d)."""
    module.eval()
    outputs = [
        module(torch.from_numpy(np.ascontiguousarray(X[start:start + PREDICT_CHUNK_ROWS]))).numpy()
        for start in range(0, X.shape[0], PREDICT_CHUNK_ROWS)
    ]
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Flat ``{name: tensor}`` copy of ``module``'s parameters and buffers, on CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Shared decoder plumbing


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
            and z-scored against another session's statistics, otherwise bend that space; on
            the demo world they turned the two-stage decoder's imagery gain from mixed training
            from about +10% to -40% (imagery weight 1, 0.5 and 0.01 alike).
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
            history = train_module(
                module, loss_fn, X_tr, Y_tr, X_va, Y_va, rng=rng, epochs=self.epochs, lr=self.lr,
                weight_decay=self.weight_decay, batch_size=self.batch_size, patience=self.patience,
                device=device, sample_weight=w_tr, val_sample_weight=w_va, progress=self.progress, desc=self.name,
                keep_initial=False,
            )
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
        return cpu_state_dict(self.module_)

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
