"""``fmri2img reconstruct``: predicted embeddings -> images (a predictions folder ``eval --predictions`` scores)."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.constants import DEFAULT_CACHE_ROOT
from fmri2img.core.vocab import DEVICES, MODES

Mode = choices("Mode", MODES)
Device = choices("Device", DEVICES)
#: Names of fmri2img.models.reconstruct.RECONSTRUCTION_BACKENDS (not imported: torch at --help time).
Backend = choices("Backend", ("synthetic", "unclip"))


@handle_errors
def command(
    index: Path = typer.Option(..., "--index", help="Trial index Parquet (test sets, data root)."),
    output_dir: Path = typer.Option(..., "--output-dir", help="Predictions folder to write (docs/comparing.md)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Decoder checkpoint whose test predictions to render."),
    embeddings: Path = typer.Option(None, "--embeddings", help="Or: an embeddings.npz of predictions to render."),
    embedding_set: str = typer.Option(None, "--embedding-set", help="With --embeddings: their model's cache tag."),
    model_type: str = typer.Option(None, "--model-type", help="Expected decoder (ridge|mlp|two_stage); checked."),
    adapter_checkpoint: Path = typer.Option(None, "--adapter-checkpoint", help="From `fmri2img adapt`."),
    adapter_type: str = typer.Option(None, "--adapter-type", help="Expected adapter type; checked."),
    mode: Mode = typer.Option(Mode("both"), "--mode", help="Which test sets to reconstruct."),
    backend: Backend = typer.Option(Backend("synthetic"), "--backend", help="synthetic (world renderer) or unclip."),
    pipeline_dir: Path = typer.Option(None, "--pipeline-dir", help="unclip: local diffusers Stable unCLIP folder."),
    device: Device = typer.Option(None, "--device", help="unclip: where the pipeline runs (cpu|cuda)."),
    seed: int = typer.Option(None, "--seed", help="unclip: seed of the diffusion noise."),
    steps: int = typer.Option(None, "--steps", help="unclip: denoising steps (default 20)."),
    image_size: int = typer.Option(None, "--image-size", help="unclip: output side (default: the pipeline's)."),
    embedding_norm: float = typer.Option(None, "--embedding-norm", help="unclip: rescale embeddings to this norm."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Cache root (betas, embeddings)."),
    tracking_uri: str = TrackingUriOption,
    experiment: str = ExperimentOption,
) -> None:
    """Turn decoded (or given) embeddings into images, one PNG per test stimulus."""
    from fmri2img.stages.reconstruct import reconstruct

    given = {"pipeline_dir": pipeline_dir, "device": device.value if device else None, "seed": seed,
             "num_inference_steps": steps, "image_size": image_size, "embedding_norm": embedding_norm}
    params = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None}
    info = reconstruct(index, output_dir, checkpoint=checkpoint, embeddings=embeddings,
                       embedding_set=embedding_set, backend=backend.value,
                       backend_params=params, mode=mode.value, cache_root=cache_root, tracking_uri=tracking_uri,
                       experiment=experiment, model_type=model_type, adapter_checkpoint=adapter_checkpoint,
                       adapter_type=adapter_type)
    counts = ", ".join(f"{name} {n}" for name, n in info["n_images"].items())
    echo(f"Wrote {output_dir} ({backend.value}: {counts} images).")
