"""``fmri2img train``: fit a perception (or mixed) decoder and write ``best.pt`` + metadata."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.config import load_config, override
from fmri2img.core.constants import DEFAULT_CACHE_ROOT
from fmri2img.core.vocab import DECODERS, TRAIN_ON

Model = choices("Model", DECODERS)
TrainOn = choices("TrainOn", TRAIN_ON)


@handle_errors
def command(
    index: Path = typer.Option(..., "--index", help="Trial index Parquet (from `fmri2img index`)."),
    model: Model = typer.Option(None, "--model", "--model-type", help="Decoder to train."),
    train_on: TrainOn = typer.Option(None, "--train-on", help="perception (default) or mixed (H2)."),
    holdout_fold: int = typer.Option(None, "--holdout-fold", help="Mixed: the imagery fold kept out for evaluation."),
    imagery_weight: float = typer.Option(None, "--imagery-weight", help="Mixed: sample weight of imagery trials."),
    imagery_val_fraction: float = typer.Option(
        None, "--imagery-val-fraction",
        help="Mixed: share of the training folds' imagery stimuli held out for early stopping (default 0.25)."),
    output_dir: Path = typer.Option(None, "--output-dir", help="Default: checkpoints/<model>/<subject> "
                                    "(another region or selection: .../region-<tag>)."),
    embeddings: str = typer.Option(None, "--embeddings", help="Embedding set tag (default: synthetic-truth)."),
    region: str = typer.Option(
        None, "--region", help="Voxels to decode from: nsdgeneral (default), V1, V2, V3, hV4, early, midventral, "
        "midlateral, midparietal, ventral, lateral, parietal, or a union such as V1+V2+V3 (docs/regions.md)."),
    voxel_selection: str = typer.Option(
        None, "--voxel-selection", help="Within the region: all (default), ncsnr>=T or top-K (by the release's ncsnr)."),
    epochs: int = typer.Option(None, "--epochs", help="Torch decoders: maximum epochs."),
    lr: float = typer.Option(None, "--lr", help="Torch decoders: learning rate."),
    batch_size: int = typer.Option(None, "--batch-size", help="Torch decoders: batch size."),
    device: str = typer.Option(None, "--device", help="cpu (default) or cuda."),
    config: Path = typer.Option(None, "--config", help="YAML TrainConfig; options above override it."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Cache root (betas, embeddings)."),
    tracking_uri: str = TrackingUriOption,
    experiment: str = ExperimentOption,
) -> None:
    """Train a ridge / MLP / two-stage decoder on perception (or mixed) trials."""
    from fmri2img.stages.train import TrainConfig, train_decoder

    base = load_config(TrainConfig, config) if config else TrainConfig()
    cfg = override(
        base, model=model.value if model else None, train_on=train_on.value if train_on else None,
        holdout_fold=holdout_fold, imagery_weight=imagery_weight, imagery_val_fraction=imagery_val_fraction,
        embedding_set=embeddings, region=region, voxel_selection=voxel_selection,
        epochs=epochs, lr=lr, batch_size=batch_size, device=device,
    )
    result = train_decoder(index, output_dir, cfg, cache_root=cache_root, tracking_uri=tracking_uri,
                           experiment=experiment)
    echo(f"Wrote {result.checkpoint} (val cosine {result.metadata['val_cosine']:.3f}; MLflow run {result.run_id}).")
