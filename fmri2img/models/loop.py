"""The one training loop of the torch decoders and adapters, and its determinism.

* :func:`resolve_device` turns ``"cpu"`` / ``"cuda"`` into a :class:`torch.device` (clear
  :class:`~fmri2img.core.errors.InputError` when CUDA is asked for but absent).
* :func:`deterministic` is a context manager that seeds torch's RNG, pins CPU work to one
  thread and switches on ``torch.use_deterministic_algorithms``; everything it changes is
  restored on exit, so training never leaks global state into the caller.
* :func:`train_module` trains a module on a :class:`~fmri2img.data.trials.Dataset` with the
  hyper-parameters of a :class:`TrainSpec` (AdamW, seeded mini-batches, early stopping on a
  validation criterion with patience, per-epoch :class:`History`, a tqdm bar on stderr).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fmri2img.core import interrupts
from fmri2img.core.errors import InputError
from fmri2img.data.trials import Dataset
from fmri2img.models.losses import EPS, InfoNCELoss, LossFn, early_stopping_criterion

#: CPU threads used while training: one thread makes reductions run in a fixed order, so the
#: same seed gives bit-identical weights on every CPU run (at the demo size training stays fast).
DETERMINISTIC_CPU_THREADS = 1

#: Rows per forward pass when predicting (bounds memory, does not change the result).
PREDICT_CHUNK_ROWS = 4096


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
                # importing torch._inductor just to set its config flag.
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


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


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
    """AdamW with the fused (single-kernel) update on every device that has one (CPU and CUDA):
    deterministic, the same update as the per-parameter loop up to float32 round-off, and the
    fastest (docs/performance.md, "Training")."""
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
def _evaluate(module, forward, loss_fn, data: _Tensors, batch_size: int) -> tuple[float, float]:
    """Weighted validation loss (batches in row order, as in training) and mean cosine of
    ``forward`` (``module`` or its part after the frozen features), ``module`` in eval mode."""
    module.eval()
    total, weight_sum, cosines = 0.0, 0.0, []
    for start in range(0, data.X.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        pred = _call(forward, data.X[sl], None if data.C is None else data.C[sl])
        w = None if data.W is None else data.W[sl]
        batch_weight = float(pred.shape[0]) if w is None else float(w.sum())
        total += float(loss_fn(pred, data.Y[sl], w)) * batch_weight
        weight_sum += batch_weight
        cosines.append(F.cosine_similarity(pred, data.Y[sl], dim=1, eps=EPS))
    return total / max(weight_sum, EPS), float(torch.cat(cosines).mean())


@dataclass(frozen=True)
class TrainSpec:
    """How :func:`train_module` trains.

    Attributes
    ----------
    epochs, lr, weight_decay, batch_size, patience
        AdamW's learning rate and decoupled weight decay; training stops after ``patience`` epochs
        without a lower validation criterion, or after ``epochs``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    progress : bool
        Show a tqdm bar over epochs on stderr, labelled ``desc``.
    val_loss_fn : callable, optional
        The criterion early stopping monitors on the validation rows; default
        :func:`~fmri2img.models.losses.early_stopping_criterion` of the loss.
    keep_initial : bool
        Whether the untrained module competes with the epochs: an identity-initialised adapter
        that only gets worse on the validation rows is returned unchanged. Decoders pass False:
        an untrained decoder predicts a constant, so the best *trained* epoch is kept even when
        it scores worse than the initial weights (``history.initial_val_loss`` tells).
    """

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    patience: int
    device: str | torch.device = "cpu"
    progress: bool = True
    desc: str = "train"
    val_loss_fn: LossFn | None = None
    keep_initial: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"Expected {name} to be an integer >= 1, got {value!r}.")
        if not self.lr > 0 or self.weight_decay < 0:
            raise InputError(f"Expected lr > 0 and weight_decay >= 0, got lr={self.lr!r}, "
                             f"weight_decay={self.weight_decay!r}.")


@dataclass
class _Tensors:
    """One :class:`~fmri2img.data.trials.Dataset` on the training device (conditions as long)."""

    X: torch.Tensor
    Y: torch.Tensor
    W: torch.Tensor | None
    C: torch.Tensor | None

    @classmethod
    def of(cls, data: Dataset, device: torch.device) -> _Tensors:
        return cls(_as_tensor(data.X, device), _as_tensor(data.Y, device), _as_tensor(data.sample_weight, device),
                   _as_tensor(data.condition, device, torch.long))


def _params(module: nn.Module, loss_fn: LossFn) -> list[torch.Tensor]:
    """Trainable parameters of the module and of the loss (e.g. a learnable temperature)."""
    params = list(module.parameters())
    if isinstance(loss_fn, nn.Module):
        params += [p for p in loss_fn.parameters() if p.requires_grad]
    return [p for p in params if p.requires_grad]


def _snapshot(module: nn.Module, loss_fn: LossFn) -> dict[str, Any]:
    # tensor clones: the values of copy.deepcopy of the state dict without its Python overhead
    state = {"module": _clone_state(module)}
    if isinstance(loss_fn, nn.Module):
        state["loss"] = _clone_state(loss_fn)
    return state


def _train_epoch(forward, loss_fn, optimizer, train: _Tensors, order: torch.Tensor, batch_size: int) -> float:
    """One pass over ``train`` in ``order``; the weighted mean training loss."""
    total, weight_sum = 0.0, 0.0
    for start in range(0, train.X.shape[0], batch_size):
        interrupts.check()  # a Ctrl-C whose KeyboardInterrupt a finalizer swallowed
        idx = order[start:start + batch_size]
        w = None if train.W is None else train.W[idx]
        if w is not None and float(w.sum()) == 0.0:
            continue
        pred = _call(forward, train.X[idx], None if train.C is None else train.C[idx])
        loss = loss_fn(pred, train.Y[idx], w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_weight = float(idx.shape[0]) if w is None else float(w.sum())
        total += float(loss.detach()) * batch_weight
        weight_sum += batch_weight
    return total / max(weight_sum, EPS)


def train_module(module: nn.Module, loss_fn: LossFn, train: Dataset, val: Dataset, spec: TrainSpec,
                 rng: np.random.Generator) -> History:
    """Train ``module`` to map ``train.X`` to ``train.Y`` with AdamW and early stopping; return the history.

    Call it inside :func:`deterministic` for reproducible runs. The module (and ``loss_fn`` when it
    is an ``nn.Module`` with parameters) are moved to ``spec.device`` and optimised together. After
    training the weights of the epoch with the lowest validation criterion are restored (module
    and loss); the module is left on the device in eval mode.

    Parameters
    ----------
    module : nn.Module
        Maps a float32 batch (b, p) to (b, d); called as ``module(x, condition=c)`` when the
        datasets carry ``condition`` ids.
    loss_fn : callable
        ``loss_fn(pred, target, weight_or_None) -> scalar tensor``.
    train, val : Dataset
        ``X`` (n, p), ``Y`` (n, d), optional ``sample_weight`` (n,) and ``condition`` (n,);
        early stopping monitors the (weighted) criterion on ``val``.
    spec : TrainSpec
    rng : np.random.Generator
        Draws the mini-batch order of every epoch.

    Returns
    -------
    history : History
        One dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_cosine`` (and
        ``temperature`` when the loss has an InfoNCE term); ``history.best_epoch`` is the restored
        epoch (``-1``: the initial weights, only with ``keep_initial``).
    """
    spec.validate()
    device = resolve_device(spec.device)
    batch_size = int(spec.batch_size)
    criterion = early_stopping_criterion(loss_fn) if spec.val_loss_fn is None else spec.val_loss_fn
    module.to(device)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = make_adamw(_params(module, loss_fn), lr=spec.lr, weight_decay=spec.weight_decay)
    tr, va = _Tensors.of(train, device), _Tensors.of(val, device)
    forward, (tr.X, va.X) = (module, (tr.X, va.X)) if tr.C is not None else _frozen_features(module, tr.X, va.X)
    infonce = None
    if isinstance(loss_fn, nn.Module):
        infonce = next((m for m in loss_fn.modules() if isinstance(m, InfoNCELoss)), None)

    initial_loss, initial_cosine = _evaluate(module, forward, criterion, va, batch_size)
    history = History(initial_val_loss=initial_loss, initial_val_cosine=initial_cosine)
    best_loss, best_state, since_best = ((initial_loss, _snapshot(module, loss_fn), 0) if spec.keep_initial
                                         else (math.inf, None, 0))
    bar = tqdm(range(int(spec.epochs)), desc=spec.desc, unit="epoch", file=sys.stderr, disable=not spec.progress,
               leave=False)
    for epoch in bar:
        module.train()
        order = torch.as_tensor(rng.permutation(tr.X.shape[0]), device=device)
        train_loss = _train_epoch(forward, loss_fn, optimizer, tr, order, batch_size)
        val_loss, val_cosine = _evaluate(module, forward, criterion, va, batch_size)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_cosine": val_cosine}
        if infonce is not None:
            record["temperature"] = infonce.temperature
        history.append(record)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", cos=f"{val_cosine:.3f}")
        if val_loss < best_loss:
            best_loss, best_state, since_best = val_loss, _snapshot(module, loss_fn), 0
            history.best_epoch = epoch
        else:
            since_best += 1
            if since_best >= spec.patience:
                break
    bar.close()
    if best_state is None:
        raise InputError(f"{spec.desc}: the validation criterion was not finite in any of {len(history)} epochs "
                         f"(training diverged); try a lower lr than {spec.lr}.")
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
