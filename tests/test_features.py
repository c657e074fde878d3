"""Feature networks of the field's battery (fmri2img.embeddings.features): every network runs with
random weights on tiny inputs; weights come only from local files; missing, corrupt and mismatched
files give one-line answers."""

from __future__ import annotations

import numpy as np
import pytest

from fmri2img.core.errors import ConfigError, CorruptFileError, MismatchError, MissingInputError
from fmri2img.embeddings import features as FE
from fmri2img.evaluation import field_metrics as F

torch = pytest.importorskip("torch")

#: Random weights everywhere; CLIP as ViT-B-32 (the field's ViT-L-14 is the slow test below).
RANDOM = FE.FeatureWeights(random_init=True, clip_model="ViT-B-32")

#: Feature sizes of the field's nodes at the field's input sides (torchvision architectures).
EXPECTED_DIMS = {"alexnet2": 192 * 31 * 31, "alexnet5": 256 * 15 * 15, "inception_v3": 2048, "clip": 512,
                 "efficientnet_b1": 1280, "swav": 2048}


def _images(n: int = 3, side: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize("network", list(FE.FIELD_NETWORKS))
def test_every_network_runs_with_random_weights_deterministically(network):
    net = FE.load_network(network, RANDOM)
    assert net.weights.startswith("random(seed=")
    first = net.extract(_images(), batch_size=2)
    again = FE.load_network(network, RANDOM).extract(_images(), batch_size=2)
    for metric, node in FE.FIELD_NETWORKS[network].nodes:
        assert first[metric].shape == (3, EXPECTED_DIMS[metric]) and first[metric].dtype == np.float32
        assert np.all(np.isfinite(first[metric]))
        np.testing.assert_array_equal(first[metric], again[metric])  # same seed, same inputs: same bytes


def test_battery_features_of_ground_truth_score_at_ceiling():
    gt = _images(4, 16, seed=1)
    feats = FE.battery_features(gt, gt, RANDOM, batch_size=4)
    assert set(feats) == set(F.FEATURE_METRICS)
    out = F.score_battery(gt, gt, feats, size=32, n_boot=200, n_perm=200)
    for name, (kind, _) in F.FEATURE_METRICS.items():
        if kind == "two_way":
            assert out[name]["value"] == 1.0, name
        else:
            assert out[name]["value"] == pytest.approx(0.0, abs=1e-6), name
            assert out[name]["chance"] > 0, name  # the features do differ between images
    assert out["pixcorr"]["value"] == pytest.approx(1.0) and out["ssim"]["value"] == pytest.approx(1.0)


def test_float_and_uint8_images_give_the_same_features():
    net = FE.load_network("efficientnet_b1", RANDOM)
    imgs = _images(2, 12)
    np.testing.assert_allclose(net.extract(imgs)["efficientnet_b1"], net.extract(imgs / 255.0)["efficientnet_b1"],
                               rtol=1e-5, atol=1e-6)


def test_missing_weights_are_reported_with_their_path(tmp_path):
    weights = FE.FeatureWeights(alexnet=str(tmp_path / "alexnet.pth"))
    gt = _images(3, 8)
    feats = FE.battery_features(gt, gt, weights)
    assert feats["alexnet2"] == feats["alexnet5"] == f"weights for alexnet not found at {tmp_path / 'alexnet.pth'}"
    assert feats["swav"] == "no weights configured for swav (feature weights key 'swav')"
    out = F.score_battery(gt, gt, feats, size=16, n_boot=100, n_perm=100)
    assert out["alexnet5"]["value"] is None
    assert out["alexnet5"]["note"] == f"not computed: weights for alexnet not found at {tmp_path / 'alexnet.pth'}"
    with pytest.raises(MissingInputError, match="weights for alexnet not found at"):
        FE.load_network("alexnet", weights)


def test_weights_are_loaded_from_a_local_state_dict(tmp_path):
    torch.manual_seed(7)
    from torchvision.models import efficientnet_b1

    model = efficientnet_b1(weights=None).eval()
    path = tmp_path / "effnet.pth"
    torch.save(model.state_dict(), path)
    net = FE.load_network("efficientnet_b1", FE.FeatureWeights(efficientnet_b1=str(path)))
    assert net.weights == str(path)
    x = torch.from_numpy(_images(2, 255)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(FE.IMAGENET_MEAN)[:, None, None]) / torch.tensor(FE.IMAGENET_STD)[:, None, None]
    with torch.inference_mode():
        expected = torch.flatten(model.avgpool(model.features(x)), 1).numpy()
    np.testing.assert_allclose(net.extract(_images(2, 255))["efficientnet_b1"], expected, rtol=1e-4, atol=1e-6)


def test_swav_checkpoint_layout_is_accepted(tmp_path):
    """The hub checkpoint: 'module.'-prefixed keys, projection head and prototypes, no classifier."""
    torch.manual_seed(3)
    from torchvision.models import resnet50

    model = resnet50(weights=None).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    state["module.prototypes.weight"] = torch.zeros(3000, 128)
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)
    net = FE.load_network("swav", FE.FeatureWeights(swav=str(path)))
    x = torch.from_numpy(_images(2, 224)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(FE.IMAGENET_MEAN)[:, None, None]) / torch.tensor(FE.IMAGENET_STD)[:, None, None]
    with torch.inference_mode():
        trunk = torch.nn.Sequential(*list(model.children())[:-1])
        expected = torch.flatten(trunk(x), 1).numpy()
    np.testing.assert_allclose(net.extract(_images(2, 224))["swav"], expected, rtol=1e-4, atol=1e-5)


def test_corrupt_weights_raise_one_line_with_exit_code_2(tmp_path):
    path = tmp_path / "alexnet.pth"
    path.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(CorruptFileError) as err:
        FE.load_network("alexnet", FE.FeatureWeights(alexnet=str(path)))
    assert str(path) in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2
    with pytest.raises(CorruptFileError):
        FE.battery_features(_images(), _images(), FE.FeatureWeights(alexnet=str(path)))


def test_corrupt_clip_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "clip.pt"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError) as err:
        FE.load_network("clip", FE.FeatureWeights(clip=str(path), clip_model="ViT-B-32"))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_weights_of_another_architecture_are_refused(tmp_path):
    from torchvision.models import efficientnet_b1

    path = tmp_path / "effnet.pth"
    torch.save(efficientnet_b1(weights=None).state_dict(), path)
    with pytest.raises(MismatchError) as err:
        FE.load_network("alexnet", FE.FeatureWeights(alexnet=str(path)))
    message = str(err.value)
    assert "does not fit the alexnet architecture" in message and "missing keys" in message
    assert "\n" not in message and "alexnet-owt-7be5be79.pth" in message


def test_feature_weights_config_refuses_unknown_keys():
    weights = FE.FeatureWeights.from_mapping({"alexnet": "/w/a.pth", "clip_model": "ViT-L-14"})
    assert weights.alexnet == "/w/a.pth" and weights.clip is None
    with pytest.raises(ConfigError, match=r"Unknown feature weights key\(s\) \['vgg'\]"):
        FE.FeatureWeights.from_mapping({"vgg": "/w/v.pth"})
    with pytest.raises(ConfigError, match="expected a file path or null"):
        FE.FeatureWeights.from_mapping({"alexnet": 3})


def test_unknown_network_and_wrong_images_are_refused():
    with pytest.raises(ConfigError, match="Unknown feature network 'vgg'"):
        FE.load_network("vgg", RANDOM)
    net = FE.load_network("efficientnet_b1", RANDOM)
    with pytest.raises(Exception, match=r"square RGB images of shape \(n, H, H, 3\), got shape \(2, 8, 8\)"):
        net.extract(np.zeros((2, 8, 8), np.uint8))


@pytest.mark.slow  # ~11 s and 1.7 GB: ViT-L-14 with its text tower
def test_the_fields_clip_architecture_runs_with_random_weights():
    net = FE.load_network("clip", FE.FeatureWeights(random_init=True))
    assert net.resize == 224
    assert net.extract(_images(2, 8))["clip"].shape == (2, 768)
