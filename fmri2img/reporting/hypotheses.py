"""The research track's hypotheses, decided from an ablation's numbers (and, on the synthetic
world, checked against what was planted).

Every effect is measured **above the mean-embedding baseline** (a constant guess already
scores a high cosine, so raw cosine ratios flatter): for a score ``x`` of a configuration on a
test set, ``x - b`` where ``b`` is the baseline's score on the same stimuli. Group values are
means over subjects; CIs are percentile bootstraps over subjects (few subjects: wide CIs).

* H1 (roadmap: "60-80% of within-domain performance"): perception-only decoders, ratio of
  imagery to matched perception (NSD-Imagery vision trials of the same stimuli), per stimulus.
* H2 ("<5% perception drop with >15% imagery gain"): mixed vs perception-only training.
* H3 ("80-90% of fine-tuning performance with 10x faster training"): best adapter vs full
  fine-tuning on imagery, and their measured training times.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.vocab import ADAPTER_CONFIGURATIONS
from fmri2img.evaluation.resampling import bootstrap_ci

#: Roadmap thresholds (../shared/ROADMAP.md, "Hypotheses").
H1_EXPECTED_RANGE = (0.60, 0.80)
H2_MIN_IMAGERY_GAIN = 0.15
H2_MAX_PERCEPTION_DROP = 0.05
H3_EXPECTED_PERFORMANCE = (0.80, 0.90)
H3_EXPECTED_SPEEDUP = 10.0

#: In a null world (imagery distributed like perception) the H1 ratio is 1 up to noise; with
#: few subjects its CI can just miss 1, so a mean above this also counts as "no deficit".
NULL_MIN_RATIO = 0.8

#: The adapter configurations H3 compares with fine-tuning.
ADAPTERS = tuple(c for c, (kind, _) in ADAPTER_CONFIGURATIONS.items() if kind != "finetune")
METRIC = "cosine"
#: Bootstrap over subjects.
N_BOOT_SUBJECTS = 2_000


def _value(table: pd.DataFrame, subject, configuration, test_set, metric=METRIC, decoder=None) -> float:
    sel = ((table["subject"] == subject) & (table["configuration"] == configuration)
           & (table["test_set"] == test_set) & (table["metric"] == metric) & (table["stimulus_type"] == "all"))
    if decoder is not None:
        sel &= table["decoder"] == decoder
    rows = table.loc[sel, "value"]
    return float(rows.iloc[0]) if len(rows) and not pd.isna(rows.iloc[0]) else float("nan")


def _above(table, subject, configuration, test_set, decoder) -> float:
    base = _value(table, subject, "baseline_mean_embedding", test_set)
    return _value(table, subject, configuration, test_set, decoder=decoder) - base


def _group(values: list[float], seed: int) -> dict[str, Any]:
    arr = np.array([v for v in values if np.isfinite(v)])
    if arr.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_subjects": 0}
    ci = bootstrap_ci(arr, n_boot=N_BOOT_SUBJECTS, seed=seed) if arr.size > 1 else (None, None)
    return {"mean": float(arr.mean()), "ci_low": None if ci[0] is None else float(ci[0]),
            "ci_high": None if ci[1] is None else float(ci[1]), "n_subjects": int(arr.size),
            "per_subject": [float(v) for v in arr]}


def transfer_ratio(table, subjects, decoder, cell_metrics, seed) -> dict[str, Any]:
    ratios, per_subject = [], {}
    for subject in subjects:
        comp = cell_metrics.get((subject, f"{decoder}__perception_only"), {}).get("comparisons", {}).get("all", {})
        entry = comp.get("ratio_above_mean_embedding_baseline")
        test = comp.get("paired_test", {})
        per_subject[subject] = {"ratio": entry, "paired_test_p": test.get("p_value"),
                                "paired_test_p_holm": test.get("p_holm"), "cohen_d": test.get("cohen_d")}
        ratios.append(entry["value"] if entry else float("nan"))
    group = _group(ratios, seed)
    if group["n_subjects"] == 1:  # one subject: its own CI (bootstrap over stimuli) is the only one
        only = next(v["ratio"] for v in per_subject.values() if v["ratio"])
        group.update(ci_low=only["ci_low"], ci_high=only["ci_high"], ci="bootstrap over stimuli (one subject)")
    elif group["n_subjects"] > 1:
        group["ci"] = "bootstrap over subjects"
    verdict = "not evaluated"
    if group["mean"] is not None:
        lo, hi = group["ci_low"], group["ci_high"]
        degraded = hi is not None and hi < 1.0
        nonzero = lo is not None and lo > 0.0
        in_range = H1_EXPECTED_RANGE[0] <= group["mean"] <= H1_EXPECTED_RANGE[1]
        verdict = ("supported: transfer is degraded but non-zero" if degraded and nonzero else
                   "not supported: no transfer deficit detected" if not degraded else
                   "not supported: transfer not distinguishable from zero")
        verdict += f"; ratio {'inside' if in_range else 'outside'} the roadmap's expected 60-80%"
    return {"metric": "cosine above mean-embedding baseline, imagery / matched perception (per stimulus)",
            "group": group, "per_subject": per_subject, "verdict": verdict}


def mixed_training_gain(table, subjects, decoder, seed) -> dict[str, Any] | None:
    if not (table["configuration"] == "mixed").any():
        return None
    gains, drops = [], []
    for subject in subjects:
        po_i = _above(table, subject, "perception_only", "imagery", decoder)
        mx_i = _above(table, subject, "mixed", "imagery", decoder)
        po_p = _above(table, subject, "perception_only", "shared1000", decoder)
        mx_p = _above(table, subject, "mixed", "shared1000", decoder)
        gains.append((mx_i - po_i) / po_i if po_i > 0 else float("nan"))
        drops.append((po_p - mx_p) / po_p if po_p > 0 else float("nan"))
    gain, drop = _group(gains, seed), _group(drops, seed + 1)
    verdict = "not evaluated"
    if gain["mean"] is not None and drop["mean"] is not None:
        ok = gain["mean"] > H2_MIN_IMAGERY_GAIN and drop["mean"] < H2_MAX_PERCEPTION_DROP
        verdict = (f"{'supported' if ok else 'not supported'}: imagery gain {gain['mean']:+.1%} "
                   f"(roadmap > +15%), perception drop {drop['mean']:+.1%} (roadmap < 5%)")
    return {"metric": "relative change of cosine above mean-embedding baseline (mixed vs perception-only)",
            "imagery_gain": gain, "perception_drop": drop, "verdict": verdict}


def adapter_efficiency(table, subjects, decoder, records, seed) -> dict[str, Any] | None:
    present = set(table.loc[table["decoder"] == decoder, "configuration"])
    adapters = [a for a in ADAPTERS if a in present]
    if not adapters or "finetune" not in present:
        return None
    seconds = {(r["cell"]["subject"], r["cell"]["configuration"]): r.get("train_seconds_total")
               for r in records if r["cell"]["decoder"] == decoder}
    out: dict[str, Any] = {"metric": "imagery cosine above mean-embedding baseline", "adapters": {}}
    best_name, best_mean = None, -np.inf
    for adapter in adapters:
        perf, speed, gain = [], [], []
        for subject in subjects:
            a = _above(table, subject, adapter, "imagery", decoder)
            f = _above(table, subject, "finetune", "imagery", decoder)
            po = _above(table, subject, "perception_only", "imagery", decoder)
            perf.append(a / f if f > 0 else float("nan"))
            gain.append((a - po) / po if po > 0 else float("nan"))
            sa, sf = seconds.get((subject, adapter)), seconds.get((subject, "finetune"))
            speed.append(sf / sa if sa and sf else float("nan"))
        entry = {"performance_vs_finetune": _group(perf, seed), "speedup_vs_finetune": _group(speed, seed + 1),
                 "gain_vs_perception_only": _group(gain, seed + 2)}
        out["adapters"][adapter] = entry
        mean = entry["performance_vs_finetune"]["mean"]
        if mean is not None and mean > best_mean:
            best_name, best_mean = adapter, mean
    if best_name is not None:
        best = out["adapters"][best_name]
        speed = best["speedup_vs_finetune"]["mean"]
        ok = best_mean >= H3_EXPECTED_PERFORMANCE[0] and (speed or 0) >= H3_EXPECTED_SPEEDUP
        out["best_adapter"] = best_name
        out["verdict"] = (f"{'supported' if ok else 'not supported'}: {best_name} reaches {best_mean:.0%} of "
                          f"fine-tuning's imagery gain above baseline at {speed:.1f}x its speed "
                          "(roadmap: 80-90% at 10x)")
    return out


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


#: In a null world a gain counts as "none" up to this value (the roadmap's H2 threshold: a
#: smaller gain would not be called an effect).
NULL_MAX_GAIN = H2_MIN_IMAGERY_GAIN


def _gain_check(decoder: str, hypothesis: str, group: dict[str, Any], null: bool, planted: str) -> dict[str, Any]:
    """One H2/H3 check: the planted direction of the mean over subjects decides ``ok``;
    ``clear`` says whether the bootstrap CI over subjects also excludes zero (else the match
    is thin: a few subjects, some of them the other way)."""
    gain = group["mean"]
    per_subject = [v for v in group.get("per_subject", []) if v is not None and np.isfinite(v)]
    ok = gain <= NULL_MAX_GAIN if null else gain > 0
    clear = None if null or group.get("ci_low") is None else bool(group["ci_low"] > 0)
    return {"decoder": decoder, "hypothesis": hypothesis, "ok": bool(ok), "measured": gain, "planted": planted,
            "ci": [group.get("ci_low"), group.get("ci_high")], "clear": clear,
            "n_subjects_positive": int(sum(v > 0 for v in per_subject)), "n_subjects": len(per_subject)}


def _check_detail(check: dict[str, Any]) -> str:
    """`` (+10.3% [95% CI -4.2%, +33.0%], 2 of 4 subjects > 0; thin: the CI includes 0)`` for an
    H2/H3 check; `` (ratio 0.279 [95% CI 0.259, 0.304])`` for H1."""
    if check["hypothesis"] == "H1":
        h1 = check["measured"]
        return f" (ratio {h1['mean']:.3f} [95% CI {h1['ci_low']:.3f}, {h1['ci_high']:.3f}])"
    if check.get("ci") is None or check["ci"][0] is None:
        return ""
    low, high = check["ci"]
    text = (f" ({check['measured']:+.1%} [95% CI {low:+.1%}, {high:+.1%}], "
            f"{check['n_subjects_positive']} of {check['n_subjects']} subjects > 0")
    if check["ok"] and check.get("clear") is False:
        text += "; thin: the CI includes 0"
    elif not check["ok"] and low <= 0 <= high:  # a mismatch whose CI lies on the wrong side is not thin
        text += "; the CI includes 0"
    return text + ")"


def planted_truth_check(truth: dict[str, Any], truth_file: str, report: dict[str, Any]) -> dict[str, Any]:
    """On the synthetic world: do the verdicts match what was planted (``truth``: the world's
    ``truth/params.json``, read from ``truth_file``)?"""
    null = bool(truth.get("null"))
    checks = []
    for decoder, entry in report["decoders"].items():
        h1 = entry["H1"]["group"]
        if h1["mean"] is not None and h1["ci_low"] is not None:
            if null:
                ok = h1["ci_low"] <= 1.0 <= h1["ci_high"] or h1["mean"] > NULL_MIN_RATIO
                expect = f"no transfer deficit (ratio CI includes 1, or mean > {NULL_MIN_RATIO})"
            else:
                ok = h1["ci_high"] < 1.0 and h1["ci_low"] > 0.0
                expect = "degraded but non-zero transfer (0 < ratio CI < 1)"
            checks.append({"decoder": decoder, "hypothesis": "H1", "planted": expect, "ok": bool(ok),
                           "measured": h1})
        h2 = entry.get("H2")
        if h2 and h2["imagery_gain"]["mean"] is not None:
            checks.append(_gain_check(decoder, "H2", h2["imagery_gain"], null,
                                      "no imagery gain" if null else "mixed training improves imagery"))
        h3 = entry.get("H3")
        if h3 and h3.get("best_adapter"):
            group = h3["adapters"][h3["best_adapter"]]["gain_vs_perception_only"]
            if group["mean"] is not None:
                checks.append(_gain_check(decoder, "H3", group, null,
                                          "no adapter gain" if null else "an adapter improves imagery"))
    return {"truth_file": truth_file, "null_world": null, "planted_effects": truth.get("planted_effects", {}),
            "checks": checks, "all_match": all(c["ok"] for c in checks) if checks else None}


def decide_hypotheses(summary: pd.DataFrame, records: list[dict[str, Any]], cell_metrics: dict[tuple[str, str], Any],
                      *, subjects: list[str], decoders: list[str], seed: int,
                      truth: dict[str, Any] | None = None, truth_file: str | None = None) -> dict[str, Any]:
    """Decide H1-H3 per decoder across subjects.

    Parameters
    ----------
    summary : DataFrame
        The cross-subject results table (docs/contracts.md section 6).
    records : list of dict
        The ablation's cell records (``cell``: subject, decoder, configuration; training times...).
    cell_metrics : dict
        (subject, cell name ``<decoder>__<configuration>``) -> that cell's metrics.json.
    truth : dict, optional
        The synthetic world's ``truth/params.json`` (read from ``truth_file``): the verdicts are
        checked against what was planted.
    """
    report: dict[str, Any] = {"subjects": subjects, "decoders": {}}
    for decoder in decoders:
        entry = {"H1": transfer_ratio(summary, subjects, decoder, cell_metrics, seed)}
        h2 = mixed_training_gain(summary[summary["decoder"].isin([decoder, "none"])], subjects, decoder, seed)
        if h2:
            entry["H2"] = h2
        h3 = adapter_efficiency(summary[summary["decoder"].isin([decoder, "none"])], subjects, decoder, records,
                                seed)
        if h3:
            entry["H3"] = h3
        kept = kept_initial(records, decoder)
        if kept:
            entry["kept_initial"] = kept
        report["decoders"][decoder] = entry
    report["planted_truth"] = planted_truth_check(truth, truth_file, report) if truth is not None else None
    return report


def _fmt(group: dict[str, Any], pct: bool = False, unit: str = "") -> str:
    """``mean [95% CI low, high] (n=N subjects)``; ``unit`` follows each number (e.g. ``x``)."""
    if not group or group.get("mean") is None:
        return "n/a"
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.3f}{unit}")
    text = f(group["mean"])
    if group.get("ci_low") is not None:
        text += f" [95% CI {f(group['ci_low'])}, {f(group['ci_high'])}]"
    return text + f" (n={group['n_subjects']} subjects)"


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Perception vs imagery: hypotheses", "",
             f"Subjects: {', '.join(report['subjects'])}. Effects are measured above the mean-embedding "
             "baseline; CIs bootstrap over subjects.", ""]
    for decoder, entry in report["decoders"].items():
        lines += [f"## {decoder}", "", f"- **H1** ratio imagery/perception: {_fmt(entry['H1']['group'])}. "
                  f"Verdict: {entry['H1']['verdict']}."]
        if "H2" in entry:
            lines.append(f"- **H2** mixed training: imagery gain {_fmt(entry['H2']['imagery_gain'], True)}, "
                         f"perception drop {_fmt(entry['H2']['perception_drop'], True)}. Verdict: {entry['H2']['verdict']}.")
        if "H3" in entry and "best_adapter" in entry["H3"]:
            best = entry["H3"]["adapters"][entry["H3"]["best_adapter"]]
            lines.append(f"- **H3** {entry['H3']['best_adapter']}: {_fmt(best['performance_vs_finetune'], True)} of "
                         f"fine-tuning, speed-up {_fmt(best['speedup_vs_finetune'], unit='x')}. "
                         f"Verdict: {entry['H3']['verdict']}.")
        kept = entry.get("kept_initial")
        if kept:
            lines.append("- Fold models that kept their initial weights (no epoch beat them on the validation "
                         "stimuli; all of them: the configuration equals perception-only): "
                         + ", ".join(f"{c} {k} of {n}" for c, (k, n) in kept.items()) + ".")
        lines.append("")
    truth = report.get("planted_truth")
    if truth:
        status = "all match" if truth["all_match"] else "MISMATCH"
        thin = sum(1 for c in truth["checks"] if c["ok"] and c.get("clear") is False)
        if truth["all_match"] and thin:
            status += f" ({thin} thin: the planted direction on average, but a CI over subjects that includes 0)"
        lines += ["## Planted-truth check (synthetic world)", "",
                  f"World: {'null (imagery = perception)' if truth['null_world'] else 'planted effects'}; {status}.", ""]
        for check in truth["checks"]:
            lines.append(f"- {check['decoder']} {check['hypothesis']}: planted '{check['planted']}' -> "
                         f"{'OK' if check['ok'] else 'MISMATCH'}{_check_detail(check)}")
        lines.append("")
    return "\n".join(lines) + "\n"
