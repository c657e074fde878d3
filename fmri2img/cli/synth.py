"""``fmri2img synth``: write the synthetic NSD world (NSD + NSD-Imagery layout, planted effects)."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.constants import DEFAULT_DATA_ROOT, DEFAULT_SUBJECTS, DEFAULT_WORLD_SEED
from fmri2img.core.vocab import WORLD_SCALES, WRITE_BETA_FORMATS

Scale = choices("Scale", WORLD_SCALES)
BetaFormat = choices("BetaFormat", WRITE_BETA_FORMATS)


@handle_errors
def command(
    out: Path = typer.Option(Path(DEFAULT_DATA_ROOT), "--out", help="Root folder of the world."),
    subject: list[str] = typer.Option(
        None, "--subject", help=f"Subject to generate (repeatable; default {' '.join(DEFAULT_SUBJECTS)})."
    ),
    scale: Scale = typer.Option(
        Scale("demo"), "--scale", help="demo: small grid, 3,000 trials per subject (seconds); nsd: real grids, 40 sessions."
    ),
    sessions: int = typer.Option(
        None, "--sessions", min=1, help="Write only the first N NSD sessions per subject (the design stays complete)."
    ),
    beta_format: BetaFormat = typer.Option(BetaFormat("nifti"), "--format", help="NSD session betas as .nii.gz, .hdf5 or both."),
    null: bool = typer.Option(False, "--null", help="Plant imagery identical in distribution to perception."),
    imagery_strength: float = typer.Option(
        None, "--imagery-strength", min=0.0, max=1.0,
        help="Imagery strength s in (0, 1]: 1 = imagery like perception; default 0.6 (docs/synthetic_world.md)."),
    seed: int = typer.Option(DEFAULT_WORLD_SEED, "--seed", help="Seed of the world (same seed, same bytes)."),
    stimulus_seed: int = typer.Option(
        None, "--stimulus-seed", help="Seed of the stimuli only (default --seed): new stimuli in the same latent "
        "geometry (a sibling world, docs/trust.md)."),
    subject_seed: int = typer.Option(
        None, "--subject-seed", help="Seed of the subjects only (default --seed): the same stimuli shown to new "
        "subjects."),
    force: bool = typer.Option(False, "--force", help="Replace an existing world at --out."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Write the synthetic NSD world (NSD + NSD-Imagery files with planted effects) under --out."""
    from fmri2img.stages.synth import run_synth

    summary, run_id = run_synth(out, tuple(subject) if subject else DEFAULT_SUBJECTS, scale=scale.value,
                                sessions=sessions, beta_format=beta_format.value, null=null, seed=seed, force=force,
                                imagery_strength=imagery_strength, stimulus_seed=stimulus_seed,
                                subject_seed=subject_seed,
                                tracking_uri=tracking_uri)
    echo(
        f"Wrote the synthetic world ({', '.join(summary.subjects)}; {summary.n_files} files, "
        f"{summary.n_bytes / 1e6:.1f} MB) to {summary.root} in {summary.seconds:.1f} s; "
        f"MLflow run {run_id}."
    )
