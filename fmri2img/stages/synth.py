"""The ``synth`` stage: write the synthetic NSD world (:func:`fmri2img.sim.world.write_world`)
inside an MLflow run that records its parameters, seeds and planted truth."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fmri2img.core import tracking
from fmri2img.core.constants import INIT_SEED, SPLIT_SEED
from fmri2img.sim.world import WorldSummary, check_request, write_world


def run_synth(out: str | os.PathLike, subjects: Sequence[str], *, scale: str, sessions: int | None, beta_format: str,
              null: bool, seed: int, force: bool, tracking_uri: str | None = None,
              imagery_strength: float | None = None, stimulus_seed: int | None = None,
              subject_seed: int | None = None) -> tuple[WorldSummary, str]:
    """Write the world under ``out``; returns its summary and the MLflow run id."""
    subjects = tuple(subjects)
    check_request(out, subjects, scale, sessions, beta_format, force)  # fail before MLflow
    params = {"out": str(out), "subjects": list(subjects), "scale": scale, "sessions": sessions,
              "format": beta_format, "null": null, "imagery_strength": imagery_strength, "force": force}
    seeds = {"world": seed, "stimuli": seed if stimulus_seed is None else stimulus_seed,
             "subjects": seed if subject_seed is None else subject_seed, "split": SPLIT_SEED, "init": INIT_SEED}
    with tracking.run("synth", params, tracking_uri=tracking_uri, seeds=seeds) as run:
        summary = write_world(out, subjects=subjects, scale=scale, sessions=sessions, beta_format=beta_format,
                              null=null, seed=seed, force=force, progress=True,
                              imagery_strength=imagery_strength, stimulus_seed=stimulus_seed,
                              subject_seed=subject_seed)
        run.log_artifact(summary.root / "truth" / "params.json", "truth")
        run.log_metrics({"n_files": summary.n_files, "n_bytes": summary.n_bytes,
                         "n_images": summary.n_images, "seconds": summary.seconds})
    return summary, run.run_id
