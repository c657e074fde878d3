"""Ridge solvers with exact leave-one-out (LOO) penalty selection, as plain functions.

Every solver has the signature ``solve(X, Y, alphas, *, mean, scale, sample_weight,
alpha_per_target, device, dtype, **solver_params) -> dict`` and is registered in
:data:`RIDGE_SOLVERS` (the himalaya pattern: adding a solver touches this file and one entry).

Model and notation
------------------
``X`` (n, p) are raw betas; the solver standardises them on the fly, column block by column
block, as ``Z = (X - mean) / scale`` and never holds a standardised copy of ``X`` (the
kernel solver's peak memory is ``X`` itself plus two n x n float64 matrices). ``mean`` must
be the (sample-weighted) training mean, so that ``sum_i w_i Z_i = 0``; ``Y`` (n, d) must be
centred with the same weights. The fitted model is ``y = Z @ coef + intercept`` where the
intercept (the weighted mean of ``Y``) is never penalised.

Sample weights ``w`` turn the problem into ordinary ridge on rows rescaled by ``sqrt(w)``:
``min_b sum_i w_i (y_i - z_i b)^2 + alpha |b|^2``. Leave-one-out is computed exactly in that
rescaled space (one trial left out, the intercept refitted), and the score of an alpha is the
weighted LOO mean squared error ``sum_i w_i (y_i - yhat_{-i})^2 / sum_i w_i`` per target, which
is what scikit-learn's ``RidgeCV(cv=None)`` minimises with ``sample_weight`` (up to the constant
``sum(w) / n``, so the same alpha wins). Standardisation statistics are computed once on all
training trials (not refitted inside each LOO fold), as with a scaler before ``RidgeCV``.

With ``u = sqrt(w) / |sqrt(w)|`` (the unpenalised intercept direction, orthogonal to the
rescaled design ``Zw``), the hat matrix is ``H = u u^T + Zw (Zw^T Zw + alpha I)^-1 Zw^T`` and
the LOO residual of trial i is ``r_i / (1 - H_ii)`` with ``r = (I - H) yw``. From one
eigendecomposition ``Zw Zw^T = V diag(lam) V^T`` (kernel form, used when p > n):

    r = V diag(alpha / (lam + alpha)) V^T yw,
    1 - H_ii = sum_j V_ij^2 alpha / (lam_j + alpha) - u_i^2,
    dual coefficients c = V diag(1 / (lam + alpha)) V^T yw,  coef = Zw^T c,

so every alpha and every target costs two (n x n) @ (n x d) products and nothing else.
When p <= n the same quantities come from ``Zw^T Zw = W diag(s) W^T`` (primal form).

Precision: the data and every matrix product stay in ``dtype`` (float32 by default). The
eigendecomposition runs in ``eigh_dtype`` (float64 by default): LAPACK's error on the
eigenvalues is about ``eps * lam_max``, which in float32 (1e-7) is not negligible next to the
smallest alphas once fMRI's large leading eigenvalues are in play. Measured on correlated
synthetic betas (n=1500, p=2600, global factor + low rank + near-repeated trials), against an
all-float64 fit: float64 eigh + float32 products give LOO scores to 3e-5 and coef to 1.4e-6
(relative); a float32 eigh gives scores to 5e-3 and coef to 2e-5 (same alphas chosen there,
but near-ties can flip). ``eigh_dtype="float32"`` halves the eigendecomposition's memory
(n=9000: peak 1.7 GB instead of 2.65 GB, data included). The LOO denominators are sums of
positive terms (kernel form) or computed in float64 (primal form), so float32 is safe there.

Memory (kernel form): X (the caller's, never copied) + one float32 n x n kernel, converted to
``eigh_dtype`` and decomposed in place; the 'evd' driver adds a 2 n^2 workspace. All alphas
reuse two (n, d) buffers; nothing of shape (n_alphas, n, d) is ever formed.

Backends: on CPU the arrays are numpy and LAPACK/BLAS calls go through scipy (scipy's eigh
beat torch's on this machine: n=3000 float64, 4.3 s vs 8.5 s); with ``device="cuda"`` the
identical code runs on torch tensors (``backend="torch"`` runs that path on CPU too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg
from scipy.linalg import blas

from fmri2img.errors import InputError

#: Voxels standardised at a time when streaming X: 2048 columns x 9,000 trials x 4 bytes
#: = 74 MB of temporary memory, large enough for full-speed BLAS-3 on the block.
DEFAULT_BLOCK_SIZE = 2048

#: Relative threshold under which an eigenvalue of Zw^T Zw counts as zero (primal form):
#: about 10x float32's machine epsilon (1.19e-7), the accuracy of a float32 Gram matrix.
PRIMAL_RANK_RTOL = 1e-6


# --------------------------------------------------------------------------------------------
# Array backends: the same solver code on numpy/scipy (CPU) and torch (CPU or CUDA).
# --------------------------------------------------------------------------------------------
class NumpyOps:
    """numpy/scipy backend (CPU)."""

    name = "numpy"

    def __init__(self, device: str = "cpu") -> None:
        if device != "cpu":
            raise InputError(f"The numpy backend runs on device 'cpu' only, got {device!r}.")
        self.device = device

    def asarray(self, a: Any, dtype: str) -> np.ndarray:
        """A new C-ordered array (always a copy: callers modify it in place)."""
        return np.array(a, dtype=dtype, order="C", copy=True)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.zeros(shape, dtype=dtype, order="F")

    def astype(self, a: np.ndarray, dtype: str) -> np.ndarray:
        return a.astype(dtype, order="K")

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def copy(self, a: np.ndarray) -> np.ndarray:
        return a.copy()

    def mm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.matmul(a, b, out=out)

    def gram_accumulate(self, K: np.ndarray, B: np.ndarray) -> None:
        """``K += B @ B.T`` in the lower triangle only (BLAS syrk: half the flops of gemm)."""
        syrk = blas.get_blas_funcs("syrk", (K,))
        out = syrk(1.0, B.T, beta=1.0, c=K, trans=1, lower=1, overwrite_c=1)
        if out is not K:  # pragma: no cover - f2py copied K (not Fortran-ordered)
            K[...] = out

    def symmetrize(self, K: np.ndarray) -> np.ndarray:
        return K  # scipy's eigh reads the lower triangle only

    def eigh(self, A: np.ndarray, driver: str = "evr") -> tuple[np.ndarray, np.ndarray]:
        return linalg.eigh(A, lower=True, overwrite_a=True, check_finite=False, driver=driver)

    def svd(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return linalg.svd(A, full_matrices=False, overwrite_a=True, check_finite=False)


class TorchOps:
    """torch backend (CPU or CUDA); the eigendecomposition can be delegated to scipy on CPU."""

    name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        import torch

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"Device {device!r} requested but torch.cuda.is_available() is False; use 'cpu'.")
        self.torch = torch
        self.device = torch.device(device)

    def _dtype(self, dtype: str):
        return getattr(self.torch, dtype)

    def asarray(self, a: Any, dtype: str):
        """A new tensor on the device (always a copy: callers modify it in place)."""
        return self.torch.tensor(np.ascontiguousarray(a), dtype=self._dtype(dtype), device=self.device)

    def zeros(self, shape: tuple[int, ...], dtype: str):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def astype(self, a, dtype: str):
        return a.to(self._dtype(dtype))

    def to_numpy(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def copy(self, a):
        return a.clone()

    def mm(self, a, b, out=None):
        return self.torch.matmul(a, b, out=out)

    def gram_accumulate(self, K, B) -> None:
        K.addmm_(B, B.T)

    def symmetrize(self, K):
        return K

    def eigh(self, A, driver: str = "evr"):  # noqa: ARG002 - same signature as NumpyOps.eigh
        return self.torch.linalg.eigh(A)

    def svd(self, A):
        return self.torch.linalg.svd(A, full_matrices=False)


def get_ops(backend: str, device: str):
    """Return the array backend ``backend`` ('numpy' or 'torch') on ``device``."""
    if backend == "numpy":
        return NumpyOps(device)
    if backend == "torch":
        return TorchOps(device)
    raise InputError(f"Unknown array backend {backend!r}. Choose one of 'numpy', 'torch'.")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------
def weighted_column_stats(
    X: np.ndarray, sample_weight: np.ndarray | None = None, standardize: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation (ddof=0, zeros replaced by 1) of the columns of X.

    Parameters
    ----------
    X : array of shape (n_trials, n_voxels)
    sample_weight : array of shape (n_trials,) or None
    standardize : bool
        If False the returned scale is all ones (centring only).

    Returns
    -------
    mean, scale : float32 arrays of shape (n_voxels,)
        Accumulated in float64, column block by column block.
    """
    n, p = X.shape
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    wsum = float(n) if w is None else float(w.sum())
    mean = np.empty(p, dtype=np.float64)
    var = np.empty(p, dtype=np.float64)
    for start in range(0, p, block_size):
        sl = slice(start, min(p, start + block_size))
        B = np.asarray(X[:, sl], dtype=np.float64)
        m = (B.sum(0) if w is None else w @ B) / wsum
        B -= m
        B *= B
        var[sl] = (B.sum(0) if w is None else w @ B) / wsum
        mean[sl] = m
    scale = np.sqrt(var)
    # Constant voxels (scale 0) stay 0 after centring; dividing by 1 keeps them finite
    # (scikit-learn's StandardScaler does the same).
    scale[scale < 10 * np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
    if not standardize:
        scale[:] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def _standardized_blocks(ops, X, mean, scale, dtype, block_size):
    """Yield ``(slice, Z[:, slice])`` with ``Z = (X - mean) / scale`` as backend arrays."""
    p = X.shape[1]
    for start in range(0, p, block_size):
        sl = slice(start, min(p, start + block_size))
        B = ops.asarray(X[:, sl], dtype)
        B -= ops.asarray(mean[sl], dtype)
        B /= ops.asarray(scale[sl], dtype)
        yield sl, B


def _check_alphas(alphas: Any) -> np.ndarray:
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError(f"Expected a non-empty list of positive finite alphas, got {alphas!r}.")
    return a


def _select_alphas(scores: np.ndarray, alphas: np.ndarray, alpha_per_target: bool) -> np.ndarray:
    """Best alpha per target (first one on ties, like scikit-learn) as an array of shape (d,)."""
    if alpha_per_target:
        return alphas[np.argmin(scores, axis=0)]
    return np.full(scores.shape[1], alphas[int(np.argmin(scores.mean(axis=1)))])


def _prepare(ops, Y, sample_weight, dtype):
    """Rescaled targets ``yw = sqrt(w) * Y``, ``sqrt(w)``, ``u_i^2 = w_i / sum(w)`` and sum(w)."""
    n = Y.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    sqrt_w = np.sqrt(w)
    Yw = ops.asarray(Y, dtype)
    if sample_weight is not None:
        Yw *= ops.asarray(sqrt_w[:, None], dtype)
    return Yw, sqrt_w, w / w.sum(), float(w.sum())


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------
def solve_ridge_eigh_loo(
    X: np.ndarray, Y: np.ndarray, alphas: Any, *, mean: np.ndarray, scale: np.ndarray,
    sample_weight: np.ndarray | None = None, alpha_per_target: bool = True, device: str = "cpu",
    dtype: str = "float32", eigh_dtype: str = "float64", backend: str | None = None,
    driver: str = "evd", block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, np.ndarray]:
    """Ridge with exact LOO alpha selection from one symmetric eigendecomposition.

    Uses the n x n kernel ``Zw Zw^T`` when p > n and the p x p Gram matrix ``Zw^T Zw``
    otherwise; one decomposition serves every alpha and every target.

    Parameters
    ----------
    X : array of shape (n_trials, n_voxels)
        Raw betas (standardised on the fly with ``mean`` and ``scale``).
    Y : array of shape (n_trials, n_dims)
        Targets centred with the (weighted) training mean.
    alphas : array of shape (n_alphas,)
        Positive penalties to choose from.
    mean, scale : arrays of shape (n_voxels,)
        Weighted training mean and scale of X (see :func:`weighted_column_stats`).
    sample_weight : array of shape (n_trials,) or None
        Non-negative weights; rows are rescaled by ``sqrt(w)``.
    alpha_per_target : bool
        One alpha per target (True) or one shared alpha minimising the mean LOO error (False).
    device : str
        'cpu' or 'cuda'. CPU uses numpy/scipy unless ``backend='torch'``.
    dtype : str
        Dtype of data and matrix products ('float32' or 'float64').
    eigh_dtype : str
        Dtype of the eigendecomposition (float64 by default, see the module docstring).
    backend : str or None
        'numpy' or 'torch'; None picks numpy on CPU and torch elsewhere.
    driver : str
        scipy LAPACK driver of ``eigh`` on the numpy backend. 'evd' (divide and conquer, the
        default) was 3x faster than 'evr' here (n=3000: 4.0 s vs 12.2 s in float64) but needs
        a workspace of 2 n^2 values on top of the matrix; 'evr' needs only a second n x n.
    block_size : int
        Voxels standardised at a time.

    Returns
    -------
    dict with ``coef`` float32 (n_voxels, n_dims), ``alpha`` float64 (n_dims,) and
    ``cv_scores`` float64 (n_alphas, n_dims): weighted LOO mean squared error per alpha and target.
    """
    alphas = _check_alphas(alphas)
    ops = get_ops(backend or ("numpy" if device == "cpu" else "torch"), device)
    n, p = X.shape
    d = Y.shape[1]
    Yw, sqrt_w, u2, _ = _prepare(ops, Y, sample_weight, dtype)
    sw = ops.asarray(sqrt_w[:, None], dtype) if sample_weight is not None else None
    scores = np.empty((alphas.size, d), dtype=np.float64)

    if p > n:  # ---- kernel form: K = Zw Zw^T (n x n)
        K = ops.zeros((n, n), dtype)
        for _, B in _standardized_blocks(ops, X, mean, scale, dtype, block_size):
            ops.gram_accumulate(K, B)
        K = ops.symmetrize(K)
        if sw is not None:
            K *= sw
            K *= sw.T
        K64 = ops.astype(K, eigh_dtype)
        del K
        lam, V = ops.eigh(K64, driver)
        del K64
        lam = ops.to_numpy(lam).astype(np.float64).clip(min=0.0)
        V = ops.astype(V, dtype)
        VtY = ops.mm(V.T, Yw)                                   # (n, d)
        # LOO denominators for all alphas at once: (V*V) @ g, in row blocks of V.
        G = ops.asarray(alphas[None, :] / (lam[:, None] + alphas[None, :]), dtype)  # (n, n_alphas)
        denom = np.empty((n, alphas.size), dtype=np.float64)
        for start in range(0, n, block_size):
            Vb = V[start:start + block_size]
            denom[start:start + block_size] = ops.to_numpy(ops.mm(Vb * Vb, G))
        denom -= u2[:, None]
        np.clip(denom, np.finfo(np.float64).tiny, None, out=denom)
        tmp = ops.copy(VtY)
        R = ops.copy(Yw)
        for k, alpha in enumerate(alphas):
            g = ops.asarray((alpha / (lam + alpha))[:, None], dtype)
            ops.mm(V, ops_mul(VtY, g, out=tmp), out=R)          # r = V diag(g) V^T yw
            E = ops.to_numpy(R).astype(np.float64) / denom[:, k:k + 1]
            scores[k] = (E * E).sum(0)
        best = _select_alphas(scores, alphas, alpha_per_target)
        M = VtY / ops.asarray(lam[:, None] + best[None, :], dtype)
        C = ops.mm(V, M)                                        # dual coefficients (n, d)
        del V, VtY, M, tmp, R
        if sw is not None:
            C *= sw
        coef = np.empty((p, d), dtype=np.float32)
        for sl, B in _standardized_blocks(ops, X, mean, scale, dtype, block_size):
            coef[sl] = ops.to_numpy(ops.mm(B.T, C))
    else:  # ---- primal form: Gram = Zw^T Zw (p x p)
        Zw = ops.asarray(np.empty((n, p), dtype=dtype), dtype)
        for sl, B in _standardized_blocks(ops, X, mean, scale, dtype, block_size):
            Zw[:, sl] = B * sw if sw is not None else B
        Gram = ops.astype(ops.mm(Zw.T, Zw), eigh_dtype)
        s, W = ops.eigh(Gram, driver)
        del Gram
        s = ops.to_numpy(s).astype(np.float64)
        keep = np.flatnonzero(s > PRIMAL_RANK_RTOL * max(s.max(), 0.0))
        W = ops.astype(W, dtype)[:, keep]
        U = ops.mm(Zw, W)                                       # (n, r), column norms^2 = s
        del Zw
        norms = np.sqrt((ops.to_numpy(U).astype(np.float64) ** 2).sum(0))
        s = norms ** 2                                          # consistent with U as computed
        U /= ops.asarray(norms[None, :], dtype)                 # orthonormal columns
        UtY = ops.mm(U.T, Yw)                                   # (r, d)
        U2 = ops.to_numpy(U).astype(np.float64) ** 2
        h0 = np.clip(1.0 - u2 - U2.sum(1), 0.0, None)           # leverage complement, float64
        R0 = Yw - ops.mm(U, UtY)                                # least-squares residual
        R = ops.copy(R0)
        for k, alpha in enumerate(alphas):
            g = alpha / (s + alpha)
            ops.mm(U, UtY * ops.asarray(g[:, None], dtype), out=R)
            R += R0
            denom = np.clip(h0 + U2 @ g, np.finfo(np.float64).tiny, None)
            E = ops.to_numpy(R).astype(np.float64) / denom[:, None]
            scores[k] = (E * E).sum(0)
        best = _select_alphas(scores, alphas, alpha_per_target)
        M = UtY * ops.asarray(np.sqrt(s)[:, None] / (s[:, None] + best[None, :]), dtype)
        coef = ops.to_numpy(ops.mm(W, M)).astype(np.float32)
    wsum = n if sample_weight is None else float(np.sum(sample_weight))
    return {"coef": coef, "alpha": best, "cv_scores": scores / wsum}


def ops_mul(a, b, out):
    """``out = a * b`` (broadcasting) on either backend."""
    out[...] = a
    out *= b
    return out


def solve_ridge_svd_loo(
    X: np.ndarray, Y: np.ndarray, alphas: Any, *, mean: np.ndarray, scale: np.ndarray,
    sample_weight: np.ndarray | None = None, alpha_per_target: bool = True, device: str = "cpu",
    dtype: str = "float32", backend: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, np.ndarray]:
    """Reference solver: exact LOO from a thin SVD of the rescaled design, all in float64.

    ``Zw = U diag(s) W^T``; ``1 - H_ii = 1 - u_i^2 - sum_j U_ij^2 h_j`` and
    ``r = yw - U diag(h) U^T yw`` with ``h = s^2 / (s^2 + alpha)``, and
    ``coef = W diag(s / (s^2 + alpha)) U^T yw``. Holds the standardised design and its factors
    in memory (several times the size of X): meant for small problems and as a cross-check
    of :func:`solve_ridge_eigh_loo`. Parameters and returns as there (``dtype`` is ignored:
    float64 throughout).
    """
    del dtype
    alphas = _check_alphas(alphas)
    ops = get_ops(backend or ("numpy" if device == "cpu" else "torch"), device)
    n, p = X.shape
    d = Y.shape[1]
    Yw, sqrt_w, u2, _ = _prepare(ops, Y, sample_weight, "float64")
    Zw = ops.asarray(np.empty((n, p)), "float64")
    for sl, B in _standardized_blocks(ops, X, mean, scale, "float64", block_size):
        Zw[:, sl] = B * ops.asarray(sqrt_w[:, None], "float64")
    U, s, Wt = ops.svd(Zw)
    s = ops.to_numpy(s)
    keep = np.flatnonzero(s > s.max() * max(n, p) * np.finfo(np.float64).eps)
    U, Wt, s = U[:, keep], Wt[keep], s[keep]
    UtY = ops.to_numpy(ops.mm(U.T, Yw))
    Un = ops.to_numpy(U)
    U2 = Un ** 2
    Yn = ops.to_numpy(Yw)
    scores = np.empty((alphas.size, d))
    for k, alpha in enumerate(alphas):
        h = (s ** 2) / (s ** 2 + alpha)                         # shrunk hat eigenvalues
        # 1 - H_ii = 1 - u_i^2 - sum_j U_ij^2 h_j (unclipped: exact even if U holds a
        # numerically-zero direction along u, whose h_j is then ~0).
        denom = np.clip(1.0 - u2 - U2 @ h, np.finfo(np.float64).tiny, None)
        E = (Yn - Un @ (UtY * h[:, None])) / denom[:, None]
        scores[k] = (E * E).sum(0)
    best = _select_alphas(scores, alphas, alpha_per_target)
    coef = ops.to_numpy(Wt).T @ (UtY * (s[:, None] / (s[:, None] ** 2 + best[None, :])))
    wsum = n if sample_weight is None else float(np.sum(sample_weight))
    return {"coef": coef.astype(np.float32), "alpha": best, "cv_scores": scores / wsum}


#: Solver name -> function (the estimator picks one by name and passes ``solver_params``).
RIDGE_SOLVERS = {
    "eigh_loo": solve_ridge_eigh_loo,
    "svd_loo": solve_ridge_svd_loo,
}
