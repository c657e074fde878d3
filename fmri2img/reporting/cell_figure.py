"""The small figure of one ablation cell, shown on the cell's MLflow run page: its cosine on each
test set (bootstrap 95% CI) and the validation curves of the models it trained."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fmri2img.reporting import style

#: Figure size in inches (width, height): readable in the run page's artifact preview.
CELL_FIGURE_SIZE = (6.4, 2.6)
#: The metric of the left panel (the study's primary metric) and the curve of the right panel.
CELL_METRIC = "cosine"
CURVE_SUFFIX = "val_cosine"


def plot_cell(table: pd.DataFrame, curves: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Cosine per test set with its interval (left) and each model's validation cosine per epoch (right).

    Parameters
    ----------
    table : DataFrame
        The cell's long results table (columns ``test_set``, ``stimulus_type``, ``metric``, ``value``,
        ``ci_low``, ``ci_high``); rows of stimulus type ``all`` are drawn.
    curves : mapping name -> sequence of float
        Per-epoch curves (``fold0/val_cosine``...); those ending in ``val_cosine`` are drawn.
    title : str
        The figure's title (the cell's name).
    """
    with style.style_context():
        fig = style.new_figure(*CELL_FIGURE_SIZE)
        left, right = fig.subplots(1, 2)
        rows = table[(table["stimulus_type"] == "all") & (table["metric"] == CELL_METRIC)]
        x = np.arange(len(rows))
        values = rows["value"].to_numpy(float)
        low, high = rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)
        colors = style.category_colors("test_set", list(rows["test_set"]))
        left.bar(x, values, color=[colors[t][0] for t in rows["test_set"]], width=0.6)
        left.errorbar(x, values, yerr=[values - low, high - values], fmt="none", ecolor="black")
        left.set_xticks(x, list(rows["test_set"]))
        finite = np.concatenate([low, high, values])
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
