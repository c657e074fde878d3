"""Tests of fmri2img.embeddings: stimuli listing, open_clip encoding, the cache and ``fmri2img embed``.

A tiny open_clip architecture (1-layer ViT and text transformer, 16-D) is registered at test
time and run with random weights: the real code path with meaningless values. References are
computed with open_clip directly.
"""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from fmri2img.core.constants import INIT_SEED, SYNTHETIC_TRUTH_EMBEDDINGS  # noqa: E402
from fmri2img.core.errors import ChecksumError, InputError, MismatchError, OfflineError  # noqa: E402
from fmri2img.core.files import sha256_file  # noqa: E402
from fmri2img.data.stimuli import StimulusReader, list_stimuli  # noqa: E402
from fmri2img.embeddings import clip as clip_mod  # noqa: E402
from fmri2img.embeddings.cache import load_embedding_set, make_embedding_set, merge_embedding_sets, synthetic_truth_set  # noqa: E402  # noqa: E402
from fmri2img.stages.embed import embed_stimuli  # noqa: E402

TINY = "fmri2img-tiny-test"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
BRICK = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
PNG_DIR = "nsddata_stimuli/stimuli/nsdimagery/images"


@pytest.fixture(scope="module", autouse=True)
def tiny_model(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("cfg") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    other = path.with_name(f"{TINY}-8d.json")  # same towers, another embedding size
    other.write_text(json.dumps(dict(TINY_CFG, embed_dim=8)))
    open_clip.add_model_config(other)
    return TINY


def _index(path, rows):
    pd.DataFrame(rows, columns=["stimulus_id", "image_ref", "text", "stimulus_type"]).to_parquet(path)
    return path


@pytest.fixture()
def world(tmp_path):
    """A data root with a 4-image imgBrick, two PNGs (one a copy of brick row 1) and an index."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    brick = rng.integers(0, 256, size=(4, 24, 24, 3), dtype=np.uint8)
    (root / BRICK).parent.mkdir(parents=True)
    with h5py.File(root / BRICK, "w") as fh:
        fh.create_dataset("imgBrick", data=brick, chunks=(1, 24, 24, 3))
    (root / PNG_DIR).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)).save(root / PNG_DIR / "circle.png")
    Image.fromarray(brick[1]).save(root / PNG_DIR / "copy.png")
    rows = [
        ("nsd-00001", f"{BRICK}#1", None, "natural"),
        ("nsd-00003", f"{BRICK}#3", None, "complex"),
        ("nsd-00003", f"{BRICK}#3", None, "complex"),  # a repeat: one stimulus
        ("img-A-circle", f"{PNG_DIR}/circle.png", None, "simple"),
        ("img-A-copy", f"{PNG_DIR}/copy.png", None, "simple"),
        ("img-C-apple", None, "apple", "conceptual"),
        ("img-C-dog", None, "a running dog", "conceptual"),
    ]
    index = _index(tmp_path / "subj01.parquet", rows)
    return {"root": root, "index": index, "brick": brick, "cache": tmp_path / "cache", "tmp": tmp_path}


def _reference_model():
    """The tiny model built by open_clip directly with the init seed (what random_init must give)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY)


def _unit(x):
    x = x.detach().double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_list_stimuli_unique_sorted_and_conflicts(world, tmp_path):
    stimuli = list_stimuli([world["index"], world["index"]])
    assert [s.stimulus_id for s in stimuli] == sorted(
        ["nsd-00001", "nsd-00003", "img-A-circle", "img-A-copy", "img-C-apple", "img-C-dog"]
    )
    by_id = {s.stimulus_id: s for s in stimuli}
    assert by_id["img-C-dog"].modality == "text" and by_id["img-C-dog"].text == "a running dog"
    assert by_id["nsd-00003"].modality == "image"
    other = _index(tmp_path / "other.parquet", [("nsd-00001", f"{BRICK}#2", None, "natural")])
    with pytest.raises(InputError, match="nsd-00001"):
        list_stimuli([world["index"], other])


def test_reader_reads_the_requested_brick_row(world):
    stimuli = {s.stimulus_id: s for s in list_stimuli([world["index"]])}
    with StimulusReader(world["root"]) as reader:
        img = reader.image(stimuli["nsd-00003"])
        np.testing.assert_array_equal(np.asarray(img), world["brick"][3])
        np.testing.assert_array_equal(np.asarray(reader.image(stimuli["img-A-copy"])), world["brick"][1])
        assert reader.content_sha256(stimuli["nsd-00001"]) != reader.content_sha256(stimuli["nsd-00003"])


def test_embed_end_to_end_matches_open_clip_reference(world):
    emb = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                        batch_size=2, progress=False)
    assert emb.tag == f"{TINY}__random-seed{INIT_SEED}"
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert set(emb.computed) == set(emb.ids)
    assert dict(zip(emb.ids, emb.modality))["img-C-apple"] == "text"
    assert emb.meta["open_clip_version"] == open_clip.__version__ and emb.meta["dim"] == 16
    assert emb.meta["preprocessing"]["image"]["size"] == [32, 32]

    model, preprocess, tokenizer = _reference_model()
    with torch.no_grad():
        ref_img = _unit(model.encode_image(preprocess(Image.open(world["root"] / PNG_DIR / "circle.png")).unsqueeze(0)))
        ref_brick = _unit(model.encode_image(preprocess(Image.fromarray(world["brick"][3])).unsqueeze(0)))
        ref_txt = _unit(model.encode_text(tokenizer(["a running dog"])))
    np.testing.assert_allclose(emb.lookup(["img-A-circle"]), ref_img, atol=1e-5)
    np.testing.assert_allclose(emb.lookup(["nsd-00003"]), ref_brick, atol=1e-5)
    np.testing.assert_allclose(emb.lookup(["img-C-dog"]), ref_txt, atol=1e-5)
    # brick row 1 and its PNG copy are the same pixels -> the same embedding
    np.testing.assert_allclose(emb.lookup(["nsd-00001"]), emb.lookup(["img-A-copy"]), atol=1e-6)

    loaded = load_embedding_set(world["cache"], emb.tag)
    assert loaded.ids == emb.ids and np.array_equal(loaded.vectors, emb.vectors)
    ids_json = json.loads((world["cache"] / "clip" / emb.tag / "ids.json").read_text())
    assert set(ids_json) == {"stimulus_ids", "content_sha256", "modality"}


def test_checkpoint_file_gives_the_same_embeddings(world):
    model, _, _ = _reference_model()
    ckpt = world["tmp"] / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    by_ckpt = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, checkpoint=ckpt,
                            progress=False)
    by_init = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                            progress=False)
    assert by_ckpt.tag == f"{TINY}__ckpt-{sha256_file(ckpt)[:12]}" != by_init.tag
    assert by_ckpt.meta["checkpoint_sha256"] == sha256_file(ckpt) and by_ckpt.meta["pretrained"] is None
    np.testing.assert_allclose(by_ckpt.vectors, by_init.vectors, atol=1e-6)
    with pytest.raises(MismatchError, match="does not load into open_clip model"):
        embed_stimuli([world["index"]], world["root"], world["cache"], model=f"{TINY}-8d", checkpoint=ckpt,
                      progress=False)


def test_same_inputs_give_identical_files(world):
    tags = []
    for name in ("cache_a", "cache_b"):
        emb = embed_stimuli([world["index"]], world["root"], world["tmp"] / name, model=TINY, random_init=True,
                            progress=False)
        tags.append(emb.tag)
    for file in ("embeddings.npy", "ids.json", "meta.json"):
        a = (world["tmp"] / "cache_a" / "clip" / tags[0] / file).read_bytes()
        assert a == (world["tmp"] / "cache_b" / "clip" / tags[1] / file).read_bytes(), file


def test_rerun_computes_nothing_and_a_changed_image_only_itself(world, monkeypatch):
    args = ([world["index"]], world["root"], world["cache"])
    first = embed_stimuli(*args, model=TINY, random_init=True, progress=False)
    npy = world["cache"] / "clip" / first.tag / "embeddings.npy"
    before = npy.read_bytes()

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although everything is cached")

    monkeypatch.setattr(clip_mod, "load_clip", no_model)
    second = embed_stimuli(*args, model=TINY, random_init=True, progress=False)
    assert second.computed == () and npy.read_bytes() == before
    monkeypatch.undo()

    new_pixels = np.full((20, 30, 3), 200, dtype=np.uint8)
    Image.fromarray(new_pixels).save(world["root"] / PNG_DIR / "circle.png")
    third = embed_stimuli(*args, model=TINY, random_init=True, progress=False)
    assert third.computed == ("img-A-circle",)
    others = [i for i in first.ids if i != "img-A-circle"]
    np.testing.assert_array_equal(third.lookup(others), first.lookup(others))
    model, preprocess, _ = _reference_model()
    with torch.no_grad():
        ref = _unit(model.encode_image(preprocess(Image.fromarray(new_pixels)).unsqueeze(0)))
    np.testing.assert_allclose(third.lookup(["img-A-circle"]), ref, atol=1e-5)


def test_model_mismatch_refused(world):
    emb = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                        progress=False)
    other_meta = dict(emb.meta, init=None, checkpoint_sha256="f" * 64)
    other = make_embedding_set(["img-X"], np.ones((1, 16)), ["image"], ["0" * 64], other_meta)
    with pytest.raises(MismatchError, match="checkpoint_sha256"):
        merge_embedding_sets(emb, other)
    meta_path = world["cache"] / "clip" / emb.tag / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["open_clip_version"] = "0.0.1"  # made by another open_clip: never reused
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(MismatchError, match="open_clip_version"):
        embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True, progress=False)
    rebuilt = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                            progress=False, rebuild=True)
    np.testing.assert_array_equal(rebuilt.vectors, emb.vectors)


def test_torn_set_detected(world):
    emb = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                        progress=False)
    np.save(world["cache"] / "clip" / emb.tag / "embeddings.npy", np.asarray(emb.vectors)[::-1])
    with pytest.raises(ChecksumError, match="embeddings.npy"):
        load_embedding_set(world["cache"], emb.tag)


def test_lookup_missing_stimulus_one_line(world):
    emb = embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                        progress=False)
    with pytest.raises(InputError) as err:
        emb.lookup(["img-A-circle", "nsd-99999", "nsd-88888"])
    assert "nsd-99999" in str(err.value) and "nsd-88888" not in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_one_clear_error(world):
    from fmri2img.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--device cpu"):
        embed_stimuli([world["index"]], world["root"], world["cache"], model=TINY, random_init=True,
                      device="cuda", progress=False)


@pytest.mark.parametrize("how", ["env", "no-network"])
def test_offline_hub_tag_fails_fast(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(clip_mod, "network_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(OfflineError) as err:
        clip_mod.load_clip("ViT-B-32", pretrained="openai", hub_cache_dir=tmp_path / "hub")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "--checkpoint" in message and "openai" in message and "\n" not in message


def test_synthetic_truth_set(world, tmp_path):
    ids = ["img-A-circle", "img-C-apple", "nsd-00001"]
    latents = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    latents /= np.linalg.norm(latents, axis=1, keepdims=True)
    (world["root"] / "truth").mkdir()
    np.save(world["root"] / "truth" / "latents.npy", latents)
    (world["root"] / "truth" / "stimulus_ids.json").write_text(json.dumps(ids))
    emb = synthetic_truth_set(world["root"], world["cache"])
    assert emb.tag == SYNTHETIC_TRUTH_EMBEDDINGS and emb.modality == ("image", "text", "image")
    np.testing.assert_allclose(emb.lookup(["nsd-00001", "img-A-circle"]), latents[[2, 0]], atol=1e-6)
    assert "real CLIP model" in emb.meta["note"]
    assert load_embedding_set(world["cache"], SYNTHETIC_TRUTH_EMBEDDINGS).ids == tuple(ids)
    # the demo index also holds stimuli without planted latents: one clear line
    with pytest.raises(InputError, match="'img-A-copy' of the index has no planted latent"):
        embed_stimuli([world["index"]], world["root"], world["cache"], synthetic_truth=True, progress=False)


class _FakeRun:
    """Stands in for fmri2img.core.tracking.run (tested in test_tracking.py): records what is logged."""

    def __init__(self):
        self.params, self.metrics, self.dicts, self.stages = {}, {}, {}, []

    def __call__(self, stage, params=None, **kwargs):
        import contextlib

        self.stages.append(stage)
        self.params.update(params or {})

        @contextlib.contextmanager
        def opened():
            yield self

        return opened()

    def log_params(self, params, prefix=""):
        self.params.update({prefix + k: v for k, v in params.items()})

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_dict(self, obj, artifact_file):
        self.dicts[artifact_file] = obj


def _cli_setup(world, tmp_path):
    index = _index(tmp_path / "small.parquet", [("img-C-apple", None, "apple", "conceptual")])
    (world["root"] / "truth").mkdir()
    np.save(world["root"] / "truth" / "latents.npy", np.eye(2, 4, dtype=np.float32))
    (world["root"] / "truth" / "stimulus_ids.json").write_text(json.dumps(["img-C-apple", "img-A-x"]))
    return ["embed", "--index", str(index), "--data-root", str(world["root"]), "--cache-root",
            str(world["cache"]), "--no-progress"]


def test_cli_embed_logs_the_set_and_fails_offline_in_one_line(world, tmp_path, monkeypatch):
    from huggingface_hub import constants as hf_constants
    from typer.testing import CliRunner

    from fmri2img.cli.main import app
    from fmri2img.core import tracking

    fake = _FakeRun()
    monkeypatch.setattr(tracking, "run", fake)
    common = _cli_setup(world, tmp_path)
    runner = CliRunner()
    ok = runner.invoke(app, [*common, "--synthetic-truth"])
    assert ok.exit_code == 0, ok.output
    assert fake.stages == ["embed"] and fake.params["embeddings.tag"] == SYNTHETIC_TRUTH_EMBEDDINGS
    assert fake.metrics["n_stimuli"] == 2 and fake.dicts["embeddings/ids.json"]["stimulus_ids"] == ["img-A-x", "img-C-apple"]
    assert (world["cache"] / "clip" / SYNTHETIC_TRUTH_EMBEDDINGS / "embeddings.npy").is_file()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # no cached weights
    offline = runner.invoke(app, [*common, "--pretrained", "openai"])
    assert offline.exit_code == 2
    lines = [line for line in offline.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Cannot get CLIP weights"), offline.output
    assert "--checkpoint FILE" in lines[0]


@pytest.mark.slow
def test_cli_embed_with_real_tracking(world, tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from fmri2img.cli.main import app

    result = CliRunner().invoke(app, [*_cli_setup(world, tmp_path), "--synthetic-truth", "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("fmri2img/imagery")
    (logged,) = client.search_runs([exp.experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.params["embeddings.tag"] == SYNTHETIC_TRUTH_EMBEDDINGS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_embeddings_match_cpu(world):
    """--device cuda encodes the same images and texts as the CPU, to float32 GPU tolerance."""
    cpu = embed_stimuli([world["index"]], world["root"], world["tmp"] / "cache-cpu", model=TINY, random_init=True,
                        progress=False)
    gpu = embed_stimuli([world["index"]], world["root"], world["tmp"] / "cache-gpu", model=TINY, random_init=True,
                        device="cuda", progress=False)
    ids = ["nsd-00001", "img-A-circle", "img-C-dog"]
    np.testing.assert_allclose(gpu.lookup(ids), cpu.lookup(ids), atol=1e-3)
