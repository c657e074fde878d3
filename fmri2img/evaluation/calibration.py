"""Calibration of the hypothesis statistics against known truth (pure functions; the ``calibrate``
stage, :mod:`fmri2img.stages.calibrate`, runs the worlds).

Input: one row per (setting, world, decoder, statistic, estimand) with the estimate and its
interval (``estimate, low, high``). The truth of the *population* estimand:

* in a null world (imagery strength 1) it is exact: ratio 1, imagery-specific gains 0, by the
  symmetry of the design (imagery trials distributed like the matched perception trials and scored
  on as many trials);
* otherwise it is the mean estimate over the *other* worlds of the same setting (leave one out: a
  world is never judged against itself; the worlds are independent draws of every family: latent
  geometry and imagery offset direction, stimuli, subjects and noise, so this mean converges to the
  value averaged over world families).

With sibling worlds (rows with a ``role`` other than :data:`ROLE_WORLD`: worlds that share a world's
family, ``WorldSeeds.world``: latent geometry, renderer and imagery offset direction, and redraw its
stimuli and subjects, or share its stimuli too and redraw only its subjects) the truths are
*conditional*: a population interval is judged against the mean of the other worlds of its family (the world and its
new-stimuli siblings), a these-stimuli interval against the mean of the other worlds with the same
stimuli (the world and its new-subjects siblings). Rows that do not belong to the estimand's family
(a new-subjects sibling's population interval, a new-stimuli sibling's these-stimuli interval, every
row of a new-offset sibling: those only feed :func:`variance_sources`) are dropped, and so are an
estimand's rows when no sibling of its family was drawn. In the null world every row keeps its exact truth.

Per (setting, decoder, statistic): coverage of the intervals (with a Clopper-Pearson interval on
the count), the coverage a calibrated interval reaches against a truth that is itself a mean of
``m`` worlds (``2 Phi(z / sqrt(1 + 1/m)) - 1``: the truth's own noise lowers it), the width factor
(the 95th percentile over worlds of ``|estimate - truth| / (half-width sqrt(1 + 1/m))``: how many
times wider the intervals would have to be to cover the truth in 95% of worlds; ~1 for calibrated
intervals whatever their degrees of freedom, above 1 for too narrow ones), the rate at which the interval excludes the
statistic's null value (the false-positive rate in a null world, the power elsewhere), RMSE against
the truth, bias where the truth is exact (a leave-one-out truth has mean error 0 by construction),
mean interval width.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from fmri2img.core.errors import InputError
from fmri2img.evaluation.intervals import crossed_variance_from_mean_squares, population_df

#: The planted region-ordering check's statistic: H1 ratio of the highest minus the lowest planted-gain region.
REGION_STATISTIC = "region_difference"

#: Null value of each statistic (no imagery deficit, no imagery-specific gain, no difference between regions).
NULL_VALUES = {"h1_ratio": 1.0, "h2_specific_gain": 0.0, "h3_specific_gain": 0.0, REGION_STATISTIC: 0.0}

ROW_COLUMNS = ("setting", "strength", "world_seed", "decoder", "statistic", "estimand", "estimate", "low", "high")

#: Roles of a world in its family (column ``role``; absent means every row is :data:`ROLE_WORLD`).
ROLE_WORLD, ROLE_NEW_STIMULI, ROLE_NEW_SUBJECTS, ROLE_NEW_OFFSET = "world", "new stimuli", "new subjects", "new offset"

#: The sibling roles: what each redraws of its world (docs/trust.md).
SIBLING_ROLES = (ROLE_NEW_STIMULI, ROLE_NEW_SUBJECTS, ROLE_NEW_OFFSET)

#: Which roles share the truth of each estimand within a family of siblings.
FAMILY_OF_ESTIMAND = {"population": (ROLE_WORLD, ROLE_NEW_STIMULI), "stimuli": (ROLE_WORLD, ROLE_NEW_SUBJECTS)}

#: Level of the Clopper-Pearson intervals on coverage and rejection counts.
COUNT_LEVEL = 0.95

#: Level of the intervals under calibration (every reported interval is a 95% one).
NOMINAL_LEVEL = 0.95

#: Columns of a calibration row holding its interval's two-way ANOVA (subject, item, residual mean squares).
MEAN_SQUARE_COLUMNS = ("ms_subject", "ms_item", "ms_residual")

#: Statistics whose items are imagery cross-validation folds (the per-fold gains of H2 and H3).
FOLD_STATISTICS = ("h2_specific_gain", "h3_specific_gain")


def _leave_one_out_means(estimates: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean of the other rows' finite estimates, and how many there were."""
    finite = estimates.where(np.isfinite(estimates))
    n_other = finite.notna().sum() - finite.notna().astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (finite.sum() - finite.fillna(0.0)) / n_other
    return means.to_numpy(dtype=float), n_other.to_numpy(dtype=float)


def remake_intervals(rows: pd.DataFrame, *, cap_df: bool = True, fold_factor: float = 1.0,
                     fold_statistics: tuple[str, ...] = FOLD_STATISTICS) -> pd.DataFrame:
    """``rows`` with every population interval remade from its mean squares by another rule.

    ``cap_df``: cap Satterthwaite's df at ``min(subjects, items) - 1`` (the reported rule);
    ``fold_factor``: the within-subject variance factor of the statistics in ``fold_statistics``
    (:func:`~fmri2img.evaluation.intervals.nadeau_bengio_factor`). Estimates are unchanged; rows of
    the other estimands, and rows without mean squares, keep their intervals.
    """
    missing = [c for c in (*ROW_COLUMNS, *MEAN_SQUARE_COLUMNS, "n_subjects", "n_items") if c not in rows.columns]
    if missing:
        raise InputError(f"Calibration rows lack column {missing[0]!r}: remaking intervals needs the mean squares "
                         "kept by fmri2img calibrate.")
    out = rows.copy()
    for i, r in out[(out["estimand"] == "population") & out["ms_residual"].notna()].iterrows():
        factor = fold_factor if r["statistic"] in fold_statistics else 1.0
        var, df = crossed_variance_from_mean_squares(r["ms_subject"], r["ms_item"], r["ms_residual"],
                                                     r["n_subjects"], r["n_items"], fold_factor=factor)
        if cap_df:
            df = population_df(df, int(r["n_subjects"]), int(r["n_items"]))
        half = float(stats.t.ppf(0.5 + NOMINAL_LEVEL / 2, df)) * float(np.sqrt(max(var, 0.0)))
        out.loc[i, ["low", "high", "df"]] = r["estimate"] - half, r["estimate"] + half, df
        if "se" in out.columns:
            out.loc[i, "se"] = float(np.sqrt(max(var, 0.0)))
    return out


def assign_truth(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``truth``, ``truth_n`` (how many worlds its mean is over; inf when exact) and
    ``truth_source`` columns (see the module docstring); needs >= 2 worlds per planted setting (or
    per family, with siblings)."""
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(f"Calibration rows lack column {missing[0]!r}; expected {', '.join(ROW_COLUMNS)}.")
    out = rows.copy()
    if "role" not in out.columns:
        out["role"] = ROLE_WORLD
    siblings = bool((out["role"] != ROLE_WORLD).any())
    null_rows = out["strength"] == 1.0
    if siblings:  # a row outside its estimand's family (or in a family without siblings) has no truth
        roles = set(out["role"])
        judged = {e for e, family in FAMILY_OF_ESTIMAND.items() if roles & (set(family) - {ROLE_WORLD})}
        in_family = np.array([e in judged and r in FAMILY_OF_ESTIMAND[e] for r, e in zip(out["role"], out["estimand"])],
                             dtype=bool)
        keep = null_rows.to_numpy() | in_family
        out = out[keep].reset_index(drop=True)
        null_rows = out["strength"] == 1.0
    out["truth"], out["truth_n"] = np.nan, np.inf
    out["truth_source"] = "exact (null world)"
    if null_rows.any():
        out.loc[null_rows, "truth"] = out.loc[null_rows, "statistic"].map(NULL_VALUES).astype(float)
    keys = ["setting", "decoder", "statistic", "estimand"] + (["world_seed"] if siblings else [])
    for key, part in out[~null_rows].groupby(keys, sort=False):
        means, n_other = _leave_one_out_means(part["estimate"])
        if (n_other < 1).any():
            raise InputError(f"Setting {key[0]!r} needs at least 2 worlds with an estimate of {key[2]} for a "
                             f"leave-one-out truth{' in each family' if siblings else ''}; got "
                             f"{int(n_other.min()) + 1}.")
        out.loc[part.index, "truth"], out.loc[part.index, "truth_n"] = means, n_other
        out.loc[part.index, "truth_source"] = ("mean of the other worlds of its family" if siblings
                                               else "mean of the other worlds")
    return out


def _count_interval(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=COUNT_LEVEL, method="exact")
    return float(ci.low), float(ci.high)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, decoder, statistic, estimand): coverage, rejection rate, bias, RMSE, width."""
    if "truth" not in rows.columns:
        rows = assign_truth(rows)
    records = []
    for (setting, decoder, statistic, estimand), part in rows.groupby(
            ["setting", "decoder", "statistic", "estimand"], sort=False):
        defined = part[np.isfinite(part["low"]) & np.isfinite(part["high"])]
        covers = (defined["low"] <= defined["truth"]) & (defined["truth"] <= defined["high"])
        null = NULL_VALUES[statistic]
        null_world = bool((part["strength"] == 1.0).all())
        rejects = (defined["low"] > null) | (defined["high"] < null)
        err = (part["estimate"] - part["truth"]).to_numpy(dtype=float)
        err = err[np.isfinite(err)]
        n = len(defined)
        inflation = 1.0 + 1.0 / defined["truth_n"].to_numpy(dtype=float)  # the truth's own noise (0 when exact)
        z = stats.norm.ppf(0.5 + NOMINAL_LEVEL / 2)
        half = (defined["high"] - defined["low"]).to_numpy(dtype=float) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.abs(defined["estimate"] - defined["truth"]).to_numpy(dtype=float) / (half * np.sqrt(inflation))
        scaled = scaled[np.isfinite(scaled)]
        cov_low, cov_high = _count_interval(int(covers.sum()), n)
        rej_low, rej_high = _count_interval(int(rejects.sum()), n)
        records.append({
            "setting": setting, "strength": float(part["strength"].iloc[0]), "decoder": decoder,
            "statistic": statistic, "estimand": estimand, "n_worlds": int(len(part)), "n_defined": n,
            "truth_mean": float(part["truth"].mean()),
            "n_covered": int(covers.sum()), "coverage": float(covers.mean()) if n else float("nan"),
            "expected_coverage": float(np.mean(2 * stats.norm.cdf(z / np.sqrt(inflation)) - 1)) if n else float("nan"),
            "width_factor": float(np.quantile(scaled, NOMINAL_LEVEL)) if scaled.size else float("nan"),
            "coverage_ci_low": cov_low, "coverage_ci_high": cov_high,
            "n_rejected": int(rejects.sum()), "rejection_rate": float(rejects.mean()) if n else float("nan"),
            "rejection_ci_low": rej_low, "rejection_ci_high": rej_high,
            # a leave-one-out truth makes the mean error 0 by construction: bias only against exact truth
            "bias": float(err.mean()) if err.size and null_world else float("nan"),
            "rmse": float(np.sqrt((err**2).mean())) if err.size else float("nan"),
            "mean_width": float((defined["high"] - defined["low"]).mean()) if n else float("nan"),
        })
    return pd.DataFrame.from_records(records)


def headline(summary: pd.DataFrame, estimand: str = "population") -> dict[str, float]:
    """``coverage_min`` over every statistic and setting, ``fpr_max`` over the null settings."""
    part = summary[summary["estimand"] == estimand]
    if part.empty:
        raise InputError(f"No calibration rows for estimand {estimand!r}.")
    null = part[part["strength"] == 1.0]
    return {"coverage_min": float(part["coverage"].min()),
            "fpr_max": float(null["rejection_rate"].max()) if len(null) else float("nan")}


def variance_sources(rows: pd.DataFrame) -> pd.DataFrame:
    """How much each sibling role's redraw moves the estimates.

    Per (setting, decoder, statistic, estimand, sibling role): ``sd_redraw``, the standard deviation
    of an estimate given everything the role keeps (sqrt of the mean over (world, sibling) pairs of
    ``(sibling - world)^2 / 2``: both are independent draws given what they share). Empty without a
    ``role`` column.
    """
    if "role" not in rows.columns:
        return pd.DataFrame()
    keys = ["setting", "decoder", "statistic", "estimand"]
    worlds = rows[rows["role"] == ROLE_WORLD][[*keys, "world_seed", "estimate"]]
    pairs = rows[rows["role"] != ROLE_WORLD][[*keys, "world_seed", "role", "estimate"]].merge(
        worlds, on=[*keys, "world_seed"], suffixes=("", "_world"))
    records = []
    for (*key, role), part in pairs.groupby([*keys, "role"], sort=False):
        diffs = (part["estimate"] - part["estimate_world"]).to_numpy(dtype=float)
        diffs = diffs[np.isfinite(diffs)]
        records.append({**dict(zip(keys, key)), "role": role, "n_pairs": int(diffs.size),
                        "sd_redraw": float(np.sqrt(np.mean(diffs**2) / 2)) if diffs.size else float("nan")})
    return pd.DataFrame.from_records(records)
