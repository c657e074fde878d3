"""Calibration of the hypothesis statistics against known truth (pure functions; the ``calibrate``
stage, :mod:`fmri2img.stages.calibrate`, runs the worlds).

Input: one row per (setting, world, decoder, statistic, estimand) with the estimate and its
interval (``estimate, low, high``). The truth of the *population* estimand:

* in a null world (imagery strength 1) it is exact: ratio 1, imagery-specific gains 0, by the
  symmetry of the design (imagery trials distributed like the matched perception trials and scored
  on as many trials);
* otherwise it is the mean estimate over the *other* worlds of the same setting (leave one out: a
  world is never judged against itself; the worlds are independent draws of stimuli, offsets,
  subjects and noise, so this mean converges to the population value).

Per (setting, decoder, statistic): coverage of the intervals (with a Clopper-Pearson interval on
the count), the rate at which the interval excludes the statistic's null value (the false-positive
rate in a null world, the power elsewhere), RMSE against the truth, bias where the truth is exact
(a leave-one-out truth has mean error 0 by construction), mean interval width.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from fmri2img.core.errors import InputError

#: Null value of each statistic (no imagery deficit, no imagery-specific gain).
NULL_VALUES = {"h1_ratio": 1.0, "h2_specific_gain": 0.0, "h3_specific_gain": 0.0}

ROW_COLUMNS = ("setting", "strength", "world_seed", "decoder", "statistic", "estimand", "estimate", "low", "high")

#: Level of the Clopper-Pearson intervals on coverage and rejection counts.
COUNT_LEVEL = 0.95


def assign_truth(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a ``truth`` column (see the module docstring); needs >= 2 worlds per planted setting."""
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(f"Calibration rows lack column {missing[0]!r}; expected {', '.join(ROW_COLUMNS)}.")
    out = rows.copy()
    out["truth"] = np.nan
    for key, part in out.groupby(["setting", "decoder", "statistic", "estimand"], sort=False):
        null = bool((part["strength"] == 1.0).all())
        if null:
            out.loc[part.index, "truth"] = NULL_VALUES[key[2]]
            continue
        finite = part["estimate"].where(np.isfinite(part["estimate"]))
        n, total = finite.notna().sum(), finite.sum()
        if n < 2:
            raise InputError(f"Setting {key[0]!r} needs at least 2 worlds with an estimate of {key[2]} for a "
                             f"leave-one-out truth; got {n}.")
        own = finite.fillna(0.0)
        out.loc[part.index, "truth"] = (total - own) / (n - finite.notna().astype(int))
    out["truth_source"] = np.where(out["strength"] == 1.0, "exact (null world)", "mean of the other worlds")
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
        cov_low, cov_high = _count_interval(int(covers.sum()), n)
        rej_low, rej_high = _count_interval(int(rejects.sum()), n)
        records.append({
            "setting": setting, "strength": float(part["strength"].iloc[0]), "decoder": decoder,
            "statistic": statistic, "estimand": estimand, "n_worlds": int(len(part)), "n_defined": n,
            "truth_mean": float(part["truth"].mean()),
            "n_covered": int(covers.sum()), "coverage": float(covers.mean()) if n else float("nan"),
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
