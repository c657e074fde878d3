"""Paper figures, captions and tables from an ablation's ``results_table.csv``.

:func:`make_figures` is the whole job of ``fmri2img figures``. Each ``plot_*`` function
takes the tidy table (docs/contracts.md section 6) and returns a
:class:`matplotlib.figure.Figure` (never shown, no pyplot). Conventions of every figure:

* error bars are the table's 95% CIs (``ci_low``/``ci_high``, bootstrap over stimuli);
* an asterisk marks cells with ``p_holm <`` :data:`~fmri2img.reporting.tables.ALPHA`; the
  test is named in ``captions.md``;
* chance levels (``chance`` column) are drawn as dotted black marks/lines;
* empty cells (not applicable) and configurations absent for a decoder are left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fmri2img.io import ensure_dir, read_json, write_text
from fmri2img.reporting import style
from fmri2img.reporting.tables import (
    ALPHA,
    GROUP_SUBJECT,
    RESULTS_TABLE,
    format_latex,
    format_markdown,
    individual_subjects,
    label,
    ordered,
    read_results_table,
    retrieval_k,
    significant,
    spread_shared_baselines,
    summary_rows,
    tests_used,
)

#: Default main metric: top-1 retrieval, because plain cosine flatters (a constant
#: mean-embedding guess already scores a high cosine; issue 2, "what the real data showed").
DEFAULT_MAIN_METRIC = "retrieval_at_1"

#: The cosine metric of ``clip_similarity_by_condition``.
COSINE_METRIC = "cosine"

#: Baseline drawn as a reference line in ``clip_similarity_by_condition``.
MEAN_EMBEDDING_BASELINE = "baseline_mean_embedding"

#: Optional file of an ablation folder naming its MLflow run: {"run_id", "tracking_uri"}.
MLFLOW_RUN_FILE = "mlflow_run.json"

#: Artifact folder of the run that receives the figures (``figures/<ablation folder name>``).
ARTIFACT_PATH = "figures"

#: Names of the written files.
CAPTIONS_FILE = "captions.md"
LATEX_TABLE_FILE = "table.tex"
MARKDOWN_TABLE_FILE = "table_formatted.md"

#: Height of one panel row and of the legend/label band, in inches.
PANEL_HEIGHT_IN = 1.45
EXTRA_HEIGHT_IN = 0.9

#: Width of the group of bars at one x position (fraction of the spacing between groups).
GROUP_WIDTH = 0.8

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
    (:data:`METRIC_BOUNDS`) within their range plus that room (wider CIs are cut at the axes)."""
    ax.relim()
    ax.autoscale_view()
    low, high = ax.get_ylim()
    low = min(low, 0.0)
    if metric is not None:
        bounds = METRIC_BOUNDS.get("retrieval" if retrieval_k(metric) is not None else metric)
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
    ax.set_ylim(low, high + fraction * (high - low))


def _star(ax, x: float, top: float) -> None:
    ax.annotate("*", (x, top), xytext=(0, 0.5), textcoords="offset points", ha="center", va="bottom",
                fontsize=style.FONT_SIZE_PT + 1, fontweight="bold")


def _bars(ax, data: pd.DataFrame, x: str, x_order: Sequence[str], hue: str, hue_order: Sequence[str],
          colors: dict[str, tuple[str, str]]) -> bool:
    """Grouped bars of ``value`` with CI error bars, chance marks and asterisks (one artist
    per hue value and kind, so large grids stay fast). Returns whether chance was drawn."""
    width = GROUP_WIDTH / max(len(hue_order), 1)
    slot = {v: i for i, v in enumerate(x_order)}
    drew_chance = False
    for j, h in enumerate(hue_order):
        sub = data[(data[hue] == h) & data[x].isin(slot) & np.isfinite(data["value"].to_numpy(dtype=float))]
        if sub.empty:
            continue  # not applicable / absent: no bar
        pos = np.array([slot[v] for v in sub[x]], dtype=float) + (j - (len(hue_order) - 1) / 2) * width
        val = sub["value"].to_numpy(dtype=float)
        low = sub["ci_low"].to_numpy(dtype=float)
        high = sub["ci_high"].to_numpy(dtype=float)
        face, hatch = colors[h]
        ax.bar(pos, val, width, color=face, hatch=hatch or None, edgecolor="#333333", linewidth=0.3)
        has_ci = np.isfinite(low) & np.isfinite(high)
        if has_ci.any():
            ax.errorbar(pos[has_ci], val[has_ci], yerr=[val[has_ci] - low[has_ci], high[has_ci] - val[has_ci]],
                        fmt="none", ecolor="black", elinewidth=0.6)
        chance = sub["chance"].to_numpy(dtype=float)
        has_chance = np.isfinite(chance)
        if has_chance.any():
            ax.hlines(chance[has_chance], pos[has_chance] - width / 2, pos[has_chance] + width / 2,
                      colors="black", linestyles=":", linewidth=0.9)
            drew_chance = True
        top = np.fmax(np.where(has_ci, high, val), 0.0)
        for p_pos, p_top, p_holm in zip(pos, top, sub["p_holm"], strict=True):
            if significant(p_holm):
                _star(ax, p_pos, p_top)
    ax.set_xticks(range(len(x_order)))
    ax.axhline(0, color="black", linewidth=0.5)
    metrics = data["metric"].unique()
    _headroom(ax, metric=metrics[0] if len(metrics) == 1 else None)
    return drew_chance


def _legend(fig: Figure, kind: str, order: Sequence[str], colors: dict[str, tuple[str, str]],
            chance: bool = False, extra: Sequence[tuple[Line2D, str]] = (), ncol: int | None = None,
            lines: bool = False) -> None:
    if lines:  # curves: a line per value, dashed for baselines
        handles = [Line2D([], [], color=colors[v][0], linestyle="--" if _is_baseline(v) else "-", marker="o",
                          markersize=2.5) for v in order]
    else:
        handles = [Patch(facecolor=colors[v][0], hatch=colors[v][1] or None, edgecolor="#333333", linewidth=0.3)
                   for v in order]
    labels = [label(kind, v) for v in order]
    for handle, text in extra:
        handles.append(handle)
        labels.append(text)
    if chance:
        handles.append(Line2D([], [], color="black", linestyle=":", linewidth=0.9))
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
    ax.set_title(text, loc="left", fontsize=style.FONT_SIZE_PT, fontweight="bold")


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
        chance_drawn = False
        for r, ts in enumerate(test_sets):
            for c, dec in enumerate(decoders):
                ax = axes[r, c]
                panel = data[(data["test_set"] == ts) & (data["decoder"] == dec)]
                for cfg in configs:
                    curve = panel[panel["configuration"] == cfg].dropna(subset=["value"]).sort_values("k")
                    if curve.empty:
                        continue
                    face = colors[cfg][0]
                    k = curve["k"].to_numpy(dtype=float)
                    v = curve["value"].to_numpy(dtype=float)
                    err = np.vstack([v - curve["ci_low"].to_numpy(float), curve["ci_high"].to_numpy(float) - v])
                    ax.errorbar(k, v, yerr=np.where(np.isfinite(err), err, 0.0), color=face, marker="o",
                                markersize=2.5, linestyle="--" if _is_baseline(cfg) else "-", elinewidth=0.6)
                    for kk, vv, hi, p in zip(k, v, curve["ci_high"], curve["p_holm"], strict=True):
                        if significant(p):
                            _star(ax, kk, max(vv, hi) if np.isfinite(hi) else vv)
                chance = panel.dropna(subset=["chance"]).groupby("k")["chance"].mean()
                if len(chance):
                    ax.plot(chance.index.to_numpy(float), chance.to_numpy(float), color="black", linestyle=":",
                            linewidth=0.9)
                    chance_drawn = True
                ax.set_xscale("log")
                ax.set_xticks(ks, [str(k) for k in ks])
                ax.minorticks_off()
                ax.set_ylim(0, 1.08)
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


# ----------------------------------------------------------------------------- captions
@dataclass(frozen=True)
class _Spec:
    name: str
    plot: Callable[[], Figure]
    rows: pd.DataFrame  # the rows the figure draws (for the caption's test names)
    text: str
    subject_note: str


def _caption(spec: _Spec) -> str:
    tests = tests_used(spec.rows)
    if tests:
        sig = f"Asterisks: p_holm < {ALPHA} by {'; '.join(tests)} (p-values as given in {RESULTS_TABLE})."
    else:
        sig = "No p-values for these cells, so no significance marks."
    has_chance = np.isfinite(spec.rows["chance"].to_numpy(dtype=float)).any()
    chance = " Dotted black: chance level (K / gallery size for retrieval, 0.5 for two-way)." if has_chance else ""
    return (
        f"## {spec.name}\n\n{spec.text} {spec.subject_note} Error bars: 95% CIs (ci_low, ci_high; "
        f"bootstrap over stimuli unless stated otherwise).{chance} {sig} Missing bars/points: "
        f"not applicable or not run.\n"
    )


def _specs(table: pd.DataFrame, metric: str) -> list[_Spec]:
    spread = spread_shared_baselines(table)
    rows, note = summary_rows(spread)
    main_all = rows[(rows["metric"] == metric) & (rows["stimulus_type"] == "all")]
    main_types = rows[(rows["metric"] == metric) & (rows["stimulus_type"] != "all")]
    cosine = rows[(rows["metric"] == COSINE_METRIC) & (rows["stimulus_type"] == "all")]
    retrieval = rows[(rows["stimulus_type"] == "all") & rows["metric"].map(lambda m: retrieval_k(m) is not None)]
    per_subject = spread[(spread["metric"] == metric) & (spread["stimulus_type"] == "all")
                         & (spread["subject"] != GROUP_SUBJECT)]
    m = label("metric", metric)
    subjects = ", ".join(individual_subjects(per_subject)) or "none"
    return [
        _Spec("bar_overall_metric", lambda: plot_bar_overall_metric(rows, metric), main_all,
              f"{m} per configuration, perception vs imagery test sets (colours), one panel per decoder.", note),
        _Spec("bar_by_stimulus_type", lambda: plot_bar_by_stimulus_type(rows, metric), main_types,
              f"{m} per stimulus type and configuration; panel rows are test sets, columns decoders.", note),
        _Spec("clip_similarity_by_condition", lambda: plot_clip_similarity_by_condition(rows), cosine,
              "CLIP cosine between decoded and true embeddings per configuration and decoder, one panel per "
              "test set. Dashed line: the mean-embedding baseline (a constant guess), the level any decoder "
              "must beat.", note),
        _Spec("retrieval_curves", lambda: plot_retrieval_curves(rows), retrieval,
              "Retrieval@K against K per configuration; panel rows are test sets, columns decoders. "
              "Dashed lines: baselines.", note),
        _Spec("subject_breakdown", lambda: plot_subject_breakdown(spread, metric), per_subject,
              f"{m} per configuration for each subject ({subjects}); panel rows are test sets, columns decoders.",
              "Each subject's own rows."),
    ]


def figure_captions(table: pd.DataFrame, main_metric: str = DEFAULT_MAIN_METRIC) -> str:
    """Text of ``captions.md`` for a validated table (no plotting): per figure, what it
    shows, the error bars, and the test behind the asterisks."""
    return "# Figure captions\n\n" + "\n".join(_caption(s) for s in _specs(table, main_metric))


# ----------------------------------------------------------------------------- the job
def _log_to_mlflow(ablation_dir: Path, output_dir: Path, tracking_uri: str | None) -> str | None:
    info_path = ablation_dir / MLFLOW_RUN_FILE
    if not info_path.is_file():
        return None
    from fmri2img.errors import SchemaError
    from fmri2img.tracking import log_artifacts_to_run

    info = read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str) or not info["run_id"]:
        raise SchemaError(f"{info_path} has no 'run_id' string; expected {{\"run_id\": ..., \"tracking_uri\": ...}}.")
    artifact_path = f"{ARTIFACT_PATH}/{ablation_dir.resolve().name}"  # as ablate logs them
    log_artifacts_to_run(info["run_id"], output_dir, artifact_path, tracking_uri or info.get("tracking_uri"))
    return info["run_id"]


def make_figures(
    ablation_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str] = style.FORMATS,
    tracking_uri: str | None = None,
    *,
    main_metric: str = DEFAULT_MAIN_METRIC,
) -> list[Path]:
    """Write every figure, ``captions.md``, ``table.tex`` and ``table_formatted.md``.

    Parameters
    ----------
    ablation_dir : path-like
        Folder holding ``results_table.csv`` (one subject's ablation or the cross-subject
        summary) and optionally ``mlflow_run.json`` ({"run_id", "tracking_uri"}).
    output_dir : path-like
        Where the files go (created if needed).
    formats : sequence of {"pdf", "svg", "png"}
        Formats of each figure.
    tracking_uri : str, optional
        Overrides the ``tracking_uri`` of ``mlflow_run.json`` when logging the output folder
        as artifacts (under ``figures/<ablation folder name>/``) of the ablation's run.
    main_metric : str
        Metric of the bar figures and the first table column.

    Returns
    -------
    paths : list of Path
        The written files: figures (name-major, in the order of ``formats``), captions, tables.
    """
    ablation_dir = Path(ablation_dir)
    formats = style.check_formats(formats)
    table = read_results_table(ablation_dir / RESULTS_TABLE)
    output_dir = ensure_dir(output_dir)

    written: list[Path] = []
    specs = _specs(table, main_metric)
    for spec in specs:
        fig = spec.plot()
        written += style.save_figure(fig, output_dir / spec.name, formats)
    captions = "# Figure captions\n\n" + "\n".join(_caption(s) for s in specs)  # = figure_captions()
    written.append(write_text(output_dir / CAPTIONS_FILE, captions))

    rows, note = summary_rows(table)  # shared baselines once, under "Baselines"
    metrics = list(dict.fromkeys([main_metric, COSINE_METRIC]))
    written.append(write_text(output_dir / LATEX_TABLE_FILE, format_latex(rows, metrics, note)))
    written.append(write_text(output_dir / MARKDOWN_TABLE_FILE, format_markdown(rows, metrics, note)))

    _log_to_mlflow(ablation_dir, output_dir, tracking_uri)
    return written


__all__ = [
    "DEFAULT_MAIN_METRIC", "FIGURE_NAMES", "FIGURE_WIDTHS", "figure_captions", "make_figures", "plot_bar_by_stimulus_type",
    "plot_bar_overall_metric", "plot_clip_similarity_by_condition", "plot_retrieval_curves",
    "plot_subject_breakdown",
]
