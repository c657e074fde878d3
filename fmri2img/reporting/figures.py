"""Paper figures and captions from an ablation's ``results_table.csv``.

:func:`figure_specs` lists the figures of a table (the ``figures`` stage,
:mod:`fmri2img.stages.report`, draws and writes them). Each ``plot_*`` function
takes the tidy table (docs/contracts.md section 6) and returns a
:class:`matplotlib.figure.Figure` (never shown, no pyplot). Conventions of every figure:

* error bars are the table's 95% CIs (``ci_low``/``ci_high``, bootstrap over stimuli);
* an asterisk marks cells with ``p_holm <`` :data:`~fmri2img.reporting.tables.ALPHA`; the
  test is named in ``captions.md``;
* chance levels (``chance`` column) are drawn as dotted black marks/lines;
* empty cells (not applicable) and configurations absent for a decoder are left out.

Drawing time goes per artist and per format (each figure is drawn as PDF, SVG and PNG), so
panels use few artists: one outline path per bar series, one path and one marker line per
set of error bars, one marker line for all asterisks of a panel; see
:func:`~fmri2img.reporting.style.save_figure` for the layout and format side.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.patches import Patch, PathPatch
from matplotlib.path import Path as MplPath
from matplotlib.textpath import TextPath
from matplotlib.transforms import offset_copy

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

#: Size of the significance asterisk, in points (one step above the tick labels, bold).
STAR_SIZE_PT = style.FONT_SIZE_PT + 1
#: Gap between the top of a bar/error bar and its asterisk, in points.
STAR_GAP_PT = 0.5

#: Bars: edge colour/width, error-bar width, chance and zero lines (points).
BAR_EDGE_COLOR = "#333333"
BAR_EDGE_WIDTH = 0.3
ERRORBAR_WIDTH = 0.6
CHANCE_STYLE = {"color": "black", "linestyle": ":", "linewidth": 0.9}
ZERO_LINE_WIDTH = 0.5
#: Marker size of the retrieval curves, in points.
CURVE_MARKER_SIZE = 2.5
#: z-orders as :meth:`~matplotlib.axes.Axes.errorbar` sets them (error bars under the data
#: lines) and text's (asterisks on top).
ERRORBAR_ZORDER, LINE_ZORDER, STAR_ZORDER = 2.0, 2.1, 3.0

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


def _headroom(ax, fraction: float = 0.12, metric: str | None = None) -> None:
    """Leave room above the tallest error bar for the asterisks; keep bounded metrics
    (:data:`METRIC_BOUNDS`) within their range plus that room (wider CIs are cut at the axes).

    The data limits are current (artists are only ever added, and adding updates them), so
    no ``relim``: that re-walks every bar outline segment by segment in Python."""
    ax.autoscale_view()
    low, high = ax.get_ylim()
    low = min(low, 0.0)
    if metric is not None:
        bounds = METRIC_BOUNDS.get("retrieval" if retrieval_k(metric) is not None else metric)
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
    ax.set_ylim(low, high + fraction * (high - low))


@functools.lru_cache(maxsize=None)
def _star_marker() -> tuple[MarkerStyle, float]:
    """The bold asterisk as a marker whose anchor is where the old ``annotate("*")`` put
    the text's bottom centre (``STAR_GAP_PT`` above the bar), and the markersize that keeps
    its path in points.

    One marker line per panel replaces one text artist per asterisk: drawing hundreds of
    text artists (layout, font lookup, clip test) per format was a large share of the time.
    The outline is the glyph of the project font, so it looks the same as the text did."""
    prop = FontProperties(family=list(style.font_family()), weight="bold", size=STAR_SIZE_PT)
    # Where text puts "*" for ha="center", va="bottom": measured on a 72-dpi figure (1 px =
    # 1 pt) with va="baseline", whose box starts one line descent below the baseline.
    probe = Figure(dpi=72)
    FigureCanvasAgg(probe)
    box = probe.text(0, 0, "*", fontproperties=prop, va="baseline").get_window_extent(probe.canvas.get_renderer())
    glyph = TextPath((-box.width / 2, STAR_GAP_PT - box.y0), "*", prop=prop)
    path = MplPath(glyph.vertices, glyph.codes)
    # MarkerStyle scales a custom path so that its largest |coordinate| is half the marker size
    return MarkerStyle(path), 2 * float(np.max(np.abs(path.vertices)))


def _stars(ax, x: np.ndarray, top: np.ndarray) -> None:
    """Asterisks above ``(x, top)`` (data coordinates), one marker artist for the panel.

    Like ``annotate``'s default clipping, only anchors inside the y range are marked; the
    glyph itself may reach above the axes."""
    x, top = np.asarray(x, dtype=float), np.asarray(top, dtype=float)
    low, high = ax.get_ylim()
    keep = (top >= low) & (top <= high)
    if not keep.any():
        return
    marker, size = _star_marker()
    ax.plot(x[keep], top[keep], linestyle="none", marker=marker, markersize=size, markeredgewidth=0,
            markerfacecolor="black", markeredgecolor="none", clip_on=False, zorder=STAR_ZORDER,
            scalex=False, scaley=False)


def _bar_path(left: np.ndarray, width: float, height: np.ndarray) -> MplPath:
    """One compound path of the rectangles ``[left, left + width] x [0, height]``."""
    n = len(left)
    verts = np.empty((n, 5, 2))
    verts[:, :, 0] = left[:, None] + np.array([0, width, width, 0, 0])
    verts[:, :, 1] = np.array([0, 0, 1, 1, 0]) * height[:, None]
    codes = np.tile(np.array([MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY],
                             dtype=MplPath.code_type), n)
    return MplPath(verts.reshape(-1, 2), codes)


def _segments(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the line segments ``(x0, y0)-(x1, y1)`` as one NaN-separated polyline.

    One line artist of n segments is one path to write, where a collection of n segments is n
    paths, each with its own graphics state (that loop was a good part of the PDF/SVG time)."""
    gap = np.full(len(x0), np.nan)
    return np.column_stack([x0, x1, gap]).ravel(), np.column_stack([y0, y1, gap]).ravel()


def _errorbars(ax, x: np.ndarray, low: np.ndarray, high: np.ndarray, color: str) -> None:
    """Vertical CI bars with caps in one colour, drawn as ``errorbar`` draws them
    (:data:`ERRORBAR_WIDTH` lines with butt ends, caps ``2 * errorbar.capsize`` wide and
    ``lines.markeredgewidth`` thick), as two artists: one path of all the bars, one
    marker line of all the caps."""
    if not len(x):
        return
    ax.plot(*_segments(x, low, x, high), color=color, linewidth=ERRORBAR_WIDTH, solid_capstyle="butt",
            zorder=ERRORBAR_ZORDER)
    cap = 2 * mpl.rcParams["errorbar.capsize"]
    if cap > 0:
        ax.plot(np.concatenate([x, x]), np.concatenate([low, high]), linestyle="none", marker="_",
                markersize=cap, markeredgewidth=mpl.rcParams["lines.markeredgewidth"], color=color,
                zorder=ERRORBAR_ZORDER)


def _bars(ax, data: pd.DataFrame, x: str, x_order: Sequence[str], hue: str, hue_order: Sequence[str],
          colors: dict[str, tuple[str, str]]) -> bool:
    """Grouped bars of ``value`` with CI error bars, chance marks and asterisks. Returns
    whether chance was drawn.

    Few artists per panel (the time goes per artist and per format): one compound bar path
    per hue value, and one artist each for all error bars, caps, chance marks, asterisks."""
    width = GROUP_WIDTH / max(len(hue_order), 1)
    slot = {v: i for i, v in enumerate(x_order)}
    shown = data[data[x].isin(slot) & np.isfinite(data["value"].to_numpy(dtype=float))]
    hue_index = {h: j for j, h in enumerate(hue_order)}
    shown = shown[shown[hue].isin(hue_index)]
    j = shown[hue].map(hue_index).to_numpy(dtype=int)
    pos = shown[x].map(slot).to_numpy(dtype=float) + (j - (len(hue_order) - 1) / 2) * width
    val = shown["value"].to_numpy(dtype=float)
    low = shown["ci_low"].to_numpy(dtype=float)
    high = shown["ci_high"].to_numpy(dtype=float)
    chance = shown["chance"].to_numpy(dtype=float)
    for h in hue_order:  # not applicable / absent: no bar
        mine = j == hue_index[h]
        if mine.any():
            face, hatch = colors[h]
            bars = PathPatch(_bar_path(pos[mine] - width / 2, width, val[mine]), facecolor=face,
                             hatch=hatch or None, edgecolor=BAR_EDGE_COLOR, linewidth=BAR_EDGE_WIDTH)
            bars.sticky_edges.y.append(0.0)  # as ax.bar: no margin below the bars' base
            ax.add_patch(bars)
    has_ci = np.isfinite(low) & np.isfinite(high)
    _errorbars(ax, pos[has_ci], low[has_ci], high[has_ci], "black")
    has_chance = np.isfinite(chance)
    if has_chance.any():
        level = chance[has_chance]
        ax.plot(*_segments(pos[has_chance] - width / 2, level, pos[has_chance] + width / 2, level), **CHANCE_STYLE)
    ax.set_xticks(range(len(x_order)))
    ax.axhline(0, color="black", linewidth=ZERO_LINE_WIDTH)
    metrics = data["metric"].unique()
    _headroom(ax, metric=metrics[0] if len(metrics) == 1 else None)
    sig = significant(shown["p_holm"].to_numpy(dtype=float))
    top = np.fmax(np.where(has_ci, high, val), 0.0)
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
    """Bold title at the top left of a panel, where ``set_title(loc="left")`` puts it
    (baseline ``axes.titlepad`` points above the axes).

    A plain text artist rather than the Axes title: at every draw matplotlib re-measures
    the whole y axis of each titled Axes to place its title clear of an offset text we
    never have, a tenth of the drawing time of a 9-panel figure."""
    ax.text(0, 1, text, transform=offset_copy(ax.transAxes, fig=ax.get_figure(), y=mpl.rcParams["axes.titlepad"],
                                              units="points"),
            ha="left", va="baseline", fontsize=style.FONT_SIZE_PT, fontweight="bold")


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
        return fig


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
        return fig


def plot_clip_similarity_by_condition(rows: pd.DataFrame, metric: str = COSINE_METRIC) -> Figure:
    """CLIP cosine per configuration (x) and decoder (colour), one panel per test set; the
    mean-embedding baseline is a dashed reference line (per decoder if they differ)."""
    with style.style_context():
        data = rows[(rows["metric"] == metric) & (rows["stimulus_type"] == "all")]
        test_sets = ordered("test_set", data["test_set"])
        fig, axes = _grid(style.SINGLE_COLUMN_IN, max(len(test_sets), 1), 1, sharey=True)
        if data.empty:
            return _empty(fig, f"No '{metric}' rows for stimulus_type 'all'.")
        bars = data[data["configuration"] != MEAN_EMBEDDING_BASELINE]
        decoders = ordered("decoder", data["decoder"])
        configs = ordered("configuration", bars["configuration"])
        colors = style.category_colors("decoder", decoders)
        for ax, ts in zip(axes[:, 0], test_sets, strict=True):
            _bars(ax, bars[bars["test_set"] == ts], "configuration", configs, "decoder", decoders, colors)
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
            _headroom(ax, metric=metric)
        extra = []
        if (data["configuration"] == MEAN_EMBEDDING_BASELINE).any():
            extra.append((Line2D([], [], color="black", linestyle="--", linewidth=0.9), "Mean-embedding baseline"))
        _legend(fig, "decoder", decoders, colors, extra=extra, ncol=2)
        return fig


def plot_retrieval_curves(rows: pd.DataFrame) -> Figure:
    """Retrieval@K against K (log axis) per configuration (colour) with the chance line;
    rows of panels are test sets, columns decoders. K is read from ``retrieval_at_K``."""
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
        # numpy columns and one grouping: per-curve DataFrame filtering was most of the build time
        data = data.sort_values("k", kind="stable")
        curves = data.groupby(["test_set", "decoder", "configuration"], sort=False).indices
        k_all, v_all, low_all, high_all, chance_all, p_all = (
            data[col].to_numpy(dtype=float) for col in ("k", "value", "ci_low", "ci_high", "chance", "p_holm"))
        chance_drawn = False
        for r, ts in enumerate(test_sets):
            for c, dec in enumerate(decoders):
                ax = axes[r, c]
                in_panel = [curves[key] for key in ((ts, dec, cfg) for cfg in configs) if key in curves]
                bars = []  # (K, low, high, colour) of each curve
                stars = []
                for cfg in configs:
                    idx = curves.get((ts, dec, cfg), np.empty(0, dtype=int))
                    idx = idx[np.isfinite(v_all[idx])]
                    if not len(idx):
                        continue
                    face = colors[cfg][0]
                    k, v, low, high = k_all[idx], v_all[idx], low_all[idx], high_all[idx]
                    ax.plot(k, v, color=face, marker="o", markersize=CURVE_MARKER_SIZE,
                            linestyle="--" if _is_baseline(cfg) else "-", zorder=LINE_ZORDER)
                    # no CI: a zero-length bar at the value, as errorbar draws a zero error
                    bars.append((k, np.where(np.isfinite(low), low, v), np.where(np.isfinite(high), high, v), face))
                    sig = significant(p_all[idx])
                    stars.append((k[sig], np.where(np.isfinite(high), np.fmax(v, high), v)[sig]))
                ax.set_ylim(0, RETRIEVAL_YMAX)
                for bar in bars:  # all under the curves (errorbar's z-orders)
                    _errorbars(ax, *bar)
                if stars:
                    _stars(ax, *(np.concatenate(parts) for parts in zip(*stars)))
                idx = np.concatenate(in_panel) if in_panel else np.empty(0, dtype=int)
                idx = idx[np.isfinite(chance_all[idx])]
                if len(idx):  # chance per K, averaged over the panel's rows
                    chance_k, where = np.unique(k_all[idx], return_inverse=True)
                    level = np.bincount(where, weights=chance_all[idx]) / np.bincount(where)
                    ax.plot(chance_k, level, **CHANCE_STYLE)
                    chance_drawn = True
                ax.set_xscale("log")
                ax.set_xticks(ks, [str(k) for k in ks])  # after all data: ticks widen the x range
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
        return fig
