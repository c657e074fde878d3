"""Resampling statistics: percentile bootstrap intervals over stimuli (and over subjects), and
permutation tests against chance.

Every random procedure takes a ``seed`` (``numpy.random.default_rng``); same inputs and seed give
identical numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import DegenerateDataWarning, rankdata
from scipy.stats import bootstrap as scipy_bootstrap

from fmri2img.core.constants import INIT_SEED
from fmri2img.core.errors import InputError
from fmri2img.evaluation.metrics import check_target_index, correlation_matrix, cosine_similarity_matrix
from fmri2img.evaluation.stats import DEFAULT_LEVEL, check_1d, subject_arrays

#: Bootstrap resamples. 10 000 keeps the Monte-Carlo error of a 95 % percentile bound well below
#: the reported precision (Efron & Tibshirani 1993, ch. 19 recommend >= 1000 for percentile CIs).
DEFAULT_N_BOOT = 10_000

#: Permutations of a permutation test; the smallest attainable p is 1 / (DEFAULT_N_PERM + 1).
DEFAULT_N_PERM = 10_000

#: Resamples drawn at once by the bootstraps (bounds memory; part of the random stream, keep fixed).
_BOOT_CHUNK = 500

#: Float64 elements gathered at once by :func:`bootstrap_mean_cis` (bounds its temporaries, 64 MB).
#: scipy.stats.bootstrap replaced the project's own vectorised block bootstrap: as fast or faster for
#: the demo's shapes (docs/performance.md, "Statistics").
_GATHER_ELEMENTS = 8_000_000

#: Default seed of every resampling procedure (the project's seed of stochastic steps).
DEFAULT_SEED = INIT_SEED


class ConfidenceInterval(NamedTuple):
    """A two-sided interval (unpacks as ``low, high``, like scipy's ``ConfidenceInterval``)."""

    low: float
    high: float


class RatioCI(NamedTuple):
    """Ratio of means with its bootstrap interval (unpacks as ``ratio, ci_low, ci_high``)."""

    ratio: float
    ci_low: float
    ci_high: float


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise InputError(f"Expected a confidence level in (0, 1), got {level}.")
    return float(level)


def _percentile_interval(boot: np.ndarray, level: float) -> ConfidenceInterval:
    alpha = 1.0 - level
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(float(low), float(high))


def _permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided p of ``observed`` being as large as chance: (count(null >= obs) + 1) / (n + 1)."""
    # a tiny tolerance so that float noise in an identical statistic counts as ">="
    count = int(np.sum(null >= observed - 1e-12))
    return (count + 1) / (null.size + 1)


def _check_n(n: int, name: str) -> int:
    if int(n) < 1:
        raise InputError(f"Expected {name} >= 1, got {n}.")
    return int(n)


def _permutations(n: int, n_perm: int, seed: Any) -> np.ndarray:
    """Permutations of the permutation tests: int array of shape (n_perm, n).

    Row r is the r-th ``rng.permutation(n)`` of ``rng = default_rng(seed)``; ``Generator.permuted``
    shuffles each row with the same algorithm and stream, in one call (tested against the loop).
    """
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n, dtype=np.int64), (n_perm, 1)), axis=1)


# --------------------------------------------------------------------------- bootstrap


def _contiguous_mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean of each resample, summed in one fixed order: scipy hands resamples of an (m, n) block
    over in a strided layout whose sums depend on m, a C-contiguous copy makes row i's interval
    independent of the other rows (so memoised intervals never depend on how rows were grouped)."""
    return np.ascontiguousarray(x).mean(axis=axis)


def _contiguous_median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(np.ascontiguousarray(x), axis=axis)


def _scipy_percentile(data: tuple[np.ndarray, ...], statistic, *, n_boot: int, level: float, seed: Any,
                      paired: bool = False, vectorized: bool = True, batch: int | None = _BOOT_CHUNK):
    """``scipy.stats.bootstrap`` percentile interval over the last axis, resamples drawn from
    ``default_rng(seed)`` (in ``batch`` rows at a time: part of the random stream)."""
    # a NaN bound (undefined statistic) is reported as NaN, not warned; scipy's standard error, unused
    # here, warns for a single resample
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", DegenerateDataWarning)
        warnings.filterwarnings("ignore", "Degrees of freedom <= 0", RuntimeWarning)
        res = scipy_bootstrap(data, statistic, n_resamples=n_boot, batch=batch, vectorized=vectorized, axis=-1,
                              paired=paired, confidence_level=level, method="percentile",
                              rng=np.random.default_rng(seed))
    return res.confidence_interval


def bootstrap_ci(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> ConfidenceInterval:
    """Percentile bootstrap interval over stimuli (``scipy.stats.bootstrap``).

    Parameters
    ----------
    values : array of shape (n,)
        One score per stimulus.
    statistic : callable
        Maps an array of shape (n,) to a float; default the mean (``np.mean`` and ``np.median``
        are computed on blocks of resamples at once, any other callable resample by resample).
    n_boot : int
        Number of resamples (with replacement, size n).
    level : float
        Confidence level.
    seed : int

    Returns
    -------
    ConfidenceInterval
        ``(low, high)``: the (1 - level)/2 and (1 + level)/2 quantiles of the bootstrap
        distribution (linear interpolation).
    """
    x = check_1d(values, "values")
    level = _check_level(level)
    n_boot = _check_n(n_boot, "n_boot")
    if statistic is np.mean:
        low, high = bootstrap_mean_cis(x[None, :], n_boot=n_boot, level=level, seed=seed)[0]
        return ConfidenceInterval(float(low), float(high))
    vectorized = statistic is np.median
    ci = _scipy_percentile((x,), _contiguous_median if vectorized else statistic, n_boot=n_boot, level=level,
                           seed=seed, vectorized=vectorized)
    return ConfidenceInterval(float(ci.low), float(ci.high))


def bootstrap_mean_cis(
    values: Any,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Percentile bootstrap intervals of the mean of several score vectors of one length at once.

    Row i is exactly ``bootstrap_ci(values[i], np.mean, n_boot, level, seed)``: every row is
    resampled with the same indices (the seed's stream), in blocks of rows that bound memory.

    Parameters
    ----------
    values : array of shape (m, n)
        m score vectors of n stimuli each (finite).
    n_boot, level, seed
        As :func:`bootstrap_ci`.

    Returns
    -------
    intervals : float64 array of shape (m, 2)
        ``[low, high]`` per row.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise InputError(f"Expected values of shape (m, n) with n >= 1, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise InputError("Expected finite values in values, got NaN or inf.")
    level = _check_level(level)
    n_boot = _check_n(n_boot, "n_boot")
    m, n = x.shape
    out = np.empty((m, 2), dtype=np.float64)
    rows = max(1, _GATHER_ELEMENTS // (_BOOT_CHUNK * n))
    for start in range(0, m, rows):
        ci = _scipy_percentile((x[start:start + rows],), _contiguous_mean, n_boot=n_boot, level=level, seed=seed)
        out[start:start + rows] = np.stack([ci.low, ci.high], axis=-1)
    return out


def _ratio_of_means(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(num) / mean(den) along ``axis``; NaN where the denominator's mean is 0."""
    den_mean = _contiguous_mean(den, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den_mean == 0, np.nan, _contiguous_mean(num, axis) / den_mean)


def bootstrap_ratio_ci(
    numerator: Any,
    denominator: Any,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> RatioCI:
    """Ratio of means with a paired percentile bootstrap interval (H1's imagery / perception).

    The same resampled stimuli enter numerator and denominator (``scipy.stats.bootstrap`` with
    ``paired=True``).

    Parameters
    ----------
    numerator, denominator : array of shape (n,)
        Paired per-stimulus scores (e.g. imagery and perception cosine of the same stimuli).
    n_boot, level, seed
        As :func:`bootstrap_ci`.

    Returns
    -------
    RatioCI
        ``ratio = mean(numerator) / mean(denominator)`` and its interval. The interval is NaN
        when a resample has a zero denominator mean (the ratio is then not defined).

    Raises
    ------
    InputError
        If the observed denominator mean is zero, or the arrays are not paired.
    """
    num = check_1d(numerator, "numerator")
    den = check_1d(denominator, "denominator")
    if num.shape != den.shape:
        raise InputError(f"Expected paired scores of the same length, got {num.size} and {den.size}.")
    if den.mean() == 0:
        raise InputError("The ratio of means is undefined: the denominator's mean is 0.")
    level = _check_level(level)
    n_boot = _check_n(n_boot, "n_boot")
    ci = _scipy_percentile((num, den), _ratio_of_means, n_boot=n_boot, level=level, seed=seed, paired=True,
                           batch=None)
    return RatioCI(float(num.mean() / den.mean()), float(ci.low), float(ci.high))


def hierarchical_bootstrap_ci(
    values_by_subject: Mapping[str, Any] | Sequence[Any],
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> ConfidenceInterval:
    """Group-level percentile bootstrap: resample subjects, then stimuli within each subject.

    The statistic is the grand mean of per-subject means (every subject weighs the same,
    whatever its number of stimuli). Each resample draws n_subjects subjects with replacement,
    then for each drawn subject its stimuli with replacement.

    Parameters
    ----------
    values_by_subject : mapping subject -> array of shape (n_stimuli_s,), or a sequence of them
        Per-stimulus scores of each subject.
    n_boot, level, seed
        As :func:`bootstrap_ci`.

    Returns
    -------
    ConfidenceInterval
    """
    subjects = subject_arrays(values_by_subject, "values_by_subject")
    level = _check_level(level)
    n_boot = _check_n(n_boot, "n_boot")
    rng = np.random.default_rng(seed)
    n_sub = len(subjects)
    sizes = np.array([v.size for v in subjects])
    padded = np.zeros((n_sub, sizes.max()))
    for i, v in enumerate(subjects):
        padded[i, : v.size] = v
    slots = np.arange(sizes.max())
    boot = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _BOOT_CHUNK):
        stop = min(start + _BOOT_CHUNK, n_boot)
        picks = rng.integers(0, n_sub, size=(stop - start, n_sub))  # subjects drawn
        n_pick = sizes[picks][..., None]  # (chunk, n_sub, 1)
        # stimuli drawn within each drawn subject: uniform in [0, n_s), slots >= n_s masked out
        stim = (rng.random((stop - start, n_sub, sizes.max())) * n_pick).astype(np.int64)
        vals = padded[picks[..., None], stim] * (slots < n_pick)
        boot[start:stop] = (vals.sum(axis=2) / n_pick[..., 0]).mean(axis=1)
    return _percentile_interval(boot, level)


# --------------------------------------------------------------------------- permutation tests


def permutation_test_retrieval(
    pred: Any,
    gallery: Any,
    target_index: Any,
    k: int,
    n_perm: int = DEFAULT_N_PERM,
    seed: int = DEFAULT_SEED,
) -> float:
    """Permutation p-value of retrieval@K against chance (shuffled stimulus labels).

    The statistic is the hit rate at K (conservative tie rule of
    :func:`fmri2img.evaluation.metrics.retrieval_ranks`). Under the null, which prediction
    belongs to which stimulus is exchangeable: each permutation shuffles ``target_index``
    across predictions. One-sided p = (#{null >= observed} + 1) / (n_perm + 1).

    Parameters
    ----------
    pred : array of shape (n, d)
    gallery : array of shape (m, d)
    target_index : int array of shape (n,)
    k : int
        Cut-off, 1 <= k <= m.
    n_perm : int
    seed : int

    Returns
    -------
    p : float in (0, 1]
    """
    return permutation_test_retrieval_ks(pred, gallery, target_index, (k,), n_perm, seed)[k]


def permutation_test_retrieval_ks(
    pred: Any,
    gallery: Any,
    target_index: Any,
    ks: Sequence[int],
    n_perm: int = DEFAULT_N_PERM,
    seed: int = DEFAULT_SEED,
) -> dict[int, float]:
    """:func:`permutation_test_retrieval` for several cut-offs at once (same permutations, same
    numbers as one call per K; the similarity ranks are computed once).

    Parameters
    ----------
    pred : array of shape (n, d)
    gallery : array of shape (m, d)
    target_index : int array of shape (n,)
    ks : sequence of int, each 1 <= k <= m
    n_perm, seed
        As :func:`permutation_test_retrieval`.

    Returns
    -------
    dict k -> p in (0, 1]
    """
    sim = cosine_similarity_matrix(pred, gallery)
    n, m = sim.shape
    idx = check_target_index(target_index, n, m)
    for k in ks:
        if not 1 <= k <= m:
            raise InputError(f"Expected 1 <= K <= gallery size {m}, got K={k}.")
    n_perm = _check_n(n_perm, "n_perm")
    # rank_table[i, j] = #{j' : sim[i, j'] >= sim[i, j]}: the rank of item j if it were i's target
    rank_table = rankdata(-sim, method="max", axis=1).astype(np.int64)
    rows = np.arange(n)
    perms = _permutations(n, n_perm, seed)  # (n_perm, n), same draws as a loop
    observed_ranks = rank_table[rows, idx]  # (n,)
    null_ranks = rank_table[rows[None, :], idx[perms]]  # (n_perm, n)
    return {k: _permutation_p(float(np.mean(observed_ranks <= k)), np.mean(null_ranks <= k, axis=1))
            for k in ks}


def permutation_test_two_way(
    pred: Any,
    true: Any,
    n_perm: int = DEFAULT_N_PERM,
    seed: int = DEFAULT_SEED,
) -> float:
    """Permutation p-value of two-way identification against chance (shuffled labels).

    Each permutation re-pairs predictions and targets (``true`` rows shuffled) and recomputes
    the two-way accuracy of :func:`fmri2img.evaluation.metrics.two_way_identification`.
    One-sided p = (#{null >= observed} + 1) / (n_perm + 1).

    Parameters
    ----------
    pred, true : array of shape (n, d), n >= 2
    n_perm : int
    seed : int

    Returns
    -------
    p : float in (0, 1]
    """
    corr = correlation_matrix(pred, true)
    n = corr.shape[0]
    if corr.shape != (n, n) or n < 2:
        raise InputError(
            f"Expected pred and true with the same n >= 2 rows, got correlation shape {corr.shape}."
        )
    n_perm = _check_n(n_perm, "n_perm")
    # wins_table[i, j] = #{j' : corr[i, j'] < corr[i, j]}: comparisons won if true_j were i's target
    wins_table = (rankdata(corr, method="min", axis=1) - 1).astype(np.int64)
    rows = np.arange(n)
    observed = float(np.mean(wins_table[rows, rows] / (n - 1)))
    perms = _permutations(n, n_perm, seed)  # (n_perm, n), same draws as a loop
    null = np.mean(wins_table[rows[None, :], perms] / (n - 1), axis=1)
    return _permutation_p(observed, null)
