"""Paper figures from an ablation's ``results_table.csv``.

Each ``plot_*`` function takes the tidy table (docs/contracts.md section 6) and returns a
:class:`matplotlib.figure.Figure` (constrained layout, never shown, no pyplot); the ``figures``
stage (:mod:`fmri2img.stages.report`) writes them. Conventions of every figure:

* error bars are the table's 95% CIs (``ci_low``/``ci_high``, bootstrap over stimuli);
* an asterisk (retrieval curves: a filled marker) marks cells with ``p_holm <``
  :data:`~fmri2img.reporting.tables.ALPHA`; the test is named in ``captions.md``; asterisks are
  sized not to overlap (:func:`fit_stars`); intervals are cut at the metric's bounds;
* chance levels (``chance`` column) are drawn as dotted black marks/lines;
* empty cells (not applicable) and configurations absent for a decoder are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fmri2img.reporting import style
from fmri2img.reporting.tables import (
    GROUP_SUBJECT,
    individual_subjects,
    label,
    ordered,
    retrieval_k,
    significant,
)

#: Default main metric: top-1 retrieval, because plain cosine flatters (a constant
#: mean-embedding guess already scores a high cosine; issue 2, "what the real data showed").
DEFAULT_MAIN_METRIC = "retrieval_at_1"

#: The cosine metric of ``clip_similarity_by_condition``.
COSINE_METRIC = "cosine"

#: Baseline drawn as a reference line in ``clip_similarity_by_condition``.
MEAN_EMBEDDING_BASELINE = "baseline_mean_embedding"

#: Height of one panel row and of the legend/label band, in inches.
PANEL_HEIGHT_IN = 1.45
EXTRA_HEIGHT_IN = 0.9

#: Top of the y axis of the retrieval curves: accuracy 1 plus room for the asterisks.
RETRIEVAL_YMAX = 1.08

#: Width of the group of bars at one x position (fraction of the spacing between groups).
GROUP_WIDTH = 0.8

#: Bars: edge colour/width, chance and zero lines (points); marker size of the retrieval curves.
BAR_EDGE_COLOR = "#333333"
BAR_EDGE_WIDTH = 0.3
CHANCE_STYLE = {"color": "black", "linestyle": ":", "linewidth": 0.9}
ZERO_LINE_WIDTH = 0.5
CURVE_MARKER_SIZE = 2.5

#: Significance asterisks: gid of their texts, smallest size (points), share of the gap to their
#: nearest neighbour that one may fill.
STAR_GID = "significance"
MIN_STAR_PT = 4.0
STAR_FILL = 0.9

#: Marker size of the points of ``clip_similarity_by_condition`` (points).
POINT_MARKER_SIZE = 3.5

#: Natural ranges of bounded metrics (accuracies in [0, 1], cosine in [-1, 1]).
METRIC_BOUNDS = {"retrieval": (0.0, 1.0), "two_way": (0.0, 1.0), "cosine": (-1.0, 1.0),
                 "cosine_per_trial": (-1.0, 1.0), "ssim": (-1.0, 1.0), "pixcorr": (-1.0, 1.0)}

#: Figure name -> column width used (tests check the PNG size against it).
FIGURE_WIDTHS = {
    "bar_overall_metric": style.SINGLE_COLUMN_IN,
    "bar_by_stimulus_type": style.DOUBLE_COLUMN_IN,
    "clip_similarity_by_condition": style.SINGLE_COLUMN_IN,
    "retrieval_curves": style.DOUBLE_COLUMN_IN,
    "subject_breakdown": style.DOUBLE_COLUMN_IN,
}
FIGURE_NAMES = tuple(FIGURE_WIDTHS)


# ----------------------------------------------------------------------------- drawing helpers
def _grid(width: float, n_rows: int, n_cols: int, sharey: str | bool = "row"):
    fig = style.new_figure(width, EXTRA_HEIGHT_IN + PANEL_HEIGHT_IN * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=sharey)
    return fig, axes


def _empty(fig: Figure, message: str) -> Figure:
    ax = fig.axes[0] if fig.axes else fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    return fig


def metric_bounds(metric: str | None) -> tuple[float, float]:
    """The natural range of ``metric`` (:data:`METRIC_BOUNDS`), or (-inf, inf) if unbounded or unknown."""
    if metric is None:
        return (-np.inf, np.inf)
    return METRIC_BOUNDS.get("retrieval" if retrieval_k(metric) is not None else metric, (-np.inf, np.inf))


def _headroom(ax, fraction: float = 0.12, metric: str | None = None, from_zero: bool = True) -> None:
    """Leave room above the tallest error bar for the asterisks; keep bounded metrics
    (:data:`METRIC_BOUNDS`) within their range plus that room. ``from_zero=False``: the axis spans
    the compared range only (points, not bars)."""
    ax.autoscale_view()
    low, high = ax.get_ylim()
    if from_zero:
        low = min(low, 0.0)
    bounds = metric_bounds(metric)
    low, high = max(low, bounds[0]), min(high, bounds[1])
    ax.set_ylim(low, high + fraction * (high - low))


def _stars(ax, x: np.ndarray, top: np.ndarray) -> None:
    """An asterisk above each ``(x, top)`` (data coordinates) inside the y range; :func:`fit_stars`
    later sizes them so that they neither overlap each other nor leave their panel."""
    low, high = ax.get_ylim()
    for xi, yi in zip(x, top):
        if low <= yi <= high:
            ax.annotate("*", (xi, yi), xytext=(0, 0.5), textcoords="offset points", ha="center", va="bottom",
                        annotation_clip=False, gid=STAR_GID)


def fit_stars(fig: Figure) -> Figure:
    """Shrink the asterisks (all alike, down to :data:`MIN_STAR_PT`) to fit between their neighbours,
    then raise each panel's top until its asterisks lie inside it (below the panel's title)."""
    stars = {ax: [t for t in ax.texts if t.get_gid() == STAR_GID] for ax in fig.axes}
    if not any(stars.values()):
        return fig
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    size = float(next(t for ts in stars.values() for t in ts).get_fontsize())
    for ax, mine in stars.items():
        if len(mine) < 2:
            continue
        width_per_pt = mine[0].get_window_extent(renderer).width / size
        xs = np.unique(np.round([ax.transData.transform(t.xy)[0] for t in mine], 2))
        if xs.size > 1:
            size = min(size, STAR_FILL * float(np.diff(xs).min()) / width_per_pt)
    size = max(size, MIN_STAR_PT)
    for t in (t for ts in stars.values() for t in ts):
        t.set_fontsize(size)
    for _ in range(2):  # the layout moves a little when the limits change
        fig.draw_without_rendering()
        for ax, mine in stars.items():
            box = ax.get_window_extent(renderer)
            excess = max((t.get_window_extent(renderer).y1 - box.y1 for t in mine), default=0.0)
            if excess > 0:
                low, high = ax.get_ylim()
                ax.set_ylim(low, high + (excess + 1.0) / box.height * (high - low) * 1.1)
    return fig


def _bars(ax, data: pd.DataFrame, x: str, x_order: Sequence[str], hue: str, hue_order: Sequence[str],
          colors: dict[str, tuple[str, str]], points: bool = False) -> bool:
    """Grouped bars of ``value`` (``points``: markers, on an axis spanning the compared range
    instead of starting at 0) with CI error bars cut at the metric's bounds, chance marks and
    asterisks. Returns whether chance was drawn."""
    width = GROUP_WIDTH / max(len(hue_order), 1)
    slot = {v: i for i, v in enumerate(x_order)}
    hue_index = {h: j for j, h in enumerate(hue_order)}
    shown = data[data[x].isin(slot) & data[hue].isin(hue_index) & np.isfinite(data["value"].to_numpy(dtype=float))]
    pos = (shown[x].map(slot).to_numpy(dtype=float)
           + (shown[hue].map(hue_index).to_numpy(dtype=float) - (len(hue_order) - 1) / 2) * width)
    val, low, high, chance = (shown[c].to_numpy(dtype=float) for c in ("value", "ci_low", "ci_high", "chance"))
    metrics = data["metric"].unique()
    metric = metrics[0] if len(metrics) == 1 else None
    low, high = np.clip(low, *metric_bounds(metric)), np.clip(high, *metric_bounds(metric))
    for h in hue_order:  # not applicable / absent: no bar
        mine = (shown[hue] == h).to_numpy()
        if mine.any() and points:
            ax.plot(pos[mine], val[mine], linestyle="none", marker="o", markersize=POINT_MARKER_SIZE,
                    color=colors[h][0], markeredgecolor=BAR_EDGE_COLOR, markeredgewidth=BAR_EDGE_WIDTH, zorder=3)
        elif mine.any():
            face, hatch = colors[h]
            ax.bar(pos[mine], val[mine], width, color=face, hatch=hatch or None, edgecolor=BAR_EDGE_COLOR,
                   linewidth=BAR_EDGE_WIDTH)
    has_ci = np.isfinite(low) & np.isfinite(high)
    # an interval need not contain its value (a t-interval cut at the bound): draw from low to high
    ax.vlines(pos[has_ci], low[has_ci], high[has_ci], color="black", linewidth=0.6)
    has_chance = np.isfinite(chance)
    ax.hlines(chance[has_chance], pos[has_chance] - width / 2, pos[has_chance] + width / 2, **CHANCE_STYLE)
    ax.set_xticks(range(len(x_order)))
    if not points:
        ax.axhline(0, color="black", linewidth=ZERO_LINE_WIDTH)
    _headroom(ax, metric=metric, from_zero=not points)
    sig = significant(shown["p_holm"].to_numpy(dtype=float))
    top = np.where(has_ci, high, val) if points else np.fmax(np.where(has_ci, high, val), 0.0)
    _stars(ax, pos[sig], top[sig])
    return bool(has_chance.any())


def _legend(fig: Figure, kind: str, order: Sequence[str], colors: dict[str, tuple[str, str]],
            chance: bool = False, extra: Sequence[tuple[Line2D, str]] = (), ncol: int | None = None,
            lines: bool = False) -> None:
    if lines:  # curves: a line per value, dashed for baselines
        handles = [Line2D([], [], color=colors[v][0], linestyle="--" if _is_baseline(v) else "-", marker="o",
                          markersize=CURVE_MARKER_SIZE) for v in order]
    else:
        handles = [Patch(facecolor=colors[v][0], hatch=colors[v][1] or None, edgecolor=BAR_EDGE_COLOR,
                         linewidth=BAR_EDGE_WIDTH)
                   for v in order]
    labels = [label(kind, v) for v in order]
    for handle, text in extra:
        handles.append(handle)
        labels.append(text)
    if chance:
        handles.append(Line2D([], [], **CHANCE_STYLE))
        labels.append("Chance")
    fig.legend(handles, labels, loc="outside upper center", ncol=ncol or min(len(labels), 3),
               handlelength=1.4, columnspacing=1.0)


def _xticklabels(ax, kind: str, order: Sequence[str], rotate: bool) -> None:
    if rotate:
        ax.set_xticklabels([label(kind, v) for v in order], rotation=40, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels([label(kind, v) for v in order])


def _is_baseline(configuration: str) -> bool:
    return configuration.startswith("baseline_")


def _grid_title(decoder: str, test_set: str) -> str:
    return f"{label('decoder', decoder)} · {label('test_set', test_set, short=True)}"


def _panel_title(ax, text: str) -> None:
    ax.set_title(text, loc="left")


# ----------------------------------------------------------------------------- figures
def plot_bar_overall_metric(rows: pd.DataFrame, metric: str = DEFAULT_MAIN_METRIC) -> Figure:
    """Main metric per configuration (x) and test set (colour), one panel per decoder.

    Parameters
    ----------
    rows : DataFrame
        Tidy results with one subject level (see :func:`~fmri2img.reporting.tables.summary_rows`);
        ``stimulus_type == "all"`` rows of ``metric`` are drawn.
    metric : str
        Metric name of the contract (``retrieval_at_1``, ``cosine``...).
    """
    with style.style_context():
        data = rows[(rows["metric"] == metric) & (rows["stimulus_type"] == "all")]
        decoders = ordered("decoder", data["decoder"])
        fig, axes = _grid(style.SINGLE_COLUMN_IN, max(len(decoders), 1), 1, sharey=True)
        if data.empty:
            return _empty(fig, f"No '{metric}' rows for stimulus_type 'all'.")
        test_sets = ordered("test_set", data["test_set"])
        configs = ordered("configuration", data["configuration"])
        colors = style.category_colors("test_set", test_sets)
        chance = False
        for ax, dec in zip(axes[:, 0], decoders, strict=True):
            chance |= _bars(ax, data[data["decoder"] == dec], "configuration", configs, "test_set", test_sets, colors)
            _panel_title(ax, label("decoder", dec))
            ax.set_ylabel(label("metric", metric))
            _xticklabels(ax, "configuration", configs, rotate=True)
            ax.tick_params(axis="x", labelbottom=ax is axes[-1, 0])
        _legend(fig, "test_set", test_sets, colors, chance=chance, ncol=2)
        return fit_stars(fig)


def plot_bar_by_stimulus_type(rows: pd.DataFrame, metric: str = DEFAULT_MAIN_METRIC) -> Figure:
    """Main metric per stimulus type (x) and configuration (colour); rows of panels are
    test sets, columns decoders. ``stimulus_type == "all"`` is left out."""
    with style.style_context():
        data = rows[(rows["metric"] == metric) & (rows["stimulus_type"] != "all")]
        test_sets = ordered("test_set", data["test_set"])
        decoders = ordered("decoder", data["decoder"])
        fig, axes = _grid(style.DOUBLE_COLUMN_IN, max(len(test_sets), 1), max(len(decoders), 1))
        if data.empty:
            return _empty(fig, f"No '{metric}' rows broken down by stimulus type.")
        configs = ordered("configuration", data["configuration"])
        colors = style.category_colors("configuration", configs)
        chance = False
        for r, ts in enumerate(test_sets):
            in_row = data[data["test_set"] == ts]
            types = ordered("stimulus_type", in_row["stimulus_type"])
            for c, dec in enumerate(decoders):
                ax = axes[r, c]
                chance |= _bars(ax, in_row[in_row["decoder"] == dec], "stimulus_type", types,
                                "configuration", configs, colors)
                _xticklabels(ax, "stimulus_type", types, rotate=False)
                _panel_title(ax, _grid_title(dec, ts))
                if c == 0:
                    ax.set_ylabel(label("metric", metric))
        _legend(fig, "configuration", configs, colors, chance=chance, ncol=5)
        return fit_stars(fig)


def plot_clip_similarity_by_condition(rows: pd.DataFrame, metric: str = COSINE_METRIC) -> Figure:
    """CLIP cosine per configuration (x) and decoder (colour) as points on an axis spanning the
    compared range, one panel per test set; the mean-embedding baseline is a dashed reference line
    (per decoder if they differ); the other baselines are left out."""
    with style.style_context():
        data = rows[(rows["metric"] == metric) & (rows["stimulus_type"] == "all")]
        test_sets = ordered("test_set", data["test_set"])
        fig, axes = _grid(style.SINGLE_COLUMN_IN, max(len(test_sets), 1), 1, sharey=True)
        if data.empty:
            return _empty(fig, f"No '{metric}' rows for stimulus_type 'all'.")
        # the decoders' configurations only: the other baselines (ground truth at 1, random near 0)
        # would stretch the axis over the whole range and flatten the differences compared here
        bars = data[~data["configuration"].map(_is_baseline)]
        decoders = ordered("decoder", data["decoder"])
        configs = ordered("configuration", bars["configuration"])
        colors = style.category_colors("decoder", decoders)
        for ax, ts in zip(axes[:, 0], test_sets, strict=True):
            _bars(ax, bars[bars["test_set"] == ts], "configuration", configs, "decoder", decoders, colors, points=True)
            ref = data[(data["test_set"] == ts) & (data["configuration"] == MEAN_EMBEDDING_BASELINE)]
            values = ref.dropna(subset=["value"])
            one_line = values["value"].round(6).nunique() == 1
            for rec in values.itertuples(index=False):
                line_color = "black" if one_line else colors.get(rec.decoder, ("black", ""))[0]
                ax.axhline(rec.value, color=line_color, linestyle="--", linewidth=0.9)
                if one_line:
                    break
            _panel_title(ax, label("test_set", ts))
            ax.set_ylabel(label("metric", metric))
            _xticklabels(ax, "configuration", configs, rotate=True)
            ax.tick_params(axis="x", labelbottom=ax is axes[-1, 0])
            _headroom(ax, metric=metric, from_zero=False)
        extra = []
        if (data["configuration"] == MEAN_EMBEDDING_BASELINE).any():
            extra.append((Line2D([], [], color="black", linestyle="--", linewidth=0.9), "Mean-embedding baseline"))
        _legend(fig, "decoder", decoders, colors, extra=extra, ncol=2)
        return fit_stars(fig)


def plot_retrieval_curves(rows: pd.DataFrame) -> Figure:
    """Retrieval@K against K (log axis; the K applicable to each row's gallery) per configuration
    (colour) with the chance line; filled markers are significant, hollow ones not; rows of panels are
    test sets, columns decoders. K is read from ``retrieval_at_K``."""
    with style.style_context():
        data = rows[(rows["stimulus_type"] == "all") & rows["metric"].map(lambda m: retrieval_k(m) is not None)]
        data = data.assign(k=data["metric"].map(retrieval_k))
        test_sets = ordered("test_set", data["test_set"])
        decoders = ordered("decoder", data["decoder"])
        fig, axes = _grid(style.DOUBLE_COLUMN_IN, max(len(test_sets), 1), max(len(decoders), 1), sharey=True)
        if data.empty:
            return _empty(fig, "No retrieval_at_K rows for stimulus_type 'all'.")
        configs = ordered("configuration", data["configuration"])
        colors = style.category_colors("configuration", configs)
        ks = sorted(data["k"].unique())
        # numpy columns and one grouping, not a DataFrame filter per curve
        data = data.sort_values("k", kind="stable")
        curves = data.groupby(["test_set", "decoder", "configuration"], sort=False).indices
        k_all, v_all, low_all, high_all, chance_all, p_all = (
            data[col].to_numpy(dtype=float) for col in ("k", "value", "ci_low", "ci_high", "chance", "p_holm"))
        chance_drawn = False
        for r, ts in enumerate(test_sets):
            # the K of this row's test set (a 12-image gallery has no retrieval@50): no empty axis range
            row_ks = set(k_all[(data["test_set"] == ts).to_numpy() & np.isfinite(v_all)].tolist()) or set(ks)
            for c, dec in enumerate(decoders):
                ax = axes[r, c]
                in_panel = [curves[key] for key in ((ts, dec, cfg) for cfg in configs) if key in curves]
                bars = []  # (K, low, high, colour) of each curve
                for cfg in configs:
                    idx = curves.get((ts, dec, cfg), np.empty(0, dtype=int))
                    idx = idx[np.isfinite(v_all[idx])]
                    if not len(idx):
                        continue
                    face = colors[cfg][0]
                    k, v, low, high = k_all[idx], v_all[idx], low_all[idx], high_all[idx]
                    ax.plot(k, v, color=face, linestyle="--" if _is_baseline(cfg) else "-")
                    sig = significant(p_all[idx])  # filled: significant; hollow: not
                    ax.plot(k[sig], v[sig], linestyle="none", marker="o", markersize=CURVE_MARKER_SIZE, color=face)
                    ax.plot(k[~sig], v[~sig], linestyle="none", marker="o", markersize=CURVE_MARKER_SIZE,
                            markerfacecolor="white", markeredgecolor=face)
                    # no CI: a zero-length bar at the value, as errorbar draws a zero error
                    bars.append((k, np.clip(np.where(np.isfinite(low), low, v), 0.0, 1.0),
                                 np.clip(np.where(np.isfinite(high), high, v), 0.0, 1.0), face))
                ax.set_ylim(0, RETRIEVAL_YMAX)
                for k, low, high, face in bars:
                    ax.vlines(k, low, high, color=face, linewidth=0.6)
                idx = np.concatenate(in_panel) if in_panel else np.empty(0, dtype=int)
                idx = idx[np.isfinite(chance_all[idx])]
                if len(idx):  # chance per K, averaged over the panel's rows
                    chance_k, where = np.unique(k_all[idx], return_inverse=True)
                    level = np.bincount(where, weights=chance_all[idx]) / np.bincount(where)
                    ax.plot(chance_k, level, **CHANCE_STYLE)
                    chance_drawn = True
                ax.set_xscale("log")
                shown_ks = sorted(row_ks)
                ax.set_xticks(shown_ks, [f"{k:g}" for k in shown_ks])  # after all data: ticks widen the x range
                ax.minorticks_off()
                _panel_title(ax, _grid_title(dec, ts))
                if c == 0:
                    ax.set_ylabel("Retrieval accuracy")
                if r == len(test_sets) - 1:
                    ax.set_xlabel("K")
        _legend(fig, "configuration", configs, colors, chance=chance_drawn, ncol=5, lines=True)
        return fig


def plot_subject_breakdown(table: pd.DataFrame, metric: str = DEFAULT_MAIN_METRIC) -> Figure:
    """Main metric per configuration (x) and subject (colour); rows of panels are test
    sets, columns decoders. Group-level rows are left out."""
    with style.style_context():
        data = table[(table["metric"] == metric) & (table["stimulus_type"] == "all")
                     & (table["subject"] != GROUP_SUBJECT)]
        test_sets = ordered("test_set", data["test_set"])
        decoders = ordered("decoder", data["decoder"])
        fig, axes = _grid(style.DOUBLE_COLUMN_IN, max(len(test_sets), 1), max(len(decoders), 1))
        if data.empty:
            return _empty(fig, f"No per-subject '{metric}' rows for stimulus_type 'all'.")
        subjects = individual_subjects(data)
        configs = ordered("configuration", data["configuration"])
        colors = style.category_colors("subject", subjects)
        chance = False
        for r, ts in enumerate(test_sets):
            for c, dec in enumerate(decoders):
                ax = axes[r, c]
                chance |= _bars(ax, data[(data["test_set"] == ts) & (data["decoder"] == dec)], "configuration",
                                configs, "subject", subjects, colors)
                _xticklabels(ax, "configuration", configs, rotate=True)
                ax.tick_params(axis="x", labelbottom=r == len(test_sets) - 1)
                _panel_title(ax, _grid_title(dec, ts))
                if c == 0:
                    ax.set_ylabel(label("metric", metric))
        _legend(fig, "subject", subjects, colors, chance=chance, ncol=min(len(subjects) + int(chance), 6))
        return fit_stars(fig)
