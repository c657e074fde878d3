"""``fmri2img figures``: paper figures, captions and tables from an ablation folder."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, echo, handle_errors


@handle_errors
def command(
    ablation_dir: Path = typer.Option(
        ..., "--ablation-dir", help="Folder with results_table.csv (and optionally mlflow_run.json)."
    ),
    output_dir: Path = typer.Option(..., "--output-dir", help="Where figures, captions.md and tables go."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Make the figures (PDF, SVG, PNG), captions.md, table.tex and table_formatted.md of an ablation."""
    from fmri2img.stages.report import make_figures

    written = make_figures(ablation_dir, output_dir, tracking_uri=tracking_uri)
    echo(f"Wrote {len(written)} files to {output_dir}")
    typer.echo(str(output_dir))
