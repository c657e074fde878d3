"""The ``figures`` stage: read an ablation folder's ``results_table.csv``, write every figure (PDF,
SVG, PNG), ``captions.md``, ``table.tex`` and ``table_formatted.md``, and log them to the
ablation's MLflow run (named in the folder's ``mlflow_run.json``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from fmri2img.core.errors import SchemaError
from fmri2img.core.files import atomic_path, ensure_dir, read_json, write_text
from fmri2img.core.tracking import log_artifacts_to_run
from fmri2img.reporting.captions import caption, figure_specs
from fmri2img.reporting.figures import COSINE_METRIC, DEFAULT_MAIN_METRIC
from fmri2img.reporting.region_report import REGION_FIGURE, plot_h1_by_region, region_caption
from fmri2img.reporting.style import FORMAT_METADATA, FORMATS, PNG_DPI, check_formats, style_context
from fmri2img.reporting.tables import (
    RESULTS_TABLE,
    format_latex,
    format_markdown,
    primary_region,
    primary_region_rows,
    read_results_table,
    summary_rows,
)

#: Optional file of an ablation folder naming its MLflow run: {"run_id", "tracking_uri"}.
MLFLOW_RUN_FILE = "mlflow_run.json"

#: Artifact folder of the run that receives the figures (``figures/<ablation folder name>``).
ARTIFACT_PATH = "figures"

#: The hypotheses of a cross-subject summary folder (its ``regions`` entry draws the region figure).
HYPOTHESES_FILE = "hypotheses.json"

#: Names of the written files.
CAPTIONS_FILE = "captions.md"
LATEX_TABLE_FILE = "table.tex"
MARKDOWN_TABLE_FILE = "table_formatted.md"


def _log_to_mlflow(ablation_dir: Path, output_dir: Path, tracking_uri: str | None) -> str | None:
    info_path = ablation_dir / MLFLOW_RUN_FILE
    if not info_path.is_file():
        return None
    info = read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str) or not info["run_id"]:
        raise SchemaError(f"{info_path} has no 'run_id' string; expected {{\"run_id\": ..., \"tracking_uri\": ...}}.")
    artifact_path = f"{ARTIFACT_PATH}/{ablation_dir.resolve().name}"  # as ablate logs them
    log_artifacts_to_run(info["run_id"], output_dir, artifact_path, tracking_uri or info.get("tracking_uri"))
    return info["run_id"]


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format, atomically and deterministically (no dates,
    a fixed SVG hash salt). Returns the written paths in the order of ``formats``."""
    stem = Path(stem)
    written = []
    with style_context():
        engine = fig.get_layout_engine()
        if engine is not None:  # lay out once for every format, not once per savefig
            engine.execute(fig)
            fig.set_layout_engine(None)
        for fmt in check_formats(formats):
            target = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=FORMAT_METADATA[fmt])
            written.append(target)
    return written


def make_figures(
    ablation_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
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
    formats = check_formats(formats)
    # a study of several regions: the figures and tables show the primary one, h1_ratio_by_region all
    full = read_results_table(ablation_dir / RESULTS_TABLE)
    table = primary_region_rows(full)
    output_dir = ensure_dir(output_dir)

    written: list[Path] = []
    specs = figure_specs(table, main_metric)
    for spec in specs:
        written += save_figure(spec.plot(), output_dir / spec.name, formats)
    captions = "# Figure captions\n\n" + "\n".join(caption(s) for s in specs)  # = figure_captions()
    named = sorted({r for r in full.get("region", []) if r})
    if len(named) > 1:
        captions += (f"\nThe figures and tables above show region {primary_region(full)} ({len(named)} regions in the "
                     "study: h1_ratio_by_region compares them).\n")
    hypotheses = ablation_dir / HYPOTHESES_FILE
    regions = read_json(hypotheses).get("regions") if hypotheses.is_file() else None
    if regions:
        written += save_figure(plot_h1_by_region(regions), output_dir / REGION_FIGURE, formats)
        captions += "\n" + region_caption(regions)
    written.append(write_text(output_dir / CAPTIONS_FILE, captions))

    rows, note = summary_rows(table)  # shared baselines once, under "Baselines"
    metrics = list(dict.fromkeys([main_metric, COSINE_METRIC]))
    written.append(write_text(output_dir / LATEX_TABLE_FILE, format_latex(rows, metrics, note)))
    written.append(write_text(output_dir / MARKDOWN_TABLE_FILE, format_markdown(rows, metrics, note)))

    _log_to_mlflow(ablation_dir, output_dir, tracking_uri)
    return written
