"""The calibration report: a markdown table and a coverage / false-positive figure of
:func:`fmri2img.evaluation.calibration.summarize`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fmri2img.evaluation.calibration import NOMINAL_LEVEL, NULL_VALUES, REGION_STATISTIC

#: What the issue asks of the intervals: coverage >= 90% of nominal 95%, null rejections 5% +/- 3%.
COVERAGE_TARGET = 0.90
FPR_TARGET = (0.02, 0.08)
NOMINAL_FPR = 0.05

#: Heading of each estimand's table.
ESTIMAND_TITLES = {"population": "Population intervals (generalise over stimuli and subjects)",
                   "stimuli": "These-stimuli intervals (generalise over subjects, for the world's own stimuli)"}

LABELS = {"h1_ratio": "H1 ratio", "h2_specific_gain": "H2 specific gain", "h3_specific_gain": "H3 specific gain",
          REGION_STATISTIC: "H1 ratio, highest - lowest planted region"}


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.0%}"


def markdown_table(summary: pd.DataFrame, estimand: str = "population") -> str:
    """Coverage (and what calibrated intervals would reach against this truth), the width factor,
    rejection rate (FPR in the null world, power elsewhere), bias and RMSE per statistic, under a
    heading naming the estimand."""
    part = summary[summary["estimand"] == estimand].sort_values(["strength", "decoder", "statistic"])
    lines = [f"**{ESTIMAND_TITLES.get(estimand, estimand)}**", "",
             "| setting | strength | decoder | statistic | truth | coverage (count) [95% CI] "
             "| calibrated would cover | width factor | rejects null value (count) [95% CI] | bias | RMSE "
             "| mean CI width | consistent with target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in part.iterrows():
        null = r["strength"] == 1.0
        # consistent: the count's interval reaches the target (few worlds cannot establish more), lowered
        # by as much as the truth's own noise lowers what calibrated intervals cover
        ok_cov = r["coverage_ci_high"] >= COVERAGE_TARGET - (NOMINAL_LEVEL - r["expected_coverage"])
        ok_fpr = r["rejection_ci_low"] <= NOMINAL_FPR <= r["rejection_ci_high"] if null else True
        flag = "yes" if ok_cov and ok_fpr else "**no**"
        lines.append(
            f"| {r['setting']} | {r['strength']:g} | {r['decoder']} | {LABELS.get(r['statistic'], r['statistic'])} "
            f"| {r['truth_mean']:.3f} | {_pct(r['coverage'])} ({r['n_covered']}/{r['n_defined']}"
            f"{_without(r['n_worlds'] - r['n_defined'])}) "
            f"[{_pct(r['coverage_ci_low'])}, {_pct(r['coverage_ci_high'])}] "
            f"| {_pct(r['expected_coverage'])} | {r['width_factor']:.2f} "
            f"| {_pct(r['rejection_rate'])} ({r['n_rejected']}/{r['n_defined']}) "
            f"[{_pct(r['rejection_ci_low'])}, {_pct(r['rejection_ci_high'])}]{' (FPR)' if null else ' (power)'} "
            f"| {'n/a' if not np.isfinite(r['bias']) else format(r['bias'], '+.4f')} | {r['rmse']:.4f} "
            f"| {r['mean_width']:.4f} | {flag} |")
    return "\n".join(lines) + "\n"


def _without(n: int) -> str:
    """How many worlds had no interval (e.g. no spread: intervals.NO_SPREAD_NOTE), when any."""
    return f"; {n} world{'s' if n != 1 else ''} without an interval" if n else ""


def sources_table(sources: pd.DataFrame) -> str:
    """:func:`fmri2img.evaluation.calibration.variance_sources` of one estimand's rows (an estimate is the
    same for both estimands) as markdown, one column per sibling role."""
    if sources.empty:
        return ""
    wide = sources.pivot_table(index=["setting", "decoder", "statistic"], columns="role", values="sd_redraw")
    lines = ["**What each redraw moves**: sd of an estimate over siblings that keep everything but the "
             "column's family (new stimuli: stimuli, offset and subjects; new subjects: subjects only; "
             "new offset: the imagery offset direction only)", "",
             "| setting | decoder | statistic | " + " | ".join(f"sd, {c}" for c in wide.columns) + " |",
             "|---|---|---|" + "---|" * len(wide.columns)]
    for (setting, decoder, statistic), r in wide.iterrows():
        lines.append(f"| {setting} | {decoder} | {LABELS.get(statistic, statistic)} | "
                     + " | ".join("n/a" if not np.isfinite(v) else f"{v:.4f}" for v in r) + " |")
    return "\n".join(lines) + "\n"


def coverage_figure(summary: pd.DataFrame, estimand: str = "population") -> Figure:
    """Left: coverage per statistic and setting with its count interval (target line at 90%, nominal
    95%); right: rejection rate of the null value (FPR band 2-8% for the null setting)."""
    part = summary[summary["estimand"] == estimand].sort_values(["strength", "decoder", "statistic"])
    fig = Figure(figsize=(10, 0.35 * len(part) + 1.8), layout="constrained")
    ax_cov, ax_rej = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(part))[::-1]
    names = [f"{r['setting']} / {r['decoder']} / {LABELS.get(r['statistic'], r['statistic'])}"
             for _, r in part.iterrows()]
    for ax, col, low, high in ((ax_cov, "coverage", "coverage_ci_low", "coverage_ci_high"),
                               (ax_rej, "rejection_rate", "rejection_ci_low", "rejection_ci_high")):
        vals = part[col].to_numpy()
        err = np.vstack([vals - part[low].to_numpy(), part[high].to_numpy() - vals])
        ax.errorbar(vals, y, xerr=err, fmt="o", capsize=3)
        ax.set_xlim(0, 1)
    ax_cov.axvline(0.95, color="k", lw=0.8, ls=":", label="nominal 95%")
    ax_cov.axvline(COVERAGE_TARGET, color="C3", lw=0.8, label="target >= 90%")
    ax_cov.set_xlabel(f"coverage of the 95% {estimand} intervals")
    ax_rej.axvspan(*FPR_TARGET, color="C2", alpha=0.2, label="null-world target 5% +/- 3%")
    ax_rej.set_xlabel("rate the interval excludes the null value\n(null world: false positives; else: power)")
    ax_cov.set_yticks(y, names)
    ax_cov.legend(loc="lower left", fontsize="small")
    ax_rej.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"Calibration over worlds with known truth ({', '.join(sorted(NULL_VALUES))})", fontsize="medium")
    return fig
