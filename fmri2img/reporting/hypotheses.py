"""The research track's hypotheses, decided from an ablation's per-stimulus scores (and, on the
synthetic world, checked against the planted truth).

Every effect is measured **above the mean-embedding baseline** (a constant guess already scores a
high cosine) on trial-count-matched scores (``cosine_matched``: imagery and its matched perception
average the same number of trials). Statistics and intervals come from
:mod:`fmri2img.evaluation.group`: each has a *population* interval (new subjects and new stimuli:
crossed random effects) and a *these stimuli* interval (new subjects only). **Verdicts use the
population interval.**

Each hypothesis gets two separate answers:

* **direction** (``supported`` / ``not supported`` / ``inconclusive``): does the interval lie on
  the hypothesis' side of its null value (H1: below 1 and above 0; H2, H3: an imagery-specific
  gain above 0), on the other side, or include the null value?
* **roadmap magnitude** (``met`` / ``not met`` / ``inconclusive``): does the interval lie inside
  the roadmap's expected range (../shared/ROADMAP.md), outside it, or across its edge?

H3's adapter is chosen on the adapters' own validation stimuli (mean best validation cosine over
folds and subjects), never on the test data it is then reported on; its speed-up is measured in
CPU time of the fold fits (a geometric mean over subjects with a t interval on log ratios). Where
the chosen adapter kept its initial weights in at least :data:`NO_OP_FOLD_SHARE` of its fold models,
its gain gets no interval and H3's direction reads inconclusive (docs/trust.md, "A rule on the
no-op folds").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.errors import InputError
from fmri2img.core.vocab import ADAPTER_CONFIGURATIONS
from fmri2img.evaluation import group
from fmri2img.evaluation.intervals import Interval

#: Roadmap expectations (../shared/ROADMAP.md, "Hypotheses").
H1_EXPECTED_RANGE = (0.60, 0.80)
H2_MIN_IMAGERY_GAIN = 0.15
H2_MAX_PERCEPTION_DROP = 0.05
H3_MIN_PERFORMANCE = 0.80
H3_MIN_SPEEDUP = 10.0

#: The interval the verdicts use (see the module docstring).
VERDICT_ESTIMAND = "population"

#: The adapter configurations H3 compares with fine-tuning.
ADAPTERS = tuple(c for c, (kind, _) in ADAPTER_CONFIGURATIONS.items() if kind != "finetune")

#: Share of the chosen adapter's fold models that kept their initial weights (no epoch beat them on their
#: validation stimuli) from which H3's gain gets no interval: its per-fold gains then mix exact zeros with
#: the trained folds' gains, and t intervals around that mixture missed the truth low (docs/trust.md,
#: "A rule on the no-op folds": half, not tuned; judged on held-out world families).
NO_OP_FOLD_SHARE = 0.5
#: The note of an H3 gain without an interval under that rule (:func:`mostly_no_op`).
NO_OP_NOTE = ("the chosen adapter kept its initial weights in {kept} of its {n} fold models: its gain mixes exact "
              "zeros with the trained folds' gains, which no t interval describes")

#: Statistics checked against the planted truth: name -> (hypothesis, description).
CHECKED_STATISTICS = {
    "h1_ratio": ("H1", "imagery / matched perception, perception-only decoder"),
    "h2_specific_gain": ("H2", "mixed training's imagery-specific gain (cosine)"),
    "h3_specific_gain": ("H3", "the chosen adapter's imagery-specific gain (cosine)"),
}


def direction(interval: Interval, null_value: float, side: str) -> str:
    """``supported`` when the interval lies on ``side`` (``'above'``/``'below'``) of ``null_value``,
    ``not supported`` when it lies on the other side, ``inconclusive`` when it includes it."""
    if not interval.defined:
        return "inconclusive"
    above, below = interval.low > null_value, interval.high < null_value
    if (above and side == "above") or (below and side == "below"):
        return "supported"
    return "not supported" if above or below else "inconclusive"


def magnitude(interval: Interval, low: float = -math.inf, high: float = math.inf) -> str:
    """``met`` when the interval lies inside [low, high], ``not met`` when it lies outside,
    ``inconclusive`` when it crosses an edge (or is undefined)."""
    if not interval.defined:
        return "inconclusive"
    if interval.low >= low and interval.high <= high:
        return "met"
    if interval.high < low or interval.low > high:
        return "not met"
    return "inconclusive"


def _both(intervals: dict[str, Interval]) -> dict[str, Any]:
    return {estimand: iv.as_dict() for estimand, iv in intervals.items()}


def _relative(scores, decoder, new, old, test_set, sign=1.0) -> dict[str, Any]:
    """A relative change, reported only when its base is clearly above zero (population CI)."""
    base = group.mean_interval_of(scores, decoder, old, test_set)
    if not base.low > 0:
        return {"reported": False, "note": f"base ({old} on {test_set}, above baseline) has CI "
                f"[{base.low:.3g}, {base.high:.3g}], not clearly above 0: a relative change would be meaningless"}
    return {"reported": True, **_both(group.relative_change(scores, decoder, new, old, test_set, sign))}


def h1(scores: pd.DataFrame, decoder: str) -> dict[str, Any]:
    intervals = group.h1_ratio(scores, decoder)
    pop = intervals[VERDICT_ESTIMAND]
    deficit, transfer = direction(pop, 1.0, "below"), direction(pop, 0.0, "above")
    if deficit == "supported" and transfer == "supported":
        verdict = "supported"
    elif deficit == "not supported" or transfer == "not supported":
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    return {"statistic": "h1_ratio", "definition": CHECKED_STATISTICS["h1_ratio"][1], "intervals": _both(intervals),
            "direction": verdict, "deficit": deficit, "transfer": transfer,
            "magnitude": magnitude(pop, *H1_EXPECTED_RANGE), "roadmap": "60-80% of matched perception"}


def h2(scores: pd.DataFrame, decoder: str) -> dict[str, Any] | None:
    if not (scores["configuration"] == "mixed").any():
        return None
    specific = group.specific_gain(scores, decoder, "mixed")
    gain = _relative(scores, decoder, "mixed", "perception_only", "imagery")
    drop = _relative(scores, decoder, "mixed", "perception_only", "shared1000", sign=-1.0)
    if gain["reported"] and drop["reported"]:
        g, d = (Interval(**gain[VERDICT_ESTIMAND]), Interval(**drop[VERDICT_ESTIMAND]))
        parts = (magnitude(g, H2_MIN_IMAGERY_GAIN), magnitude(d, high=H2_MAX_PERCEPTION_DROP))
        mag = "met" if parts == ("met", "met") else "not met" if "not met" in parts else "inconclusive"
    else:
        mag = "inconclusive"
    return {"statistic": "h2_specific_gain", "definition": CHECKED_STATISTICS["h2_specific_gain"][1],
            "intervals": _both(specific), "direction": direction(specific[VERDICT_ESTIMAND], 0.0, "above"),
            "imagery_gain": gain, "perception_drop": drop, "magnitude": mag,
            "roadmap": "imagery gain > 15% with perception drop < 5%"}


def choose_adapter(records: list[dict[str, Any]], decoder: str, present: set[str]) -> tuple[str | None, dict]:
    """The adapter with the highest mean validation cosine (its folds' own validation stimuli)."""
    val: dict[str, list[float]] = {}
    for r in records:
        cfg = r["cell"]["configuration"]
        if r["cell"]["decoder"] == decoder and cfg in ADAPTERS and cfg in present and r.get("val_cosine_mean"):
            val.setdefault(cfg, []).append(float(r["val_cosine_mean"]))
    means = {cfg: float(np.mean(v)) for cfg, v in val.items()}
    return (max(means, key=means.get) if means else None), means


def _speedup(records, decoder, adapter) -> dict[str, Any]:
    cpu = {(r["cell"]["subject"], r["cell"]["configuration"]): r.get("train_cpu_seconds_total")
           for r in records if r["cell"]["decoder"] == decoder}
    pairs = [(cpu.get((s, "finetune")), cpu.get((s, adapter))) for s in sorted({s for s, _ in cpu})]
    pairs = [(f, a) for f, a in pairs if f and a]
    if len(pairs) < 2:
        return {"reported": False, "note": "needs CPU times of at least 2 subjects"}
    iv = group.log_ratio_interval([f for f, _ in pairs], [a for _, a in pairs])
    return {"reported": True, "measured": "CPU seconds of the fold fits (process time)", **iv.as_dict()}


def h3(scores: pd.DataFrame, decoder: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    present = set(scores.loc[scores["decoder"] == decoder, "configuration"])
    adapter, val_means = choose_adapter(records, decoder, present)
    if adapter is None or "finetune" not in present:
        return None
    specific = group.specific_gain(scores, decoder, adapter)
    kept, n = kept_initial(records, decoder).get(adapter, (0, 0))
    if mostly_no_op(kept, n):
        specific = {e: iv.withdrawn(NO_OP_NOTE.format(kept=kept, n=n)) for e, iv in specific.items()}
    perf = group.performance_ratio(scores, decoder, adapter, "finetune")
    speed = _speedup(records, decoder, adapter)
    parts = (magnitude(perf[VERDICT_ESTIMAND], H3_MIN_PERFORMANCE),
             magnitude(Interval(**{k: speed[k] for k in Interval.__dataclass_fields__}), H3_MIN_SPEEDUP)
             if speed["reported"] else "inconclusive")
    mag = "met" if parts == ("met", "met") else "not met" if "not met" in parts else "inconclusive"
    return {"statistic": "h3_specific_gain", "definition": CHECKED_STATISTICS["h3_specific_gain"][1],
            "chosen_adapter": adapter, "chosen_on": "mean best validation cosine of the adapters' folds",
            "validation_cosine": val_means, "intervals": _both(specific),
            "direction": direction(specific[VERDICT_ESTIMAND], 0.0, "above"),
            "performance_vs_finetune": _both(perf), "speedup_vs_finetune": speed, "magnitude": mag,
            "roadmap": ">= 80% of fine-tuning's imagery score at >= 10x less training time"}


def mostly_no_op(kept, n):
    """True where ``kept`` of ``n`` fold models (scalars or arrays) reach :data:`NO_OP_FOLD_SHARE`: H3's
    gain then gets no interval (the report here; ``projects/imagery/interval_rules.py`` for older runs)."""
    return (n > 0) & (kept >= NO_OP_FOLD_SHARE * n)


def kept_initial(records, decoder) -> dict[str, list[int]]:
    """``{configuration: [fold models that kept their initial weights, fold models]}`` of the
    adapter and fine-tune cells of ``decoder``, for configurations where any did (no-ops)."""
    kept: dict[str, list[int]] = {}
    for r in records:
        if r["cell"]["decoder"] == decoder and r.get("n_fold_models"):
            counts = kept.setdefault(r["cell"]["configuration"], [0, 0])
            counts[0] += int(r.get("n_folds_kept_initial") or 0)
            counts[1] += int(r["n_fold_models"])
    return {c: k for c, k in kept.items() if k[0] > 0}


def planted_truth_check(report: dict[str, Any], truth: dict[str, Any], truth_table: dict[str, Any] | None
                        ) -> dict[str, Any]:
    """Each checked statistic: the truth, the estimate, its population CI, OK when the CI covers the truth.

    ``truth``: the world's ``truth/params.json``. A null world (imagery strength 1) has exact truth:
    ratio 1, gains 0. Otherwise ``truth_table`` (``{"decoders": {decoder: {statistic: value}}, "se": {...},
    "n_worlds": n}``, simulated by ``fmri2img calibrate --write-truth`` for the world's parameters) gives
    it with its simulation standard error; a statistic it lacks is reported without a check.
    """
    strength = truth.get("params", {}).get("imagery_strength")
    null = bool(truth.get("null")) or strength == 1.0
    exact = {"h1_ratio": 1.0, "h2_specific_gain": 0.0, "h3_specific_gain": 0.0}
    table = truth_table or {}
    checks = []
    for decoder, entry in report["decoders"].items():
        for hyp in ("H1", "H2", "H3"):
            result = entry.get(hyp)
            if not result:
                continue
            stat = result["statistic"]
            iv = Interval(**result["intervals"][VERDICT_ESTIMAND])
            value = exact[stat] if null else table.get("decoders", {}).get(decoder, {}).get(stat)
            se = 0.0 if null else table.get("se", {}).get(decoder, {}).get(stat)
            check = {"decoder": decoder, "hypothesis": hyp, "statistic": stat, "truth": value,
                     "truth_se": se if value is not None else None,
                     "truth_source": "exact (null world)" if null else "simulated truth table" if value is not None
                     else None, "estimate": iv.estimate, "ci": [iv.low, iv.high]}
            check["ok"] = None if value is None or not iv.defined else bool(iv.covers(value))
            checks.append(check)
    decided = [c["ok"] for c in checks if c["ok"] is not None]
    return {"null_world": null, "imagery_strength": strength, "checks": checks, "n_checked": len(decided),
            "n_ok": int(sum(decided)), "all_match": all(decided) if decided else None,
            "truth_n_worlds": None if null else table.get("n_worlds"),
            "truth_world_seed": None if null else table.get("world_seed"),
            "expected_misses": 0.05 * len(decided)}


def decide_hypotheses(scores: pd.DataFrame, records: list[dict[str, Any]], *, subjects: list[str],
                      decoders: list[str], truth: dict[str, Any] | None = None,
                      truth_table: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decide H1-H3 per decoder.

    Parameters
    ----------
    scores : DataFrame
        Per-stimulus scores of every cell (columns :data:`fmri2img.evaluation.group.SCORE_COLUMNS`).
    records : list of dict
        The ablation's cell records (``cell``: subject, decoder, configuration; ``val_cosine_mean``,
        ``train_cpu_seconds_total`` of adapter cells).
    truth, truth_table : dict, optional
        The synthetic world's ``truth/params.json`` and its simulated truth (see :func:`planted_truth_check`).
    """
    if scores.empty:
        raise InputError("No per-stimulus scores to decide the hypotheses from.")
    report: dict[str, Any] = {"subjects": subjects, "verdict_estimand": VERDICT_ESTIMAND, "decoders": {}}
    for decoder in decoders:
        entry = {"H1": h1(scores, decoder), "H2": h2(scores, decoder), "H3": h3(scores, decoder, records),
                 "kept_initial": kept_initial(records, decoder) or None}
        report["decoders"][decoder] = {k: v for k, v in entry.items() if v is not None}
    report["planted_truth"] = planted_truth_check(report, truth, truth_table) if truth is not None else None
    return report
