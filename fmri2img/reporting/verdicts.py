"""report.md: the hypotheses' verdicts (:mod:`fmri2img.reporting.hypotheses`) in words a reader
cannot misread: every number with its interval, direction and roadmap magnitude apart, and the
planted-truth check as a table of truth, estimate and interval."""

from __future__ import annotations

import math
from typing import Any

from fmri2img.reporting.field_report import battery_summary_lines
from fmri2img.reporting.hypotheses import VERDICT_ESTIMAND
from fmri2img.reporting.region_report import render_regions

INTRO = (
    "Every H1-H3 cosine is a CLIP cosine **above the mean-embedding baseline** (the score of a constant "
    "guess), on trial-count-matched scores (imagery and its matched perception average the same number of "
    "trials); ratios and percentages are computed from those scores. The validation cosines that choose H3's "
    "adapter are plain cosines on the adapters' own validation stimuli. "
    "Brackets are 95% confidence intervals for the **population** of subjects and stimuli (subjects and "
    "stimuli as crossed random effects), which the verdicts use; intervals for *these* stimuli (new subjects "
    "only) are in hypotheses.json.\n\n"
    "Each hypothesis gets two answers. **Direction**: *supported* when the interval lies on the hypothesis' "
    "side of its null value, *not supported* when it lies on the other side (evidence against), "
    "*inconclusive* when it includes the null value (the data cannot tell). **Roadmap magnitude**: *met* "
    "when the interval lies inside the "
    "roadmap's expected range, *not met* when it lies outside, *inconclusive* when it crosses an edge."
)


def _num(value: float, pct: bool = False, unit: str = "", signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if pct:
        return f"{value:+.1%}" if signed else f"{value:.1%}"
    return (f"{value:+.3f}" if signed else f"{value:.3f}") + unit


def interval_text(iv: dict[str, Any], pct: bool = False, unit: str = "", signed: bool = False) -> str:
    """``0.412 [95% CI 0.220, 0.604]``, or the estimate and why no interval."""
    text = _num(iv["estimate"], pct, unit, signed)
    if iv["low"] is None or not math.isfinite(iv["low"]):
        return text + f" (no interval: {iv.get('note') or 'not estimable'})"
    return text + f" [95% CI {_num(iv['low'], pct, unit, signed)}, {_num(iv['high'], pct, unit, signed)}]"


def _relative_text(entry: dict[str, Any], label: str) -> str:
    if not entry["reported"]:
        return f"{label} not reported ({entry['note']})"
    return f"{label} {interval_text(entry[VERDICT_ESTIMAND], pct=True, signed=True)}"


def _h1_line(h1: dict[str, Any]) -> str:
    return (f"- **H1** transfer (perception-only decoder, imagery / matched perception): "
            f"{interval_text(h1['intervals'][VERDICT_ESTIMAND])}. Direction (below 1 and above 0): "
            f"**{h1['direction']}**. Roadmap magnitude ({h1['roadmap']}): **{h1['magnitude']}**.")


def _h2_line(h2: dict[str, Any]) -> str:
    return (f"- **H2** mixed training: imagery-specific gain (gain on imagery minus gain on matched perception) "
            f"{interval_text(h2['intervals'][VERDICT_ESTIMAND], signed=True)}; "
            f"{_relative_text(h2['imagery_gain'], 'relative imagery gain')}; "
            f"{_relative_text(h2['perception_drop'], 'perception drop on shared1000 (positive: worse)')}. "
            f"Direction (specific gain above 0; the percentages serve the roadmap only): **{h2['direction']}**. "
            f"Roadmap magnitude ({h2['roadmap']}): **{h2['magnitude']}**.")


def _h3_line(h3: dict[str, Any]) -> str:
    val = ", ".join(f"{k} {v:.4f}" for k, v in sorted(h3["validation_cosine"].items()))
    speed = h3["speedup_vs_finetune"]
    speed_text = (f"speed-up {interval_text(speed, unit='x')} in CPU time (above 1x: the adapter trains faster)"
                  if speed["reported"]
                  else f"speed-up not reported ({speed['note']})")
    return (f"- **H3** {h3['chosen_adapter']} (chosen on validation cosine: {val}): imagery-specific gain over "
            "the perception-only decoder "
            f"{interval_text(h3['intervals'][VERDICT_ESTIMAND], signed=True)}; "
            f"{interval_text(h3['performance_vs_finetune'][VERDICT_ESTIMAND], pct=True)} of fine-tuning's "
            f"imagery score; {speed_text}. Direction (specific gain above 0): **{h3['direction']}**. "
            f"Roadmap magnitude ({h3['roadmap']}): **{h3['magnitude']}**.")


def _truth_lines(truth: dict[str, Any]) -> list[str]:
    world = ("null world (imagery strength 1: imagery distributed like perception; exact truth: ratio 1, gains 0)"
             if truth["null_world"] else f"imagery strength {truth['imagery_strength']} (the generator's one knob "
             "for every imagery effect: 1 = imagery distributed like perception; docs/synthetic_world.md)")
    lines = ["## Planted-truth check (synthetic world)", "", f"World: {world}."]
    if truth["n_checked"]:
        lines.append(f"{truth['n_ok']} of {truth['n_checked']} population intervals cover the truth "
                     f"(at 95%, about {truth['expected_misses']:.1f} misses are expected by chance).")
        if truth.get("truth_n_worlds"):
            family = truth.get("truth_world_seed")
            others = (f"{truth['truth_n_worlds']} sibling worlds of this world (the same latent geometry and "
                      f"imagery offset direction, world seed {family}; new stimuli and new subjects)"
                      if family is not None else
                      f"{truth['truth_n_worlds']} other worlds with these parameters and other seeds")
            lines.append(f"The truth is simulated, not exact: the population value (new subjects and new stimuli) "
                         f"for this world's parameters, estimated as the mean of the same statistic over "
                         f"{others} (`fmri2img calibrate --write-truth`), +/- its standard error (sd over worlds / "
                         "sqrt(worlds)). An interval covers the truth when it contains that mean. The check "
                         "tests the intervals' width, not the statistic's bias (the truth shares it), and only "
                         "the statistics the directions are decided on; docs/trust.md has the coverage over "
                         "many worlds.")
    else:
        lines.append("No truth is tabulated for this world's parameters: the estimates are listed unchecked "
                     "(`fmri2img calibrate --write-truth` simulates it).")
    lines += ["", "| decoder | hypothesis | statistic | truth | estimate | 95% CI | CI covers truth |",
              "|---|---|---|---|---|---|---|"]
    for c in truth["checks"]:
        ok = "n/a" if c["ok"] is None else "yes" if c["ok"] else "**no**"
        value = _num(c["truth"]) + (f" +/- {_num(c['truth_se'])}" if c.get("truth_se") else "")
        ci = (f"[{_num(c['ci'][0])}, {_num(c['ci'][1])}]" if c["ci"][0] is not None and math.isfinite(c["ci"][0])
              else "no interval")
        lines.append(f"| {c['decoder']} | {c['hypothesis']} | {c['statistic']} | {value} | "
                     f"{_num(c['estimate'])} | {ci} | {ok} |")
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """The report.md text of a :func:`~fmri2img.reporting.hypotheses.decide_hypotheses` report."""
    where = report.get("region")
    region = (f" Region: {where['name']} ({where['voxel_selection']} voxels)"
              + ("; the other regions are compared below." if report.get("regions") else ".")) if where else ""
    lines = ["# Perception vs imagery: hypotheses", "", f"Subjects: {', '.join(report['subjects'])}.{region}", "",
             INTRO, ""]
    for decoder, entry in report["decoders"].items():
        lines += [f"## {decoder}", "", _h1_line(entry["H1"])]
        if "H2" in entry:
            lines.append(_h2_line(entry["H2"]))
        if "H3" in entry:
            lines.append(_h3_line(entry["H3"]))
        if entry.get("kept_initial"):
            lines.append("- Fold models that kept their initial weights (no epoch beat them on the validation "
                         "stimuli; all of them: the configuration equals perception-only): "
                         + ", ".join(f"{c} {k} of {n}" for c, (k, n) in entry["kept_initial"].items()) + ".")
        lines.append("")
    if report.get("regions"):
        lines += render_regions(report["regions"])
    if report.get("field_battery"):
        lines += battery_summary_lines(report["field_battery"]["rows"])
    if report.get("planted_truth"):
        lines += _truth_lines(report["planted_truth"])
    return "\n".join(lines) + "\n"
