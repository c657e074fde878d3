"""The eval stage's scoring on hand-built predictions (no files needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmri2img.core.files import dumps_json
from fmri2img.core.memo import Memo
from fmri2img.evaluation import scoring
from fmri2img.evaluation.resampling import bootstrap_ci
from fmri2img.evaluation.scoring import EvalOptions, Predictions, score
from fmri2img.stages.evaluate import image_loader, write_outputs


class _Set:
    def __init__(self, ids, vectors):
        self.pos = {s: i for i, s in enumerate(ids)}
        self.vectors = vectors

    def lookup(self, ids):
        return self.vectors[[self.pos[s] for s in ids]]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    d = 32
    types = ["simple"] * 6 + ["complex"] * 6 + ["conceptual"] * 6
    ids = [f"img-{t[0]}-{i}" for i, t in enumerate(types)]
    shared = rng.normal(size=d)
    emb = _unit(0.8 * shared + rng.normal(size=(18, d)))
    rows = []
    for cond in ("perception", "imagery"):
        for i, (sid, t) in enumerate(zip(ids, types)):
            for r in range(4):
                rows.append({"stimulus_id": sid, "stimulus_type": t, "condition": cond, "trial": len(rows),
                             "dataset": "nsdimagery", "fold": i % 3})
    rows = pd.DataFrame(rows)
    truth = _Set(ids, emb)
    noise = {"perception": 0.6, "imagery": 1.6}
    preds = {}
    for test_set, cond in (("imagery_vision", "perception"), ("imagery", "imagery")):
        r = rows[rows["condition"] == cond].reset_index(drop=True)
        Y = truth.lookup(r["stimulus_id"].tolist())
        preds[test_set] = Predictions(test_set, _unit(Y + noise[cond] * rng.normal(size=Y.shape) / np.sqrt(d) * 3), r)
    return truth, preds, emb.mean(0)


def _opts():
    return EvalOptions(n_boot=200, n_perm=200, seed=1)


def test_score_table_baselines_and_groups(world):
    truth, preds, mean = world
    res = score(preds, truth, mean, subject="subj01", decoder="ridge", configuration="perception_only",
                options=_opts())
    t = res.table
    gt = t[(t.configuration == "baseline_ground_truth") & (t.metric == "cosine")]
    assert np.allclose(gt["value"], 1.0)
    assert np.allclose(t[(t.configuration == "baseline_ground_truth") & (t.metric == "retrieval_at_1")]["value"], 1.0)
    # 'all' = the 12 image stimuli; conceptual reported on its own with a 6-item gallery
    model = t[t.configuration == "perception_only"]
    r1 = model[(model.metric == "retrieval_at_1") & (model.test_set == "imagery")]
    assert set(r1["stimulus_type"]) == {"all", "simple", "complex", "conceptual"}
    assert r1.set_index("stimulus_type").loc["all", "chance"] == pytest.approx(1 / 12)
    assert r1.set_index("stimulus_type").loc["conceptual", "chance"] == pytest.approx(1 / 6)
    assert r1.set_index("stimulus_type").loc["all", "n"] == 12
    # K larger than the gallery: not applicable
    r50 = model[(model.metric == "retrieval_at_50")]
    assert r50["value"].isna().all() and r50["chance"].isna().all()
    # perception (vision) beats imagery, as planted by the noise levels
    cos = model[(model.metric == "cosine") & (model.stimulus_type == "all")].set_index("test_set")["value"]
    assert cos["imagery_vision"] > cos["imagery"]
    # every p-value got a Holm-adjusted twin that is never smaller
    tested = model[model.p_value.notna()]
    assert len(tested) > 0 and (tested.p_holm >= tested.p_value - 1e-12).all()
    comp = res.comparisons["all"]
    assert comp["n_stimuli"] == 12 and comp["paired_test"]["mean_diff"] > 0
    assert 0 < comp["ratio_imagery_over_perception"]["value"] < 1


def test_score_is_deterministic_and_writes_reports(world, tmp_path):
    truth, preds, mean = world
    a = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts())
    b = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts())
    assert dumps_json(a.metrics_json()) == dumps_json(b.metrics_json())
    write_outputs(a, tmp_path / "one")
    write_outputs(b, tmp_path / "two")
    for name in ("metrics.json", "per_trial.csv", "per_stimulus.csv", "results_table.csv",
                 "perception_baseline_results.json", "cross_domain_transfer_results.json", "comparison_table.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    per_stim = pd.read_csv(tmp_path / "one" / "per_stimulus.csv")
    assert len(per_stim) == 36 and per_stim["n_trials"].eq(4).all()
    assert per_stim["cosine_mean_embedding_baseline"].notna().all()


def test_invalid_k_rejected(world):
    truth, preds, mean = world
    from fmri2img.core.errors import InputError

    with pytest.raises(InputError, match="K > 0"):
        score(preds, truth, mean, subject="s", decoder="r", configuration="perception_only",
              options=EvalOptions(ks=(0, 1)))


def test_distractors_enlarge_gallery_without_test_stimuli(world):
    truth, preds, mean = world
    rng = np.random.default_rng(3)
    extra_ids = ["nsd-90000", "nsd-90001", "nsd-90002", "img-s-0"]  # the last one is a gallery stimulus
    extra = _unit(rng.normal(size=(4, 32)))
    res = score(preds, truth, mean, subject="s", decoder="r", configuration="perception_only", options=_opts(),
                baselines=False, distractors=(extra_ids, extra))
    r1 = res.table[(res.table.metric == "retrieval_at_1") & (res.table.test_set == "imagery")].set_index("stimulus_type")
    assert r1.loc["all", "chance"] == pytest.approx(1 / (12 + 3))
    assert r1.loc["conceptual", "chance"] == pytest.approx(1 / 6)  # text gallery: no image distractors


def test_memoised_baselines_equal_freshly_computed_ones(world):
    """With a memo, baselines are scored once (the same in every cell); a cold and a warm memo give
    the same bytes as no memo, and another cell's predictions do not leak into them."""
    import dataclasses

    truth, preds, mean = world
    memo = Memo()
    cold = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts(),
                 memo=memo)
    assert memo.count("baseline_scores") > 0
    other = {k: dataclasses.replace(v, pred=v.pred[::-1].copy()) for k, v in preds.items()}
    score(other, truth, mean, subject="s", decoder="mlp", configuration="mixed", options=_opts(), memo=memo)
    warm = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts(),
                 memo=memo)
    fresh = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts())
    assert dumps_json(cold.metrics_json()) == dumps_json(warm.metrics_json()) == dumps_json(fresh.metrics_json())
    assert cold.table.equals(warm.table) and cold.table.equals(fresh.table)


# --------------------------------------------------------------------------- fast paths == plain paths


def test_ci_batch_equals_one_bootstrap_per_row():
    """The table's CIs, computed in blocks and memoised, equal one bootstrap_ci each."""
    opts = _opts()
    rng = np.random.default_rng(2)
    values = [rng.random(12), rng.random(12), (rng.random(6) > 0.5).astype(float), rng.random(300), None,
              np.array([0.3]), rng.random(12)]
    values.append(values[0].copy())  # a duplicate: one computation, same interval
    memo = Memo()
    for attempt in range(2):  # cold, then warm memo
        batch = scoring._CIBatch(opts, memo)
        records = [batch.add(scoring._row("s", "d", "c", "t", "all", "m", 0.0), v) for v in values]
        batch.compute()
        for rec, v in zip(records, values):
            expected = ((None, None) if v is None or len(v) < 2 else
                        tuple(float(x) for x in bootstrap_ci(v, n_boot=opts.n_boot, seed=opts.seed)))
            assert (rec["ci_low"], rec["ci_high"]) == expected
    assert memo.count("bootstrap_ci") == 5


def _old_image_scores(pred, gallery, true_images, memo=None):
    from fmri2img.evaluation.image_metrics import RetrievalGenerator, score_images

    recon = RetrievalGenerator(gallery, true_images).generate(pred)
    scored = score_images(recon, true_images)
    return {name: {"value": float(np.nanmean(v)), "chance": None, "n": len(v), "p": None,
                   "per_item": np.asarray(v, dtype=np.float64)} for name, v in scored.items()}


def test_image_scores_equal_reconstruction_then_score_images(world, monkeypatch):
    """Reconstruction by retrieval scored pair by pair (memoised) gives the same table as building
    the reconstructions and scoring them with score_images."""
    truth, preds, mean = world
    rng = np.random.default_rng(5)
    pixels = {sid: rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8) for sid in truth.pos}

    def images(ids):
        return np.stack([pixels[s] for s in ids])

    kwargs = dict(subject="s", decoder="ridge", configuration="perception_only", options=_opts(), images=images)
    memo = Memo()
    fast = score(preds, truth, mean, memo=memo, **kwargs)
    warm = score(preds, truth, mean, memo=memo, **kwargs)
    monkeypatch.setattr(scoring, "_image_scores", _old_image_scores)
    plain = score(preds, truth, mean, **kwargs)
    assert (fast.table["metric"] == "ssim").any()
    assert fast.table.equals(plain.table) and warm.table.equals(plain.table)
    assert fast.per_stimulus.equals(plain.per_stimulus)


def test_image_loader_memoises_until_the_file_changes(tmp_path):
    import os

    import h5py

    memo = Memo()
    brick = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "stimuli.hdf5"
    with h5py.File(path, "w") as f:
        f["imgBrick"] = brick
    index = pd.DataFrame({"stimulus_id": ["a", "b", "c"], "image_ref": [f"stimuli.hdf5#{i}" for i in range(3)]})
    first = image_loader(index, tmp_path, memo)(["c", "a"])
    np.testing.assert_array_equal(first, brick[[2, 0]])
    assert memo.count("stimulus_images") == 2
    # a new loader (the next cell) reuses them
    np.testing.assert_array_equal(image_loader(index, tmp_path, memo)(["a", "c"]), brick[[0, 2]])
    assert memo.count("stimulus_images") == 2
    # a rewritten file is read again
    with h5py.File(path, "w") as f:
        f["imgBrick"] = 255 - brick
    os.utime(path, ns=(10**18, 10**18))
    np.testing.assert_array_equal(image_loader(index, tmp_path, memo)(["a"]), 255 - brick[[0]])


def test_cosine_matched_averages_as_many_trials_as_matched_perception(world):
    """Imagery with twice the vision trials: cosine_matched scores chunks of the vision count, so
    imagery trials that repeat the vision trials twice score exactly like vision (the null world)."""
    truth, preds, mean = world
    vision = preds["imagery_vision"]
    rows = pd.concat([vision.rows, vision.rows], ignore_index=True).assign(condition="imagery")
    order = np.argsort(rows["stimulus_id"].to_numpy(), kind="stable")  # each stimulus' trials together
    doubled = Predictions("imagery", np.concatenate([vision.pred, vision.pred])[order], rows.iloc[order])
    res = score({"imagery_vision": vision, "imagery": doubled}, truth, mean, subject="s", decoder="ridge",
                configuration="perception_only", options=_opts())
    per = res.per_stimulus.set_index(["test_set", "stimulus_id"])["cosine_matched"]
    assert np.allclose(per.loc["imagery"].sort_index(), per.loc["imagery_vision"].sort_index(), atol=1e-12)
    # the plain per-stimulus cosine averages all 8 imagery trials: a different (here equal) mean
    plain = res.per_stimulus.set_index(["test_set", "stimulus_id"])["cosine"]
    assert np.allclose(plain.loc["imagery_vision"].sort_index(), per.loc["imagery_vision"].sort_index())


def test_cosine_matched_is_absent_without_matched_perception(world):
    truth, preds, mean = world
    res = score({"imagery": preds["imagery"]}, truth, mean, subject="s", decoder="ridge",
                configuration="perception_only", options=_opts())
    assert "cosine_matched" not in res.per_stimulus.columns


def test_a_full_memo_evicting_entries_does_not_lose_this_calls_intervals(world):
    """Regression: a long-lived worker (calibrate runs many worlds in one process) filled the memo;
    putting new intervals evicted ones this call had found there (KeyError)."""
    truth, preds, mean = world
    small = Memo(max_items=3)
    full = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts(),
                 memo=small)
    fresh = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts())
    assert full.table.equals(fresh.table)
    again = score(preds, truth, mean, subject="s", decoder="ridge", configuration="perception_only", options=_opts(),
                  memo=small)
    assert again.table.equals(fresh.table)


def test_n_way_retrieval_rows_of_shared1000():
    """MindEye2's n-way retrieval from the shared1000 predictions (one mean per stimulus): perfect
    predictions retrieve every image, random ones about 1/n; too few stimuli give a reason, no rows."""
    from fmri2img.stages.evaluate import n_way_rows

    rng = np.random.default_rng(3)
    ids = [f"nsd-{i:05d}" for i in range(40)]
    truth = _Set(ids, _unit(rng.normal(size=(40, 16))))
    rows = pd.DataFrame({"stimulus_id": np.repeat(ids, 2), "stimulus_type": "natural"})
    exact = {"shared1000": Predictions("shared1000", truth.lookup(rows["stimulus_id"].tolist()), rows)}
    opts = EvalOptions(n_boot=100, n_perm=50, n_way=10, n_way_draws=5)
    table, note = n_way_rows(exact, truth, "subj01", "ridge", "perception_only", opts)
    assert note is None and set(table["metric"]) == {"retrieval_image_10", "retrieval_brain_10"}
    assert (table["value"] == 1.0).all() and (table["chance"] == 0.1).all()
    noisy = {"shared1000": Predictions("shared1000", _unit(rng.normal(size=(80, 16))), rows)}
    random_table, _ = n_way_rows(noisy, truth, "subj01", "ridge", "perception_only", opts)
    assert (random_table["value"] < 0.5).all()
    table, note = n_way_rows(exact, truth, "subj01", "ridge", "perception_only", EvalOptions(n_way=300))
    assert table.empty and "300-way retrieval needs at least 300 stimuli, got 40" in note
