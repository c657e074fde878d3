"""``fmri2img ablate``: the whole experimental matrix (and its figures) in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.config import load_config, override
from fmri2img.core.vocab import EXECUTORS

DEFAULT_CONFIG = Path("projects/imagery/configs/ablation.yaml")
Executor = choices("Executor", EXECUTORS)


@handle_errors
def command(
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="Ablation YAML (which cells run)."),
    subject: list[str] = typer.Option(None, "--subject", help="Subjects (repeatable); default: the config's."),
    decoder: list[str] = typer.Option(None, "--decoder", help="Decoders (repeatable); default: the config's."),
    configuration: list[str] = typer.Option(None, "--configuration", help="Configurations (repeatable)."),
    region: list[str] = typer.Option(None, "--region", help="Regions (repeatable), e.g. V1+V2+V3, ventral, "
                                     "nsdgeneral; default: the config's (docs/regions.md)."),
    voxel_selection: str = typer.Option(None, "--voxel-selection", help="Within every region: all, ncsnr>=T or top-K."),
    data_root: str = typer.Option(None, "--data-root", help="NSD release or synthetic world root."),
    output_root: str = typer.Option(None, "--output-dir", help="Default: outputs/imagery_ablations."),
    executor: Executor = typer.Option(None, "--executor", help="Where the cells run: local (a process pool) or "
                                      "slurm (job arrays; needs a tracking server); default: the config's."),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Local worker processes; default: the cores available "
                             "to this process. Slurm: the config's slurm.array_parallelism instead."),
    force: bool = typer.Option(False, "--force", help="Rerun every cell even if its inputs are unchanged."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the figures."),
    tracking_uri: str = TrackingUriOption,
    experiment: str = ExperimentOption,
) -> None:
    """Run the perception-vs-imagery matrix: decoders x configurations x test domains, with reports."""
    from fmri2img.stages.ablation.executor import run_ablation
    from fmri2img.stages.ablation.matrix import AblationConfig

    base = load_config(AblationConfig, config) if config.exists() or config != DEFAULT_CONFIG else AblationConfig()
    cfg = override(base, subjects=tuple(subject) if subject else None, decoders=tuple(decoder) if decoder else None,
                   configurations=tuple(configuration) if configuration else None, data_root=data_root,
                   regions=tuple(region) if region else None, voxel_selection=voxel_selection,
                   output_root=output_root, figures=False if no_figures else None,
                   executor=executor.value if executor else None)
    result = run_ablation(cfg, jobs=jobs, force=force, tracking_uri=tracking_uri, experiment=experiment)
    skipped = sum(r["skipped"] for r in result.records)
    echo(f"Ablation done in {result.seconds:.1f} s: {len(result.records)} cells ({skipped} reused).")
    echo(f"Results: {result.output_root}/<subject>/results_table.md; summary: {result.summary_dir}/report.md")
    echo("Compare the cells in the MLflow UI: fmri2img ui --compare   (then open the URL it prints)")
