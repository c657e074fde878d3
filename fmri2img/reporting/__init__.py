"""Figures, captions and paper tables from results tables (``fmri2img figures``).

Public API: :func:`make_figures` (the whole job), :func:`read_results_table` (validated
tidy table, docs/contracts.md section 6), the ``plot_*`` figure functions, and
:func:`format_latex` / :func:`format_markdown` for the tables. Importing this package
does not import matplotlib; the figure functions are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from fmri2img.reporting.tables import (
    format_latex,
    format_markdown,
    read_results_table,
    summary_rows,
)

_FIGURE_API = (
    "make_figures", "plot_bar_overall_metric", "plot_bar_by_stimulus_type",
    "plot_clip_similarity_by_condition", "plot_retrieval_curves", "plot_subject_breakdown",
)

__all__ = ["format_latex", "format_markdown", "read_results_table", "summary_rows", *_FIGURE_API]


def __getattr__(name: str) -> Any:
    if name in _FIGURE_API:
        from fmri2img.reporting import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
