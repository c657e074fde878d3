"""``fmri2img embed``: CLIP embeddings of every stimulus of the trial indexes, cached per model."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.constants import DEFAULT_CACHE_ROOT, DEFAULT_CLIP_MODEL, DEFAULT_DATA_ROOT, DEFAULT_EMBED_BATCH_SIZE
from fmri2img.core.vocab import DEVICES

Device = choices("Device", DEVICES)


@handle_errors
def command(
    index: list[Path] = typer.Option(
        ..., "--index", exists=True, dir_okay=False, help="Trial-index Parquet file (repeatable)."
    ),
    data_root: Path = typer.Option(Path(DEFAULT_DATA_ROOT), "--data-root", help="Root of the image files."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Writes <cache-root>/clip/<tag>/."),
    model: str = typer.Option(DEFAULT_CLIP_MODEL, "--model", help="open_clip architecture."),
    pretrained: str = typer.Option(None, "--pretrained", help="Hub weights tag (default: openai)."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", exists=True, dir_okay=False, help="Local open_clip checkpoint file instead of a hub tag."
    ),
    synthetic_truth: bool = typer.Option(
        False, "--synthetic-truth", help="Use the synthetic world's planted latents (demo only, no CLIP weights)."
    ),
    device: Device = typer.Option(Device("cpu"), "--device", help="Where the model runs."),
    batch_size: int = typer.Option(DEFAULT_EMBED_BATCH_SIZE, "--batch-size", min=1, help="Images / texts per forward pass."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Discard this model's cached set and recompute it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Compute (or reuse) L2-normalised CLIP embeddings of all stimuli in the indexes."""
    from fmri2img.stages.embed import run_embed

    emb = run_embed(index, data_root, cache_root, tracking_uri=tracking_uri, model=model, pretrained=pretrained,
                    checkpoint=checkpoint, synthetic_truth=synthetic_truth, device=device.value, batch_size=batch_size,
                    rebuild=rebuild, progress=progress)
    echo(
        f"Embedding set {emb.tag}: {len(emb)} stimuli x {emb.dim} dims, {len(emb.computed)} computed, "
        f"{len(emb) - len(emb.computed)} reused -> {Path(cache_root) / 'clip' / emb.tag}"
    )
