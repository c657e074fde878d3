"""Confidence intervals for group-level statistics of a subjects x stimuli design.

Every group statistic of the research track is a mean, a difference of means or a ratio of
means over a table ``Y`` of shape ``(n_subjects, n_stimuli)`` (one value per subject and
stimulus: e.g. the cosine of a stimulus' decoded embedding above the mean-embedding
baseline). Two estimands, each with its interval:

* ``"population"``: the value expected for new subjects *and new stimuli* drawn like these.
  Subjects and stimuli are crossed random effects (every subject saw every stimulus), so the
  variance of the grand mean is ``s2_subject / n_s + s2_stimulus / n_i + s2_residual / (n_s n_i)``
  (Clark 1973, "The language-as-fixed-effect fallacy"; Westfall, Kenny & Judd 2014). The
  components come from the two-way ANOVA without replication (method of moments, negative
  estimates truncated at 0) and the interval is Student's t with Satterthwaite's (1946)
  degrees of freedom, capped at ``min(n_subjects, n_items) - 1`` (:func:`population_df`).
* ``"stimuli"``: the value for *these* stimuli, expected over new subjects: Student's t over
  the subjects' means (``n_s - 1`` degrees of freedom).

A ratio of means ``R = mean(N) / mean(D)`` gets the same intervals through its linearisation
``L = (N - R D) / mean(D)`` (the delta method): ``Var(R) ~ Var(mean(L))``.

The choice of these methods over a mixed model fitted by REML and over the bootstrap is
measured, not assumed: ``fmri2img calibrate`` reports their coverage on synthetic worlds with
known truth (docs/trust.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError

#: The estimands of a group statistic (module docstring).
ESTIMANDS = ("population", "stimuli")

#: Nominal level of every reported interval.
DEFAULT_LEVEL = 0.95

#: Deviations from the estimate at or below float32's resolution (the dtype of every prediction) are
#: rounding, not spread: a table within it is constant (e.g. a configuration identical to its reference, an
#: adapter that kept its initial weights in every fold), and a zero-width interval around it would claim a
#: certainty that no data gave (docs/trust.md, "Intervals with no spread").
ROUNDING_SPREAD = float(np.finfo(np.float32).eps)
#: The note of an interval not made for lack of spread.
NO_SPREAD_NOTE = "every value equals the estimate to float32 rounding: no spread to make an interval from"

METHODS = {
    "population": "t, crossed subjects x stimuli random effects (two-way ANOVA; Satterthwaite df capped at "
                  "min(subjects, items) - 1)",
    "stimuli": "t over subject means (these stimuli)",
    "population_one_subject": "t over stimuli (one subject: subject variance not estimable)",
}


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval.

    ``low``/``high`` are NaN when the interval is not estimable; ``note`` says why.
    """

    estimate: float
    low: float
    high: float
    se: float
    df: float
    level: float
    estimand: str
    method: str
    n_subjects: int
    n_stimuli: int
    note: str | None = None
    #: (subject, stimulus, residual) mean squares of the interval's influence table (None below 2 x 2):
    #: what another variance rule can be computed from (``fmri2img calibrate`` keeps them per world).
    mean_squares: tuple[float, float, float] | None = None

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def excludes(self, value: float) -> bool:
        """True when the interval lies entirely on one side of ``value``."""
        return self.defined and (self.low > value or self.high < value)

    def covers(self, value: float) -> bool:
        return self.defined and self.low <= value <= self.high

    def as_dict(self) -> dict:
        return asdict(self)

    def withdrawn(self, note: str) -> Interval:
        """The same estimate without an interval (NaN bounds), ``note`` saying why."""
        return _undefined(self.estimate, self.level, self.estimand, self.method, self.n_subjects, self.n_stimuli,
                          note)


def _table(Y, name: str) -> np.ndarray:
    """``Y`` as a float (n_subjects, n_stimuli) array; 1-D input is one subject."""
    arr = np.asarray(Y, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{name}: expected a (subjects x stimuli) table, got shape {np.shape(Y)}.")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: expected finite values for every subject and stimulus, got NaN or inf.")
    return arr


def mean_squares(Y) -> dict[str, float]:
    """Mean squares of the two-way ANOVA without replication of ``Y`` (n_subjects, n_stimuli).

    Returns ``{"subject", "stimulus", "residual"}`` mean squares and their degrees of freedom
    (``df_subject`` ...). Needs at least 2 subjects and 2 stimuli.
    """
    Y = _table(Y, "Y")
    ns, ni = Y.shape
    if ns < 2 or ni < 2:
        raise InputError(f"Two-way ANOVA needs at least 2 subjects and 2 stimuli, got {ns} x {ni}.")
    grand = Y.mean()
    rows, cols = Y.mean(axis=1), Y.mean(axis=0)
    resid = Y - rows[:, None] - cols[None, :] + grand
    df_s, df_i = ns - 1, ni - 1
    df_e = df_s * df_i
    return {"subject": ni * float(((rows - grand) ** 2).sum()) / df_s,
            "stimulus": ns * float(((cols - grand) ** 2).sum()) / df_i,
            "residual": float((resid ** 2).sum()) / df_e,
            "df_subject": df_s, "df_stimulus": df_i, "df_residual": df_e}


def crossed_variance_of_mean(Y) -> tuple[float, float]:
    """Variance of the grand mean of ``Y`` under crossed subject and stimulus random effects,
    and its Satterthwaite degrees of freedom (:func:`crossed_variance_from_mean_squares` of its
    two-way ANOVA)."""
    Y = _table(Y, "Y")
    ms = mean_squares(Y)
    return crossed_variance_from_mean_squares(ms["subject"], ms["stimulus"], ms["residual"], *Y.shape)


def crossed_variance_from_mean_squares(ms_subject: float, ms_stimulus: float, ms_residual: float,
                                       n_subjects: int, n_stimuli: int, fold_factor: float = 1.0
                                       ) -> tuple[float, float]:
    """Variance of a grand mean under crossed random effects from the two-way ANOVA's mean squares,
    and its Satterthwaite degrees of freedom.

    With components ``s2_s = (MS_s - MS_e) / n_i``, ``s2_i = (MS_i - MS_e) / n_s`` truncated at
    0, ``n_s n_i Var(mean) = n_i s2_s + n_s s2_i + MS_e``: ``MS_s + MS_i - MS_e`` when both
    components are positive, ``MS_i`` or ``MS_s`` when one is truncated, ``MS_e`` when both are.
    ``fold_factor`` multiplies the within-subject part ``n_s s2_i + MS_e`` (items that are
    cross-validation folds: :func:`nadeau_bengio_factor`); 1 leaves the model as it is.
    """
    ns, ni = int(n_subjects), int(n_stimuli)
    keep_s, keep_i = float(ms_subject > ms_residual), float(ms_stimulus > ms_residual)
    c = float(fold_factor)
    # coefficients of (MS_s, MS_i, MS_e) in n_s n_i Var(mean)
    terms = [(ms_subject, ns - 1, keep_s), (ms_stimulus, ni - 1, c * keep_i),
             (ms_residual, (ns - 1) * (ni - 1), c * (1.0 - keep_i) - keep_s)]
    total = sum(k * m for m, _, k in terms)
    var = total / (ns * ni)
    denom = sum((k * m) ** 2 / d for m, d, k in terms if k != 0.0)
    df = total ** 2 / denom if denom > 0 else float("inf")
    return var, df


def nadeau_bengio_factor(n_folds: int) -> float:
    """How much the variance of a k-fold cross-validated mean exceeds the naive ``s^2 / k``: the
    corrected resampled variance ``(1/k + n_test/n_train) s^2`` (Nadeau & Bengio 2003, with
    ``n_test/n_train = 1/(k-1)``) over ``s^2 / k``, i.e. ``1 + k/(k-1)`` (2.5 for 3 folds)."""
    if n_folds < 2:
        raise InputError(f"n_folds={n_folds}: cross-validation needs at least 2 folds.")
    return 1.0 + n_folds / (n_folds - 1.0)


def population_df(satterthwaite_df: float, n_subjects: int, n_items: int) -> float:
    """Degrees of freedom of a population interval: Satterthwaite's, capped at ``min(n_subjects,
    n_items) - 1``.

    The cap is the conservative bound of a two-component Satterthwaite df (as Welch's test's
    ``min(n1, n2) - 1``: Hsu 1938; Scheffe 1970): with 4 subjects, or 3 imagery folds as items, a
    variance component rests on 3 or 2 degrees of freedom, and Satterthwaite's approximation, which
    assumes the components' estimates are scaled chi-squares, overstates the df. Measured on sibling
    worlds (docs/trust.md, "Conditional truths"), uncapped population intervals covered their truth
    in 70-87% of worlds, capped ones in 83-97% (calibrated: 89%).
    """
    return float(min(satterthwaite_df, min(n_subjects, n_items) - 1))


def _interval(estimate: float, L: np.ndarray, estimand: str, level: float, bounds=None,
              note: str | None = None) -> Interval:
    """t interval around ``estimate`` from the influence table ``L`` (n_subjects, n_stimuli)."""
    check_choice("estimand", estimand, ESTIMANDS, error=InputError)
    if not 0.0 < level < 1.0:
        raise InputError(f"Invalid level={level!r}; expected a value in (0, 1).")
    ns, ni = L.shape
    method = METHODS[estimand]
    if L.size and float(np.abs(L).max()) <= ROUNDING_SPREAD:
        return _undefined(estimate, level, estimand, method, ns, ni, NO_SPREAD_NOTE)
    if estimand == "stimuli":
        if ns < 2:
            return _undefined(estimate, level, estimand, method, ns, ni, "needs at least 2 subjects")
        means = L.mean(axis=1)
        var, df = means.var(ddof=1) / ns, float(ns - 1)
    elif ns == 1:
        if ni < 2:
            return _undefined(estimate, level, estimand, method, ns, ni, "needs at least 2 stimuli")
        method = METHODS["population_one_subject"]
        var, df = L[0].var(ddof=1) / ni, float(ni - 1)
    else:
        if ni < 2:
            return _undefined(estimate, level, estimand, method, ns, ni, "needs at least 2 stimuli")
        var, df = crossed_variance_of_mean(L)
        df = population_df(df, ns, ni)
    se = math.sqrt(max(var, 0.0))
    half = float(stats.t.ppf(0.5 + level / 2.0, df)) * se
    low, high = estimate - half, estimate + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    ms = mean_squares(L) if ns >= 2 and ni >= 2 else None
    squares = None if ms is None else (ms["subject"], ms["stimulus"], ms["residual"])
    return Interval(float(estimate), float(low), float(high), se, float(df), level, estimand, method, ns, ni, note,
                    squares)


def _undefined(estimate, level, estimand, method, ns, ni, note) -> Interval:
    nan = float("nan")
    return Interval(float(estimate), nan, nan, nan, nan, level, estimand, method, ns, ni, note)


def mean_interval(Y, estimand: str = "population", level: float = DEFAULT_LEVEL,
                  bounds: tuple[float, float] | None = None) -> Interval:
    """Grand mean of ``Y`` (n_subjects, n_stimuli) with its interval for ``estimand``.

    ``bounds`` (e.g. ``(0, 1)`` for retrieval accuracies) clips the interval to the metric's
    range: the clipped interval covers whenever the unclipped one does.
    """
    Y = _table(Y, "Y")
    grand = float(Y.mean())
    return _interval(grand, Y - grand, estimand, level, bounds)


def ratio_interval(N, D, estimand: str = "population", level: float = DEFAULT_LEVEL,
                   shift: float = 0.0) -> Interval:
    """``mean(N) / mean(D) + shift`` with its delta-method interval for ``estimand``.

    ``N``, ``D``: tables of shape (n_subjects, n_stimuli) on the same subjects and stimuli
    (``shift=-1`` gives a relative change ``mean(N) / mean(D) - 1``). Undefined (NaN interval,
    with a note) when ``mean(D) <= 0``: a ratio to a base that is not above zero has no meaning.
    """
    N, D = _table(N, "numerator"), _table(D, "denominator")
    if N.shape != D.shape:
        raise InputError(f"Numerator and denominator tables differ in shape: {N.shape} vs {D.shape}.")
    d = float(D.mean())
    if not d > 0.0:
        return _undefined(float("nan"), level, estimand, METHODS[estimand], *N.shape,
                          f"base mean {d:.4g} is not above 0")
    ratio = float(N.mean()) / d
    L = (N - ratio * D) / d
    return _interval(ratio + shift, L, estimand, level)


def ratio_difference_interval(N1, D1, N2, D2, estimand: str = "population", level: float = DEFAULT_LEVEL) -> Interval:
    """``mean(N1) / mean(D1) - mean(N2) / mean(D2)`` (two ratios on the same subjects and stimuli,
    e.g. H1's ratio in two regions) with its delta-method interval; undefined when a base is not above 0."""
    tables = [_table(t, name) for t, name in ((N1, "N1"), (D1, "D1"), (N2, "N2"), (D2, "D2"))]
    if len({t.shape for t in tables}) != 1:
        raise InputError(f"The four tables of a ratio difference differ in shape: {[t.shape for t in tables]}.")
    N1, D1, N2, D2 = tables
    d1, d2 = float(D1.mean()), float(D2.mean())
    if not (d1 > 0.0 and d2 > 0.0):
        return _undefined(float("nan"), level, estimand, METHODS[estimand], *N1.shape,
                          f"base means {d1:.4g}, {d2:.4g}: not both above 0")
    r1, r2 = float(N1.mean()) / d1, float(N2.mean()) / d2
    L = (N1 - r1 * D1) / d1 - (N2 - r2 * D2) / d2
    return _interval(r1 - r2, L, estimand, level)
