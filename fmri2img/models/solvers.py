"""Ridge solvers with exact leave-one-out (LOO) penalty selection, as plain functions.

Every solver has the signature ``solve(X, Y, alphas, *, mean, scale, sample_weight,
alpha_per_target, device, dtype, **solver_params) -> dict`` and is registered in
:data:`RIDGE_SOLVERS` (the himalaya pattern: adding a solver touches this file and one entry).

Model and notation
------------------
``X`` (n, p) are raw betas; the solver standardises them on the fly, column block by column
block, as ``Z = (X - mean) / scale`` and never holds a standardised copy of ``X`` (the
kernel solvers' peak memory is ``X`` plus two or three n x n matrices, see below). ``mean`` must
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

Cholesky form (``cholesky_loo``, kernel form only). ``u`` is an exact null vector of
``K = Zw Zw^T`` (``Zw^T u = 0`` because Z is weighted-centred), which in the formula above puts
``u_i^2`` on both sides of ``1 - H_ii`` and cancels it at small alpha. Lift it instead:
``K' = K + beta u u^T`` with ``beta = trace(K) / n`` (the mean eigenvalue, so ``lam_max`` is
unchanged), ``A = K' + alpha I``. ``A^-1`` has the eigenvectors of K with ``1 / (lam_j + alpha)``,
except ``1 / (beta + alpha)`` along u, so, with ``yw`` orthogonal to u (Y is weighted-centred):

    r = alpha A^-1 yw,
    1 - H_ii = alpha [A^-1]_ii - alpha / (beta + alpha) u_i^2,
    c = A^-1 yw,  coef = Zw^T c   (the u part of c vanishes under Zw^T).

Per alpha: ``A = L L^T`` (potrf), ``L^-1`` (trtri), ``[A^-1]_ii`` = squared column norms of
``L^-1`` (positive terms), ``A^-1 yw = L^-T (L^-1 yw)`` (two trmm). No eigendecomposition:
measured here (2 cores, OpenBLAS) at n=9000, scipy's eigh (evd) took 76 s in float32 and
123 s in float64 (torch/MKL float32: 112 s), while float32 potrf + trtri took 2.1 + 2.0 s
(float64: 3.8 + 4.0 s), about 4.8 s per alpha with the products. One eigendecomposition
wins beyond ~25 alphas; ``auto`` uses Cholesky up to :data:`CHOLESKY_MAX_ALPHAS`.
Precision: an alpha is factorised in float32 when the estimated condition number
``(lam_max + alpha) / alpha`` is at most :data:`CHOLESKY_FLOAT32_MAX_COND` (``lam_max`` from
power iteration), else in float64 (the float32 kernel converted). On correlated synthetic betas
(n=300, p=800, global factor + low rank, alphas 1e-2..1e5) against the float64 SVD reference,
LOO scores agree to 3e-5 (relative) at every alpha and coef to 1.3e-5 (float32 factors at
every alpha, kappa up to 1e7: 5e-5). With near-repeated trials (3 noisy copies of each, as
NSD's repeats), the float32 kernel itself limits the smallest alphas (kappa ~ 1e7) to 1e-2
with float64 factors (1.8e-2 with float32 ones; eigh_loo: 1.2e-2); pass ``dtype='float64'``
there.

Precision (eigh_loo): the data and every matrix product stay in ``dtype`` (float32 by default). The
eigendecomposition runs in ``eigh_dtype`` (float64 by default): LAPACK's error on the
eigenvalues is about ``eps * lam_max``, which in float32 (1e-7) is not negligible next to the
smallest alphas once fMRI's large leading eigenvalues are in play. Measured on correlated
synthetic betas (n=1500, p=2600, global factor + low rank + near-repeated trials), against an
all-float64 fit: float64 eigh + float32 products give LOO scores to 3e-5 and coef to 1.4e-6
(relative); a float32 eigh gives scores to 5e-3 and coef to 2e-5 (same alphas chosen there,
but near-ties can flip). ``eigh_dtype="float32"`` halves the eigendecomposition's memory
(n=9000: peak 1.7 GB instead of 2.65 GB, data included). The LOO denominators are sums of
positive terms (kernel form) or computed in float64 (primal form), so float32 is safe there.

Memory (kernel form): X (the caller's, never copied) + one float32 n x n kernel. eigh_loo
converts it to ``eigh_dtype`` and decomposes in place (the 'evd' driver adds a 2 n^2
workspace). cholesky_loo keeps the kernel and factorises a copy in one reused n x n buffer
per factor dtype (float32, plus float64 only if some alpha needs it; n=9000: 324 MB kernel +
324 MB float32 factor + 648 MB float64 factor). All alphas reuse a few (n, d) buffers; nothing
of shape (n_alphas, n, d) is ever formed.

Backends: on CPU the arrays are numpy and LAPACK/BLAS calls go through scipy (scipy's eigh
beat torch's on this machine: n=3000 float64, 4.3 s vs 8.5 s); with ``device="cuda"`` the
identical code runs on torch tensors (``backend="torch"`` runs that path on CPU too). torch
on CPU is slower for the Cholesky pieces (n=3000, one thread: solve_triangular for ``L^-1``
0.86 s vs scipy's trtri 0.14 s). On one H200 at n=9000, p=15724, d=512, 10 alphas, the whole
fit took 2.9 s with cholesky_loo and 2.5 s with eigh_loo after CUDA warm-up (so ``auto``
uses eigh_loo on a GPU). OpenBLAS's potrf/trtri degrade badly
when their threads share cores with other busy processes (n=3000: 0.14 s on one thread, 1-3 s
on two threads with one core taken): time them on an otherwise idle machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg
from scipy.linalg import blas, lapack

from fmri2img.errors import InputError

#: Voxels standardised at a time when streaming X: 2048 columns x 9,000 trials x 4 bytes
#: = 74 MB of temporary memory, large enough for full-speed BLAS-3 on the block.
DEFAULT_BLOCK_SIZE = 2048

#: Relative threshold under which an eigenvalue of Zw^T Zw counts as zero (primal form):
#: about 10x float32's machine epsilon (1.19e-7), the accuracy of a float32 Gram matrix.
PRIMAL_RANK_RTOL = 1e-6

#: Largest estimated condition number ``(lam_max + alpha) / alpha`` of ``K' + alpha I`` for
#: which the Cholesky solver factorises in float32. Cholesky is backward stable, so the
#: forward error of ``A^-1 yw`` and of ``diag(A^-1)`` is about ``kappa * eps`` (Higham,
#: *Accuracy and Stability of Numerical Algorithms*, 2nd ed., thm 10.4 and sec. 14.1):
#: 1e4 * 6e-8 (float32 unit roundoff) = 6e-4 relative at worst, below the 1e-3 agreement
#: asked of held-out R^2 (issue 9). Larger kappa runs that alpha in float64.
CHOLESKY_FLOAT32_MAX_COND = 1e4

#: Power iterations estimating the largest eigenvalue of the kernel (one symmetric
#: mat-vec each: 0.02 s at n=9000 here). The Rayleigh quotient is a lower bound whose
#: expected relative error after t steps from a random start is at most 0.871 ln(n) / (t - 1)
#: (Kuczynski & Wozniakowski 1992, SIAM J. Matrix Anal. Appl. 13(4), thm 4.1): 0.27 at
#: n=9000, t=30, covered by :data:`POWER_SAFETY_FACTOR`. Like LAPACK's pocon, an estimate.
POWER_ITERATIONS = 30

#: Factor applied to the power-iteration estimate of ``lam_max`` (1 / (1 - 0.27) = 1.37, rounded up).
POWER_SAFETY_FACTOR = 1.5

#: Most alphas for which "auto" prefers one Cholesky per alpha to one eigendecomposition
#: (kernel form). Measured here at n=9000: float64 eigh 123 s (float32: 76 s) vs ~4.8 s per
#: alpha for float32 potrf + trtri + products: crossover ~25 alphas; 20 leaves a margin for
#: alphas that need float64 (~8.5 s each).
CHOLESKY_MAX_ALPHAS = 20


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

    # -- pieces of the Cholesky solver (kernel stored in its lower triangle, Fortran order)
    def sym_matvec(self, K: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``K @ v`` for symmetric K stored in its lower triangle (BLAS symv)."""
        symv = blas.get_blas_funcs("symv", (K,))
        return symv(1.0, K, v, lower=1)

    def diagonal(self, K: np.ndarray) -> np.ndarray:
        return np.diagonal(K).astype(np.float64)

    def empty_square(self, n: int, dtype: str) -> np.ndarray:
        return np.empty((n, n), dtype=dtype, order="F")

    def copy_into(self, dst: np.ndarray, src: np.ndarray) -> np.ndarray:
        np.copyto(dst, src, casting="same_kind")
        return dst

    def add_diagonal(self, A: np.ndarray, value: float) -> None:
        idx = np.arange(A.shape[0])
        A[idx, idx] += value

    def cholesky_inverse_lower(self, A: np.ndarray) -> np.ndarray | None:
        """``L^-1`` where ``A = L L^T`` (lower triangle of A read), in place; None if A is not
        numerically positive definite. The upper triangle of the result is zero."""
        potrf, trtri = lapack.get_lapack_funcs(("potrf", "trtri"), (A,))
        L, info = potrf(A, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            return None
        Linv, info = trtri(L, lower=1, overwrite_c=1)
        return Linv if info == 0 else None

    def lower_gram_apply(self, Linv: np.ndarray, B: np.ndarray) -> np.ndarray:
        """``Linv^T (Linv B)`` for lower-triangular Linv (two BLAS trmm), in Linv's dtype."""
        trmm = blas.get_blas_funcs("trmm", (Linv,))
        C = np.array(B, dtype=Linv.dtype, order="F", copy=True)
        C = trmm(1.0, Linv, C, side=0, lower=1, trans_a=0, overwrite_b=1)
        return trmm(1.0, Linv, C, side=0, lower=1, trans_a=1, overwrite_b=1)

    def lower_col_sq_norms(self, Linv: np.ndarray, block_size: int) -> np.ndarray:
        """Squared column norms of lower-triangular Linv, float64 (n,), one column block at a time
        (rows above the block are zero and skipped)."""
        n = Linv.shape[0]
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, block_size):
            Bk = Linv[start:, start:start + block_size]
            out[start:start + Bk.shape[1]] = np.einsum("ij,ij->j", Bk, Bk, dtype=np.float64)
        return out


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

    # -- pieces of the Cholesky solver (kernel stored as a full symmetric matrix)
    def sym_matvec(self, K, v):
        return K @ v

    def diagonal(self, K) -> np.ndarray:
        return self.to_numpy(K.diagonal()).astype(np.float64)

    def empty_square(self, n: int, dtype: str):
        return self.torch.empty((n, n), dtype=self._dtype(dtype), device=self.device)

    def copy_into(self, dst, src):
        return dst.copy_(src)

    def add_diagonal(self, A, value: float) -> None:
        A.diagonal().add_(value)

    def cholesky_inverse_lower(self, A):
        """``L^-1`` where ``A = L L^T``; None if A is not numerically positive definite."""
        L, info = self.torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            return None
        eye = self.torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        return self.torch.linalg.solve_triangular(L, eye, upper=False)

    def lower_gram_apply(self, Linv, B):
        """``Linv^T (Linv B)`` in Linv's dtype."""
        return Linv.T @ (Linv @ B.to(Linv.dtype))

    def lower_col_sq_norms(self, Linv, block_size: int) -> np.ndarray:
        n = Linv.shape[0]
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, block_size):
            Bk = Linv[start:, start:start + block_size].to(self.torch.float64)
            out[start:start + Bk.shape[1]] = self.to_numpy((Bk * Bk).sum(0))
        return out


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


def _power_lambda_max(ops, K, n: int, dtype: str, iterations: int) -> float:
    """Largest eigenvalue of the symmetric PSD matrix K, estimated by power iteration.

    Returns the last Rayleigh quotient, a lower bound that converges to ``lam_max`` (callers
    multiply it by :data:`POWER_SAFETY_FACTOR`). Deterministic start vector (seed 0).
    """
    v = ops.asarray(np.random.default_rng(0).standard_normal(n), dtype)
    v /= float(ops.to_numpy((v * v).sum())) ** 0.5
    lam = 0.0
    for _ in range(iterations):
        Kv = ops.sym_matvec(K, v)
        lam = float(ops.to_numpy((v * Kv).sum()))
        norm = float(ops.to_numpy((Kv * Kv).sum())) ** 0.5
        if norm == 0.0:
            return 0.0
        v = Kv / norm
    return max(lam, 0.0)


def solve_ridge_cholesky_loo(
    X: np.ndarray, Y: np.ndarray, alphas: Any, *, mean: np.ndarray, scale: np.ndarray,
    sample_weight: np.ndarray | None = None, alpha_per_target: bool = True, device: str = "cpu",
    dtype: str = "float32", backend: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
    max_cond_float32: float = CHOLESKY_FLOAT32_MAX_COND, power_iterations: int = POWER_ITERATIONS,
) -> dict[str, Any]:
    """Ridge with exact LOO alpha selection from one Cholesky factorisation per alpha.

    Kernel form (n x n, any shape; when p <= n the primal form of :func:`solve_ridge_eigh_loo`
    is cheaper, which is what ``auto`` picks): with ``K' = Zw Zw^T + beta u u^T`` and ``A = K' + alpha I``,

        r = alpha A^-1 yw,   1 - H_ii = alpha [A^-1]_ii - alpha / (beta + alpha) u_i^2,
        c = A^-1 yw,         coef = Zw^T c,

    where ``[A^-1]_ii`` are the squared column norms of ``L^-1`` (``A = L L^T``) and
    ``A^-1 yw = L^-T (L^-1 yw)`` (see the module docstring).

    Parameters
    ----------
    X, Y, alphas, mean, scale, sample_weight, alpha_per_target, device, dtype, backend, block_size
        As in :func:`solve_ridge_eigh_loo`.
    max_cond_float32 : float
        An alpha is factorised in float32 only when ``dtype='float32'`` and the estimated
        condition number ``(lam_max + alpha) / alpha`` of ``A`` is at most this
        (default :data:`CHOLESKY_FLOAT32_MAX_COND`); otherwise in float64.
    power_iterations : int
        Power iterations estimating ``lam_max`` (default :data:`POWER_ITERATIONS`).

    Returns
    -------
    dict with ``coef`` float32 (n_voxels, n_dims), ``alpha`` float64 (n_dims,), ``cv_scores``
    float64 (n_alphas, n_dims) as :func:`solve_ridge_eigh_loo`, plus ``solver``
    ('cholesky_loo'), ``factor_dtypes`` (list of str, one per alpha) and ``lambda_max``
    (float, the power-iteration estimate times the safety factor).
    """
    alphas = _check_alphas(alphas)
    n, p = X.shape
    ops = get_ops(backend or ("numpy" if device == "cpu" else "torch"), device)
    d = Y.shape[1]
    Yw, sqrt_w, u2, wsum = _prepare(ops, Y, sample_weight, dtype)
    sw = ops.asarray(sqrt_w[:, None], dtype) if sample_weight is not None else None
    u = sqrt_w / np.sqrt(wsum)                                   # unit intercept direction
    u_b = ops.asarray(u[:, None], dtype)
    # yw is orthogonal to u in exact arithmetic (Y is weighted-centred); remove the float32
    # rounding left along u so that the residual below is exactly the LOO one.
    Yw -= u_b * ops.mm(u_b.T, Yw)

    K = ops.zeros((n, n), dtype)
    for _, B in _standardized_blocks(ops, X, mean, scale, dtype, block_size):
        ops.gram_accumulate(K, B)
    if sw is not None:
        K *= sw
        K *= sw.T
    # Lift the intercept direction (an exact null vector of K) to the mean eigenvalue, so
    # that 1 - H_ii no longer subtracts u_i^2 from a sum that contains it (see module docstring).
    beta = float(ops.diagonal(K).sum()) / n
    if beta <= 0.0:
        beta = 1.0                                              # all-constant design
    ops.gram_accumulate(K, u_b * np.sqrt(beta))
    lam_max = POWER_SAFETY_FACTOR * max(_power_lambda_max(ops, K, n, dtype, power_iterations), beta)

    scores = np.empty((alphas.size, d), dtype=np.float64)
    best_score = np.full(d, np.inf)
    best_mean = np.inf
    C_best = ops.zeros((n, d), dtype)
    factor_dtypes: list[str] = []
    buffers: dict[str, Any] = {}
    for k, alpha in enumerate(alphas):
        fdtype = dtype
        if dtype == "float32" and (lam_max + alpha) / alpha > max_cond_float32:
            fdtype = "float64"
        Linv = _factor_inverse(ops, K, alpha, fdtype, buffers)
        if Linv is None and fdtype == "float32":                # not PD in float32: use float64
            fdtype = "float64"
            Linv = _factor_inverse(ops, K, alpha, fdtype, buffers)
        if Linv is None:
            raise InputError(
                f"Ridge kernel + alpha={alpha:g} I is not positive definite in {fdtype} "
                "(non-finite betas?); check X for NaN/inf."
            )
        factor_dtypes.append(fdtype)
        denom = alpha * ops.lower_col_sq_norms(Linv, block_size) - (alpha / (beta + alpha)) * u2
        np.clip(denom, np.finfo(np.float64).tiny, None, out=denom)
        C = ops.lower_gram_apply(Linv, Yw)                      # A^-1 yw, dual coefficients
        del Linv
        E = ops.to_numpy(C).astype(np.float64)
        E *= (alpha / denom)[:, None]                           # LOO residuals
        scores[k] = (E * E).sum(0)
        del E
        C = ops.astype(C, dtype) if fdtype != dtype else C
        if alpha_per_target:
            better = np.flatnonzero(scores[k] < best_score)     # strict: first alpha wins ties
            if better.size:
                best_score[better] = scores[k, better]
                idx = ops.asarray(better, "int64") if ops.name == "torch" else better
                C_best[:, idx] = C[:, idx]
        else:
            mean_score = float(scores[k:k + 1].mean(axis=1)[0])  # as _select_alphas computes it
            if mean_score < best_mean:
                best_mean = mean_score
                C_best = ops.copy(C)
        del C
    del K, buffers
    best = _select_alphas(scores, alphas, alpha_per_target)
    if sw is not None:
        C_best *= sw
    coef = np.empty((p, d), dtype=np.float32)
    for sl, B in _standardized_blocks(ops, X, mean, scale, dtype, block_size):
        coef[sl] = ops.to_numpy(ops.mm(B.T, C_best))
    return {"coef": coef, "alpha": best, "cv_scores": scores / wsum, "solver": "cholesky_loo",
            "factor_dtypes": factor_dtypes, "lambda_max": lam_max}


def _factor_inverse(ops, K, alpha: float, fdtype: str, buffers: dict):
    """``L^-1`` of ``K + alpha I = L L^T`` in ``fdtype``, reusing one n x n buffer per dtype
    (allocated on first use: copying into a touched buffer is ~10x faster than a fresh one)."""
    if fdtype not in buffers:
        buffers[fdtype] = ops.empty_square(K.shape[0], fdtype)
    A = ops.copy_into(buffers[fdtype], K)
    ops.add_diagonal(A, alpha)
    return ops.cholesky_inverse_lower(A)


def solve_ridge_auto(
    X: np.ndarray, Y: np.ndarray, alphas: Any, *, mean: np.ndarray, scale: np.ndarray,
    sample_weight: np.ndarray | None = None, alpha_per_target: bool = True, device: str = "cpu",
    dtype: str = "float32", backend: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
    max_cond_float32: float = CHOLESKY_FLOAT32_MAX_COND, power_iterations: int = POWER_ITERATIONS,
    eigh_dtype: str = "float64", driver: str = "evd",
) -> dict[str, Any]:
    """Pick the faster exact-LOO solver: :func:`solve_ridge_cholesky_loo` on CPU when p > n and
    there are at most :data:`CHOLESKY_MAX_ALPHAS` alphas, :func:`solve_ridge_eigh_loo` otherwise
    (on a GPU one eigendecomposition beats ten factorisations: NSD shape on an H200, 2.5 s for
    eigh_loo vs 2.9 s for cholesky_loo, ``benchmarks/device_check.sh``).

    Parameters and returns as :func:`solve_ridge_cholesky_loo` (``solver`` names the method
    that ran).
    """
    alphas = _check_alphas(alphas)
    n, p = X.shape
    common = dict(mean=mean, scale=scale, sample_weight=sample_weight, alpha_per_target=alpha_per_target,
                  device=device, dtype=dtype, backend=backend, block_size=block_size)
    if device == "cpu" and p > n and alphas.size <= CHOLESKY_MAX_ALPHAS:
        return solve_ridge_cholesky_loo(X, Y, alphas, max_cond_float32=max_cond_float32,
                                        power_iterations=power_iterations, **common)
    result = solve_ridge_eigh_loo(X, Y, alphas, eigh_dtype=eigh_dtype, driver=driver, **common)
    return {**result, "solver": "eigh_loo"}


#: Solver name -> function (the estimator picks one by name and passes ``solver_params``).
RIDGE_SOLVERS = {
    "eigh_loo": solve_ridge_eigh_loo,
    "svd_loo": solve_ridge_svd_loo,
    "cholesky_loo": solve_ridge_cholesky_loo,
    "auto": solve_ridge_auto,
}
