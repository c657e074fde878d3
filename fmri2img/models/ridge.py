"""Multi-target ridge decoder with the penalty chosen by exact leave-one-out cross-validation."""

from __future__ import annotations

from typing import Any

import numpy as np

from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError
from fmri2img.models.backends import weighted_column_stats
from fmri2img.models.base import BaseDecoder, check_sample_weight, check_xy
from fmri2img.models.solvers import RIDGE_SOLVERS

#: Default penalty grid: 10 log-spaced values from 1e1 to 1e6. For standardised voxels the
#: eigenvalues of the trial kernel X X^T average about p (2k-16k voxels), so the grid runs from
#: near-least-squares (alpha << p, high-SNR synthetic data) to heavy shrinkage (alpha ~ 60 p);
#: it contains the neighbourhood of Brain-Diffuser's fixed alpha=6e4 for nsdgeneral voxels
#: (Ozcelik & VanRullen 2023, ``regress_clip*.py``), the usual optimum on NSD betas.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(1, 6, 10))

#: Trials predicted at a time (bounds the temporary standardised copy of X in predict).
PREDICT_BLOCK_ROWS = 1024


class RidgeDecoder(BaseDecoder):
    """Ridge regression from betas to embeddings, alpha chosen by exact leave-one-out.

    Parameters
    ----------
    alphas : sequence of float
        Penalties to choose from (default :data:`DEFAULT_ALPHAS`).
    alpha_per_target : bool
        Choose one alpha per embedding dimension (True) or one shared alpha (False).
    standardize : bool
        Z-score voxels with the (weighted) training mean and standard deviation. Voxels are
        always centred (the intercept is unpenalised).
    solver : str
        Name in :data:`fmri2img.models.solvers.RIDGE_SOLVERS`: 'auto' (default: one Cholesky
        per alpha when n_voxels > n_trials and there are few alphas, else one
        eigendecomposition), 'cholesky_loo' or 'eigh_loo'.
    solver_params : dict or None
        Extra keyword arguments of the solver (e.g. ``{"eigh_dtype": "float32"}``,
        ``{"max_cond_float32": 1e3}``).
    device : str
        'cpu' (numpy/scipy) or 'cuda' (torch).
    dtype : str
        Dtype of data and matrix products during fit ('float32' or 'float64').

    Attributes
    ----------
    coef_ : float32 array of shape (n_voxels, n_dims)
        Weights on standardised voxels.
    intercept_ : float32 array of shape (n_dims,)
        Weighted training mean of Y.
    mean_, scale_ : float32 arrays of shape (n_voxels,)
        Training statistics of X: predictions are ``((X - mean_) / scale_) @ coef_ + intercept_``.
    alpha_ : float64 array of shape (n_dims,), or float when ``alpha_per_target=False``
    cv_scores_ : float64 array of shape (n_alphas, n_dims)
        Weighted leave-one-out mean squared error per alpha and target.
    val_r2_ : float or None
        Mean R^2 on (X_val, Y_val) when given to ``fit``.
    solver_info_ : dict
        What the solver reported besides the fit (e.g. ``solver``: the method 'auto' ran,
        ``factor_dtypes``: the dtype of each alpha's Cholesky factor); not saved by ``state_dict``.

    Notes
    -----
    ``sample_weight`` makes this weighted ridge, ``min sum_i w_i |y_i - f(x_i)|^2 + alpha |b|^2``
    (rows rescaled by ``sqrt(w)``); mean_, scale_ and intercept_ are weighted statistics and
    the LOO score is the weighted LOO error, matching scikit-learn's ``RidgeCV`` given the
    same ``sample_weight`` (used for mixed training with an imagery weight).
    """

    name = "ridge"

    def __init__(
        self,
        alphas: Any = DEFAULT_ALPHAS,
        alpha_per_target: bool = True,
        standardize: bool = True,
        solver: str = "auto",
        solver_params: dict | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self.alphas = alphas
        self.alpha_per_target = alpha_per_target
        self.standardize = standardize
        self.solver = solver
        self.solver_params = solver_params
        self.device = device
        self.dtype = dtype

    # ------------------------------------------------------------------------------ fit/predict
    def fit(self, X: Any, Y: Any, X_val: Any = None, Y_val: Any = None, sample_weight: Any = None,
            stats_rows: Any = None, val_sample_weight: Any = None) -> "RidgeDecoder":
        """Fit on ``X`` (n_trials, n_voxels) and ``Y`` (n_trials, n_dims); returns self.

        ``X_val``/``Y_val`` are not used for selection (LOO on the training trials is exact);
        when given, ``val_r2_`` reports the fitted model's mean R^2 on them. ``stats_rows`` is
        accepted for the decoder contract and not used: the exact LOO needs the voxels centred
        on the (weighted) mean of all training rows, and ridge has no other learned feature space.
        ``val_sample_weight`` is accepted and not used either (nothing early-stops).
        """
        check_choice("ridge solver", self.solver, RIDGE_SOLVERS, error=InputError)
        check_choice("dtype", self.dtype, ("float32", "float64"), error=InputError)
        X, Y = check_xy(X, Y)
        if X.shape[0] < 2:
            raise InputError(f"Expected at least 2 training trials for leave-one-out, got {X.shape[0]}.")
        w = check_sample_weight(sample_weight, X.shape[0], np.float64)
        mean, scale = weighted_column_stats(X, w, standardize=self.standardize)
        wd = None if w is None else w.astype(np.float64)
        y_mean = (Y.mean(0, dtype=np.float64) if wd is None else wd @ Y.astype(np.float64) / wd.sum())
        Yc = (Y - y_mean).astype(np.float32)
        result = RIDGE_SOLVERS[self.solver](
            X, Yc, self.alphas, mean=mean, scale=scale, sample_weight=w,
            alpha_per_target=self.alpha_per_target, device=self.device, dtype=self.dtype,
            **(self.solver_params or {}),
        )
        self.mean_ = mean
        self.scale_ = scale
        self.coef_ = np.ascontiguousarray(result["coef"], dtype=np.float32)
        self.intercept_ = y_mean.astype(np.float32)
        self.alpha_ = result["alpha"] if self.alpha_per_target else float(result["alpha"][0])
        self.cv_scores_ = result["cv_scores"]
        self.solver_info_ = {k: v for k, v in result.items() if k not in ("coef", "alpha", "cv_scores")}
        self.n_features_in_ = X.shape[1]
        self.val_r2_ = None
        if X_val is not None and Y_val is not None:
            Xv, Yv = check_xy(X_val, Y_val, name="X_val")
            self.val_r2_ = _mean_r2(Yv, self.predict(Xv))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predict embeddings, float32 array of shape (n_trials, n_dims)."""
        self._check_is_fitted()
        X, _ = check_xy(X)
        if X.shape[1] != self.coef_.shape[0]:
            raise InputError(f"Expected X with {self.coef_.shape[0]} voxels (as at fit), got {X.shape[1]}.")
        out = np.empty((X.shape[0], self.coef_.shape[1]), dtype=np.float32)
        for start in range(0, X.shape[0], PREDICT_BLOCK_ROWS):
            rows = slice(start, start + PREDICT_BLOCK_ROWS)
            Z = (X[rows] - self.mean_) / self.scale_
            np.matmul(Z, self.coef_, out=out[rows])
        out += self.intercept_
        return out

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as a flat ``dict[str, torch.Tensor]`` (CPU tensors)."""
        import torch  # measured exception: a CPU fit and predict never need torch (~2 s of imports)

        self._check_is_fitted()
        state = {
            "coef": self.coef_, "intercept": self.intercept_, "mean": self.mean_, "scale": self.scale_,
            "alpha": np.asarray(self.alpha_, dtype=np.float64), "cv_scores": self.cv_scores_,
        }
        return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Any], n_features: int | None = None,
                        n_targets: int | None = None) -> "RidgeDecoder":
        """Restore the fitted state written by :meth:`state_dict` (shapes checked)."""
        missing = sorted({"coef", "intercept", "mean", "scale"} - set(state))
        if missing:
            raise InputError(f"Ridge state lacks {', '.join(missing)}; expected keys coef, intercept, mean, scale.")
        arr = {k: _to_numpy(v) for k, v in state.items()}
        coef = arr["coef"]
        if coef.ndim != 2:
            raise InputError(f"Expected ridge coef of shape (n_voxels, n_dims), got {coef.shape}.")
        p, d = coef.shape
        for key, shape in (("intercept", (d,)), ("mean", (p,)), ("scale", (p,))):
            if arr[key].shape != shape:
                raise InputError(f"Expected ridge {key} of shape {shape}, got {arr[key].shape}.")
        if n_features is not None and p != n_features:
            raise InputError(f"Ridge state has {p} voxels, expected {n_features}.")
        if n_targets is not None and d != n_targets:
            raise InputError(f"Ridge state has {d} output dims, expected {n_targets}.")
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = arr["intercept"].astype(np.float32)
        self.mean_ = arr["mean"].astype(np.float32)
        self.scale_ = arr["scale"].astype(np.float32)
        alpha = arr.get("alpha", np.asarray(np.nan))
        self.alpha_ = float(alpha) if alpha.ndim == 0 else alpha.astype(np.float64)
        self.cv_scores_ = arr.get("cv_scores")
        self.n_features_in_ = p
        self.val_r2_ = None
        self.solver_info_ = {}
        return self

    def to_module(self):
        """A ``torch.nn.Module`` computing ``((x - mean) / scale) @ coef + intercept``.

        ``mean``/``scale`` are frozen buffers; ``weight`` (n_voxels, n_dims) and ``bias``
        (n_dims,) are trainable parameters (for fine-tuning or adapters); write them back
        with :meth:`update_from_module`.
        """
        self._check_is_fitted()
        from fmri2img.models.decoder import RidgeModule  # imports torch: see state_dict

        return RidgeModule(self.mean_, self.scale_, self.coef_, self.intercept_)

    def update_from_module(self, module) -> "RidgeDecoder":
        """Copy the (fine-tuned) weights of a module from :meth:`to_module` back into ``coef_``."""
        self._check_is_fitted()
        state = {"coef": module.weight, "intercept": module.bias, "mean": module.mean, "scale": module.scale}
        alpha, cv, info = self.alpha_, self.cv_scores_, self.solver_info_
        self.load_state_dict(state, n_features=self.coef_.shape[0], n_targets=self.coef_.shape[1])
        self.alpha_, self.cv_scores_, self.solver_info_ = alpha, cv, info
        return self


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _mean_r2(Y: np.ndarray, P: np.ndarray) -> float:
    Y = Y.astype(np.float64)
    ss_res = ((Y - P) ** 2).sum(0)
    ss_tot = ((Y - Y.mean(0)) ** 2).sum(0)
    ok = ss_tot > 0
    return float(np.mean(1.0 - ss_res[ok] / ss_tot[ok])) if ok.any() else float("nan")
