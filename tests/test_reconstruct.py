"""Reconstruction backends (fmri2img.models.reconstruct): the synthetic world's renderer and a tiny,
randomly initialised Stable unCLIP pipeline built from configs here (no download), run on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fmri2img.core.errors import ConfigError, CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.embeddings import features as FE
from fmri2img.evaluation import field_metrics as F
from fmri2img.models import reconstruct as R

sys.path.insert(0, str(Path(__file__).parent))
from _world import TINY  # noqa: E402

#: Image-embedding size of the tiny unCLIP pipeline (the real one: 1024, CLIP ViT-H/14).
TINY_DIM = 32


# --------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fmri2img.sim.world import WorldShape, write_world

    root = tmp_path_factory.mktemp("world") / "data"
    write_world(root, subjects=("subj01",), scale=WorldShape(**TINY), seed=5, progress=False)
    params = json.loads((root / "truth" / "params.json").read_text())
    ids = json.loads((root / "truth" / "stimulus_ids.json").read_text())
    latents = np.load(root / "truth" / "latents.npy")
    nsd_rows = [i for i, s in enumerate(ids) if s.startswith("nsd-")]
    with h5py.File(root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5", "r") as f:
        images = f["imgBrick"][[int(ids[i].split("-")[1]) for i in nsd_rows]]
    return {"params": params, "latents": latents[nsd_rows], "images": images}


def test_rendering_the_planted_latents_gives_back_the_worlds_stimuli(world):
    renderer = R.SyntheticRenderer.from_world_params(world["params"])
    assert renderer.seed == 5 and renderer.image_size == 64
    np.testing.assert_array_equal(renderer.generate(world["latents"]), world["images"])


def test_battery_is_at_ceiling_for_planted_latents_and_falls_with_noise(world):
    renderer = R.SyntheticRenderer.from_world_params(world["params"])
    latents = world["latents"][:10]
    truth = world["images"][:10]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(latents.shape) / np.sqrt(latents.shape[1])
    effnet = FE.load_network("efficientnet_b1", FE.FeatureWeights(random_init=True))
    truth_features = effnet.extract(truth)["efficientnet_b1"]
    scores = []
    for level in (0.0, 0.6, 2.0):
        recon = renderer.generate(latents + level * noise)
        features = {"efficientnet_b1": (effnet.extract(recon)["efficientnet_b1"], truth_features)}
        scores.append(F.score_battery(recon, truth, features, size=128, n_boot=200, chance_pairs=20))
    assert scores[0]["pixcorr"]["value"] == pytest.approx(1.0) and scores[0]["ssim"]["value"] == pytest.approx(1.0)
    assert scores[0]["efficientnet_b1"]["value"] == pytest.approx(0.0, abs=1e-12)
    for name in ("pixcorr", "ssim", "efficientnet_b1"):
        values = [s[name]["value"] for s in scores]
        higher = scores[0][name]["higher_is_better"]
        better = values[0] > values[1] > values[2] if higher else values[0] < values[1] < values[2]
        assert better, (name, values)


def test_synthetic_backend_refuses_other_embedding_sizes(world):
    renderer = R.SyntheticRenderer.from_world_params(world["params"])
    with pytest.raises(MismatchError, match="Embeddings have 16 dimensions but the synthetic world's renderer "
                                            "takes latents of 512"):
        renderer.generate(np.ones((2, 16)))
    with pytest.raises(InputError, match="all-zero prediction"):
        renderer.generate(np.zeros((2, 512)))
    with pytest.raises(InputError, match="truth/params.json"):
        R.SyntheticRenderer.from_world_params({"seed": 1})


def test_registry_builds_by_name_and_refuses_unknowns():
    assert isinstance(R.make_backend("synthetic", seed=3), R.SyntheticRenderer)
    with pytest.raises(ConfigError, match="Unknown reconstruction backend 'vd'; choose one of 'synthetic', 'unclip'."):
        R.make_backend("vd")
    with pytest.raises(ConfigError, match=r"Unknown parameter\(s\) \['steps'\] for backend 'unclip'"):
        R.make_backend("unclip", pipeline_dir="x", steps=3)
    with pytest.raises(ConfigError, match="Backend 'unclip' needs pipeline_dir"):
        R.make_backend("unclip")


# --------------------------------------------------------------------------- unCLIP


def _tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=8)


def _tiny_unclip(folder: Path) -> Path:
    """A randomly initialised StableUnCLIPImg2ImgPipeline in the layout of stable-diffusion-2-1-unclip
    (component configs after diffusers' own tests of this pipeline), saved to ``folder / 'pipe'``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer(folder)
    d = TINY_DIM
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=d, projection_dim=d, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=4))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=d, projection_dim=d, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=8))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), attention_head_dim=(2, 4),
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * d, cross_attention_dim=d,
        layers_per_block=1, upcast_attention=True, use_linear_projection=True, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), image_encoder=image_encoder.eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=d),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=tokenizer,
        text_encoder=text_encoder.eval(), unet=unet.eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=vae.eval())
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    return _tiny_unclip(tmp_path_factory.mktemp("unclip"))


def _generator(path, **kw):
    params = dict(seed=0, num_inference_steps=2, guidance_scale=1.0, image_size=16, batch_size=3, progress=False)
    params.update(kw)
    return R.make_backend("unclip", pipeline_dir=path, **params)


def test_unclip_generates_seeded_images_from_embeddings(unclip_dir):
    emb = np.random.default_rng(0).standard_normal((3, TINY_DIM))
    gen = _generator(unclip_dir)
    images = gen.generate(emb)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert gen.embedding_dim_ == TINY_DIM
    np.testing.assert_array_equal(images, gen.generate(emb))  # same seed, same images
    assert not np.array_equal(images, _generator(unclip_dir, seed=1).generate(emb))
    assert not np.array_equal(images[0], images[1])  # each embedding its own image
    F.check_images(images, "unclip images")  # what the battery takes


def test_unclip_images_do_not_depend_on_batching(unclip_dir):
    emb = np.random.default_rng(1).standard_normal((3, TINY_DIM))
    whole = _generator(unclip_dir, batch_size=3).generate(emb)
    single = _generator(unclip_dir, batch_size=1).generate(emb)
    assert np.abs(whole.astype(int) - single.astype(int)).max() <= 1  # seeded per image; float rounding only


def test_unclip_with_guidance_and_renormalised_embeddings(unclip_dir):
    emb = np.random.default_rng(2).standard_normal((2, TINY_DIM))
    images = _generator(unclip_dir, guidance_scale=3.0, embedding_norm=5.0, batch_size=2).generate(emb)
    assert images.shape == (2, 16, 16, 3)


def test_unclip_refuses_embeddings_of_the_wrong_dimension_before_loading(unclip_dir):
    gen = _generator(unclip_dir)
    with pytest.raises(MismatchError) as err:
        gen.generate(np.ones((2, 512)))
    message = str(err.value)
    assert f"Embeddings have 512 dimensions but the unCLIP pipeline in {unclip_dir} takes {TINY_DIM}-D" in message
    assert "\n" not in message and getattr(gen, "pipeline_", None) is None


def test_unclip_missing_and_corrupt_pipelines(unclip_dir, tmp_path):
    with pytest.raises(MissingInputError, match="unCLIP pipeline folder not found"):
        _generator(tmp_path / "absent").generate(np.ones((1, TINY_DIM)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="not a diffusers pipeline folder: no model_index.json"):
        _generator(tmp_path / "empty").generate(np.ones((1, TINY_DIM)))
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(unclip_dir, broken)
    weights = next((broken / "unet").glob("diffusion_pytorch_model.*"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptFileError) as err:
        _generator(broken).generate(np.ones((1, TINY_DIM)))
    assert str(broken) in str(err.value) and "\n" not in str(err.value)
    index = json.loads((broken / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MismatchError, match="holds a StableDiffusionPipeline, expected a StableUnCLIPImg2ImgPipeline"):
        _generator(broken).generate(np.ones((1, TINY_DIM)))


def test_unclip_bad_options_are_refused(unclip_dir):
    with pytest.raises(ConfigError, match="Unknown dtype 'float8'"):
        _generator(unclip_dir, dtype="float8").generate(np.ones((1, TINY_DIM)))
    with pytest.raises(ConfigError, match="Unknown device 'tpu'"):
        _generator(unclip_dir, device="tpu").generate(np.ones((1, TINY_DIM)))
    with pytest.raises(InputError, match=r"shape \(n, d\)"):
        _generator(unclip_dir).generate(np.ones(TINY_DIM))


def test_unclip_without_diffusers_says_how_to_install(unclip_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the optional extra were not installed
    with pytest.raises(ConfigError, match=r"needs diffusers and transformers .*\[reconstruct\]"):
        _generator(unclip_dir).load()
