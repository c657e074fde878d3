"""Shared estimator plumbing in the scikit-learn style.

``__init__`` only stores parameters under the same names; validation and work happen in
``fit``; fitted state ends in ``_``; ``fit`` returns ``self``; ``predict`` checks it was fitted.
``get_params()`` then comes for free and is exactly what gets logged to MLflow.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fmri2img.core.errors import InputError


class BaseDecoder:
    """Base class of all decoders: maps masked betas ``X`` to embeddings ``Y``.

    Subclasses implement ``fit(X, Y, X_val=None, Y_val=None, sample_weight=None, stats_rows=None,
    val_sample_weight=None)`` (``stats_rows``: boolean mask of the rows whose statistics define
    the decoder's feature space, e.g. the perception trials of mixed training, None = all rows;
    ``val_sample_weight``: weights of the early-stopping rows),
    ``predict(X)``, ``state_dict()`` (flat ``dict[str, torch.Tensor]``) and
    ``load_state_dict(state, n_features=None, n_targets=None)`` (shapes come from the state;
    the optional sizes are checks).
    """

    #: Registry name (``ridge``, ``mlp``, ``two_stage``).
    name: str = "base"

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:  # noqa: ARG002 - sklearn signature
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "BaseDecoder":
        allowed = self._param_names()
        for key, value in params.items():
            if key not in allowed:
                raise InputError(f"Unknown parameter {key!r} for {self.name}; allowed: {', '.join(allowed)}.")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_is_fitted(self) -> None:
        if not any(k.endswith("_") and not k.startswith("_") for k in vars(self)):
            raise InputError(f"This {type(self).__name__} is not fitted yet; call fit(X, Y) first.")


def check_xy(X: Any, Y: Any | None = None, *, name: str = "X") -> tuple[np.ndarray, np.ndarray | None]:
    """Validate and convert ``X`` (n, p) and ``Y`` (n, d) to finite float32 arrays."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"Expected {name} of shape (n_trials, n_voxels), got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise InputError(f"{name} contains NaN or Inf values; expected finite betas.")
    if Y is None:
        return X, None
    Y = np.asarray(Y, dtype=np.float32)
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise InputError(f"Expected Y of shape ({X.shape[0]}, n_dims), got shape {Y.shape}.")
    if not np.isfinite(Y).all():
        raise InputError("Y contains NaN or Inf values; expected finite embeddings.")
    return X, Y


def check_sample_weight(sample_weight: Any, n: int, dtype: Any = np.float32) -> np.ndarray | None:
    """``sample_weight`` (a scalar or shape (n,)) as a ``dtype`` array of shape (n,): finite,
    non-negative, with a positive sum; None stays None."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=dtype)
    if w.ndim == 0:
        w = np.full(n, w, dtype=dtype)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"Expected sample_weight of shape ({n},) with finite non-negative values and a positive "
                         f"sum, got shape {w.shape}.")
    return w

