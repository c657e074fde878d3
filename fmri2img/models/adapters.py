"""Lightweight adapters applied to a frozen decoder's embeddings (hypothesis H3).

Both adapters map embeddings ``y`` of shape (b, dim) to ``y'`` of the same shape and are the
identity at initialisation (with or without a condition embedding), so an untrained adapter
leaves the base decoder's predictions unchanged.

* :class:`LinearAdapter` (registry name ``linear``): ``y' = W y + b``, ``W`` initialised to the
  identity and ``b`` to zero. With ``rank=r``, ``W = I + U V^T`` (LoRA-style, ``V`` zero at
  init) so the overhead is ``2 * dim * r`` instead of ``dim ** 2`` parameters.
* :class:`MLPAdapter` (registry name ``mlp``): ``y' = y + fc2(drop(GELU(fc1(LayerNorm(y)) + e_c)))``,
  a bottleneck MLP with a residual connection whose last layer ``fc2`` is zero-initialised.

``n_conditions`` (option on both) adds a learnable condition embedding (e.g. perception = 0,
imagery = 1; see :data:`~fmri2img.core.vocab.CONDITION_IDS`) so one adapter serves both domains:
for ``linear`` a per-condition offset ``e_c`` (dim,) added to the output, zero-initialised;
for ``mlp`` a per-condition vector ``e_c`` (hidden_dim,) added to the hidden pre-activation
(small random init; the zero ``fc2`` keeps the identity). Call ``adapter(y, condition=c)``
with ``c`` an int or an int tensor of shape (b,).

Every adapter has ``get_config()`` so it can be rebuilt with
``registry.adapter_class(name)(**config)`` before ``load_state_dict``; :func:`build_adapter` builds
one from the options of ``fmri2img adapt``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmri2img.core.errors import InputError
from fmri2img.core.vocab import CONDITION_IDS
from fmri2img.models.registry import adapter_class

#: Std of the MLP adapter's condition embedding at init (small, as for transformer embeddings;
#: the zero-initialised last layer keeps the adapter the identity whatever this value).
CONDITION_INIT_STD = 0.02

#: Default bottleneck width of the MLP adapter: 2 * 512 * 64 ~ 66 k parameters for CLIP
#: ViT-B/32 embeddings (bottleneck adapters, Houlsby et al. 2019, use a few % of the width).
DEFAULT_ADAPTER_HIDDEN = 64


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise InputError(f"Expected {name} to be a positive integer, got {value!r}.")
    return int(value)


class _ConditionMixin:
    """Validation of the ``condition`` argument shared by both adapters."""

    n_conditions: int | None

    def _condition_index(self, condition: Any, y: torch.Tensor) -> torch.Tensor | None:
        if self.n_conditions is None:
            if condition is not None:
                raise InputError(f"This {type(self).__name__} has no condition embedding; got condition={condition!r}.")
            return None
        if condition is None:
            raise InputError(
                f"This {type(self).__name__} was built with n_conditions={self.n_conditions}; "
                "pass condition= (e.g. 0 perception, 1 imagery)."
            )
        index = torch.as_tensor(condition, dtype=torch.long, device=y.device)
        if index.ndim == 0:
            index = index.expand(y.shape[0])
        if index.shape != (y.shape[0],):
            raise InputError(
                f"Expected condition of shape ({y.shape[0]},) or a scalar, got shape {tuple(index.shape)}."
            )
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_conditions):
            raise InputError(
                f"Condition ids must be in [0, {self.n_conditions - 1}], got {sorted(set(index.tolist()))}."
            )
        return index


class LinearAdapter(_ConditionMixin, nn.Module):
    """Affine adapter ``y' = W y + b (+ e_c)``, the identity at initialisation.

    Parameters
    ----------
    dim : int
        Embedding dimension (input and output).
    n_conditions : int, optional
        Number of conditions of the per-condition output offset ``e_c`` (zero-initialised).
    rank : int, optional
        If given, ``W = I + U V^T`` with ``U, V`` of shape (dim, rank) (``V`` zero at init);
        otherwise ``W`` is a full (dim, dim) matrix initialised to the identity.

    Shapes: ``forward(y (b, dim), condition=None | int | (b,)) -> (b, dim)``.
    """

    name = "linear"

    def __init__(self, dim: int, n_conditions: int | None = None, rank: int | None = None):
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        self.n_conditions = None if n_conditions is None else _check_positive_int("n_conditions", n_conditions)
        self.rank = None if rank is None else _check_positive_int("rank", rank)
        if self.rank is None:
            # W = I + delta with delta trained from zero: weight decay then pulls W towards the
            # identity (not towards 0), and Adam's per-parameter steps perturb the identity.
            self.delta = nn.Parameter(torch.zeros(self.dim, self.dim))
        else:
            self.lora_u = nn.Parameter(torch.randn(self.dim, self.rank) / self.rank ** 0.5)
            self.lora_v = nn.Parameter(torch.zeros(self.dim, self.rank))
        self.bias = nn.Parameter(torch.zeros(self.dim))
        if self.n_conditions is not None:
            self.condition_embedding = nn.Embedding(self.n_conditions, self.dim)
            nn.init.zeros_(self.condition_embedding.weight)

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim, "n_conditions": self.n_conditions, "rank": self.rank}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config().items())

    def forward(self, y: torch.Tensor, condition: Any = None) -> torch.Tensor:
        index = self._condition_index(condition, y)
        if self.rank is None:
            out = y + F.linear(y, self.delta, self.bias)
        else:
            out = y + (y @ self.lora_v) @ self.lora_u.T + self.bias
        if index is not None:
            out = out + self.condition_embedding(index)
        return out


class MLPAdapter(_ConditionMixin, nn.Module):
    """Residual bottleneck adapter ``y' = y + fc2(drop(GELU(fc1(LayerNorm(y)) (+ e_c))))``.

    ``fc2`` is zero-initialised, so the adapter starts as the identity.

    Parameters
    ----------
    dim : int
        Embedding dimension (input and output).
    hidden_dim : int
        Bottleneck width.
    n_conditions : int, optional
        Number of conditions of the embedding ``e_c`` (hidden_dim,) added before the GELU.
    dropout : float
        Dropout on the hidden layer.

    Shapes: ``forward(y (b, dim), condition=None | int | (b,)) -> (b, dim)``.
    """

    name = "mlp"

    def __init__(
        self, dim: int, hidden_dim: int = DEFAULT_ADAPTER_HIDDEN, n_conditions: int | None = None, dropout: float = 0.0
    ):
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        self.n_conditions = None if n_conditions is None else _check_positive_int("n_conditions", n_conditions)
        if not 0.0 <= float(dropout) < 1.0:
            raise InputError(f"Expected dropout in [0, 1), got {dropout!r}.")
        self.dropout = float(dropout)
        self.norm = nn.LayerNorm(self.dim)
        self.fc1 = nn.Linear(self.dim, self.hidden_dim)
        self.drop = nn.Dropout(self.dropout)
        self.fc2 = nn.Linear(self.hidden_dim, self.dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        if self.n_conditions is not None:
            self.condition_embedding = nn.Embedding(self.n_conditions, self.hidden_dim)
            nn.init.normal_(self.condition_embedding.weight, std=CONDITION_INIT_STD)

    def get_config(self) -> dict[str, Any]:
        return {
            "dim": self.dim, "hidden_dim": self.hidden_dim, "n_conditions": self.n_conditions, "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config().items())

    def forward(self, y: torch.Tensor, condition: Any = None) -> torch.Tensor:
        index = self._condition_index(condition, y)
        h = self.fc1(self.norm(y))
        if index is not None:
            h = h + self.condition_embedding(index)
        return y + self.fc2(self.drop(F.gelu(h)))


def build_adapter(kind: str, dim: int, *, condition: bool, hidden_dim: int, rank: int) -> nn.Module:
    """A fresh (identity-initialised) adapter of registry name ``kind`` for embeddings of ``dim``:
    with a condition embedding over :data:`~fmri2img.core.vocab.CONDITION_IDS` when ``condition``;
    ``hidden_dim`` applies to ``mlp``, ``rank`` (0: a full matrix) to ``linear``."""
    kwargs: dict[str, Any] = {"n_conditions": len(CONDITION_IDS) if condition else None}
    if kind == "mlp":
        kwargs["hidden_dim"] = hidden_dim
    if kind == "linear" and rank:
        kwargs["rank"] = rank
    return adapter_class(kind)(dim, **kwargs)

