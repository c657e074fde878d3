"""Statistical tests of the benchmark: paired and one-sample tests, group-level tests, Holm.

Resampling statistics (bootstrap CIs, permutation tests) are in :mod:`fmri2img.evaluation.resampling`.

The unit of inference is the **stimulus** (repeats averaged first, see
:func:`fmri2img.data.trials.average_by_stimulus`): 18 imagery stimuli of one subject are
18 samples, not 288 trials. At group level the unit is the subject (per-subject means).

Every random procedure takes a ``seed`` (``numpy.random.default_rng``); same inputs and seed give
identical numbers. The tests come from pingouin 0.7 (result columns ``T``, ``dof``, ``p_val``, ``CI95``,
``W_val``), returned here as plain Python floats so they serialise to JSON unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pingouin as pg
from scipy.stats import t as student_t

from fmri2img.core.errors import InputError

#: Confidence level of every interval (the issue: "95% confidence intervals").
DEFAULT_LEVEL = 0.95


def check_1d(values: Any, name: str, min_n: int = 1) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InputError(f"Expected {name} of shape (n,), got shape {arr.shape}.")
    if arr.size < min_n:
        raise InputError(f"Expected at least {min_n} values in {name}, got {arr.size}.")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"Expected finite values in {name}, got NaN or inf.")
    return arr


def _t_interval(x: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Student t interval of the mean of x (pingouin's CI95 column is rounded to 2 decimals)."""
    half = student_t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def paired_comparison(a: Any, b: Any) -> dict[str, float | int]:
    """Paired comparison of two conditions on the same stimuli (e.g. perception vs imagery).

    Parameters
    ----------
    a, b : array of shape (n,)
        One score per stimulus, same stimulus order; n >= 2.

    Returns
    -------
    dict
        ``n``; ``mean_a``, ``mean_b``, ``mean_diff`` (a - b); paired t-test ``t``, ``df``,
        ``p_value`` (two-sided) and ``ci_low``/``ci_high`` (95 % t interval of the mean
        difference), all from ``pingouin.ttest(a, b, paired=True)``; Wilcoxon signed-rank
        ``wilcoxon_w`` and ``p_wilcoxon`` (``pingouin.wilcoxon``: scipy's test with a
        continuity correction when the normal approximation is used, i.e. with ties or
        n > 50; NaN when every difference is zero); effect sizes from
        ``pingouin.compute_effsize(paired=True)``:
        ``cohen_d`` (d_av: mean difference over the average SD, Cumming 2012),
        ``hedges_g`` (its small-sample correction) and ``cohen_dz`` (mean difference over the
        SD of the differences).
    """
    a = check_1d(a, "a", min_n=2)
    b = check_1d(b, "b", min_n=2)
    if a.shape != b.shape:
        raise InputError(f"Expected paired scores of the same length, got {a.size} and {b.size}.")
    diff = a - b
    out: dict[str, float | int] = {
        "n": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(diff.mean()),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero-variance differences -> NaN t
        warnings.filterwarnings("ignore", message="x and y are equals")
        tt = pg.ttest(a, b, paired=True).iloc[0]
        ci = _t_interval(diff)
        out.update(t=float(tt["T"]), df=float(tt["dof"]), p_value=float(tt["p_val"]),
                   ci_low=float(ci[0]), ci_high=float(ci[1]))
        if np.all(diff == 0):
            out.update(wilcoxon_w=float("nan"), p_wilcoxon=float("nan"))
        else:
            wx = pg.wilcoxon(a, b).iloc[0]
            out.update(wilcoxon_w=float(wx["W_val"]), p_wilcoxon=float(wx["p_val"]))
        out["cohen_d"] = float(pg.compute_effsize(a, b, paired=True, eftype="cohen"))
        out["hedges_g"] = float(pg.compute_effsize(a, b, paired=True, eftype="hedges"))
        out["cohen_dz"] = float(pg.compute_effsize(a, b, paired=True, eftype="cohen_dz"))
    return out


def one_sample_test(values: Any, popmean: float = 0.0) -> dict[str, float | int]:
    """One-sample comparison against a fixed value (e.g. chance level).

    Parameters
    ----------
    values : array of shape (n,)
        One score per unit (stimulus, or subject at group level); n >= 2.
    popmean : float
        Value under the null hypothesis.

    Returns
    -------
    dict
        ``n``, ``mean``, ``popmean``, ``mean_diff``; one-sample t-test ``t``, ``df``,
        ``p_value`` (two-sided), ``ci_low``/``ci_high`` (95 % t interval of the mean) from
        ``pingouin.ttest(values, popmean)``; Wilcoxon signed-rank of ``values - popmean``
        (``wilcoxon_w``, ``p_wilcoxon``); ``cohen_d`` = (mean - popmean) / SD.
    """
    x = check_1d(values, "values", min_n=2)
    out: dict[str, float | int] = {
        "n": int(x.size),
        "mean": float(x.mean()),
        "popmean": float(popmean),
        "mean_diff": float(x.mean() - popmean),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tt = pg.ttest(x, float(popmean)).iloc[0]
        ci = _t_interval(x)
        out.update(t=float(tt["T"]), df=float(tt["dof"]), p_value=float(tt["p_val"]),
                   ci_low=float(ci[0]), ci_high=float(ci[1]))
        if np.all(x == popmean):
            out.update(wilcoxon_w=float("nan"), p_wilcoxon=float("nan"))
        else:
            wx = pg.wilcoxon(x - popmean).iloc[0]
            out.update(wilcoxon_w=float(wx["W_val"]), p_wilcoxon=float(wx["p_val"]))
        out["cohen_d"] = float(pg.compute_effsize(x, float(popmean), eftype="cohen"))
    return out


def subject_arrays(values_by_subject: Mapping[str, Any] | Sequence[Any], name: str) -> list[np.ndarray]:
    if isinstance(values_by_subject, Mapping):
        items = list(values_by_subject.values())
    else:
        items = list(values_by_subject)
    if not items:
        raise InputError(f"Expected at least one subject in {name}, got none.")
    return [check_1d(v, f"{name}[{i}]") for i, v in enumerate(items)]


def subject_means(values_by_subject: Mapping[str, Any] | Sequence[Any]) -> np.ndarray:
    """Per-subject mean score.

    Parameters
    ----------
    values_by_subject : mapping subject -> array of shape (n_stimuli_s,), or a sequence of them
        Per-stimulus scores of each subject (insertion order kept).

    Returns
    -------
    means : array of shape (n_subjects,)
    """
    return np.array([v.mean() for v in subject_arrays(values_by_subject, "values_by_subject")])


def group_level_test(
    a_by_subject: Mapping[str, Any] | Sequence[Any],
    b_by_subject: Mapping[str, Any] | Sequence[Any] | None = None,
    popmean: float = 0.0,
) -> dict[str, float | int]:
    """Group-level test across subjects on per-subject means (the subject is the unit).

    With ``b_by_subject`` it is a paired test of the per-subject means of a vs b
    (:func:`paired_comparison`); without it a one-sample test of the per-subject means of a
    against ``popmean`` (:func:`one_sample_test`, e.g. chance). Needs >= 2 subjects. With the 4
    NSD-Imagery subjects the exact Wilcoxon p cannot go below 0.125: read the t-test.

    Parameters
    ----------
    a_by_subject, b_by_subject : mapping subject -> array of shape (n_stimuli_s,), or sequences
        Per-stimulus scores; a and b are paired by subject order (mappings: by key).
    popmean : float

    Returns
    -------
    dict
        As :func:`paired_comparison` or :func:`one_sample_test`, computed on subject means.
    """
    if b_by_subject is None:
        return one_sample_test(subject_means(a_by_subject), popmean)
    if isinstance(a_by_subject, Mapping) and isinstance(b_by_subject, Mapping):
        if list(a_by_subject) != list(b_by_subject):
            raise InputError(
                f"Expected the same subjects in both conditions, got {list(a_by_subject)} "
                f"and {list(b_by_subject)}."
            )
    return paired_comparison(subject_means(a_by_subject), subject_means(b_by_subject))


# --------------------------------------------------------------------------- multiple comparisons


def holm(pvalues: Any) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (family-wise error control), ``pingouin.multicomp``.

    Sorted ascending, ``p_adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based), mapped
    back to the input order. NaN entries are ignored (they stay NaN and do not count in m).

    Parameters
    ----------
    pvalues : array of shape (m,)

    Returns
    -------
    p_adjusted : array of shape (m,), float64
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise InputError(f"Expected p-values of shape (m,), got shape {p.shape}.")
    vals = p[~np.isnan(p)]
    if np.any((vals < 0) | (vals > 1)):
        raise InputError(f"Expected p-values in [0, 1], got values in [{vals.min()}, {vals.max()}].")
    return np.asarray(pg.multicomp(p, method="holm")[1], dtype=np.float64)
