"""``fmri2img adapt``: train lightweight adapters (or the fine-tuning baseline) per imagery fold."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.config import load_config, override
from fmri2img.core.constants import DEFAULT_CACHE_ROOT
from fmri2img.core.vocab import ADAPTER_TYPES

AdapterType = choices("AdapterType", ADAPTER_TYPES)


@handle_errors
def command(
    index: Path = typer.Option(..., "--index", help="Trial index Parquet."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Frozen perception decoder (best.pt)."),
    model_type: str = typer.Option(None, "--model-type", help="Expected decoder (ridge|mlp|two_stage); checked."),
    adapter: AdapterType = typer.Option(AdapterType("linear"), "--adapter", help="Adapter type, or the full fine-tune baseline."),
    condition: bool = typer.Option(False, "--with-condition/--no-condition", help="Add a perception/imagery condition embedding."),
    output_dir: Path = typer.Option(..., "--output-dir", help="Writes <output-dir>/checkpoints/adapter_best.pt."),
    imagery_fraction: float = typer.Option(None, "--imagery-fraction", help="Fraction of training-fold imagery trials (0, 1]."),
    epochs: int = typer.Option(None, "--epochs"),
    lr: float = typer.Option(None, "--lr", help="Largest learning rate tried (default 1e-3)."),
    lr_steps: int = typer.Option(None, "--lr-steps", help="Rates tried per fold: lr, lr/10, ... (default 3)."),
    batch_size: int = typer.Option(None, "--batch-size"),
    loss: str = typer.Option(None, "--loss", help="cosine_mse (default) or contrastive."),
    device: str = typer.Option(None, "--device", help="cpu (default) or cuda."),
    config: Path = typer.Option(None, "--config", help="YAML AdaptConfig; options override it."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root"),
    tracking_uri: str = TrackingUriOption,
    experiment: str = ExperimentOption,
) -> None:
    """Train adapters on a frozen perception decoder (H3), cross-validated over imagery folds."""
    from fmri2img.stages.adapt import AdaptConfig, train_adapters

    base = load_config(AdaptConfig, config) if config else AdaptConfig()
    cfg = override(base, adapter=adapter.value, condition=condition or None, imagery_fraction=imagery_fraction,
                   epochs=epochs, lr=lr, lr_steps=lr_steps, batch_size=batch_size, loss=loss, device=device)
    result = train_adapters(index, checkpoint, output_dir, cfg, model_type=model_type, cache_root=cache_root,
                            tracking_uri=tracking_uri, experiment=experiment)
    meta = result.metadata
    echo(f"Wrote {result.checkpoint} ({meta['name']}, {len(meta['folds'])} folds, "
         f"{meta['train_seconds_total']:.1f} s, overhead {meta['parameter_overhead']:.2%} of base parameters).")
