"""Statistics against scipy / pingouin references, brute-force permutation nulls and planted nulls."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as ss

from fmri2img.core.errors import InputError
from fmri2img.evaluation import metrics, resampling, stats

# fixed data (18 stimuli, like one NSD-Imagery subject)
A = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52, 0.63,
              0.58, 0.69, 0.47, 0.64, 0.60, 0.71, 0.50, 0.57, 0.62])  # fmt: skip
B = np.array([0.52, 0.50, 0.61, 0.49, 0.55, 0.51, 0.66, 0.45, 0.58,
              0.49, 0.60, 0.44, 0.57, 0.56, 0.59, 0.51, 0.50, 0.53])  # fmt: skip


# --------------------------------------------------------------------------- paired / one-sample


def test_paired_comparison_matches_scipy():
    res = stats.paired_comparison(A, B)
    ref = ss.ttest_rel(A, B)
    assert res["n"] == 18 and res["df"] == 17
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    wx = ss.wilcoxon(A, B, correction=True)  # pingouin's default continuity correction
    assert res["wilcoxon_w"] == pytest.approx(wx.statistic)
    assert res["p_wilcoxon"] == pytest.approx(wx.pvalue, rel=1e-10)
    d = A - B
    assert res["mean_diff"] == pytest.approx(d.mean())
    assert res["cohen_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert res["cohen_d"] == pytest.approx(d.mean() / np.sqrt((A.var(ddof=1) + B.var(ddof=1)) / 2))
    assert 0 < res["hedges_g"] < res["cohen_d"]  # small-sample shrinkage


def test_paired_comparison_sign_and_validation():
    assert stats.paired_comparison(B, A)["t"] == pytest.approx(-stats.paired_comparison(A, B)["t"])
    with pytest.raises(InputError):
        stats.paired_comparison(A, B[:-1])
    with pytest.raises(InputError):
        stats.paired_comparison([1.0], [2.0])


def test_one_sample_test_matches_scipy():
    res = stats.one_sample_test(A, popmean=0.5)
    ref = ss.ttest_1samp(A, 0.5)
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert res["p_wilcoxon"] == pytest.approx(ss.wilcoxon(A - 0.5, correction=True).pvalue, rel=1e-10)
    assert res["cohen_d"] == pytest.approx((A.mean() - 0.5) / A.std(ddof=1))


def test_group_level_test_uses_subject_means():
    a = {"subj01": A, "subj02": A[:10] + 0.05, "subj05": A[3:] - 0.02, "subj07": A + 0.01}
    b = {"subj01": B, "subj02": B[:10], "subj05": B[3:], "subj07": B - 0.03}
    means_a = [v.mean() for v in a.values()]
    means_b = [v.mean() for v in b.values()]
    res = stats.group_level_test(a, b)
    assert res["n"] == 4 and res["df"] == 3
    assert res["t"] == pytest.approx(ss.ttest_rel(means_a, means_b).statistic, rel=1e-10)
    one = stats.group_level_test(a, popmean=0.5)
    assert one["p_value"] == pytest.approx(ss.ttest_1samp(means_a, 0.5).pvalue, rel=1e-8)
    with pytest.raises(InputError):
        stats.group_level_test(a, {"subj01": B, "subj02": B, "subj05": B, "subj99": B})


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_deterministic_covers_mean_and_matches_scipy():
    x = np.random.default_rng(0).normal(loc=1.0, size=60)
    ci = resampling.bootstrap_ci(x, seed=3)
    assert ci == resampling.bootstrap_ci(x, seed=3)
    assert ci != resampling.bootstrap_ci(x, seed=4)
    assert ci.low < x.mean() < ci.high
    ref = ss.bootstrap((x,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(1))
    assert ci.low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert ci.high == pytest.approx(ref.confidence_interval.high, abs=0.03)
    # a generic callable gives the same numbers as the vectorised numpy reducer
    assert resampling.bootstrap_ci(x, statistic=lambda v: float(np.mean(v)), seed=3) == ci
    # higher level, wider interval
    wide = resampling.bootstrap_ci(x, level=0.99, seed=3)
    assert wide.low < ci.low and wide.high > ci.high


def test_bootstrap_ratio_ci():
    rng = np.random.default_rng(1)
    perception = 0.5 + 0.1 * rng.random(18)
    imagery = 0.7 * perception + 0.01 * rng.normal(size=18)  # planted ratio 0.7
    res = resampling.bootstrap_ratio_ci(imagery, perception, seed=2)
    assert res.ratio == pytest.approx(imagery.mean() / perception.mean())
    assert res.ci_low < res.ratio < res.ci_high
    assert res.ci_low < 0.7 < res.ci_high and res.ci_high - res.ci_low < 0.05
    assert res == resampling.bootstrap_ratio_ci(imagery, perception, seed=2)
    with pytest.raises(InputError):
        resampling.bootstrap_ratio_ci(imagery, np.zeros(18))


def test_hierarchical_bootstrap_accounts_for_subjects():
    rng = np.random.default_rng(2)
    offsets = [-0.3, 0.0, 0.1, 0.4]  # planted between-subject variability
    by_subject = {f"subj0{i}": off + 0.05 * rng.normal(size=18) for i, off in enumerate(offsets)}
    ci = resampling.hierarchical_bootstrap_ci(by_subject, seed=5)
    assert ci == resampling.hierarchical_bootstrap_ci(by_subject, seed=5)
    grand = np.mean([v.mean() for v in by_subject.values()])
    assert ci.low < grand < ci.high
    # resampling subjects makes it far wider than a pooled bootstrap over the 72 stimuli
    pooled = resampling.bootstrap_ci(np.concatenate(list(by_subject.values())), seed=5)
    assert (ci.high - ci.low) > 3 * (pooled.high - pooled.low)
    # and it agrees with a plain two-level loop (own random stream) up to Monte-Carlo error
    ref_rng = np.random.default_rng(100)
    subjects = list(by_subject.values())
    boot = []
    for _ in range(4000):
        picked = [subjects[i] for i in ref_rng.integers(0, 4, size=4)]
        boot.append(np.mean([v[ref_rng.integers(0, v.size, size=v.size)].mean() for v in picked]))
    assert ci.low == pytest.approx(np.quantile(boot, 0.025), abs=0.03)
    assert ci.high == pytest.approx(np.quantile(boot, 0.975), abs=0.03)


def test_hierarchical_bootstrap_unequal_subject_sizes():
    # a subject of 3 stimuli and one of 30: each subject mean weighs the same
    by_subject = [np.array([1.0, 1.0, 1.0]), np.zeros(30)]
    ci = resampling.hierarchical_bootstrap_ci(by_subject, n_boot=2000, seed=0)
    assert ci.low == 0.0 and ci.high == 1.0  # resamples of subjects: means 0, 0.5 or 1


# --------------------------------------------------------------------------- permutation tests


def _brute_retrieval_p(pred, gallery, target, k, n_perm, seed):
    observed = metrics.retrieval_at_k(pred, gallery, target, ks=(k,))[k].mean()
    rng = np.random.default_rng(seed)
    null = [metrics.retrieval_at_k(pred, gallery, target[rng.permutation(len(target))], ks=(k,))[k].mean()
            for _ in range(n_perm)]  # fmt: skip
    return (sum(v >= observed - 1e-12 for v in null) + 1) / (n_perm + 1)


def _brute_two_way_p(pred, true, n_perm, seed):
    observed = metrics.two_way_identification(pred, true).mean
    rng = np.random.default_rng(seed)
    null = [metrics.two_way_identification(pred, true[rng.permutation(len(true))]).mean for _ in range(n_perm)]
    return (sum(v >= observed - 1e-12 for v in null) + 1) / (n_perm + 1)


def _weak_signal(seed, n=12, d=8, signal=0.4):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, d))
    return true, signal * true + rng.normal(size=(n, d))


def test_permutation_tests_match_brute_force():
    true, pred = _weak_signal(0)
    target = np.arange(len(true))
    for k in (1, 3):
        fast = resampling.permutation_test_retrieval(pred, true, target, k=k, n_perm=99, seed=9)
        assert fast == pytest.approx(_brute_retrieval_p(pred, true, target, k, 99, 9))
    fast = resampling.permutation_test_two_way(pred, true, n_perm=99, seed=9)
    assert fast == pytest.approx(_brute_two_way_p(pred, true, 99, 9))


def test_permutation_p_minimum_for_strong_signal():
    true, pred = _weak_signal(1, signal=20.0)
    target = np.arange(len(true))
    assert resampling.permutation_test_retrieval(pred, true, target, k=1, n_perm=199) == pytest.approx(1 / 200)
    assert resampling.permutation_test_two_way(pred, true, n_perm=199) == pytest.approx(1 / 200)
    with pytest.raises(InputError):
        resampling.permutation_test_retrieval(pred, true, target, k=13, n_perm=10)


def _null_pvalues(n_sims, n_perm, seed):
    rng = np.random.default_rng(seed)
    p_two, p_ret = [], []
    for s in range(n_sims):
        true = rng.normal(size=(15, 8))
        pred = rng.normal(size=(15, 8))  # planted null: unrelated to the targets
        p_two.append(resampling.permutation_test_two_way(pred, true, n_perm=n_perm, seed=s))
        p_ret.append(resampling.permutation_test_retrieval(pred, true, np.arange(15), k=5, n_perm=n_perm, seed=s))
    return np.array(p_two), np.array(p_ret)


def _check_null(p_two, p_ret, tol_sd):
    n = p_two.size
    for alpha in (0.05, 0.2, 0.5):
        sd = np.sqrt(alpha * (1 - alpha) / n)
        # valid: P(p <= alpha) <= alpha (up to sampling noise) for both statistics
        assert np.mean(p_two <= alpha) <= alpha + tol_sd * sd
        assert np.mean(p_ret <= alpha) <= alpha + tol_sd * sd
        # two-way is nearly continuous: not overly conservative either
        assert np.mean(p_two <= alpha) >= alpha - tol_sd * sd - 0.02


def test_permutation_null_pvalues_quick():
    p_two, p_ret = _null_pvalues(n_sims=40, n_perm=99, seed=11)
    _check_null(p_two, p_ret, tol_sd=3.5)
    assert 0.3 < p_two.mean() < 0.7


@pytest.mark.slow
def test_permutation_null_pvalues_uniform():
    p_two, p_ret = _null_pvalues(n_sims=600, n_perm=199, seed=12)
    _check_null(p_two, p_ret, tol_sd=3.5)
    assert ss.kstest(p_two, "uniform").pvalue > 1e-3


# --------------------------------------------------------------------------- Holm


def test_holm_hand_computed():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])


def _holm_step_down(p):
    """Holm's procedure as written (Holm 1979): the i-th smallest p times (m - i + 1), running max."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_matches_the_step_down_procedure(seed):
    p = np.random.default_rng(seed).random(9) ** 3
    p[seed] = p[seed + 1]  # a tie
    np.testing.assert_allclose(stats.holm(p), _holm_step_down(list(p)), rtol=1e-12)


def test_holm_ignores_nan():
    p = np.array([0.02, np.nan, 0.01, 0.3])
    np.testing.assert_allclose(stats.holm(p)[[0, 2, 3]], _holm_step_down([0.02, 0.01, 0.3]), rtol=1e-12)
    assert np.isnan(stats.holm(p)[1])
    with pytest.raises(InputError):
        stats.holm([0.5, 1.5])


# --------------------------------------------------------------------------- vectorised == reference loops
# The statistics draw their resamples / permutations once per (n, count, seed) and compute many
# of them at once; these pin the numbers to the straightforward per-call loops, bit for bit.


def _loop_bootstrap_ci(x, n_boot, seed, level=0.95):
    """The per-call bootstrap: chunks of 500 resamples drawn from a fresh generator."""
    rng = np.random.default_rng(seed)
    boot = np.concatenate([x[rng.integers(0, x.size, size=(min(500, n_boot - s), x.size))].mean(axis=1)
                           for s in range(0, n_boot, 500)])
    alpha = 1 - level
    return tuple(np.quantile(boot, [alpha / 2, 1 - alpha / 2]))


@pytest.mark.parametrize("n", [2, 3, 7, 18, 100, 129, 300])
@pytest.mark.parametrize("n_boot", [1, 499, 2000, 2001])
def test_bootstrap_mean_cis_equal_per_call_loop(n, n_boot):
    rng = np.random.default_rng(n * 7 + n_boot)
    X = rng.normal(size=(4, n)) * rng.random()
    X[1] = np.round(X[1])  # ties
    many = resampling.bootstrap_mean_cis(X, n_boot=n_boot, seed=123)
    assert many.shape == (4, 2)
    for row, ci in zip(X, many):
        # the same resamples as the loop; scipy's quantile interpolates in another order (round-off)
        ref = _loop_bootstrap_ci(row, n_boot, 123)
        assert tuple(ci) == pytest.approx(ref, rel=1e-12, abs=1e-15)
        assert tuple(resampling.bootstrap_ci(row, n_boot=n_boot, seed=123)) == tuple(ci)
        assert tuple(resampling.bootstrap_ci(list(row), n_boot=n_boot, seed=123)) == tuple(ci)
    # a non-vectorised statistic and the median still use the same resamples
    rng2 = np.random.default_rng(5)
    med = [np.median(X[0][rng2.integers(0, n, size=(min(500, n_boot - s), n))], axis=1) for s in range(0, n_boot, 500)]
    ref_med = tuple(np.quantile(np.concatenate(med), [(1 - 0.95) / 2, 1 - (1 - 0.95) / 2]))
    median = tuple(resampling.bootstrap_ci(X[0], np.median, n_boot=n_boot, seed=5))
    assert median == pytest.approx(ref_med, rel=1e-12, abs=1e-15)
    assert tuple(resampling.bootstrap_ci(X[0], lambda v: float(np.median(v)), n_boot=n_boot, seed=5)) == median


def test_bootstrap_integer_seeds_agree_and_unseeded_calls_are_random():
    x = np.random.default_rng(0).normal(size=30)
    assert resampling.bootstrap_ci(x, n_boot=100, seed=np.int64(11)) == resampling.bootstrap_ci(x, n_boot=100, seed=11)
    # seed=None: a fresh random stream per call (not cached), as numpy's default_rng(None)
    lows = {resampling.bootstrap_ci(x, n_boot=50, seed=None).low for _ in range(5)}
    assert len(lows) > 1
    with pytest.raises(InputError):
        resampling.bootstrap_mean_cis(np.array([[1.0, np.nan]]))
    with pytest.raises(InputError):
        resampling.bootstrap_mean_cis(np.ones(3))


def test_bootstrap_ratio_ci_equals_one_draw_loop():
    rng = np.random.default_rng(4)
    den = 0.5 + rng.random(18)
    num = 0.6 * den + 0.05 * rng.normal(size=18)
    for seed in (0, 123):
        idx = np.random.default_rng(seed).integers(0, 18, size=(777, 18))
        ratios = num[idx].mean(axis=1) / den[idx].mean(axis=1)
        res = resampling.bootstrap_ratio_ci(num, den, n_boot=777, seed=seed)
        assert (res.ci_low, res.ci_high) == tuple(np.quantile(ratios, [(1 - 0.95) / 2, 1 - (1 - 0.95) / 2]))


@pytest.mark.parametrize("n", [2, 5, 12, 100])
def test_permutations_equal_permutation_loop(n):
    rng = np.random.default_rng(77)
    loop = np.stack([rng.permutation(n) for _ in range(300)])
    np.testing.assert_array_equal(resampling._permutations(n, 300, 77), loop)


def _loop_retrieval_p(pred, gallery, target, k, n_perm, seed):
    """permutation_test_retrieval as one loop of rng.permutation calls (the original code)."""
    sim = metrics.cosine_similarity_matrix(pred, gallery)
    rank_table = ss.rankdata(-sim, method="max", axis=1).astype(np.int64)
    rows = np.arange(len(pred))
    observed = float(np.mean(rank_table[rows, target] <= k))
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(len(pred)) for _ in range(n_perm)])
    null = np.mean(rank_table[rows[None, :], target[perms]] <= k, axis=1)
    return (int(np.sum(null >= observed - 1e-12)) + 1) / (n_perm + 1)


def test_retrieval_ks_equal_one_k_at_a_time_and_loop():
    true, pred = _weak_signal(3, n=20)
    gallery = np.concatenate([true, np.random.default_rng(1).normal(size=(5, 8))])
    target = np.arange(20)
    ks = (1, 5, 10, 25)
    many = resampling.permutation_test_retrieval_ks(pred, gallery, target, ks, n_perm=301, seed=7)
    assert list(many) == list(ks)
    for k in ks:
        assert many[k] == resampling.permutation_test_retrieval(pred, gallery, target, k, n_perm=301, seed=7)
        assert many[k] == _loop_retrieval_p(pred, gallery, target, k, 301, 7)
    with pytest.raises(InputError):
        resampling.permutation_test_retrieval_ks(pred, gallery, target, (1, 26), n_perm=10)


def test_two_way_p_equals_loop():
    true, pred = _weak_signal(4, n=15)
    corr = metrics.correlation_matrix(pred, true)
    wins = (ss.rankdata(corr, method="min", axis=1) - 1).astype(np.int64)
    rows = np.arange(15)
    observed = float(np.mean(wins[rows, rows] / 14))
    rng = np.random.default_rng(9)
    perms = np.stack([rng.permutation(15) for _ in range(250)])
    null = np.mean(wins[rows[None, :], perms] / 14, axis=1)
    ref = (int(np.sum(null >= observed - 1e-12)) + 1) / 251
    assert resampling.permutation_test_two_way(pred, true, n_perm=250, seed=9) == ref
