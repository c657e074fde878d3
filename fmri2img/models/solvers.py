"""Ridge solvers with exact leave-one-out (LOO) penalty selection, as plain functions.

Every solver has the signature ``solve(X, Y, alphas, *, mean, scale, sample_weight,
alpha_per_target, device, dtype, **solver_params) -> dict`` and is registered in
:data:`RIDGE_SOLVERS` (the himalaya pattern: adding a solver touches this file and one entry).
Their speed and precision, measured, are in docs/performance.md ("Ridge").

Model and notation
------------------
``X`` (n, p) are raw betas; the solver standardises them on the fly, column block by column
block, as ``Z = (X - mean) / scale`` and never holds a standardised copy of ``X``. ``mean`` must
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
``K = Zw Zw^T``, which in the formula above puts ``u_i^2`` on both sides of ``1 - H_ii`` and
cancels it at small alpha. Lift it instead: ``K' = K + beta u u^T`` with ``beta = trace(K) / n``,
``A = K' + alpha I``. ``A^-1`` has the eigenvectors of K with ``1 / (lam_j + alpha)``, except
``1 / (beta + alpha)`` along u, so, with ``yw`` orthogonal to u:

    r = alpha A^-1 yw,
    1 - H_ii = alpha [A^-1]_ii - alpha / (beta + alpha) u_i^2,
    c = A^-1 yw,  coef = Zw^T c   (the u part of c vanishes under Zw^T).

Per alpha: ``A = L L^T`` (potrf), ``L^-1`` (trtri), ``[A^-1]_ii`` = squared column norms of
``L^-1`` (positive terms), ``A^-1 yw = L^-T (L^-1 yw)`` (two trmm); no eigendecomposition.
An alpha is factorised in float32 when the estimated condition number ``(lam_max + alpha) /
alpha`` is at most :data:`CHOLESKY_FLOAT32_MAX_COND` (``lam_max`` from power iteration), else in
float64. ``eigh_loo`` keeps the data and products in ``dtype`` and decomposes in ``eigh_dtype``
(float64 by default: LAPACK's eigenvalue error is about ``eps * lam_max``).

Memory (kernel form): X (never copied) + one n x n kernel; ``cholesky_loo`` factorises a copy in
one reused n x n buffer per factor dtype. Nothing of shape (n_alphas, n, d) is ever formed.
Arrays go through :mod:`fmri2img.models.backends` (numpy/scipy on CPU, torch on CUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmri2img.core.errors import InputError
from fmri2img.models.backends import DEFAULT_BLOCK_SIZE, get_ops, multiply_into, standardized_blocks

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
#: mat-vec each). The Rayleigh quotient is a lower bound whose
#: expected relative error after t steps from a random start is at most 0.871 ln(n) / (t - 1)
#: (Kuczynski & Wozniakowski 1992, SIAM J. Matrix Anal. Appl. 13(4), thm 4.1): 0.27 at
#: n=9000, t=30, covered by :data:`POWER_SAFETY_FACTOR`. Like LAPACK's pocon, an estimate.
POWER_ITERATIONS = 30

#: Factor applied to the power-iteration estimate of ``lam_max`` (1 / (1 - 0.27) = 1.37, rounded up).
POWER_SAFETY_FACTOR = 1.5

#: Most alphas for which "auto" prefers one Cholesky per alpha to one eigendecomposition (kernel
#: form): the measured crossover is ~25 alphas at n=9000 (docs/performance.md, "Ridge"); 20 leaves
#: a margin for alphas that need float64.
CHOLESKY_MAX_ALPHAS = 20


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
        scipy LAPACK driver of ``eigh`` on the numpy backend: 'evd' (divide and conquer, the
        default, the faster: docs/performance.md) needs a workspace of 2 n^2 values on top of the
        matrix; 'evr' needs only a second n x n.
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

    form = _eigh_kernel_form if p > n else _eigh_primal_form  # kernel: K = Zw Zw^T (n x n); primal: Zw^T Zw
    coef, best = form(ops, X, Yw, u2, sw, alphas, scores, mean=mean, scale=scale, alpha_per_target=alpha_per_target,
                      dtype=dtype, eigh_dtype=eigh_dtype, driver=driver, block_size=block_size)
    wsum = n if sample_weight is None else float(np.sum(sample_weight))
    return {"coef": coef, "alpha": best, "cv_scores": scores / wsum}

def _eigh_kernel_form(ops, X, Yw, u2, sw, alphas, scores, *, mean, scale, alpha_per_target, dtype, eigh_dtype,
                      driver, block_size):
    """:func:`solve_ridge_eigh_loo` from the kernel ``Zw Zw^T`` (p > n); fills ``scores``, returns (coef, alpha)."""
    n, p = X.shape
    d = Yw.shape[1]
    K = ops.zeros((n, n), dtype)
    for _, B in standardized_blocks(ops, X, mean, scale, dtype, block_size):
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
        ops.mm(V, multiply_into(VtY, g, out=tmp), out=R)          # r = V diag(g) V^T yw
        E = ops.to_numpy(R).astype(np.float64) / denom[:, k:k + 1]
        scores[k] = (E * E).sum(0)
    best = _select_alphas(scores, alphas, alpha_per_target)
    M = VtY / ops.asarray(lam[:, None] + best[None, :], dtype)
    C = ops.mm(V, M)                                        # dual coefficients (n, d)
    del V, VtY, M, tmp, R
    if sw is not None:
        C *= sw
    coef = np.empty((p, d), dtype=np.float32)
    for sl, B in standardized_blocks(ops, X, mean, scale, dtype, block_size):
        coef[sl] = ops.to_numpy(ops.mm(B.T, C))
    return coef, best


def _eigh_primal_form(ops, X, Yw, u2, sw, alphas, scores, *, mean, scale, alpha_per_target, dtype, eigh_dtype,
                      driver, block_size):
    """:func:`solve_ridge_eigh_loo` from the Gram matrix ``Zw^T Zw`` (p <= n); fills ``scores``,
    returns (coef, alpha)."""
    n, p = X.shape
    Zw = ops.asarray(np.empty((n, p), dtype=dtype), dtype)
    for sl, B in standardized_blocks(ops, X, mean, scale, dtype, block_size):
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
    return coef, best


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

    K, beta = _lifted_kernel(ops, X, sw, u_b, mean=mean, scale=scale, dtype=dtype, block_size=block_size)
    lam_max = POWER_SAFETY_FACTOR * max(_power_lambda_max(ops, K, n, dtype, power_iterations), beta)
    scores = np.empty((alphas.size, d), dtype=np.float64)
    buffers: dict[str, Any] = {}
    factor_dtypes, C_best = _cholesky_scores(ops, K, Yw, u2, beta, lam_max, alphas, scores, buffers,
                                             alpha_per_target=alpha_per_target, dtype=dtype,
                                             max_cond_float32=max_cond_float32, block_size=block_size)
    del K, buffers
    best = _select_alphas(scores, alphas, alpha_per_target)
    if sw is not None:
        C_best *= sw
    coef = np.empty((p, d), dtype=np.float32)
    for sl, B in standardized_blocks(ops, X, mean, scale, dtype, block_size):
        coef[sl] = ops.to_numpy(ops.mm(B.T, C_best))
    return {"coef": coef, "alpha": best, "cv_scores": scores / wsum, "solver": "cholesky_loo",
            "factor_dtypes": factor_dtypes, "lambda_max": lam_max}


def _lifted_kernel(ops, X, sw, u_b, *, mean, scale, dtype, block_size):
    """``K' = Zw Zw^T + beta u u^T`` and ``beta`` (see the module docstring)."""
    n = X.shape[0]
    K = ops.zeros((n, n), dtype)
    for _, B in standardized_blocks(ops, X, mean, scale, dtype, block_size):
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
    return K, beta


def _cholesky_scores(ops, K, Yw, u2, beta, lam_max, alphas, scores, buffers, *, alpha_per_target, dtype,
                     max_cond_float32, block_size):
    """One factorisation per alpha: fills ``scores`` (LOO errors); returns the factor dtype of each
    alpha and the dual coefficients of the best alpha (per target, or shared)."""
    n, d = Yw.shape
    best_score = np.full(d, np.inf)
    best_mean = np.inf
    C_best = ops.zeros((n, d), dtype)
    factor_dtypes: list[str] = []
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
    return factor_dtypes, C_best


def _factor_inverse(ops, K, alpha: float, fdtype: str, buffers: dict):
    """``L^-1`` of ``K + alpha I = L L^T`` in ``fdtype``, reusing one n x n buffer per dtype
    (allocated on first use: copying into a touched buffer is much faster than into a fresh one)."""
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
    there are at most :data:`CHOLESKY_MAX_ALPHAS` alphas, :func:`solve_ridge_eigh_loo` otherwise (on
    a GPU one eigendecomposition beats ten factorisations, docs/performance.md).

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
    "cholesky_loo": solve_ridge_cholesky_loo,
    "auto": solve_ridge_auto,
}
