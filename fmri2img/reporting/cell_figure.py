"""The small figure of one ablation cell, shown on the cell's MLflow run page: its cosine on each
test set (bootstrap 95% CI) and the validation curves of the models it trained."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fmri2img.reporting import style
from fmri2img.reporting.tables import label

#: Figure size in inches (width, height): readable in the run page's artifact preview.
CELL_FIGURE_SIZE = (6.4, 2.6)
#: The metric of the left panel (the study's primary metric) and the curve of the right panel.
CELL_METRIC = "cosine"
CURVE_SUFFIX = "val_cosine"
#: The baseline drawn as the level to beat (a constant guess: the training images' mean embedding).
BASELINE = "baseline_mean_embedding"


def plot_cell(table: pd.DataFrame, configuration: str, curves: Mapping[str, Sequence[float]],
              title: str) -> Figure:
    """Cosine per test set with its interval and the mean-embedding baseline (left) and each model's
    validation cosine per epoch (right).

    Parameters
    ----------
    table : DataFrame
        The cell's long results table (columns ``configuration``, ``test_set``, ``stimulus_type``,
        ``metric``, ``value``, ``ci_low``, ``ci_high``); rows of stimulus type ``all`` are drawn.
    configuration : str
        The cell's configuration (the table also holds the baselines' rows).
    curves : mapping name -> sequence of float
        Per-epoch curves (``fold0/val_cosine``...); those ending in ``val_cosine`` are drawn.
    title : str
        The figure's title (the cell's name).
    """
    with style.style_context():
        fig = style.new_figure(*CELL_FIGURE_SIZE)
        left, right = fig.subplots(1, 2)
        shown = table[(table["stimulus_type"] == "all") & (table["metric"] == CELL_METRIC)]
        rows = shown[shown["configuration"] == configuration]
        base = shown[shown["configuration"] == BASELINE].set_index("test_set")["value"]
        x = np.arange(len(rows))
        values = rows["value"].to_numpy(float)
        low, high = rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)
        colors = style.category_colors("test_set", list(rows["test_set"]))
        left.vlines(x, low, high, color="black", linewidth=0.8)  # points: the axis shows the compared range
        left.scatter(x, values, color=[colors[t][0] for t in rows["test_set"]], zorder=3)
        levels = np.array([base.get(t, np.nan) for t in rows["test_set"]], float)
        left.hlines(levels, x - 0.3, x + 0.3, color="black", linestyle="--", linewidth=0.9)
        left.set_xticks(x, [label("test_set", t, short=True) for t in rows["test_set"]])
        left.set_xlim(-0.6, len(rows) - 0.4)
        left.set_title("dashed: mean-embedding baseline", loc="left", fontsize="small")
        finite = np.concatenate([low, high, values, levels])
        finite = finite[np.isfinite(finite)]
        if finite.size:  # the compared range, not [0, 1]
            pad = 0.1 * max(finite.max() - finite.min(), 0.01)
            left.set_ylim(max(-1.0, finite.min() - pad), min(1.0, finite.max() + pad))
        left.set_ylabel("cosine (95% CI)")
        drawn = {k: v for k, v in curves.items() if k.endswith(CURVE_SUFFIX)}
        for name, series in sorted(drawn.items()):
            right.plot(np.arange(1, len(series) + 1), np.asarray(series, float), label=name.rsplit("/", 1)[0])
        if drawn:
            right.set_xlabel("epoch")
            right.set_ylabel("validation cosine")
            right.legend(fontsize="small", frameon=False)
        else:
            right.set_axis_off()
            right.text(0.5, 0.5, "closed-form fit:\nno training curve", ha="center", va="center",
                       transform=right.transAxes)
        fig.suptitle(title)
    return fig
