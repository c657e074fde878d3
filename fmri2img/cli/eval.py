"""``fmri2img eval``: within- vs cross-domain metrics, baselines and statistics for a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import ExperimentOption, TrackingUriOption, choices, echo, fail, handle_errors
from fmri2img.core.config import load_config, override
from fmri2img.core.constants import DEFAULT_CACHE_ROOT
from fmri2img.core.vocab import MODES

Mode = choices("Mode", MODES)


@handle_errors
def command(
    index: Path = typer.Option(..., "--index", help="Trial index Parquet."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Decoder checkpoint (best.pt or its folder)."),
    predictions: Path = typer.Option(None, "--predictions",
                                     help="Or: a predictions folder or .npz (any model's): the field's battery."),
    feature_weights: Path = typer.Option(None, "--feature-weights", help="Battery: YAML of local network weights."),
    battery_config: Path = typer.Option(None, "--battery-config", help="Battery: YAML BatteryOptions."),
    embedding_set: str = typer.Option(None, "--embedding-set", help="Battery: ground-truth embeddings of 300-way."),
    source: str = typer.Option(None, "--source", help="Battery: model name in the tables (default: folder name)."),
    n_way: int = typer.Option(None, "--n-way", help="Stimuli per draw of MindEye2's shared1000 retrieval (default 300), "
                                 "with --checkpoint or --predictions."),
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
    """Score a decoder on perception (shared1000, matched vision) and imagery test trials, or a predictions
    folder with the field's battery (--predictions)."""
    if (checkpoint is None) == (predictions is None):
        fail("Give exactly one of --checkpoint (a decoder of this toolkit) or --predictions (a predictions folder).")
    if predictions is not None:
        _score_folder(index, predictions, output_dir, feature_weights, battery_config, embedding_set, source, n_way,
                      n_boot, n_perm, cache_root, tracking_uri, experiment)
        return
    from fmri2img.evaluation.scoring import EvalOptions
    from fmri2img.stages.evaluate import evaluate_checkpoint

    base = load_config(EvalOptions, config) if config else EvalOptions()
    options = override(base, ks=tuple(k) if k else None, distractors=distractors, n_boot=n_boot, n_perm=n_perm,
                       n_way=n_way)
    result = evaluate_checkpoint(
        index, checkpoint, output_dir, mode=mode.value, split=split, model_type=model_type,
        adapter_checkpoint=adapter_checkpoint, adapter_type=adapter_type, options=options,
        cache_root=cache_root, tracking_uri=tracking_uri, experiment=experiment,
    )
    echo(f"Wrote {output_dir}/metrics.json ({result.info['configuration']}, {len(result.table)} numbers).")


def _score_folder(index, predictions, output_dir, feature_weights, battery_config, embedding_set, source, n_way,
                  n_boot, n_perm, cache_root, tracking_uri, experiment) -> None:
    """``eval --predictions``: the field's battery on a predictions folder."""
    from fmri2img.stages.battery import BatteryOptions, score_predictions

    base = load_config(BatteryOptions, battery_config) if battery_config else BatteryOptions()
    options = override(base, n_way=n_way, n_boot=n_boot, n_perm=n_perm)
    table = score_predictions(index, predictions, output_dir, feature_weights=feature_weights, options=options,
                              embedding_set=embedding_set, source=source, cache_root=cache_root,
                              tracking_uri=tracking_uri, experiment=experiment)
    computed = int(table["value"].notna().sum())
    echo(f"Wrote {output_dir}/field_table.csv ({computed} of {len(table)} metrics computed).")
