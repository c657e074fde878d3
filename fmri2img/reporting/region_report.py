"""Where in visual cortex imagery transfers: H1's ratio (imagery / matched perception, above the
mean-embedding baseline, perception-only decoder) per region with its intervals, the region where
it is largest, each region's noise ceiling beside its scores (so that "no signal" and "a bad
decoder" can be told apart) and, on the synthetic world, whether the planted ordering is recovered.

The ordering check compares the regions with the highest and the lowest planted imagery gain:
OK when the population interval of their H1 ratio difference lies above 0. The world plants gains,
not H1 ratios, so the check is on the order the gains imply, not on a magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fmri2img.core.errors import InputError
from fmri2img.evaluation import group
from fmri2img.evaluation.intervals import Interval
from fmri2img.reporting import style
from fmri2img.reporting.tables import ordered

#: The interval verdicts use (as :mod:`fmri2img.reporting.hypotheses`).
ESTIMAND = "population"

#: Region facts shown beside the scores: key in a region_info -> column title.
INFO_COLUMNS = {"n_voxels": "voxels", "median_ncsnr": "median ncsnr",
                "median_noise_ceiling_1trial_pct": "NC 1 trial (%)", "median_noise_ceiling_3trial_pct": "NC 3 trials (%)"}


def _as_dicts(intervals: Mapping[str, Interval]) -> dict[str, dict[str, Any]]:
    return {estimand: iv.as_dict() for estimand, iv in intervals.items()}


def _median_info(infos: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Median over subjects of each :data:`INFO_COLUMNS` value (None where no subject has one)."""
    out: dict[str, float | None] = {}
    for key in INFO_COLUMNS:
        values = [float(v[key]) for v in infos.values() if v.get(key) is not None]
        out[key] = float(np.median(values)) if values else None
    return out


def _ratio(scores: pd.DataFrame, decoder: str, region: str) -> dict[str, Interval] | None:
    try:
        return group.h1_ratio(scores[scores["region"] == region], decoder)
    except InputError:  # this decoder has no perception-only cell in this region
        return None


def region_comparison(scores: pd.DataFrame, decoders: Sequence[str], regions: Sequence[str],
                      infos: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      planted: Mapping[str, float] | None = None) -> dict[str, Any]:
    """H1's ratio per region and decoder, the largest region, and the planted ordering check.

    Parameters
    ----------
    scores : DataFrame
        Per-stimulus scores with a ``region`` column (:data:`~fmri2img.evaluation.group.SCORE_COLUMNS` + region).
    infos : dict
        ``{region: {subject: region_info}}`` (voxel counts, median ncsnr and noise ceilings).
    planted : dict, optional
        ``{region: planted mean imagery gain}`` of a synthetic world.
    """
    report: dict[str, Any] = {"regions": list(regions), "estimand": ESTIMAND,
                              "info": {r: _median_info(infos.get(r, {})) for r in regions},
                              "info_by_subject": {r: dict(infos.get(r, {})) for r in regions}, "decoders": {}}
    for decoder in decoders:
        ratios = {r: iv for r in regions if (iv := _ratio(scores, decoder, r)) is not None}
        defined = {r: iv[ESTIMAND].estimate for r, iv in ratios.items() if np.isfinite(iv[ESTIMAND].estimate)}
        entry: dict[str, Any] = {"h1_ratio": {r: _as_dicts(iv) for r, iv in ratios.items()}}
        if defined:
            ranked = sorted(defined, key=defined.get, reverse=True)
            entry["largest"] = ranked[0]
            if len(ranked) > 1:
                entry["next"] = ranked[1]
                entry["largest_minus_next"] = _as_dicts(_difference(scores, decoder, ranked[0], ranked[1]))
        report["decoders"][decoder] = entry
    if planted:
        report["planted"] = planted_order_check(scores, decoders, regions, planted)
    return report


def _difference(scores: pd.DataFrame, decoder: str, a: str, b: str) -> dict[str, Interval]:
    return group.h1_ratio_difference(scores[scores["region"] == a], scores[scores["region"] == b], decoder)


def planted_order_check(scores: pd.DataFrame, decoders: Sequence[str], regions: Sequence[str],
                        planted: Mapping[str, float]) -> dict[str, Any]:
    """Per decoder: H1 ratio of the highest-gain region minus the lowest-gain one; OK when its
    population interval lies above 0. Each check keeps both estimands' intervals (``intervals``: what
    ``fmri2img calibrate`` scores)."""
    order = sorted(regions, key=lambda r: planted[r], reverse=True)
    high, low = order[0], order[-1]
    checks = []
    for decoder in decoders:
        try:
            both = _difference(scores, decoder, high, low)
        except InputError:
            continue
        iv = both[ESTIMAND]
        checks.append({"decoder": decoder, "high": high, "low": low, "estimate": iv.estimate,
                       "ci": [iv.low, iv.high], "ok": bool(iv.defined and iv.low > 0.0),
                       "intervals": _as_dicts(both)})
    return {"planted_gain": dict(planted), "planted_order": order, "checks": checks,
            "all_match": all(c["ok"] for c in checks) if checks else None}


def _fmt(iv: Mapping[str, Any]) -> str:
    if iv.get("low") is None or not np.isfinite(iv["low"]):
        return f"{iv['estimate']:.2f} (no interval: {iv.get('note') or 'undefined'})"
    return f"{iv['estimate']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]"


def render_regions(report: Mapping[str, Any]) -> list[str]:
    """The report.md lines of a :func:`region_comparison` report."""
    decoders = list(report["decoders"])
    lines = ["## Regions: where does imagery transfer?", "",
             "H1's ratio (imagery / matched perception above the mean-embedding baseline, perception-only "
             "decoder) per region, with its 95% population interval; the median over subjects of each region's "
             "voxel count and noise ceiling (NC: % of a voxel's variance that is signal, for one trial and for the "
             "mean of 3; low NC = little signal to decode, whatever the decoder).", "",
             "| region | " + " | ".join(INFO_COLUMNS.values()) + " | " + " | ".join(f"{d} H1 ratio" for d in decoders)
             + " |", "|" + "---|" * (1 + len(INFO_COLUMNS) + len(decoders))]
    for region in report["regions"]:
        info = report["info"][region]
        cells = ["n/a" if info[k] is None else f"{info[k]:.0f}" if k == "n_voxels" else f"{info[k]:.2f}"
                 for k in INFO_COLUMNS]
        for decoder in decoders:
            iv = report["decoders"][decoder]["h1_ratio"].get(region, {}).get(report["estimand"])
            cells.append(_fmt(iv) if iv else "n/a")
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    lines.append("")
    for decoder, entry in report["decoders"].items():
        if "largest" not in entry:
            continue
        best = entry["h1_ratio"][entry["largest"]][report["estimand"]]
        text = f"- {decoder}: imagery transfer is largest in **{entry['largest']}**, H1 ratio {_fmt(best)}"
        if "next" in entry:
            text += (f"; {entry['largest']} minus the next ({entry['next']}): "
                     f"{_fmt(entry['largest_minus_next'][report['estimand']])}")
        lines.append(text + ".")
    planted = report.get("planted")
    if planted:
        lines += ["", "Planted ordering (synthetic world): imagery gain "
                  + " > ".join(f"{r} ({planted['planted_gain'][r]:.2f})" for r in planted["planted_order"])
                  + ". Check: H1 ratio of the highest-gain region minus the lowest, OK when its interval lies above 0."]
        for check in planted["checks"]:
            lines.append(f"- {check['decoder']}: {check['high']} - {check['low']} = {check['estimate']:.2f} "
                         f"[{check['ci'][0]:.2f}, {check['ci'][1]:.2f}]: {'OK' if check['ok'] else 'MISMATCH'}")
    return lines + [""]


#: Height of the region figure (inches) and the horizontal spread of the decoders' points at one region.
REGION_FIGURE_HEIGHT_IN = 2.4
DECODER_OFFSET = 0.22
REGION_FIGURE = "h1_ratio_by_region"


def plot_h1_by_region(report: Mapping[str, Any]) -> Figure:
    """H1's ratio (points, population 95% intervals as bars) per region (x) and decoder (colour);
    dotted lines at 0 (no transfer) and 1 (imagery as perception)."""
    with style.style_context():
        fig = style.new_figure(style.SINGLE_COLUMN_IN, REGION_FIGURE_HEIGHT_IN)
        ax = fig.add_subplot()
        regions, decoders = list(report["regions"]), ordered("decoder", report["decoders"])
        colors = style.category_colors("decoder", decoders)
        offsets = (np.arange(len(decoders)) - (len(decoders) - 1) / 2) * DECODER_OFFSET
        for offset, decoder in zip(offsets, decoders):
            ratios = report["decoders"][decoder]["h1_ratio"]
            xs = [i + offset for i, r in enumerate(regions) if r in ratios]
            ivs = [ratios[r][report["estimand"]] for r in regions if r in ratios]
            est = np.array([iv["estimate"] for iv in ivs], dtype=float)
            low = np.array([iv["low"] if iv["low"] is not None else np.nan for iv in ivs], dtype=float)
            high = np.array([iv["high"] if iv["high"] is not None else np.nan for iv in ivs], dtype=float)
            yerr = np.vstack([est - low, high - est])
            ax.errorbar(xs, est, yerr=np.nan_to_num(yerr), fmt="o", color=colors[decoder][0], label=decoder,
                        markersize=4, capsize=2, linewidth=1)
        for level in (0.0, 1.0):
            ax.axhline(level, color="black", linestyle=":", linewidth=0.9)
        ax.set_xticks(range(len(regions)), regions, rotation=30 if len(regions) > 3 else 0, ha="right"
                      if len(regions) > 3 else "center")
        ax.set_ylabel("H1 ratio (imagery / perception)")
        fig.legend(*ax.get_legend_handles_labels(), frameon=False, ncols=min(len(decoders), 3),
                   loc="outside lower center")
    return fig


def region_caption(report: Mapping[str, Any]) -> str:
    """The captions.md entry of :func:`plot_h1_by_region`."""
    return (f"## {REGION_FIGURE}\n\nH1's ratio per region and decoder: imagery over matched perception, both "
            "above the mean-embedding baseline, perception-only decoder. Points: estimates; bars: 95% population "
            "intervals (new subjects and new stimuli: crossed random effects, delta method). Dotted lines: 0 (no "
            "transfer) and 1 (imagery decoded as well as perception). The regions' voxel counts and noise ceilings "
            "are in report.md.\n")
