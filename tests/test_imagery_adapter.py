"""H3's adapters on a frozen perception decoder (the roadmap's tests/test_imagery_adapter.py).

Unit-level adapter behaviour (identity at init, recovery of a planted distortion) is in
test_adapters_unit.py; this file checks the adapt stage on a tiny synthetic world.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _world import build_tiny

from fmri2img.core.files import sha256_file
from fmri2img.data import trials
from fmri2img.data.schema import read_index
from fmri2img.models.adapters import build_adapter
from fmri2img.models.checkpoint import load_adapters
from fmri2img.models.predictors import adapter_predictor
from fmri2img.stages.adapt import AdaptConfig, train_adapters
from fmri2img.stages.train import TrainConfig, train_decoder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adapt")
    world = build_tiny(root)
    base = train_decoder(world["subj01"], root / "base", TrainConfig(model="mlp", epochs=3),
                         cache_root=world["cache"], progress=False)
    return world, base.checkpoint, root


def test_identity_at_initialisation():
    for config in (AdaptConfig(adapter="linear"), AdaptConfig(adapter="mlp", condition=True)):
        adapter = build_adapter(config.adapter, 16, condition=config.condition, hidden_dim=config.hidden_dim,
                                rank=config.rank)
        y = torch.randn(5, 16)
        cond = torch.tensor([0, 1, 0, 1, 1]) if config.condition else None
        assert torch.equal(adapter(y, condition=cond), y)


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_training_rows_never_touch_the_held_out_fold(setup, fold):
    world, _, _ = setup
    index = read_index(world["subj01"])
    config = AdaptConfig(condition=True)
    train, val, val_stimuli = trials.adapter_fold_rows(
        index, fold, with_vision=config.condition, imagery_fraction=config.imagery_fraction,
        val_stimulus_fraction=config.val_stimulus_fraction, seed=config.seed + fold)
    held_out = set(index.loc[(index["dataset"] == "nsdimagery") & (index["fold"] == fold), "stimulus_id"])
    for mask in (train, val):
        rows = index.loc[mask]
        assert held_out.isdisjoint(rows["stimulus_id"]) and (rows["dataset"] == "nsdimagery").all()
    assert set(index.loc[train, "stimulus_id"]).isdisjoint(val_stimuli)  # early stopping on unseen stimuli
    # imagery_fraction: about 20% of each training stimulus' imagery trials
    pool = trials.imagery_rows(index, "imagery", trials.training_folds(index, fold))
    n_imagery = int((train & pool).sum())
    assert 0 < n_imagery < 0.35 * pool.sum()


def test_base_frozen_deterministic_and_finetune(setup):
    world, base_ckpt, root = setup
    before = sha256_file(base_ckpt)
    results = {}
    for name, config in {"a": AdaptConfig(adapter="mlp", epochs=3), "b": AdaptConfig(adapter="mlp", epochs=3),
                         "ft": AdaptConfig(adapter="finetune", epochs=2)}.items():
        results[name] = train_adapters(world["subj01"], base_ckpt, root / name, config, model_type="mlp",
                                       cache_root=world["cache"], progress=False)
    assert sha256_file(base_ckpt) == before  # the base checkpoint is never modified
    assert results["a"].metadata["weights_sha256"] == results["b"].metadata["weights_sha256"]
    meta = results["a"].metadata
    assert meta["n_trainable_parameters"] < meta["n_base_parameters"]
    assert results["ft"].metadata["n_trainable_parameters"] == meta["n_base_parameters"]
    assert results["ft"].metadata["parameter_overhead"] == 1.0
    # the fine-tuned copies and the adapters both decode through the per-fold predictor
    from fmri2img.models.checkpoint import load_checkpoint

    decoder, _ = load_checkpoint(base_ckpt)
    index = read_index(world["subj01"])
    rows = index.loc[trials.imagery_rows(index, "imagery")]
    X = np.random.default_rng(0).normal(size=(len(rows), decoder.n_features_in_)).astype(np.float32)
    for name in ("a", "ft"):
        predictor = adapter_predictor(decoder, *load_adapters(results[name].checkpoint, base_ckpt))
        assert predictor(X, rows).shape == (len(rows), decoder.n_targets_)


def test_stimulus_means_average_each_stimulus_and_condition():
    import pandas as pd

    from fmri2img.data.trials import stimulus_means

    rows = pd.DataFrame({"stimulus_id": ["b", "a", "b", "a", "b"]})
    cond = np.array([1, 1, 1, 0, 0])
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    Y = -X
    Xm, Ym, cm = stimulus_means(X, Y, rows, cond)
    np.testing.assert_array_equal(Xm, [[2, 3], [2, 3], [6, 7], [8, 9]])  # (b,1), (a,1), (a,0), (b,0)
    np.testing.assert_array_equal(Ym, -Xm)
    np.testing.assert_array_equal(cm, [1, 1, 0, 0])
    Xs, _, cs = stimulus_means(X, Y, rows)  # no condition: one mean per stimulus
    np.testing.assert_array_equal(Xs, [[4, 5], [4, 5]])  # b: rows 0, 2, 4; a: rows 1, 3
    np.testing.assert_array_equal(cs, [0, 0])


def test_learning_rate_search_keeps_the_best_validated_rate(setup):
    """Each fold tries lr, lr/10, lr/100 from the same seeded start and keeps the rate whose
    kept state scores best on the validation stimuli (ties: the larger rate)."""
    world, _, root = setup
    ridge = train_decoder(world["subj01"], root / "ridge", TrainConfig(model="ridge"), cache_root=world["cache"],
                          progress=False)
    runs = {steps: train_adapters(world["subj01"], ridge.checkpoint, root / f"lin{steps}",
                                  AdaptConfig(adapter="linear", epochs=5, lr_steps=steps), model_type="ridge",
                                  cache_root=world["cache"], progress=False)
            for steps in (1, 3)}
    bests = []
    state1 = torch.load(runs[1].checkpoint, weights_only=True)
    state3 = torch.load(runs[3].checkpoint, weights_only=True)
    for one, three in zip(runs[1].metadata["fold_details"], runs[3].metadata["fold_details"]):
        search = three["lr_search"]
        assert [s["lr"] for s in search] == pytest.approx([1e-3, 1e-4, 1e-5])
        best = min(range(3), key=lambda i: (search[i]["val_loss"], i))
        bests.append(best)
        assert three["lr"] == search[best]["lr"] and three["best_epoch"] == search[best]["best_epoch"]
        # the first candidate is exactly the single-rate run (same seeded start)
        assert one["lr_search"] == search[:1] and one["lr"] == 1e-3
        fold = three["fold"]
        same = [torch.equal(state1[k], state3[k]) for k in state1 if k.startswith(f"fold{fold}.")]
        assert all(same) if best == 0 else not all(same)
    assert len(bests) == 3  # (which rate wins depends on the world; both branches are checked above)
    with pytest.raises(Exception, match="lr_steps"):
        AdaptConfig(lr_steps=0).validate()
