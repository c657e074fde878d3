"""Torch decoders (``mlp``, ``two_stage``) and the shared torch plumbing (losses, loop, devices)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.linear_model import Ridge

from fmri2img.core.errors import InputError, MismatchError
from fmri2img.data.trials import Dataset
from fmri2img.models import loop, losses
from fmri2img.models.mlp import MLPDecoder
from fmri2img.models.registry import make_decoder
from fmri2img.models.two_stage import TwoStageDecoder, fit_pca

torch.set_num_threads(1)

N_TRIALS, N_VOXELS, N_DIMS = 200, 24, 8

#: Small, fast settings per decoder (the defaults are sized for the real demo).
SMALL = {
    "mlp": dict(hidden_dim=32, n_blocks=1, epochs=15, batch_size=32, lr=3e-3, progress=False),
    "two_stage": dict(n_components=N_VOXELS, hidden_dim=32, latent_dim=16, n_blocks=1, epochs=15,
                      batch_size=32, lr=3e-3, progress=False),
}
NAMES = list(SMALL)


def planted_world(seed: int = 0, n: int = N_TRIALS, p: int = N_VOXELS, d: int = N_DIMS):
    """Y = normalise(shared + X W + noise): a planted linear map around a common component."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((p, d)) / np.sqrt(p)
    shared = rng.standard_normal(d)
    X = rng.standard_normal((n, p)).astype(np.float32)
    Y = shared + X @ W + 0.1 * rng.standard_normal((n, d))
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    return X, Y.astype(np.float32)


def mean_cosine(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.mean(np.sum(A * B, axis=1) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1)))


@pytest.fixture(scope="module")
def world():
    X, Y = planted_world()
    n_train = int(0.8 * N_TRIALS)
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:]


@pytest.fixture(scope="module")
def fitted(world):
    """One fitted decoder per name (explicit validation set), shared by the read-only tests."""
    X, Y, Xv, Yv = world
    return {name: make_decoder(name, **SMALL[name]).fit(X, Y, Xv, Yv) for name in NAMES}


# ---------------------------------------------------------------- learning and contract


@pytest.mark.parametrize("name", NAMES)
def test_learns_planted_linear_map(world, fitted, name):
    X, Y, Xv, Yv = world
    baseline = mean_cosine(np.tile(Y.mean(axis=0), (len(Yv), 1)), Yv)
    reference = mean_cosine(Ridge(alpha=1.0).fit(X, Y).predict(Xv), Yv)
    model = mean_cosine(fitted[name].predict(Xv), Yv)
    assert reference - baseline > 0.2  # the world is learnable at all
    # The decoder closes at least half of the gap between the mean embedding and a ridge reference.
    assert model > baseline + 0.5 * (reference - baseline), (baseline, model, reference)


@pytest.mark.parametrize("name", NAMES)
def test_fitted_attributes_and_history(world, fitted, name):
    X, Y, Xv, Yv = world
    model = fitted[name]
    assert model.n_features_in_ == N_VOXELS and model.n_targets_ == N_DIMS
    assert 1 <= len(model.history_) <= SMALL[name]["epochs"]
    assert {"epoch", "train_loss", "val_loss", "val_cosine"} <= set(model.history_[0])
    pred = model.predict(Xv)
    assert pred.dtype == np.float32 and pred.shape == Yv.shape
    # The restored weights are those of the best epoch: recomputing the monitored criterion agrees.
    best = min(r["val_loss"] for r in model.history_)
    assert model.best_epoch_ >= 0 and model.history_.best_epoch == model.best_epoch_
    assert model.history_[model.best_epoch_]["val_loss"] == best < model.history_.initial_val_loss
    # (the whole module on raw betas: the two-stage decoder trained on precomputed PCA features)
    val = loop._Tensors(torch.from_numpy(Xv), torch.from_numpy(Yv), None, None)
    recomputed, _ = loop._evaluate(model.module_, model.module_, losses.early_stopping_criterion(model.loss_), val,
                                   model.batch_size)
    assert recomputed == pytest.approx(best, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_decoders_early_stop_on_cosine_distance(fitted, name):
    """Both decoders monitor 1 - cos, what every evaluation metric scores (InfoNCE depends on
    the learned temperature and on batch composition; the MSE term on the prediction's norm)."""
    for record in fitted[name].history_:
        assert record["val_loss"] == pytest.approx(1.0 - record["val_cosine"], abs=1e-5)
    assert fitted[name].history_.best_val_cosine == max(r["val_cosine"] for r in fitted[name].history_)


def test_early_stopping_criterion_drops_infonce():
    assert losses.early_stopping_criterion(losses.CosineInfoNCELoss()) is losses.weighted_cosine_distance
    assert losses.early_stopping_criterion(losses.InfoNCELoss()) is losses.weighted_cosine_distance
    assert losses.early_stopping_criterion(losses.CosineMSELoss()) is losses.weighted_cosine_distance
    mse = losses.CosineMSELoss(cosine_weight=0.0)  # pure MSE (an affine fit) is monitored as is
    assert losses.early_stopping_criterion(mse) is mse

    def plain(pred, target, weight=None):
        return (pred - target).pow(2).mean()

    assert losses.early_stopping_criterion(plain) is plain


def test_decoder_keeps_its_best_trained_epoch_and_warns_when_none_beats_initialisation(caplog):
    """An untrained decoder predicts a constant (the mean training embedding): it is never the
    result, even when every epoch scores worse on the validation rows; a warning says so. An
    adapter (``keep_initial=True``, the default) may stay at its identity initialisation."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 30)).astype(np.float32)
    Y = rng.standard_normal((120, 8)).astype(np.float32)
    Xv = rng.standard_normal((40, 30)).astype(np.float32)
    Yv = np.repeat(Y.mean(0, keepdims=True), 40, axis=0)  # the untrained model's output is ideal here
    model = make_decoder("mlp", hidden_dim=16, n_blocks=1, epochs=4, lr=1e-2, batch_size=32, patience=10,
                         progress=False, seed=0)
    with caplog.at_level("WARNING", logger="fmri2img.models.loop"):
        model.fit(X, Y, X_val=Xv, Y_val=Yv)
    history = model.history_
    assert len(history) == 4 and all(r["val_loss"] > history.initial_val_loss for r in history)
    assert history[model.best_epoch_]["val_loss"] == min(r["val_loss"] for r in history)
    assert history.best_val_cosine == history[model.best_epoch_]["val_cosine"] < history.initial_val_cosine
    assert np.abs(model.predict(Xv) - Yv).max() > 1e-3  # not the constant prediction
    assert "no epoch beat the untrained model" in caplog.text

    identity = torch.nn.Linear(8, 8)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(8))
        identity.bias.zero_()
    kept = loop.train_module(identity, losses.CosineMSELoss(), Dataset(Yv + 0.0, Yv[::-1].copy()), Dataset(Yv, Yv),
                             loop.TrainSpec(epochs=3, lr=0.1, weight_decay=0.0, batch_size=16, patience=5,
                                            progress=False), np.random.default_rng(0))
    assert kept.best_epoch == -1 and kept.best_val_cosine == kept.initial_val_cosine
    assert torch.equal(identity.weight.detach(), torch.eye(8))


def test_train_module_without_a_finite_validation_epoch_is_a_clear_error():
    module = torch.nn.Linear(4, 2)
    X = np.ones((8, 4), dtype=np.float32)
    with pytest.raises(InputError, match="not finite in any of 2 epochs"):
        loop.train_module(module, lambda p, t, w: ((p - t) ** 2).mean(), Dataset(X, X[:, :2]), Dataset(X, X[:, :2]),
                          loop.TrainSpec(epochs=2, lr=0.1, weight_decay=0.0, batch_size=4, patience=5, progress=False,
                                         keep_initial=False, val_loss_fn=lambda p, t, w: torch.tensor(float("nan"))),
                          np.random.default_rng(0))


def test_train_module_monitors_val_loss_fn():
    """``val_loss_fn`` decides the restored epoch: a criterion that rewards a zero weight restores
    the untrained (zero-initialised) module even though training lowers the loss."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5)).astype(np.float32)
    Y = (X @ rng.standard_normal((5, 3))).astype(np.float32)
    module = torch.nn.Linear(5, 3)
    torch.nn.init.zeros_(module.weight)
    torch.nn.init.zeros_(module.bias)

    def weight_norm(pred, target, weight=None):
        return module.weight.detach().norm() + 0.0 * pred.sum()

    history = loop.train_module(module, lambda p, t, w: ((p - t) ** 2).mean(), Dataset(X, Y), Dataset(X, Y),
                                loop.TrainSpec(epochs=3, lr=0.1, weight_decay=0.0, batch_size=16, patience=5,
                                               progress=False, val_loss_fn=weight_norm), np.random.default_rng(0))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(r["val_loss"] > 0 for r in history)
    assert float(module.weight.detach().abs().max()) == 0.0


def test_two_stage_output_is_unit_norm_and_has_latent(world, fitted):
    _, _, Xv, _ = world
    model = fitted["two_stage"]
    np.testing.assert_allclose(np.linalg.norm(model.predict(Xv), axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        latent = model.module_.encode(torch.from_numpy(Xv))
    assert latent.shape == (len(Xv), SMALL["two_stage"]["latent_dim"])
    assert "temperature" in model.history_[-1] and model.history_[-1]["temperature"] > 0
    assert 0.0 < model.explained_variance_ratio_ <= 1.0 + 1e-6


def test_two_stage_trains_on_precomputed_features_that_equal_its_frozen_prefix(world, fitted):
    """train_module computes the two-stage decoder's frozen part (standardise + PCA) once per row:
    ``from_features(features(x))`` must be the module's forward, with gradients only after it."""
    _, _, Xv, _ = world
    module = fitted["two_stage"].module_
    x = torch.from_numpy(Xv)
    with torch.no_grad():
        np.testing.assert_array_equal(module.from_features(module.features(x)).numpy(), module(x).numpy())
    forward, (z,) = loop._frozen_features(module, x)
    assert forward == module.from_features and z.shape == (len(Xv), module.components.shape[0])
    assert not z.requires_grad and not any(p.requires_grad for p in module.input_norm.parameters())
    mlp = fitted["mlp"].module_  # no frozen prefix: trained on the raw rows
    forward, (same,) = loop._frozen_features(mlp, x)
    assert forward is mlp and same is x


@pytest.mark.parametrize("name", NAMES)
def test_module_output_equals_predict(world, fitted, name):
    _, _, Xv, _ = world
    model = fitted[name]
    with torch.no_grad():
        out = model.module_(torch.from_numpy(Xv)).numpy()
    np.testing.assert_array_equal(out, model.predict(Xv))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_other_seed_differs(world, name):
    X, Y, _, _ = world
    params = dict(SMALL[name], epochs=3)
    a = make_decoder(name, **params).fit(X, Y).state_dict()
    b = make_decoder(name, **params).fit(X, Y).state_dict()
    c = make_decoder(name, seed=7, **params).fit(X, Y).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(world, fitted, name, tmp_path):
    _, _, Xv, _ = world
    model = fitted[name]
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    torch.save(state, tmp_path / "best.pt")
    loaded = torch.load(tmp_path / "best.pt", weights_only=True)
    fresh = make_decoder(name, **model.get_params()).load_state_dict(loaded, n_features=N_VOXELS, n_targets=N_DIMS)
    np.testing.assert_array_equal(fresh.predict(Xv), model.predict(Xv))
    # state_dict holds copies: changing the returned tensors does not touch the model.
    next(iter(state.values())).add_(1.0)
    np.testing.assert_array_equal(fresh.predict(Xv), model.predict(Xv))


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_refuses_mismatch(fitted, name):
    model = fitted[name]
    state = model.state_dict()
    with pytest.raises(MismatchError, match="voxels"):
        make_decoder(name, **model.get_params()).load_state_dict(state, n_features=N_VOXELS + 1)
    other = dict(model.get_params(), hidden_dim=model.hidden_dim * 2)
    with pytest.raises(MismatchError):
        make_decoder(name, **other).load_state_dict(state)
    other_name = next(n for n in NAMES if n != name)
    with pytest.raises(MismatchError):
        make_decoder(other_name, **SMALL[other_name]).load_state_dict(state)


@pytest.mark.parametrize("name", NAMES)
def test_sample_weight_is_used(name):
    """Zero weight on corrupted trials recovers the clean fit; uniform weights change nothing."""
    X_all, Y_all = planted_world(seed=1, n=N_TRIALS + 80)
    X, Y, Xv, Yv = X_all[:N_TRIALS], Y_all[:N_TRIALS], X_all[N_TRIALS:], Y_all[N_TRIALS:]
    rng = np.random.default_rng(2)
    corrupted = rng.random(N_TRIALS) < 0.5
    Y_bad = Y.copy()
    Y_bad[corrupted] = rng.permutation(Y[corrupted])  # targets of other trials: no signal
    params = SMALL[name]
    plain = make_decoder(name, **params).fit(X, Y_bad, Xv, Yv)
    weighted = make_decoder(name, **params).fit(X, Y_bad, Xv, Yv, sample_weight=(~corrupted).astype(np.float32))
    assert mean_cosine(weighted.predict(Xv), Yv) > mean_cosine(plain.predict(Xv), Yv) + 0.01
    uniform = make_decoder(name, **dict(params, epochs=3)).fit(X, Y_bad, Xv, Yv, sample_weight=np.full(N_TRIALS, 2.0))
    unweighted = make_decoder(name, **dict(params, epochs=3)).fit(X, Y_bad, Xv, Yv)
    np.testing.assert_allclose(uniform.predict(Xv), unweighted.predict(Xv), atol=1e-4)


def test_internal_holdout_is_seeded(world):
    X, Y, _, _ = world
    model = make_decoder("mlp", **dict(SMALL["mlp"], epochs=2)).fit(X, Y)
    again = make_decoder("mlp", **dict(SMALL["mlp"], epochs=2)).fit(X, Y)
    assert model.history_ == again.history_


def test_defaults_and_registry():
    mlp = make_decoder("mlp")
    assert isinstance(mlp, MLPDecoder) and mlp.get_params()["seed"] == 123 and mlp.get_params()["device"] == "cpu"
    assert isinstance(make_decoder("two_stage"), TwoStageDecoder)
    with pytest.raises(InputError, match="not fitted"):
        mlp.predict(np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_input_errors(fitted, name):
    model = fitted[name]
    with pytest.raises(InputError, match=f"{N_VOXELS} voxels"):
        model.predict(np.zeros((2, N_VOXELS + 1), dtype=np.float32))
    X, Y = planted_world(n=20)
    with pytest.raises(InputError, match="sample_weight"):
        make_decoder(name, **SMALL[name]).fit(X, Y, sample_weight=np.ones(3))
    with pytest.raises(InputError, match="sample_weight"):
        make_decoder(name, **SMALL[name]).fit(X, Y, sample_weight=-np.ones(20))
    with pytest.raises(InputError, match="X_val"):
        make_decoder(name, **SMALL[name]).fit(X, Y, X_val=X)
    with pytest.raises(InputError, match="epochs"):
        make_decoder(name, **dict(SMALL[name], epochs=0)).fit(X, Y)


# ---------------------------------------------------------------- plumbing


def test_resolve_device():
    assert loop.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="device"):
        loop.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            loop.resolve_device("cuda")
        with pytest.raises(InputError, match="CUDA is not available"):
            make_decoder("mlp", device="cuda").fit(*planted_world(n=20))


def test_deterministic_context_restores_global_state():
    threads, mode = torch.get_num_threads(), torch.get_deterministic_debug_mode()
    before = torch.get_rng_state()
    with loop.deterministic(5) as rng:
        assert torch.get_num_threads() == loop.DETERMINISTIC_CPU_THREADS
        assert torch.are_deterministic_algorithms_enabled()
        first = (torch.rand(3), rng.random(3))
    with loop.deterministic(5) as rng:
        second = (torch.rand(3), rng.random(3))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert torch.get_num_threads() == threads and torch.get_deterministic_debug_mode() == mode
    assert torch.equal(torch.get_rng_state(), before)


def test_holdout_split():
    train, val = loop.holdout_split(50, 0.1, np.random.default_rng(0))
    assert len(val) == 5 and len(train) == 45
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50))
    assert len(loop.holdout_split(3, 0.1, np.random.default_rng(0))[1]) == 1
    with pytest.raises(InputError):
        loop.holdout_split(1, 0.1, np.random.default_rng(0))


def test_losses_match_numpy_references():
    rng = np.random.default_rng(0)
    P, T = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    w = rng.random(6)
    Pt, Tt, wt = (torch.tensor(a, dtype=torch.float64) for a in (P, T, w))
    cos = np.sum(P * T, 1) / np.linalg.norm(P, axis=1) / np.linalg.norm(T, axis=1)
    np.testing.assert_allclose(losses.cosine_loss(Pt, Tt).numpy(), 1 - cos, rtol=1e-10)
    np.testing.assert_allclose(losses.mse_loss(Pt, Tt, 2.0).numpy(), np.mean(((P - T) / 2) ** 2, axis=1), rtol=1e-10)
    assert float(losses.weighted_mean(losses.cosine_loss(Pt, Tt), wt)) == pytest.approx(np.sum(w * (1 - cos)) / w.sum())

    loss = losses.InfoNCELoss(init_temperature=0.5).double()
    Pn = P / np.linalg.norm(P, axis=1, keepdims=True)
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    logits = Pn @ Tn.T / 0.5
    rows = logsumexp(logits, axis=1) - np.diag(logits)
    cols = logsumexp(logits, axis=0) - np.diag(logits)
    expected = 0.5 * (rows + cols)
    np.testing.assert_allclose(loss.per_sample(Pt, Tt).detach().numpy(), expected, rtol=1e-6)
    assert float(loss(Pt, Tt, wt).detach()) == pytest.approx(np.sum(w * expected) / w.sum(), rel=1e-6)
    assert loss.temperature == pytest.approx(0.5)
    (loss(Pt, Tt)).backward()
    assert loss.logit_scale.grad is not None and float(loss.logit_scale.grad) != 0.0


@pytest.mark.parametrize("shape", [(40, 10), (8, 30)], ids=["covariance", "gram"])
def test_fit_pca_matches_sklearn(shape):
    from sklearn.decomposition import PCA

    n, p = shape
    X = np.random.default_rng(0).standard_normal((n, p)) @ np.random.default_rng(1).standard_normal((p, p))
    components, explained = fit_pca(X, 4)
    reference = PCA(n_components=4, svd_solver="full").fit(X)
    np.testing.assert_allclose(np.abs(components @ reference.components_.T), np.eye(4), atol=1e-5)
    np.testing.assert_allclose(explained, reference.explained_variance_, rtol=1e-6)
    with pytest.raises(InputError, match="n_components"):
        fit_pca(X, min(n, p) + 1)


def test_infonce_does_not_use_repeats_of_a_stimulus_as_negatives():
    """Rows 0 and 2 share a target (one stimulus shown twice): neither is the other's negative."""
    rng = np.random.default_rng(1)
    P, T = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    T[2] = 3.0 * T[0]  # same direction = same stimulus embedding
    loss = losses.InfoNCELoss(init_temperature=0.5).double()
    Pn = P / np.linalg.norm(P, axis=1, keepdims=True)
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    logits = Pn @ Tn.T / 0.5
    logits[0, 2] = logits[2, 0] = -np.inf  # the reference: repeats excluded from both softmaxes
    rows = logsumexp(logits, axis=1) - np.diag(logits)
    cols = logsumexp(logits, axis=0) - np.diag(logits)
    got = loss.per_sample(torch.tensor(P), torch.tensor(T))
    np.testing.assert_allclose(got.detach().numpy(), 0.5 * (rows + cols), rtol=1e-6)  # float32 logit scale
    got.sum().backward()  # finite gradients despite the masked logits
    assert np.isfinite(float(loss.logit_scale.grad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_fit_matches_cpu_quality_and_loads_on_cpu(name):
    """The same decoder trained on the GPU learns as well as on the CPU (not bit-identical:
    cuBLAS sums in another order) and its state dict is usable on a CPU-only machine."""
    X, Y = planted_world()
    Xv, Yv = planted_world(seed=1, n=60)
    cpu = make_decoder(name, **SMALL[name]).fit(X, Y, X_val=Xv, Y_val=Yv)
    gpu = make_decoder(name, **dict(SMALL[name], device="cuda")).fit(X, Y, X_val=Xv, Y_val=Yv)
    pred = gpu.predict(Xv)
    assert pred.dtype == np.float32 and np.all(np.isfinite(pred))
    assert abs(mean_cosine(pred, Yv) - mean_cosine(cpu.predict(Xv), Yv)) < 0.05
    reloaded = make_decoder(name, **SMALL[name]).load_state_dict(gpu.state_dict())
    np.testing.assert_allclose(reloaded.predict(Xv), pred, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_stats_rows_define_the_feature_space(name):
    """Input standardisation (and the two-stage PCA / output statistics) come from stats_rows only;
    the other rows still train the network."""
    X, Y = planted_world()
    Xv, Yv = planted_world(seed=1, n=60)
    X = X.copy()
    rows = np.zeros(len(X), dtype=bool)
    rows[: len(X) // 2] = True
    X[~rows] = 5.0 * X[~rows] + 3.0  # another distribution, like imagery trials
    dec = make_decoder(name, **SMALL[name]).fit(X, Y, X_val=Xv, Y_val=Yv, stats_rows=rows)
    norm = dec.module_.input_norm
    np.testing.assert_allclose(norm.mean.numpy(), X[rows].mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.scale.numpy(), X[rows].std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(dec.module_.y_mean.numpy(), Y[rows].mean(axis=0), atol=1e-6)
    with pytest.raises(InputError, match="stats_rows"):
        make_decoder(name, **SMALL[name]).fit(X, Y, stats_rows=rows[:-1])
    with pytest.raises(InputError, match="stats_rows"):
        make_decoder(name, **SMALL[name]).fit(X, Y, stats_rows=rows.astype(int))


@pytest.mark.parametrize("name", NAMES)
def test_val_sample_weight_weights_the_early_stopping_rows(name):
    """Zero-weight validation rows do not count: same model as without those rows."""
    X, Y = planted_world()
    Xv, Yv = planted_world(seed=1, n=60)
    Xbad, Ybad = planted_world(seed=2, n=20)
    Ybad = -Ybad  # rows that would change the stopping epoch if they counted
    w = np.r_[np.ones(60), np.zeros(20)]
    a = make_decoder(name, **SMALL[name]).fit(X, Y, X_val=Xv, Y_val=Yv)
    b = make_decoder(name, **SMALL[name]).fit(X, Y, X_val=np.r_[Xv, Xbad], Y_val=np.r_[Yv, Ybad], val_sample_weight=w)
    if name == "mlp":  # two-stage: InfoNCE is batch-contrastive, zero-weight rows remain negatives
        np.testing.assert_array_equal(a.predict(Xv), b.predict(Xv))
        assert [r["val_loss"] for r in a.history_] == pytest.approx([r["val_loss"] for r in b.history_], rel=1e-5)
    else:
        assert [r["val_loss"] for r in a.history_] != [r["val_loss"] for r in b.history_]
    with pytest.raises(InputError, match="sample_weight"):
        make_decoder(name, **SMALL[name]).fit(X, Y, X_val=Xv, Y_val=Yv, val_sample_weight=np.ones(3))
