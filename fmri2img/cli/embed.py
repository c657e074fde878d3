"""``fmri2img embed``: CLIP embeddings of every stimulus of the trial indexes, cached per model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, echo, handle_errors
from fmri2img.constants import DEFAULT_CACHE_ROOT, DEFAULT_DATA_ROOT


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


@handle_errors
def command(
    index: list[Path] = typer.Option(
        ..., "--index", exists=True, dir_okay=False, help="Trial-index Parquet file (repeatable)."
    ),
    data_root: Path = typer.Option(Path(DEFAULT_DATA_ROOT), "--data-root", help="Root of the image files."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Writes <cache-root>/clip/<tag>/."),
    model: str = typer.Option("ViT-B-32", "--model", help="open_clip architecture."),
    pretrained: str = typer.Option(None, "--pretrained", help="Hub weights tag (default: openai)."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", exists=True, dir_okay=False, help="Local open_clip checkpoint file instead of a hub tag."
    ),
    synthetic_truth: bool = typer.Option(
        False, "--synthetic-truth", help="Use the synthetic world's planted latents (demo only, no CLIP weights)."
    ),
    device: Device = typer.Option(Device.cpu, "--device", help="Where the model runs."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images / texts per forward pass."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Discard this model's cached set and recompute it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Compute (or reuse) L2-normalised CLIP embeddings of all stimuli in the indexes."""
    from fmri2img.embeddings import embed_stimuli
    from fmri2img.tracking import run

    params = {
        "index": [str(p) for p in index],
        "data_root": str(data_root),
        "cache_root": str(cache_root),
        "model": model,
        "pretrained": pretrained,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "synthetic_truth": synthetic_truth,
        "device": device.value,
        "batch_size": batch_size,
        "rebuild": rebuild,
    }
    with run("embed", params, tracking_uri=tracking_uri) as tracked:
        emb = embed_stimuli(
            index, data_root, cache_root, model=model, pretrained=pretrained, checkpoint=checkpoint,
            synthetic_truth=synthetic_truth, device=device.value, batch_size=batch_size,
            progress=progress, rebuild=rebuild,
        )
        meta = {k: v for k, v in emb.meta.items() if k != "embeddings_sha256"}
        tracked.log_params(meta, prefix="embeddings.")
        tracked.log_metrics({"n_stimuli": len(emb), "n_computed": len(emb.computed), "dim": emb.dim})
        tracked.log_dict({"stimulus_ids": list(emb.ids), "modality": list(emb.modality)}, "embeddings/ids.json")
    echo(
        f"Embedding set {emb.tag}: {len(emb)} stimuli x {emb.dim} dims, {len(emb.computed)} computed, "
        f"{len(emb) - len(emb.computed)} reused -> {Path(cache_root) / 'clip' / emb.tag}"
    )
