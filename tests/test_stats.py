"""Statistics against scipy / pingouin references, brute-force permutation nulls and planted nulls."""

from __future__ import annotations

import numpy as np
import pingouin as pg
import pytest
import scipy.stats as ss

from fmri2img.errors import InputError
from fmri2img.evaluation import metrics as M
from fmri2img.evaluation import stats as S

# fixed data (18 stimuli, like one NSD-Imagery subject)
A = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52, 0.63,
              0.58, 0.69, 0.47, 0.64, 0.60, 0.71, 0.50, 0.57, 0.62])  # fmt: skip
B = np.array([0.52, 0.50, 0.61, 0.49, 0.55, 0.51, 0.66, 0.45, 0.58,
              0.49, 0.60, 0.44, 0.57, 0.56, 0.59, 0.51, 0.50, 0.53])  # fmt: skip


# --------------------------------------------------------------------------- paired / one-sample


def test_paired_comparison_matches_scipy():
    res = S.paired_comparison(A, B)
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
    assert S.paired_comparison(B, A)["t"] == pytest.approx(-S.paired_comparison(A, B)["t"])
    with pytest.raises(InputError):
        S.paired_comparison(A, B[:-1])
    with pytest.raises(InputError):
        S.paired_comparison([1.0], [2.0])


def test_one_sample_test_matches_scipy():
    res = S.one_sample_test(A, popmean=0.5)
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
    res = S.group_level_test(a, b)
    assert res["n"] == 4 and res["df"] == 3
    assert res["t"] == pytest.approx(ss.ttest_rel(means_a, means_b).statistic, rel=1e-10)
    one = S.group_level_test(a, popmean=0.5)
    assert one["p_value"] == pytest.approx(ss.ttest_1samp(means_a, 0.5).pvalue, rel=1e-8)
    with pytest.raises(InputError):
        S.group_level_test(a, {"subj01": B, "subj02": B, "subj05": B, "subj99": B})


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_deterministic_covers_mean_and_matches_scipy():
    x = np.random.default_rng(0).normal(loc=1.0, size=60)
    ci = S.bootstrap_ci(x, seed=3)
    assert ci == S.bootstrap_ci(x, seed=3)
    assert ci != S.bootstrap_ci(x, seed=4)
    assert ci.low < x.mean() < ci.high
    ref = ss.bootstrap((x,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(1))
    assert ci.low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert ci.high == pytest.approx(ref.confidence_interval.high, abs=0.03)
    # a generic callable gives the same numbers as the vectorised numpy reducer
    assert S.bootstrap_ci(x, statistic=lambda v: float(np.mean(v)), seed=3) == ci
    # higher level, wider interval
    wide = S.bootstrap_ci(x, level=0.99, seed=3)
    assert wide.low < ci.low and wide.high > ci.high


def test_bootstrap_ratio_ci():
    rng = np.random.default_rng(1)
    perception = 0.5 + 0.1 * rng.random(18)
    imagery = 0.7 * perception + 0.01 * rng.normal(size=18)  # planted ratio 0.7
    res = S.bootstrap_ratio_ci(imagery, perception, seed=2)
    assert res.ratio == pytest.approx(imagery.mean() / perception.mean())
    assert res.ci_low < res.ratio < res.ci_high
    assert res.ci_low < 0.7 < res.ci_high and res.ci_high - res.ci_low < 0.05
    assert res == S.bootstrap_ratio_ci(imagery, perception, seed=2)
    with pytest.raises(InputError):
        S.bootstrap_ratio_ci(imagery, np.zeros(18))


def test_hierarchical_bootstrap_accounts_for_subjects():
    rng = np.random.default_rng(2)
    offsets = [-0.3, 0.0, 0.1, 0.4]  # planted between-subject variability
    by_subject = {f"subj0{i}": off + 0.05 * rng.normal(size=18) for i, off in enumerate(offsets)}
    ci = S.hierarchical_bootstrap_ci(by_subject, seed=5)
    assert ci == S.hierarchical_bootstrap_ci(by_subject, seed=5)
    grand = np.mean([v.mean() for v in by_subject.values()])
    assert ci.low < grand < ci.high
    # resampling subjects makes it far wider than a pooled bootstrap over the 72 stimuli
    pooled = S.bootstrap_ci(np.concatenate(list(by_subject.values())), seed=5)
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
    ci = S.hierarchical_bootstrap_ci(by_subject, n_boot=2000, seed=0)
    assert ci.low == 0.0 and ci.high == 1.0  # resamples of subjects: means 0, 0.5 or 1


# --------------------------------------------------------------------------- permutation tests


def _brute_retrieval_p(pred, gallery, target, k, n_perm, seed):
    observed = M.retrieval_at_k(pred, gallery, target, ks=(k,))[k].mean()
    rng = np.random.default_rng(seed)
    null = [M.retrieval_at_k(pred, gallery, target[rng.permutation(len(target))], ks=(k,))[k].mean()
            for _ in range(n_perm)]  # fmt: skip
    return (sum(v >= observed - 1e-12 for v in null) + 1) / (n_perm + 1)


def _brute_two_way_p(pred, true, n_perm, seed):
    observed = M.two_way_identification(pred, true).mean
    rng = np.random.default_rng(seed)
    null = [M.two_way_identification(pred, true[rng.permutation(len(true))]).mean for _ in range(n_perm)]
    return (sum(v >= observed - 1e-12 for v in null) + 1) / (n_perm + 1)


def _weak_signal(seed, n=12, d=8, signal=0.4):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, d))
    return true, signal * true + rng.normal(size=(n, d))


def test_permutation_tests_match_brute_force():
    true, pred = _weak_signal(0)
    target = np.arange(len(true))
    for k in (1, 3):
        fast = S.permutation_test_retrieval(pred, true, target, k=k, n_perm=99, seed=9)
        assert fast == pytest.approx(_brute_retrieval_p(pred, true, target, k, 99, 9))
    fast = S.permutation_test_two_way(pred, true, n_perm=99, seed=9)
    assert fast == pytest.approx(_brute_two_way_p(pred, true, 99, 9))


def test_permutation_p_minimum_for_strong_signal():
    true, pred = _weak_signal(1, signal=20.0)
    target = np.arange(len(true))
    assert S.permutation_test_retrieval(pred, true, target, k=1, n_perm=199) == pytest.approx(1 / 200)
    assert S.permutation_test_two_way(pred, true, n_perm=199) == pytest.approx(1 / 200)
    with pytest.raises(InputError):
        S.permutation_test_retrieval(pred, true, target, k=13, n_perm=10)


def _null_pvalues(n_sims, n_perm, seed):
    rng = np.random.default_rng(seed)
    p_two, p_ret = [], []
    for s in range(n_sims):
        true = rng.normal(size=(15, 8))
        pred = rng.normal(size=(15, 8))  # planted null: unrelated to the targets
        p_two.append(S.permutation_test_two_way(pred, true, n_perm=n_perm, seed=s))
        p_ret.append(S.permutation_test_retrieval(pred, true, np.arange(15), k=5, n_perm=n_perm, seed=s))
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
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_matches_pingouin(seed):
    p = np.random.default_rng(seed).random(9) ** 3
    p[seed] = p[seed + 1]  # a tie
    _, ref = pg.multicomp(p, method="holm")
    np.testing.assert_allclose(S.holm(p), ref, rtol=1e-12)


def test_holm_ignores_nan_like_pingouin():
    p = np.array([0.02, np.nan, 0.01, 0.3])
    _, ref = pg.multicomp(p, method="holm")
    np.testing.assert_allclose(S.holm(p), ref, rtol=1e-12)
    assert np.isnan(S.holm(p)[1])
    with pytest.raises(InputError):
        S.holm([0.5, 1.5])
