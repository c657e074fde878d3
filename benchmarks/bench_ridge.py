"""Ridge-CV benchmark: our exact-LOO solver vs scikit-learn RidgeCV vs himalaya (issue 9).

Every method fits the same planted data (same seed, regenerated in its own subprocess so that
each peak RSS, read from ``resource.getrusage(RUSAGE_SELF)`` at the end of the child, is that
method's alone; the data's own footprint is printed too) with the same alpha grid and one
alpha per target, then predicts held-out trials. Prints a table and, last, exactly one line
``speedup_vs_best_peer=<x>`` (fastest peer's fit time / ours).

    python benchmarks/bench_ridge.py                # n=3000, p=5000, d=512 (a few minutes on 2 cores)
    python benchmarks/bench_ridge.py --tiny         # seconds (CI)
    python benchmarks/bench_ridge.py --size nsd     # n=9000, p=15724, d=512 (minutes per method)
    python benchmarks/bench_ridge.py --methods ours --size nsd
    python benchmarks/bench_ridge.py --methods ours --solver eigh_loo   # one of our solvers
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time

import numpy as np

from fmri2img.models.solvers import RIDGE_SOLVERS

#: Problem sizes (n_train, n_voxels, n_targets). "nsd": subj01's nsdgeneral mask (15,724 voxels),
#: ~9,000 training trials, a 512-d CLIP embedding (issue 9).
SIZES = {"tiny": (200, 300, 16), "default": (3000, 5000, 512), "nsd": (9000, 15724, 512)}

#: Alpha grid shared by all methods (10 log-spaced values, issue 9).
ALPHAS = np.logspace(1, 6, 10)

#: Held-out trials used for R^2 (not part of any fit).
N_TEST = 1000

METHODS = ("ours", "sklearn", "himalaya")


def make_data(n: int, p: int, d: int, seed: int = 0):
    """Planted linear map with noise: X (n + N_TEST, p) ~ N(0, 1), Y = X W + noise, float32."""
    rng = np.random.default_rng(seed)
    n_test = min(N_TEST, max(n // 4, 10))
    X = rng.standard_normal((n + n_test, p), dtype=np.float32)
    W = rng.standard_normal((p, d), dtype=np.float32) / np.float32(np.sqrt(p))
    Y = X @ W
    Y += rng.standard_normal(Y.shape, dtype=np.float32)
    return X[:n], Y[:n], X[n:], Y[n:]


def r2(Y: np.ndarray, P: np.ndarray) -> float:
    Y = Y.astype(np.float64)
    return float(np.mean(1 - ((Y - P) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


#: CUDA warm-up problem (trials, voxels): one untimed fit of each method on this slice first, so
#: that the timed fit excludes creating the CUDA context and the cuBLAS/cuSOLVER handles (~3 s).
WARMUP_SHAPE = (256, 512)


def worker(method: str, n: int, p: int, d: int, himalaya_model: str, device: str, solver: str,
           solver_params: dict) -> dict:
    X, Y, Xt, Yt = make_data(n, p, d)
    data_mb = _peak_rss_mb()
    if method == "ours":
        from fmri2img.models.ridge import RidgeDecoder

        def fit(X, Y):
            return RidgeDecoder(alphas=ALPHAS, alpha_per_target=True, device=device, solver=solver,
                                solver_params=solver_params).fit(X, Y)

        def predict(model, X):
            return model.predict(X)
    elif method == "sklearn":
        from sklearn.linear_model import RidgeCV

        def fit(X, Y):
            return RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(X, Y)

        def predict(model, X):
            return model.predict(X)
    elif method == "himalaya":
        from himalaya.backend import set_backend

        backend = set_backend("torch_cuda" if device == "cuda" else "torch", on_error="raise")
        if himalaya_model == "kernel":
            from himalaya.kernel_ridge import KernelRidgeCV as Model
        else:
            from himalaya.ridge import RidgeCV as Model

        def fit(X, Y):
            return Model(alphas=ALPHAS, fit_intercept=True).fit(X, Y)

        def predict(model, X):
            return backend.to_numpy(model.predict(X))
    else:
        raise SystemExit(f"unknown method {method!r}")
    sync = lambda: None  # noqa: E731
    if device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
        w_n, w_p = WARMUP_SHAPE
        fit(np.ascontiguousarray(X[:w_n, :w_p]), np.ascontiguousarray(Y[:w_n]))
        sync()
    t0 = time.perf_counter()
    model = fit(X, Y)
    sync()
    fit_s = time.perf_counter() - t0
    P = predict(model, Xt)
    row = {"method": method, "fit_s": fit_s, "r2": r2(Yt, P), "peak_rss_mb": _peak_rss_mb(), "data_rss_mb": data_mb}
    if method == "ours":
        info = model.solver_info_
        row["ran"] = info.get("solver", solver)
        if "factor_dtypes" in info:
            row["ran"] += " (factors: " + ",".join(sorted(set(info["factor_dtypes"]))) + ")"
    return row


def solver_params_for(solver: str, eigh_dtype: str, driver: str) -> dict:
    """The eigh options that ``solver`` accepts (cholesky_loo takes none)."""
    accepted = inspect.signature(RIDGE_SOLVERS[solver]).parameters
    return {k: v for k, v in (("eigh_dtype", eigh_dtype), ("driver", driver)) if k in accepted}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--tiny", action="store_true", help="same as --size tiny")
    parser.add_argument("--n", type=int)
    parser.add_argument("--p", type=int)
    parser.add_argument("--d", type=int)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--himalaya-model", choices=("ridge", "kernel"), default="ridge",
                        help="himalaya RidgeCV (primal) or KernelRidgeCV (both torch backend)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--solver", choices=sorted(RIDGE_SOLVERS), default="auto", help="our RidgeDecoder's solver")
    parser.add_argument("--eigh-dtype", choices=("float64", "float32"), default="float64",
                        help="dtype of our solver's eigendecomposition")
    parser.add_argument("--driver", choices=("evd", "evr"), default="evd", help="our solver's LAPACK eigh driver")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n, p, d = SIZES["tiny" if args.tiny else args.size]
    n, p, d = args.n or n, args.p or p, args.d or d
    if args.worker:
        solver_params = solver_params_for(args.solver, args.eigh_dtype, args.driver)
        print(json.dumps(worker(args.worker, n, p, d, args.himalaya_model, args.device, args.solver, solver_params)))
        return
    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--p", str(p), "--d", str(d),
               "--himalaya-model", args.himalaya_model, "--device", args.device, "--solver", args.solver,
               "--eigh-dtype", args.eigh_dtype, "--driver", args.driver]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"ridge-CV benchmark: n={n} p={p} d={d} alphas={len(ALPHAS)} per-target, device={args.device}, "
          f"himalaya={args.himalaya_model}, ours: solver={args.solver} "
          f"(if an eigendecomposition runs: {args.eigh_dtype}/{args.driver})")
    ours = next((r for r in rows if r["method"] == "ours"), None)
    if ours:
        print(f"ours ran: {ours['ran']}")
    print(f"{'method':<10}{'fit_s':>9}{'peak_rss_mb':>13}{'data_rss_mb':>13}{'heldout_r2':>12}{'time/ours':>11}")
    for r in rows:
        ratio = r["fit_s"] / ours["fit_s"] if ours else float("nan")
        print(f"{r['method']:<10}{r['fit_s']:>9.2f}{r['peak_rss_mb']:>13.0f}{r['data_rss_mb']:>13.0f}"
              f"{r['r2']:>12.4f}{ratio:>11.2f}")
    peers = [r for r in rows if r["method"] != "ours"]
    if ours and peers:
        print(f"max |R2(ours) - R2(peer)| = {max(abs(ours['r2'] - r['r2']) for r in peers):.2e}")
    speedup = min(r["fit_s"] for r in peers) / ours["fit_s"] if ours and peers else float("nan")
    print(f"speedup_vs_best_peer={speedup:.2f}")


if __name__ == "__main__":
    main()
