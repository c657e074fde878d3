"""The field's battery through the real CLI on a tiny synthetic world: ``fmri2img reconstruct`` (synthetic
renderer) then ``fmri2img eval --predictions`` (random-weight networks), and their bad inputs (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _world import build_tiny
from PIL import Image
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.tracking import _client
from fmri2img.data.predictions import EMBEDDINGS_FILE, load_images, read_predictions
from fmri2img.embeddings.cache import load_embedding_set
from fmri2img.evaluation.field_metrics import FEATURE_METRICS, PIXEL_METRICS
from fmri2img.models.reconstruct import RECONSTRUCTION_BACKENDS

runner = CliRunner()

#: Statistics kept small: these tests check the code path, not the intervals' precision.
FAST = ["--n-boot", "100", "--n-perm", "100"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("world"))


def _invoke(args, tracking_uri):
    return runner.invoke(app, [*args, "--tracking-uri", tracking_uri])


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    r = _invoke(["train", "--index", str(world["subj01"]), "--model", "ridge", "--output-dir", str(out),
                 "--cache-root", str(world["cache"])], uri)
    assert r.exit_code == 0, r.output
    return out / "best.pt"


def _write_npz(folder, ids, test_set, emb):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / EMBEDDINGS_FILE, stimulus_id=np.array(ids), test_set=np.array([test_set] * len(ids)),
             embedding=np.asarray(emb, np.float32))
    return folder / EMBEDDINGS_FILE


def _row(table, test_set, group, metric):
    sel = table[(table.test_set == test_set) & (table.stimulus_group == group) & (table.metric == metric)]
    assert len(sel) == 1, (test_set, group, metric)
    return sel.iloc[0]


def test_cli_backend_choices_are_the_registry():
    from fmri2img.cli.reconstruct import Backend

    assert [b.value for b in Backend] == list(RECONSTRUCTION_BACKENDS)


def test_ground_truth_latents_render_at_ceiling(world, tmp_path, tracking_uri):
    """Rendering the planted latents gives back the stimuli: PixCorr and SSIM of 1 (and retrieval 100 %)."""
    index = pd.read_parquet(world["subj01"])
    ids = index.loc[(index.split == "test") & (index.dataset == "nsd"), "stimulus_id"].drop_duplicates().tolist()
    truth = load_embedding_set(world["cache"], "synthetic-truth")
    npz = _write_npz(tmp_path / "truth_in", ids, "shared1000", truth.vectors[truth.rows(ids)])
    rec = tmp_path / "rec"
    r = _invoke(["reconstruct", "--index", str(world["subj01"]), "--embeddings", str(npz), "--output-dir", str(rec),
                 "--mode", "perception", "--cache-root", str(world["cache"])], tracking_uri)
    assert r.exit_code == 0, r.output
    assert sorted(read_predictions(rec).images["shared1000"]) == sorted(ids)
    out = tmp_path / "ev"
    small = tmp_path / "battery.yaml"  # the ceiling holds at any side; 64 px keeps the test fast
    small.write_text("image_size: 64\nchance_pairs: 30\n")
    r = _invoke(["eval", "--index", str(world["subj01"]), "--predictions", str(rec), "--output-dir", str(out),
                 "--battery-config", str(small), "--n-way", "20", "--embedding-set", "synthetic-truth",
                 "--cache-root", str(world["cache"]), *FAST], tracking_uri)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "field_table.csv")
    for metric in PIXEL_METRICS:
        row = _row(table, "shared1000", "all", metric)
        assert row.value == pytest.approx(1.0, abs=1e-6) and row.n == len(ids)
        assert row.chance < row.value  # mismatched pairs score below the ceiling
    for metric in FEATURE_METRICS:  # no weights configured: reported, not dropped
        row = _row(table, "shared1000", "all", metric)
        assert pd.isna(row.value) and row.note.startswith("not computed: no weights configured")
    for metric in ("retrieval_image_20", "retrieval_brain_20"):
        row = _row(table, "shared1000", "all", metric)
        assert row.value == 1.0 and row.chance == pytest.approx(1 / 20)
    assert "not computed" in (out / "field_table.md").read_text()


@pytest.mark.slow  # ~1-2 min on 2 cores: five random-weight networks on two image sets
def test_reconstruct_and_eval_give_the_full_battery(world, checkpoint, tmp_path, tracking_uri):
    rec = tmp_path / "rec"
    r = _invoke(["reconstruct", "--index", str(world["subj01"]), "--checkpoint", str(checkpoint), "--model-type",
                 "ridge", "--mode", "imagery", "--output-dir", str(rec), "--cache-root", str(world["cache"])],
                tracking_uri)
    assert r.exit_code == 0, r.output
    info = json.loads((rec / "reconstruct.json").read_text())
    assert info["n_images"] == {"imagery_vision": 18, "imagery": 18} and info["embedding_set"] == "synthetic-truth"
    assert (rec / "reconstruction_grid.png").is_file()
    weights = tmp_path / "weights.yaml"
    weights.write_text("random_init: true\nclip_model: ViT-B-32\n")
    out = tmp_path / "ev"
    r = _invoke(["eval", "--index", str(world["subj01"]), "--predictions", str(rec), "--output-dir", str(out),
                 "--feature-weights", str(weights), "--source", "ridge", "--cache-root", str(world["cache"]), *FAST],
                tracking_uri)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "field_table.csv")
    assert set(table.source) == {"ridge"} and set(table.test_set) == {"imagery_vision", "imagery"}
    for test_set in ("imagery_vision", "imagery"):
        for metric in (*PIXEL_METRICS, *FEATURE_METRICS):
            row = _row(table, test_set, "all", metric)
            assert np.isfinite(row.value) and row.n == 12 and row.ci_low <= row.value <= row.ci_high, row
            assert "not computed" in _row(table, test_set, "conceptual", metric).note
    # Planted: perception beats imagery, on every two-way metric even with random weights (the networks keep
    # the images' spatial structure) and on the low-level metrics (demo world: docs/comparing.md).
    for metric in ("alexnet2", "alexnet5", "inception_v3", "clip", "pixcorr", "ssim"):
        vision, imagery = _row(table, "imagery_vision", "all", metric), _row(table, "imagery", "all", metric)
        assert vision.value > imagery.value, metric
        assert vision.chance == 0.5 or metric in PIXEL_METRICS, metric
    runs = _client(tracking_uri).search_runs([e.experiment_id for e in _client(tracking_uri).search_experiments()],
                                             "tags.source = 'ridge'")
    assert runs and "field/imagery_vision/all/alexnet5" in runs[0].data.metrics
    assert (out / "reconstruction_grid.png").is_file() and (out / "field_table.md").is_file()


def _png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def _simple_ids(index_path, n):
    """The first ``n`` set A (simple) stimulus ids of the index, as the release names them."""
    rows = pd.read_parquet(index_path, columns=["stimulus_id", "stimulus_type"])
    return sorted(rows.loc[rows["stimulus_type"] == "simple", "stimulus_id"].unique())[:n]


def test_bad_inputs_exit_2_with_one_line(world, checkpoint, tmp_path, tracking_uri):
    idx, cache = str(world["subj01"]), str(world["cache"])
    first, second = _simple_ids(idx, 2)
    unknown = tmp_path / "unknown"
    _png(unknown / "images" / "imagery" / "nsd-99999.png")
    wrong_shape = tmp_path / "wrong_shape"
    _png(wrong_shape / "images" / "imagery" / f"{first}.png", size=(8, 6))
    wrong_dim = _write_npz(tmp_path / "wrong_dim", [first], "imagery", np.ones((1, 3)))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    weights = tmp_path / "weights.yaml"
    weights.write_text(f"alexnet: {corrupt}\n")
    good = tmp_path / "good"
    _png(good / "images" / "imagery" / f"{first}.png")
    _png(good / "images" / "imagery" / f"{second}.png")
    cases = {
        "unknown stimulus id": ["eval", "--index", idx, "--predictions", str(unknown)],
        "non-square image": ["eval", "--index", idx, "--predictions", str(wrong_shape)],
        "corrupt weights file": ["eval", "--index", idx, "--predictions", str(good), "--feature-weights", str(weights)],
        "no predictions folder": ["eval", "--index", idx, "--predictions", str(tmp_path / "absent")],
        "both sources": ["eval", "--index", idx, "--predictions", str(good), "--checkpoint", str(checkpoint)],
        "embedding dimension": ["reconstruct", "--index", idx, "--embeddings", str(wrong_dim)],
        "missing unclip folder": ["reconstruct", "--index", idx, "--checkpoint", str(checkpoint), "--backend", "unclip",
                                  "--pipeline-dir", str(tmp_path / "sd-unclip")],
        "unclip without folder": ["reconstruct", "--index", idx, "--checkpoint", str(checkpoint),
                                  "--backend", "unclip"],
    }
    expected = {"unknown stimulus id": "nsd-99999", "non-square image": "square RGB",
                "corrupt weights file": "corrupt.pth", "no predictions folder": "absent", "both sources": "exactly one",
                "embedding dimension": "3 dimensions",
                "missing unclip folder": "sd-unclip", "unclip without folder": "--pipeline-dir"}
    for name, args in cases.items():
        out = ["--output-dir", str(tmp_path / f"out-{name.replace(' ', '_')}"), "--cache-root", cache]
        r = _invoke([*args, *out], tracking_uri)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2, (name, r.output)
        assert len(lines) == 1 and expected[name] in lines[0], (name, r.output)


def test_reconstruct_with_a_tiny_unclip_pipeline(world, tmp_path, tracking_uri):
    """The unclip backend through the CLI: a tiny random pipeline (no download), CPU, 16 px."""
    pytest.importorskip("diffusers")
    from test_reconstruct import TINY_DIM, _tiny_unclip

    pipe = _tiny_unclip(tmp_path)
    ids = _simple_ids(world["subj01"], 3)
    npz = _write_npz(tmp_path / "in", ids, "imagery", np.random.default_rng(0).standard_normal((3, TINY_DIM)))
    args = ["reconstruct", "--index", str(world["subj01"]), "--embeddings", str(npz), "--backend", "unclip",
            "--pipeline-dir", str(pipe), "--steps", "2", "--image-size", "16", "--seed", "3",
            "--cache-root", str(world["cache"])]
    r = _invoke([*args, "--output-dir", str(tmp_path / "a")], tracking_uri)
    assert r.exit_code == 0, r.output
    got = read_predictions(tmp_path / "a")
    assert sorted(got.images["imagery"]) == sorted(ids)
    images = load_images([got.images["imagery"][s] for s in ids])
    assert images.shape == (3, 16, 16, 3)
    assert _invoke([*args, "--output-dir", str(tmp_path / "b")], tracking_uri).exit_code == 0  # seeded: same bytes
    for s in ids:
        assert (tmp_path / "a" / "images" / "imagery" / f"{s}.png").read_bytes() == \
            (tmp_path / "b" / "images" / "imagery" / f"{s}.png").read_bytes()
    wrong = _write_npz(tmp_path / "wrong", ids, "imagery", np.ones((3, TINY_DIM + 1)))
    r = _invoke([*args[:4], str(wrong), *args[5:], "--output-dir", str(tmp_path / "c")], tracking_uri)
    assert r.exit_code == 2 and f"takes {TINY_DIM}-D" in r.output, r.output
