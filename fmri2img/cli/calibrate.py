"""``fmri2img calibrate``: how far to trust the study's intervals and verdicts, measured on many
synthetic worlds with known truth (coverage, false-positive rate, bias, RMSE)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, echo, handle_errors
from fmri2img.core.config import load_config, override
from fmri2img.core.errors import ConfigError

DEFAULT_CONFIG = Path("projects/imagery/configs/calibrate.yaml")


@handle_errors
def command(
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="Calibration YAML (worlds, settings, study)."),
    worlds: int = typer.Option(None, "--worlds", min=1, help="Worlds per setting (at least 2 without siblings); "
                               "default: the config's."),
    first_seed: int = typer.Option(None, "--first-seed", min=0, help="Seed of the first world (the others follow "
                                   "it); other seeds than a run you tuned on give held-out worlds. Default: the "
                                   "config's."),
    strength: list[float] = typer.Option(None, "--strength", help="Planted imagery strengths in (0, 1) "
                                         "(repeatable); the null world (strength 1) is added unless --no-null."),
    no_null: bool = typer.Option(False, "--no-null", help="Leave out the null world."),
    decoder: list[str] = typer.Option(None, "--decoder", help="Decoders (repeatable); default: the config's."),
    output_root: str = typer.Option(None, "--output-dir", help="Default: outputs/calibration."),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Worlds run in parallel; default: every available core."),
    write_truth: Path = typer.Option(None, "--write-truth", help="Also write each planted setting's simulated "
                                     "truth table (<dir>/<setting>.json) for the ablation's planted-truth check; with "
                                     "siblings, one world family's (worlds: 1)."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Run the study on independent worlds per setting; report coverage, FPR, bias and RMSE."""
    from fmri2img.stages.calibrate import CalibrationConfig, run_calibration

    use_file = config.exists() or config != DEFAULT_CONFIG  # a missing explicit --config is an error
    base = load_config(CalibrationConfig, config) if use_file else CalibrationConfig()
    cfg = override(base, worlds=worlds, first_seed=first_seed, strengths=tuple(strength) if strength else None,
                   include_null=False if no_null else None, decoders=tuple(decoder) if decoder else None,
                   output_root=output_root)
    if write_truth and cfg.siblings and cfg.worlds != 1:  # named with the file, as the config's own checks
        raise ConfigError(f"{config}: worlds={cfg.worlds}: a truth table with siblings is one world family's "
                          "(set worlds: 1 with --write-truth).")
    result = run_calibration(cfg, jobs=jobs or len(os.sched_getaffinity(0)), tracking_uri=tracking_uri,
                             write_truth=str(write_truth) if write_truth else None)
    echo(f"Calibration done in {result.seconds:.1f} s: {result.rows['world_seed'].nunique()} worlds per setting; "
         f"table {result.output_root}/calibration.md, figure {result.output_root}/calibration.png; "
         f"MLflow run {result.run_id}.")
    echo(f"coverage_min={result.headline['coverage_min']:.3f} fpr_max={result.headline['fpr_max']:.3f}")
