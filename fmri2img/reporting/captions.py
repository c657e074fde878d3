"""Captions of the paper figures: per figure, what it shows, the error bars and the test behind
the asterisks (:func:`figure_specs` also tells :mod:`fmri2img.stages.report` what to draw)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fmri2img.reporting.figures import (
    COSINE_METRIC,
    DEFAULT_MAIN_METRIC,
    plot_bar_by_stimulus_type,
    plot_bar_overall_metric,
    plot_clip_similarity_by_condition,
    plot_retrieval_curves,
    plot_subject_breakdown,
)
from fmri2img.reporting.tables import (
    ALPHA,
    GROUP_SUBJECT,
    RESULTS_TABLE,
    individual_subjects,
    label,
    retrieval_k,
    spread_shared_baselines,
    summary_rows,
    tests_used,
)

#: ``subject`` label of the rows :func:`~fmri2img.reporting.tables.summary_rows` averages over subjects.
MEAN_PREFIX = "mean of "


@dataclass(frozen=True)
class FigureSpec:
    name: str
    plot: Callable[[], Figure]
    rows: pd.DataFrame  # the rows the figure draws (for the caption's test names)
    text: str
    subject_note: str
    marks: str = "Asterisks"  # what marks a significant cell


def caption(spec: FigureSpec) -> str:
    tests = tests_used(spec.rows)
    if tests:
        sig = f"{spec.marks}: p_holm < {ALPHA} by {'; '.join(tests)} (p-values as given in {RESULTS_TABLE})."
    else:
        sig = "No p-values for these cells, so no significance marks."
    has_chance = np.isfinite(spec.rows["chance"].to_numpy(dtype=float)).any()
    chance = " Dotted black: chance level (K / gallery size for retrieval, 0.5 for two-way)." if has_chance else ""
    means = spec.rows["subject"].astype(str).str.startswith(MEAN_PREFIX).any()
    interval = ("95% t-intervals over subjects" if means else "95% bootstrap CIs over stimuli (ci_low, ci_high)")
    return (
        f"## {spec.name}\n\n{spec.text} {spec.subject_note} Error bars: {interval}, cut at the metric's "
        f"bounds.{chance} {sig} Missing bars/points: not applicable or not run.\n"
    )


def figure_specs(table: pd.DataFrame, metric: str) -> list[FigureSpec]:
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
        FigureSpec("bar_overall_metric", lambda: plot_bar_overall_metric(rows, metric), main_all,
              f"{m} per configuration, perception vs imagery test sets (colours), one panel per decoder.", note),
        FigureSpec("bar_by_stimulus_type", lambda: plot_bar_by_stimulus_type(rows, metric), main_types,
              f"{m} per stimulus type and configuration; panel rows are test sets, columns decoders.", note),
        FigureSpec("clip_similarity_by_condition", lambda: plot_clip_similarity_by_condition(rows), cosine,
              "CLIP cosine between decoded and true embeddings per configuration and decoder (points), one "
              "panel per test set; the axis spans the compared range, not 0-1. Dashed line: the mean-embedding "
              "baseline (a constant guess), the level any decoder must beat; the other baselines are left out.",
              note),
        FigureSpec("retrieval_curves", lambda: plot_retrieval_curves(rows), retrieval,
              "Retrieval@K against K per configuration; panel rows are test sets, columns decoders; each row "
              "shows the K its gallery allows. Dashed lines: baselines. Filled markers: significant, hollow: "
              "not.", note, marks="Filled markers"),
        FigureSpec("subject_breakdown", lambda: plot_subject_breakdown(spread, metric), per_subject,
              f"{m} per configuration for each subject ({subjects}); panel rows are test sets, columns decoders.",
              "Each subject's own rows."),
    ]


def figure_captions(table: pd.DataFrame, main_metric: str = DEFAULT_MAIN_METRIC) -> str:
    """Text of ``captions.md`` for a validated table (no plotting): per figure, what it
    shows, the error bars, and the test behind the asterisks."""
    return "# Figure captions\n\n" + "\n".join(caption(s) for s in figure_specs(table, main_metric))
