"""Embedding metrics against hand-computed cases and brute-force loop implementations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fmri2img.core.errors import InputError
from fmri2img.data.trials import average_by_stimulus
from fmri2img.evaluation import metrics


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- brute-force references


def _cos_loop(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _pearson_loop(a, b) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [x - ma for x in a], [y - mb for y in b]
    return sum(x * y for x, y in zip(ca, cb)) / math.sqrt(sum(x * x for x in ca) * sum(y * y for y in cb))


def _retrieval_loop(pred, gallery, target, k) -> list[bool]:
    hits = []
    for i, p in enumerate(pred):
        sims = [_cos_loop(p, g) for g in gallery]
        t = sims[target[i]]
        rank = sum(1 for s in sims if s >= t)  # conservative: ties rank above the target
        hits.append(rank <= k)
    return hits


def _two_way_loop(pred, true) -> list[float]:
    n = len(pred)
    out = []
    for i in range(n):
        own = _pearson_loop(pred[i], true[i])
        wins = sum(1 for j in range(n) if j != i and own > _pearson_loop(pred[i], true[j]))
        out.append(wins / (n - 1))
    return out


# --------------------------------------------------------------------------- cosine


def test_cosine_hand_computed():
    pred = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    true = np.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(pred, true), [1.0, 1 / math.sqrt(2), -1.0])


def test_cosine_matches_loop():
    rng = _rng(1)
    pred, true = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    expected = [_cos_loop(p, t) for p, t in zip(pred.tolist(), true.tolist())]
    np.testing.assert_allclose(metrics.cosine_similarity(pred, true), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "pred, true",
    [
        (np.zeros((2, 3)), np.ones((2, 3))),  # zero row
        (np.ones((2, 3)), np.ones((3, 3))),  # shape mismatch
        (np.ones(3), np.ones(3)),  # not 2-D
        (np.array([[np.nan, 1.0]]), np.ones((1, 2))),  # NaN
    ],
)
def test_cosine_rejects_bad_input(pred, true):
    with pytest.raises(InputError):
        metrics.cosine_similarity(pred, true)


# --------------------------------------------------------------------------- averaging


def test_average_by_stimulus_first_appearance_order():
    values = np.array([1.0, 10.0, 3.0, 20.0, 5.0])
    ids = ["s9", "s1", "s9", "s1", "s5"]
    avg, uniq = average_by_stimulus(values, ids)
    assert list(uniq) == ["s9", "s1", "s5"]
    np.testing.assert_allclose(avg, [2.0, 15.0, 5.0])


def test_average_by_stimulus_2d_matches_pandas():
    rng = _rng(2)
    ids = rng.integers(0, 6, size=40)
    emb = rng.normal(size=(40, 4))
    avg, uniq = average_by_stimulus(emb, ids)
    ref = pd.DataFrame(emb).groupby(ids, sort=False).mean()
    assert list(uniq) == list(ref.index)
    np.testing.assert_allclose(avg, ref.to_numpy(), rtol=1e-12)


def test_average_by_stimulus_rejects_length_mismatch():
    with pytest.raises(InputError):
        average_by_stimulus(np.ones(3), ["a", "b"])


# --------------------------------------------------------------------------- retrieval


def test_retrieval_hand_computed_with_tie():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # item 3 duplicates item 0
    pred = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0]])
    target = np.array([0, 1, 2])
    # pred 0: cos to g0 = g3 (tie) > g2 > g1  -> conservative rank 2
    # pred 1: g1 highest -> rank 1
    # pred 2 = (1, 0): g0 = g3 = 1 > g2 = 0.707 -> target g2 has rank 3
    np.testing.assert_array_equal(metrics.retrieval_ranks(pred, gallery, target), [2, 1, 3])
    hits = metrics.retrieval_at_k(pred, gallery, target, ks=(1, 2, 3, 5))
    np.testing.assert_array_equal(hits[1], [False, True, False])
    np.testing.assert_array_equal(hits[2], [True, True, False])
    np.testing.assert_array_equal(hits[3], [True, True, True])
    assert hits[5] is None  # K > gallery size: not applicable


@pytest.mark.parametrize("k", [1, 3, 10])
def test_retrieval_matches_loop(k):
    rng = _rng(3)
    gallery = rng.normal(size=(12, 6))
    target = rng.integers(0, 12, size=9)
    pred = gallery[target] + 1.2 * rng.normal(size=(9, 6))
    expected = _retrieval_loop(pred.tolist(), gallery.tolist(), target.tolist(), k)
    np.testing.assert_array_equal(metrics.retrieval_at_k(pred, gallery, target, ks=(k,))[k], expected)


def test_retrieval_rejects_bad_targets():
    with pytest.raises(InputError):
        metrics.retrieval_ranks(np.ones((2, 3)), np.eye(3), np.array([0, 3]))
    with pytest.raises(InputError):
        metrics.retrieval_ranks(np.ones((2, 3)), np.eye(3), np.array([0.0, 1.0]))


def test_chance_level():
    assert metrics.chance_level(1, 18) == pytest.approx(1 / 18)
    assert metrics.chance_level(10, 1018) == pytest.approx(10 / 1018)
    assert metrics.chance_level(50, 18) is None


# --------------------------------------------------------------------------- two-way


def test_two_way_hand_computed():
    true = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # pred 0 correlates best with true 0; pred 1 equally with true 0 and true 1 (tie -> fail)
    # and worst with true 2; pred 2's own target (r = 0) beats true 0 (r = -0.5), loses to true 1.
    pred = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.5]])
    res = metrics.two_way_identification(pred, true)
    np.testing.assert_allclose(res.per_item, [1.0, 0.5, 0.5])
    assert res.mean == pytest.approx(2 / 3)


def test_two_way_matches_loop():
    rng = _rng(4)
    true = rng.normal(size=(8, 10))
    pred = true + 1.5 * rng.normal(size=(8, 10))
    expected = _two_way_loop(pred.tolist(), true.tolist())
    res = metrics.two_way_identification(pred, true)
    np.testing.assert_allclose(res.per_item, expected)
    assert res.mean == pytest.approx(np.mean(expected))


def test_two_way_needs_two_items():
    with pytest.raises(InputError):
        metrics.two_way_identification(np.ones((1, 3)) * [1, 2, 3], np.ones((1, 3)) * [3, 2, 1])


# --------------------------------------------------------------------------- baselines


def test_random_unit_embeddings_deterministic_and_unit():
    a = metrics.random_unit_embeddings(5, 16, seed=7)
    assert a.dtype == np.float32 and a.shape == (5, 16)
    assert a.tobytes() == metrics.random_unit_embeddings(5, 16, seed=7).tobytes()
    assert a.tobytes() != metrics.random_unit_embeddings(5, 16, seed=8).tobytes()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)


def test_ground_truth_baseline_is_perfect():
    true = metrics.random_unit_embeddings(30, 16, seed=1)
    scores = metrics.score_predictions(true, true, true, np.arange(30), ks=(1, 5))
    assert scores["cosine"] == pytest.approx(1.0)
    assert scores["retrieval_at_1"] == 1.0 and scores["retrieval_at_5"] == 1.0
    assert scores["two_way"] == 1.0


def test_random_baseline_is_at_chance():
    n, m, d = 400, 100, 32
    gallery = metrics.random_unit_embeddings(m, d, seed=2)
    target = np.repeat(np.arange(m), n // m)
    pred = metrics.random_unit_embeddings(n, d, seed=3)
    scores = metrics.score_predictions(pred, gallery[target], gallery, target, ks=(1, 10, 50))
    assert scores["two_way"] == pytest.approx(0.5, abs=0.05)
    for k in (10, 50):
        assert scores[f"retrieval_at_{k}"] == pytest.approx(k / m, abs=0.06)
        assert scores["chance"][f"retrieval_at_{k}"] == pytest.approx(k / m)
    assert abs(scores["cosine"]) < 0.05


def test_mean_embedding_baseline_high_cosine_but_chance_identification():
    rng = _rng(5)
    n_train, n_test, d = 200, 20, 24
    common = rng.normal(size=d)  # CLIP-like shared direction
    Y_train = common + 0.5 * rng.normal(size=(n_train, d))
    Y_test = common + 0.5 * rng.normal(size=(n_test, d))
    pred = metrics.mean_embedding_prediction(Y_train, n_test)
    assert pred.shape == (n_test, d) and np.all(pred == pred[0])
    scores = metrics.score_predictions(pred, Y_test, Y_test, np.arange(n_test), ks=(1, 5))
    random_cos = metrics.cosine_similarity(metrics.random_unit_embeddings(n_test, d, seed=0), Y_test).mean()
    assert scores["cosine"] > 0.8 > random_cos + 0.5
    # one constant prediction ranks the gallery in one fixed order: each item is hit once per
    # position, so top-K hits exactly K of the n targets, and two-way is exactly 0.5
    assert scores["retrieval_at_1"] == pytest.approx(1 / n_test)
    assert scores["retrieval_at_5"] == pytest.approx(5 / n_test)
    assert scores["two_way"] == pytest.approx(0.5)


def test_score_predictions_consistent_with_parts():
    rng = _rng(6)
    gallery = rng.normal(size=(10, 8))
    target = np.arange(10)
    pred = gallery + rng.normal(size=(10, 8))
    s = metrics.score_predictions(pred, gallery, gallery, target, ks=(1, 5, 50))
    assert s["n"] == 10 and s["gallery_size"] == 10
    assert s["cosine"] == pytest.approx(metrics.cosine_similarity(pred, gallery).mean())
    assert s["two_way"] == pytest.approx(metrics.two_way_identification(pred, gallery).mean)
    hits = metrics.retrieval_at_k(pred, gallery, target, ks=(1, 5))
    assert s["retrieval_at_1"] == pytest.approx(hits[1].mean())
    np.testing.assert_array_equal(s["per_item"]["retrieval_at_5"], hits[5].astype(float))
    assert s["retrieval_at_50"] is None and s["chance"]["retrieval_at_50"] is None
    assert "retrieval_at_50" not in s["per_item"]
    assert s["chance"]["two_way"] == 0.5 and s["chance"]["retrieval_at_5"] == 0.5


@pytest.mark.parametrize("d", [None, 1, 3, 512])
def test_average_by_stimulus_sums_like_add_at(d):
    """Group sums in the order np.add.at adds (row after row from 0.0): bit-identical averages."""
    rng = _rng(d or 0)
    for trial in range(20):
        n = int(rng.integers(1, 300))
        ids = rng.integers(0, max(1, n // 3), size=n).astype(str)
        values = rng.normal(size=n if d is None else (n, d)) * 10.0 ** rng.integers(-3, 4)
        if trial == 0:
            values[:] = -0.0
        avg, uniq = average_by_stimulus(values, ids)
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        group = rank[inverse.ravel()]
        sums = np.zeros((order.size,) + values.shape[1:])
        np.add.at(sums, group, values)
        counts = np.bincount(group).astype(float)
        ref = sums / (counts if values.ndim == 1 else counts[:, None])
        np.testing.assert_array_equal(avg, ref)
        np.testing.assert_array_equal(np.signbit(avg), np.signbit(ref))


def test_average_by_chunk_drops_short_chunks_and_keeps_order():
    from fmri2img.data.trials import average_by_chunk

    arr = np.arange(14, dtype=float).reshape(7, 2)
    ids = np.array(["b", "a", "b", "a", "b", "a", "a"])
    means, chunk_ids = average_by_chunk(arr, ids, 2)
    # b: rows 0, 2 (4 dropped); a: rows 1, 3 then 5, 6
    assert chunk_ids.tolist() == ["b", "a", "a"]
    assert np.allclose(means, [arr[[0, 2]].mean(0), arr[[1, 3]].mean(0), arr[[5, 6]].mean(0)])
    with pytest.raises(InputError):
        average_by_chunk(arr, ids, 0)
