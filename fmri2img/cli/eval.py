"""``fmri2img eval``: within- vs cross-domain metrics, baselines and statistics for a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.config import load_config, override
from fmri2img.core.constants import DEFAULT_CACHE_ROOT
from fmri2img.core.vocab import MODES

Mode = choices("Mode", MODES)


@handle_errors
def command(
    index: Path = typer.Option(..., "--index", help="Trial index Parquet."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Decoder checkpoint (best.pt or its folder)."),
    model_type: str = typer.Option(None, "--model-type", help="Expected decoder (ridge|mlp|two_stage); checked."),
    mode: Mode = typer.Option(Mode("both"), "--mode", help="Which test sets to score."),
    split: str = typer.Option("test", "--split", help="Evaluated split (test)."),
    output_dir: Path = typer.Option(..., "--output-dir", help="Where metrics.json etc. are written."),
    adapter_checkpoint: Path = typer.Option(None, "--adapter-checkpoint", help="adapter_best.pt from `fmri2img adapt`."),
    adapter_type: str = typer.Option(None, "--adapter-type", help="Expected adapter type (linear|mlp|finetune); checked."),
    k: list[int] = typer.Option(None, "--k", help="Retrieval cut-offs (repeatable; default 1 5 10 50)."),
    distractors: str = typer.Option(None, "--distractors", help="Add 'shared1000' embeddings to image galleries."),
    n_boot: int = typer.Option(None, "--n-boot", help="Bootstrap resamples."),
    n_perm: int = typer.Option(None, "--n-perm", help="Permutations."),
    config: Path = typer.Option(None, "--config", help="YAML EvalOptions; options above override it."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Cache root (betas, embeddings)."),
    tracking_uri: str = TrackingUriOption,
    experiment: str = ExperimentOption,
) -> None:
    """Score a decoder on perception (shared1000, matched vision) and imagery test trials."""
    from fmri2img.evaluation.scoring import EvalOptions
    from fmri2img.stages.evaluate import evaluate_checkpoint

    base = load_config(EvalOptions, config) if config else EvalOptions()
    options = override(base, ks=tuple(k) if k else None, distractors=distractors, n_boot=n_boot, n_perm=n_perm)
    result = evaluate_checkpoint(
        index, checkpoint, output_dir, mode=mode.value, split=split, model_type=model_type,
        adapter_checkpoint=adapter_checkpoint, adapter_type=adapter_type, options=options,
        cache_root=cache_root, tracking_uri=tracking_uri, experiment=experiment,
    )
    echo(f"Wrote {output_dir}/metrics.json ({result.info['configuration']}, {len(result.table)} numbers).")
