"""``fmri2img synth``: write the synthetic NSD world (NSD + NSD-Imagery layout, planted effects)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, echo, handle_errors
from fmri2img.constants import DEFAULT_DATA_ROOT, DEFAULT_SUBJECTS, INIT_SEED, SPLIT_SEED
from fmri2img.data.synthetic import DEFAULT_SEED


class Scale(str, Enum):
    demo = "demo"
    nsd = "nsd"


class BetaFormat(str, Enum):
    nifti = "nifti"
    hdf5 = "hdf5"
    both = "both"


@handle_errors
def command(
    out: Path = typer.Option(Path(DEFAULT_DATA_ROOT), "--out", help="Root folder of the world."),
    subject: list[str] = typer.Option(
        None, "--subject", help=f"Subject to generate (repeatable; default {' '.join(DEFAULT_SUBJECTS)})."
    ),
    scale: Scale = typer.Option(
        Scale.demo, "--scale", help="demo: small grid, 3,000 trials per subject (seconds); nsd: real grids, 40 sessions."
    ),
    sessions: int = typer.Option(
        None, "--sessions", min=1, help="Write only the first N NSD sessions per subject (the design stays complete)."
    ),
    beta_format: BetaFormat = typer.Option(
        BetaFormat.nifti, "--format", help="NSD session betas as .nii.gz, .hdf5 or both."
    ),
    null: bool = typer.Option(False, "--null", help="Plant imagery identical in distribution to perception."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the world (same seed, same bytes)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing world at --out."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Write the synthetic NSD world (NSD + NSD-Imagery files with planted effects) under --out."""
    from fmri2img import tracking
    from fmri2img.data.synthetic import check_request, write_world

    subjects = tuple(subject) if subject else DEFAULT_SUBJECTS
    check_request(out, subjects, scale.value, sessions, beta_format.value, force)  # fail before MLflow
    params = {
        "out": str(out), "subjects": list(subjects), "scale": scale.value, "sessions": sessions,
        "format": beta_format.value, "null": null, "force": force,
    }
    seeds = {"world": seed, "split": SPLIT_SEED, "init": INIT_SEED}
    with tracking.run("synth", params, tracking_uri=tracking_uri, seeds=seeds) as run:
        summary = write_world(
            out, subjects=subjects, scale=scale.value, sessions=sessions, beta_format=beta_format.value,
            null=null, seed=seed, force=force, progress=True,
        )
        run.log_artifact(summary.root / "truth" / "params.json", "truth")
        run.log_metrics({"n_files": summary.n_files, "n_bytes": summary.n_bytes,
                         "n_images": summary.n_images, "seconds": summary.seconds})
    echo(
        f"Wrote the synthetic world ({', '.join(summary.subjects)}; {summary.n_files} files, "
        f"{summary.n_bytes / 1e6:.1f} MB) to {summary.root} in {summary.seconds:.1f} s; "
        f"MLflow run {run.run_id}."
    )
