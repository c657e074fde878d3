"""train -> eval -> adapt on a tiny synthetic world, through the CLI and the library."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from _world import build_tiny
from typer.testing import CliRunner

from fmri2img.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny(tmp_path_factory.mktemp("world"))


def _invoke(args, tracking_uri):
    result = runner.invoke(app, [*args, "--tracking-uri", tracking_uri])
    return result


def test_train_eval_adapt_cli(world, tmp_path, tracking_uri):
    idx, cache = str(world["subj01"]), str(world["cache"])
    ckpt = tmp_path / "checkpoints" / "ridge" / "subj01"
    r = _invoke(["train", "--index", idx, "--model", "ridge", "--output-dir", str(ckpt), "--cache-root", cache],
                tracking_uri)
    assert r.exit_code == 0, r.output
    meta = json.loads((ckpt / "metadata.json").read_text())
    assert meta["decoder"] == "ridge" and meta["train_on"] == "perception"
    assert meta["seeds"] == {"split": 42, "init": 123} and meta["n_voxels"] > 0
    state = torch.load(ckpt / "best.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    out = tmp_path / "eval"
    r = _invoke(["eval", "--index", idx, "--checkpoint", str(ckpt / "best.pt"), "--model-type", "ridge",
                 "--mode", "both", "--split", "test", "--output-dir", str(out), "--cache-root", cache,
                 "--n-boot", "100", "--n-perm", "100"], tracking_uri)
    assert r.exit_code == 0, r.output
    for name in ("metrics.json", "per_trial.csv", "per_stimulus.csv", "perception_baseline_results.json",
                 "cross_domain_transfer_results.json", "comparison_table.csv"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "results_table.csv")
    model = table[(table.configuration == "perception_only") & (table.stimulus_type == "all")]
    cos = model[model.metric == "cosine"].set_index("test_set")["value"]
    base = table[(table.configuration == "baseline_mean_embedding") & (table.metric == "cosine")
                 & (table.stimulus_type == "all")].set_index("test_set")["value"]
    # reconstruction by retrieval: the ground truth retrieves its own image (SSIM 1)
    ssim = table[(table.metric == "ssim") & (table.stimulus_type == "all")]
    assert set(ssim.configuration) >= {"perception_only", "baseline_ground_truth"}
    assert (ssim[ssim.configuration == "baseline_ground_truth"]["value"] > 0.999).all()
    assert not (table.metric == "ssim").loc[table.stimulus_type == "conceptual"].any()
    # planted: perception decodes above the constant guess; imagery sits below matched perception
    assert cos["shared1000"] > base["shared1000"]
    assert cos["imagery_vision"] > cos["imagery"]

    adir = tmp_path / "adapters" / "linear"
    r = _invoke(["adapt", "--index", idx, "--checkpoint", str(ckpt / "best.pt"), "--model-type", "ridge",
                 "--adapter", "linear", "--output-dir", str(adir), "--epochs", "3", "--cache-root", cache],
                tracking_uri)
    assert r.exit_code == 0, r.output
    ameta = json.loads((adir / "checkpoints" / "metadata.json").read_text())
    assert ameta["folds"] == [0, 1, 2] and ameta["n_trainable_parameters"] > 0
    for fold in ameta["fold_details"]:  # -1: the identity initialisation was kept
        assert -1 <= fold["best_epoch"] < 3 and fold["initial_val_cosine"] <= fold["best_val_cosine"]
    r = _invoke(["eval", "--index", idx, "--checkpoint", str(ckpt / "best.pt"), "--output-dir", str(tmp_path / "ev2"),
                 "--adapter-checkpoint", str(adir / "checkpoints" / "adapter_best.pt"), "--adapter-type", "linear",
                 "--cache-root", cache, "--n-boot", "50", "--n-perm", "50"], tracking_uri)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["info"]["configuration"] == "adapter_linear"

    # an adapter is refused on another base checkpoint
    other = tmp_path / "checkpoints" / "other"
    assert _invoke(["train", "--index", idx, "--model", "ridge", "--output-dir", str(other), "--cache-root", cache,
                    "--config", str(_ridge_config(tmp_path))], tracking_uri).exit_code == 0
    r = _invoke(["eval", "--index", idx, "--checkpoint", str(other / "best.pt"), "--output-dir", str(tmp_path / "ev3"),
                 "--adapter-checkpoint", str(adir / "checkpoints" / "adapter_best.pt"), "--cache-root", cache],
                tracking_uri)
    assert r.exit_code == 2 and "another base checkpoint" in r.output
    # a checkpoint of another model type is refused
    r = _invoke(["eval", "--index", idx, "--checkpoint", str(ckpt / "best.pt"), "--model-type", "mlp",
                 "--output-dir", str(tmp_path / "ev4"), "--cache-root", cache], tracking_uri)
    assert r.exit_code == 2 and "mlp" in r.output


def _ridge_config(tmp_path):
    path = tmp_path / "ridge.yaml"
    path.write_text("model: ridge\ndecoder_params: {alphas: [10.0, 100.0]}\n")
    return path


def test_mixed_training_uses_training_folds_only(world, tmp_path, tracking_uri):
    from fmri2img.data.schema import read_index
    from fmri2img.data.trials import training_data
    from fmri2img.embeddings.cache import load_embedding_set
    from fmri2img.stages.train import TrainConfig

    index = read_index(world["subj01"])
    emb = load_embedding_set(world["cache"], "synthetic-truth")
    cfg = TrainConfig(train_on="mixed", holdout_fold=1, imagery_weight=0.5)
    train, val = training_data(index, world["cache"], emb, **cfg.data_rules())
    imagery = train.rows[train.rows["dataset"] == "nsdimagery"]
    assert len(imagery) > 0 and set(imagery["fold"]) == {0, 2}
    assert set(imagery["condition"]) == {"imagery"}
    held_out = set(index.loc[(index["dataset"] == "nsdimagery") & (index["fold"] == 1), "stimulus_id"])
    assert held_out.isdisjoint(train.rows["stimulus_id"])
    assert not (train.rows["split"] == "test").any() or set(train.rows.loc[train.rows["split"] == "test", "dataset"]) == {"nsdimagery"}
    assert set(np.unique(train.sample_weight)) == {0.5, 1.0}
    # early stopping: the perception val split plus the means of held-out training-fold imagery
    # stimuli, which the model does not train on, weighted to count as much as the val trials
    perception_val = val.rows["dataset"] == "nsd"
    assert set(val.rows.loc[perception_val, "split"]) == {"val"}
    img_val = val.rows.loc[~perception_val]
    assert len(img_val) == img_val["stimulus_id"].nunique() > 0
    assert set(img_val["fold"]) <= {0, 2}
    assert set(img_val["stimulus_id"]).isdisjoint(imagery["stimulus_id"])
    n_val = int(perception_val.sum())
    np.testing.assert_allclose(val.sample_weight[~perception_val.to_numpy()].sum(), n_val, rtol=1e-6)
    assert len(val.X) == len(val.rows) == len(val.sample_weight)
    none = training_data(index, world["cache"], emb,
                         **dataclasses.replace(cfg, imagery_val_fraction=0.0).data_rules())[1]
    assert set(none.rows["split"]) == {"val"} and none.sample_weight is None
    from fmri2img.core.errors import ConfigError

    with pytest.raises(ConfigError, match="holds out all"):
        training_data(index, world["cache"], emb,
                      **dataclasses.replace(cfg, imagery_val_fraction=0.99).data_rules())


def test_training_is_deterministic(world, tmp_path, tracking_uri):
    from fmri2img.stages.train import TrainConfig, train_decoder

    cfg = TrainConfig(model="mlp", epochs=2)
    a = train_decoder(world["subj01"], tmp_path / "a", cfg, cache_root=world["cache"], progress=False)
    b = train_decoder(world["subj01"], tmp_path / "b", cfg, cache_root=world["cache"], progress=False)
    assert a.metadata["weights_sha256"] == b.metadata["weights_sha256"]
    assert a.metadata["best_epoch"] in (0, 1)  # the restored epoch is recorded


def test_invalid_options_one_line(world, tracking_uri, tmp_path):
    idx = str(world["subj01"])
    for args, message in [
        (["train", "--index", idx, "--model", "mlp", "--epochs", "-1"], "epochs=-1"),
        (["train", "--index", idx, "--model", "ridge", "--epochs", "3"], "does not apply"),
        (["train", "--index", idx, "--train-on", "mixed"], "--holdout-fold"),
    ]:
        r = _invoke([*args, "--cache-root", str(world["cache"]), "--output-dir", str(tmp_path / "x")], tracking_uri)
        assert r.exit_code == 2, r.output
        assert message in r.output and len(r.output.strip().splitlines()) == 1


def test_mixed_training_standardises_with_perception_rows_only(world, tmp_path, tracking_uri):
    """The imagery trials of mixed training train the network but do not move its feature space."""
    from fmri2img.data.schema import read_index
    from fmri2img.data.trials import training_data
    from fmri2img.embeddings.cache import load_embedding_set
    from fmri2img.models.checkpoint import load_checkpoint
    from fmri2img.stages.train import TrainConfig, train_decoder

    cfg = TrainConfig(model="mlp", train_on="mixed", holdout_fold=1, epochs=1)
    result = train_decoder(world["subj01"], tmp_path / "m", cfg, cache_root=world["cache"], progress=False)
    decoder, _ = load_checkpoint(result.checkpoint, expected_decoder="mlp")
    index = read_index(world["subj01"])
    embeddings = load_embedding_set(world["cache"], "synthetic-truth")
    train, _ = training_data(index, world["cache"], embeddings, **cfg.data_rules())
    perception = (train.rows["dataset"] == "nsd").to_numpy()
    assert 0 < perception.sum() < len(perception)
    np.testing.assert_allclose(decoder.module_.input_norm.mean.numpy(), train.X[perception].mean(axis=0),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(train.X[perception].mean(axis=0), train.X.mean(axis=0), atol=1e-5)
