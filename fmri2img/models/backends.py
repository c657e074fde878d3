"""Array backends of the ridge solvers (the himalaya pattern): the same solver code runs on numpy/
scipy (CPU) or torch (CPU or CUDA) through one small set of operations with the same names.
The device is passed explicitly (:func:`get_ops`); nothing here is global state."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg
from scipy.linalg import blas, lapack

from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError

#: Voxels standardised at a time when streaming X: 2048 columns x 9,000 trials x 4 bytes
#: = 74 MB of temporary memory, large enough for full-speed BLAS-3 on the block.
DEFAULT_BLOCK_SIZE = 2048

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
        import torch  # measured exception: the numpy backend (every CPU fit) never needs torch

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
    ops = {"numpy": NumpyOps, "torch": TorchOps}
    check_choice("array backend", backend, ops, error=InputError)
    return ops[backend](device)


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


def standardized_blocks(ops, X, mean, scale, dtype, block_size):
    """Yield ``(slice, Z[:, slice])`` with ``Z = (X - mean) / scale`` as backend arrays."""
    p = X.shape[1]
    for start in range(0, p, block_size):
        sl = slice(start, min(p, start + block_size))
        B = ops.asarray(X[:, sl], dtype)
        B -= ops.asarray(mean[sl], dtype)
        B /= ops.asarray(scale[sl], dtype)
        yield sl, B


def multiply_into(a, b, out):
    """``out = a * b`` (broadcasting) on either backend."""
    out[...] = a
    out *= b
    return out
