"""RidgeDecoder and its solvers against scikit-learn's Ridge / RidgeCV (the trusted reference)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from fmri2img.core.errors import InputError
from fmri2img.models.backends import weighted_column_stats
from fmri2img.models.registry import make_decoder
from fmri2img.models.ridge import DEFAULT_ALPHAS, RidgeDecoder
from fmri2img.models.solvers import CHOLESKY_FLOAT32_MAX_COND, CHOLESKY_MAX_ALPHAS, RIDGE_SOLVERS

SOLVERS = sorted(RIDGE_SOLVERS)
#: (n_trials, n_voxels): kernel branch (p > n) and primal branch (p <= n).
SHAPES = [(40, 90), (90, 25)]
ALPHAS = np.logspace(-1, 4, 12)
#: Grid for float32 comparisons. Below alpha ~ 1 (alpha / eigenvalue ~ 1e-3 here) float32
#: products carry ~1e-4 relative error on the LOO scores, enough to flip genuine near-ties
#: between neighbouring alphas; float64 fits are compared on the full ALPHAS grid.
ALPHAS_F32 = np.logspace(0, 4, 10)


def _data(n, p, d=6, seed=0, noise=6.0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, p)) * rng.uniform(0.5, 3.0, p) + rng.uniform(-2, 2, p)).astype(np.float32)
    W = rng.standard_normal((p, d))
    Y = (X @ W + noise * rng.standard_normal((n, d)) + 1.5).astype(np.float32)
    return X, Y


def _weighted_standardize(X, w=None):
    """Reference standardisation (float64) with the same weighted statistics as the decoder."""
    X = X.astype(np.float64)
    w = np.ones(len(X)) if w is None else w
    m = w @ X / w.sum()
    sd = np.sqrt(w @ (X - m) ** 2 / w.sum())
    return (X - m) / sd


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_fixed_alpha_matches_sklearn_ridge(solver, shape, weighted):
    X, Y = _data(*shape)
    w = np.random.default_rng(1).uniform(0.2, 3.0, len(X)) if weighted else None
    alpha = 7.0
    ours = RidgeDecoder(alphas=[alpha], solver=solver).fit(X, Y, sample_weight=w)
    Z = _weighted_standardize(X, w)
    ref = Ridge(alpha=alpha).fit(Z, Y.astype(np.float64), sample_weight=w)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(ours.coef_, ref.coef_.T, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(ours.predict(X), ref.predict(Z), atol=1e-4 * np.abs(Y).max(), rtol=0)


@pytest.mark.parametrize(("solver", "dtype"), [
    ("eigh_loo", "float32"), ("eigh_loo", "float64"),
    ("cholesky_loo", "float32"), ("cholesky_loo", "float64"), ("auto", "float32"),
])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_target", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_loo_selection_matches_sklearn_ridgecv(solver, dtype, shape, per_target, weighted):
    X, Y = _data(*shape, seed=3)
    w = np.random.default_rng(2).uniform(0.2, 3.0, len(X)) if weighted else None
    alphas = ALPHAS_F32 if dtype == "float32" else ALPHAS
    ours = RidgeDecoder(alphas=alphas, alpha_per_target=per_target, solver=solver, dtype=dtype)
    ours.fit(X, Y, sample_weight=w)
    Z = _weighted_standardize(X, w)
    ref = RidgeCV(alphas=alphas, alpha_per_target=per_target).fit(Z, Y.astype(np.float64), sample_weight=w)
    np.testing.assert_array_equal(np.broadcast_to(ours.alpha_, (Y.shape[1],)), np.broadcast_to(ref.alpha_, (Y.shape[1],)))
    np.testing.assert_allclose(ours.predict(X), ref.predict(Z), atol=1e-4 * np.abs(Y).max(), rtol=0)


@pytest.mark.parametrize("solver", ["eigh_loo", "cholesky_loo"])
@pytest.mark.parametrize("shape", SHAPES)
def test_loo_scores_are_exact_leave_one_out(shape, solver):
    """cv_scores_ equal brute-force LOO refits (standardisation fixed, intercept refitted)."""
    X, Y = _data(*shape, d=3, seed=5)
    alphas = [0.5, 50.0]
    ours = RidgeDecoder(alphas=alphas, solver=solver).fit(X, Y)
    Z = _weighted_standardize(X)
    brute = np.zeros((len(alphas), Y.shape[1]))
    for k, a in enumerate(alphas):
        for i in range(len(X)):
            keep = np.arange(len(X)) != i
            model = Ridge(alpha=a).fit(Z[keep], Y[keep].astype(np.float64))
            brute[k] += (model.predict(Z[i:i + 1])[0] - Y[i]) ** 2
    brute /= len(X)
    np.testing.assert_allclose(ours.cv_scores_, brute, rtol=2e-4)


def _sklearn_loo(X, Y, alphas, w=None, per_target=True):
    """The float64 reference: RidgeCV's exact LOO (GCV) on the weighted-standardised design, as the
    dict a solver returns (cv_scores: weighted LOO mean squared error per alpha and target)."""
    Z = _weighted_standardize(X, w)
    ref = RidgeCV(alphas=alphas, alpha_per_target=per_target, store_cv_results=True)
    ref.fit(Z, Y.astype(np.float64), sample_weight=w)
    wsum = len(X) if w is None else w.sum()
    return {"cv_scores": ref.cv_results_.sum(axis=0).T / wsum, "coef": ref.coef_.T,
            "alpha": np.broadcast_to(ref.alpha_, (Y.shape[1],))}


def test_solvers_agree_with_the_reference_per_target():
    X, Y = _data(60, 150, d=8, seed=7)
    a = RidgeDecoder(alphas=ALPHAS, solver="eigh_loo", dtype="float64").fit(X, Y)
    b = _sklearn_loo(X, Y, ALPHAS)
    np.testing.assert_array_equal(a.alpha_, b["alpha"])
    assert len(set(a.alpha_)) > 1, "the test data should make targets pick different alphas"
    np.testing.assert_allclose(a.cv_scores_, b["cv_scores"], rtol=1e-5)  # sklearn GCV: ~3e-6 at alpha 0.1
    c = RidgeDecoder(alphas=ALPHAS, solver="eigh_loo").fit(X, Y)  # float32 products
    np.testing.assert_allclose(c.cv_scores_, b["cv_scores"], rtol=2e-3)


@pytest.mark.parametrize("solver", SOLVERS)
def test_learns_planted_linear_map(solver):
    rng = np.random.default_rng(11)
    n, p, d = 300, 120, 16
    W = rng.standard_normal((p, d)) / np.sqrt(p)
    X = rng.standard_normal((n + 100, p)).astype(np.float32)
    Y = (X @ W + 0.3 * rng.standard_normal((n + 100, d))).astype(np.float32)
    model = RidgeDecoder(solver=solver).fit(X[:n], Y[:n], X_val=X[n:], Y_val=Y[n:])
    pred = model.predict(X[n:])
    assert pred.dtype == np.float32 and pred.shape == (100, d)
    # Mean-embedding baseline has R^2 ~ 0; the planted map explains ~90% of the variance.
    assert model.val_r2_ > 0.8
    cos = (pred * Y[n:]).sum(1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(Y[n:], axis=1)
    assert cos.mean() > 0.9


@pytest.mark.parametrize("solver", ["auto", "cholesky_loo", "eigh_loo"])
def test_deterministic(solver):
    X, Y = _data(50, 80)
    w = np.random.default_rng(3).uniform(0.2, 3.0, len(X))
    a = RidgeDecoder(solver=solver).fit(X, Y, sample_weight=w)
    b = RidgeDecoder(solver=solver).fit(X, Y, sample_weight=w)
    assert a.coef_.tobytes() == b.coef_.tobytes()
    assert a.predict(X).tobytes() == b.predict(X).tobytes()


def test_fit_does_not_modify_inputs():
    X, Y = _data(30, 70)
    X0, Y0 = X.copy(), Y.copy()
    RidgeDecoder().fit(X, Y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_backend_matches_numpy_backend(shape):
    """The torch code path (the one used with device='cuda') on CPU equals the numpy path."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    X, Y = _data(*shape)
    w = np.random.default_rng(4).uniform(0.2, 3.0, len(X))
    a = RidgeDecoder(alphas=ALPHAS_F32).fit(X, Y, sample_weight=w)
    b = RidgeDecoder(alphas=ALPHAS_F32, solver_params={"backend": "torch"}).fit(X, Y, sample_weight=w)
    np.testing.assert_array_equal(a.alpha_, b.alpha_)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-4 * np.abs(a.coef_).max())


def test_constant_voxel_and_unstandardized():
    X, Y = _data(30, 20)
    X[:, 3] = 5.0
    model = RidgeDecoder(standardize=False, alphas=[1.0]).fit(X, Y)
    assert np.all(np.isfinite(model.coef_))
    np.testing.assert_array_equal(model.scale_, np.ones(20, dtype=np.float32))
    ref = Ridge(alpha=1.0).fit(X.astype(np.float64), Y)
    np.testing.assert_allclose(model.predict(X), ref.predict(X), atol=1e-4 * np.abs(Y).max())


def test_to_module_matches_predict_and_update_roundtrip():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    X, Y = _data(40, 90)
    model = RidgeDecoder().fit(X, Y)
    module = model.to_module()
    with torch.no_grad():
        out = module(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, model.predict(X), rtol=1e-5, atol=1e-5 * np.abs(out).max())
    assert {n for n, _ in module.named_parameters()} == {"weight", "bias"}
    with torch.no_grad():
        module.bias += 1.0
    model.update_from_module(module)
    np.testing.assert_allclose(model.predict(X), out + 1.0, rtol=1e-5, atol=1e-5 * np.abs(out).max())


def test_state_dict_roundtrip():
    torch = pytest.importorskip("torch")
    X, Y = _data(40, 90)
    model = RidgeDecoder(alpha_per_target=False).fit(X, Y)
    state = model.state_dict()
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    clone = RidgeDecoder(alpha_per_target=False).load_state_dict(state, n_features=90, n_targets=6)
    assert clone.predict(X).tobytes() == model.predict(X).tobytes()
    assert clone.alpha_ == model.alpha_
    with pytest.raises(InputError, match="90 voxels, expected 91"):
        RidgeDecoder().load_state_dict(state, n_features=91)


def test_registry_and_params():
    model = make_decoder("ridge", alphas=[1.0, 10.0], solver="eigh_loo")
    assert isinstance(model, RidgeDecoder)
    assert model.get_params()["solver"] == "eigh_loo"
    assert len(DEFAULT_ALPHAS) == 10
    assert RidgeDecoder().get_params()["solver"] == "auto"


@pytest.mark.parametrize(
    ("kwargs", "call", "match"),
    [
        ({}, lambda m, X, Y: m.predict(X), "not fitted"),
        ({}, lambda m, X, Y: m.fit(X[:, :, None], Y), "shape"),
        ({}, lambda m, X, Y: m.fit(X, Y[:-1]), "shape"),
        ({}, lambda m, X, Y: m.fit(np.where(X > 1, np.nan, X), Y), "NaN"),
        ({}, lambda m, X, Y: m.fit(X, Y, sample_weight=-np.ones(len(X))), "sample_weight"),
        ({"alphas": [0.0, 1.0]}, lambda m, X, Y: m.fit(X, Y), "positive"),
        ({"solver": "cholesky"}, lambda m, X, Y: m.fit(X, Y), "Unknown ridge solver"),
        ({}, lambda m, X, Y: m.fit(X, Y).predict(X[:, :-1]), "voxels"),
    ],
)
def test_errors(kwargs, call, match):
    X, Y = _data(20, 30)
    with pytest.raises(InputError, match=match):
        call(RidgeDecoder(**kwargs), X, Y)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    X, Y = _data(40, 90)
    a = RidgeDecoder(alphas=ALPHAS_F32).fit(X, Y)
    assert a.solver_info_["solver"] == "cholesky_loo"
    # on a GPU "auto" runs one eigendecomposition; both solvers must agree with the CPU fit
    for solver, expected in (("auto", "eigh_loo"), ("cholesky_loo", "cholesky_loo")):
        b = RidgeDecoder(alphas=ALPHAS_F32, device="cuda", solver=solver).fit(X, Y)
        assert b.solver_info_["solver"] == expected
        np.testing.assert_array_equal(a.alpha_, b.alpha_)
        np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-4 * np.abs(a.coef_).max())


def test_cuda_unavailable_is_a_clear_error():
    if __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    X, Y = _data(20, 30)
    with pytest.raises(InputError, match="cuda"):
        RidgeDecoder(device="cuda").fit(X, Y)


# ------------------------------------------------------------------ Cholesky solver and "auto"
def _correlated(n, p, d=8, seed=0):
    """fMRI-like betas: a global factor + low-rank structure + noise, and a planted linear map."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, 1))
    F = rng.standard_normal((n, 5))
    X = 3 * g * rng.uniform(0.5, 1.5, p) + F @ rng.standard_normal((5, p)) + rng.standard_normal((n, p))
    X = (X * rng.uniform(0.5, 3.0, p) + rng.uniform(-2, 2, p)).astype(np.float32)
    Y = (X @ (rng.standard_normal((p, d)) / np.sqrt(p)) + 2 * rng.standard_normal((n, d))).astype(np.float32)
    return X, Y


def _solve(name, X, Y, alphas, w=None, **kwargs):
    """Call a registered solver directly (as RidgeDecoder.fit does) and return its dict."""
    mean, scale = weighted_column_stats(X, w)
    wd = np.ones(len(X)) if w is None else w
    Yc = (Y - wd @ Y.astype(np.float64) / wd.sum()).astype(np.float32)
    return RIDGE_SOLVERS[name](X, Yc, alphas, mean=mean, scale=scale, sample_weight=w, **kwargs)


@pytest.mark.parametrize("per_target", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_cond", [CHOLESKY_FLOAT32_MAX_COND, 1.0])
def test_cholesky_matches_float64_reference_on_correlated_data(per_target, weighted, max_cond):
    """cholesky_loo (float32 kernel) against scikit-learn's float64 RidgeCV where p > n; with
    max_cond_float32=1 every alpha must run in float64 and still match."""
    X, Y = _correlated(120, 300, seed=1)
    w = np.random.default_rng(2).uniform(0.2, 3.0, len(X)) if weighted else None
    alphas = np.logspace(-1, 5, 10)
    ref = _sklearn_loo(X, Y, alphas, w, per_target)
    ours = _solve("cholesky_loo", X, Y, alphas, w, alpha_per_target=per_target, max_cond_float32=max_cond)
    if max_cond == 1.0:
        assert ours["factor_dtypes"] == ["float64"] * len(alphas)
    else:  # the data's large leading eigenvalue sends the smallest alphas to float64, not all
        assert "float64" in ours["factor_dtypes"] and "float32" in ours["factor_dtypes"]
        assert ours["factor_dtypes"] == sorted(ours["factor_dtypes"], reverse=True)  # float64 first
    np.testing.assert_allclose(ours["cv_scores"], ref["cv_scores"], rtol=1e-3)
    np.testing.assert_array_equal(ours["alpha"], ref["alpha"])
    if per_target:
        assert len(set(ref["alpha"])) > 1, "targets should pick different alphas here"
    np.testing.assert_allclose(ours["coef"], ref["coef"], atol=1e-4 * np.abs(ref["coef"]).max(), rtol=0)


def test_cholesky_float64_dtype_matches_reference_tightly():
    X, Y = _correlated(80, 200, seed=4)
    alphas = np.logspace(-1, 5, 8)
    ref = _sklearn_loo(X, Y, alphas)
    ours = _solve("cholesky_loo", X, Y, alphas, dtype="float64")
    assert ours["factor_dtypes"] == ["float64"] * len(alphas)
    np.testing.assert_allclose(ours["cv_scores"], ref["cv_scores"], rtol=1e-5)
    np.testing.assert_allclose(ours["coef"], ref["coef"], atol=1e-5 * np.abs(ref["coef"]).max(), rtol=0)


def test_cholesky_torch_backend_matches_numpy_backend():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    X, Y = _correlated(90, 200, seed=5)
    w = np.random.default_rng(6).uniform(0.2, 3.0, len(X))
    alphas = np.logspace(-1, 5, 8)
    a = _solve("cholesky_loo", X, Y, alphas, w)
    b = _solve("cholesky_loo", X, Y, alphas, w, backend="torch")
    assert a["factor_dtypes"] == b["factor_dtypes"]
    np.testing.assert_array_equal(a["alpha"], b["alpha"])
    np.testing.assert_allclose(a["cv_scores"], b["cv_scores"], rtol=1e-4)
    np.testing.assert_allclose(a["coef"], b["coef"], atol=1e-4 * np.abs(a["coef"]).max(), rtol=0)


@pytest.mark.parametrize(("shape", "n_alphas", "expected"), [
    ((40, 90), 10, "cholesky_loo"),
    ((40, 90), CHOLESKY_MAX_ALPHAS + 1, "eigh_loo"),
    ((90, 25), 10, "eigh_loo"),
])
def test_auto_picks_cholesky_for_wide_designs_and_few_alphas(shape, n_alphas, expected):
    X, Y = _data(*shape)
    alphas = np.logspace(0, 4, n_alphas)
    model = RidgeDecoder(alphas=alphas).fit(X, Y)
    assert model.solver_info_["solver"] == expected
    assert ("factor_dtypes" in model.solver_info_) == (expected == "cholesky_loo")
    ref = RidgeDecoder(alphas=alphas, solver=expected).fit(X, Y)
    assert model.coef_.tobytes() == ref.coef_.tobytes()


def test_cholesky_kernel_form_is_exact_on_narrow_designs_too():
    """p < n: the n x n kernel is rank-deficient (slower than the primal form, which auto picks)
    but K + alpha I is still positive definite and the LOO formulas hold."""
    X, Y = _data(90, 25)
    a = RidgeDecoder(alphas=ALPHAS_F32, solver="cholesky_loo").fit(X, Y)
    ref = _sklearn_loo(X, Y, ALPHAS_F32)
    assert a.solver_info_["solver"] == "cholesky_loo"
    np.testing.assert_array_equal(a.alpha_, ref["alpha"])
    np.testing.assert_allclose(a.cv_scores_, ref["cv_scores"], rtol=1e-3)
    np.testing.assert_allclose(a.coef_, ref["coef"], atol=1e-3 * np.abs(ref["coef"]).max())
