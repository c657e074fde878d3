"""The field's reconstruction battery (fmri2img.evaluation.field_metrics) against hand-computed examples,
the field's own formulas (MindEye2 / Brain-Diffuser, re-typed here as references) and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from fmri2img.core.errors import InputError
from fmri2img.evaluation import field_metrics as F
from fmri2img.evaluation import resampling as S

N_BOOT = 300
N_PERM = 300


def _images(n: int, side: int, seed: int) -> np.ndarray:
    """Smooth-ish uint8 RGB images (random low-resolution patterns upsampled), not constant."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float64)
    return np.repeat(np.repeat(low, side // 4, axis=1), side // 4, axis=2).astype(np.uint8)


def _field_two_way(reals: np.ndarray, preds: np.ndarray) -> float:
    """MindEyeV2 final_evaluations.ipynb ``two_way_identification`` (return_avg=True), re-typed."""
    r = np.corrcoef(reals, preds)
    r = r[:len(reals), len(reals):]
    congruents = np.diag(r)
    success = r < congruents
    success_cnt = np.sum(success, 0)
    return float(np.mean(success_cnt) / (len(reals) - 1))


# --------------------------------------------------------------------------- two-way


def test_two_way_matches_a_hand_computed_example():
    truth = np.eye(3)
    # recon 0 = truth 0: corr 1 vs -0.5, -0.5 -> wins 2 of 2
    # recon 1 = truth 0: own corr -0.5 loses to truth 0 (1) and ties truth 2 (-0.5, a tie loses) -> 0 of 2
    # recon 2 = (0, 1, 1): corr with truth 2 = 0.5, truth 1 = 0.5 (tie, lost), truth 0 = -1 (won) -> 1 of 2
    recon = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 1.0]])
    rec = F.two_way(recon, truth, n_boot=N_BOOT, n_perm=N_PERM)
    np.testing.assert_allclose(rec["per_item"], [1.0, 0.0, 0.5])
    assert rec["value"] == pytest.approx(0.5)
    assert rec["chance"] == 0.5 and rec["higher_is_better"] and rec["n"] == 3


def test_two_way_equals_the_field_formula_on_random_features():
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((40, 64))
    recon = truth + 4.0 * rng.standard_normal((40, 64))
    rec = F.two_way(recon, truth, n_boot=N_BOOT, n_perm=N_PERM)
    assert rec["value"] == pytest.approx(_field_two_way(truth, recon), abs=1e-12)
    assert 0.5 < rec["value"] < 1.0
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(tuple(S.bootstrap_ci(rec["per_item"], n_boot=N_BOOT)))
    assert rec["p_value"] == pytest.approx(S.permutation_test_two_way(recon, truth, n_perm=N_PERM))


def test_two_way_of_unrelated_features_is_near_chance():
    rng = np.random.default_rng(4)
    rec = F.two_way(rng.standard_normal((60, 32)), rng.standard_normal((60, 32)), n_boot=N_BOOT, n_perm=N_PERM)
    assert rec["ci_low"] < 0.5 < rec["ci_high"]
    assert rec["p_value"] > 0.01


# --------------------------------------------------------------------------- distances


def test_correlation_distance_equals_scipy_per_item_and_its_shuffled_baseline():
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((7, 20))
    recon = truth + rng.standard_normal((7, 20))
    rec = F.correlation_distance(recon, truth, n_boot=N_BOOT)
    expected = [scipy.spatial.distance.correlation(truth[i], recon[i]) for i in range(7)]
    np.testing.assert_allclose(rec["per_item"], expected, atol=1e-12)
    assert rec["value"] == pytest.approx(np.mean(expected))
    off = [scipy.spatial.distance.correlation(truth[j], recon[i]) for i in range(7) for j in range(7) if i != j]
    assert rec["chance"] == pytest.approx(np.mean(off))
    assert rec["higher_is_better"] is False and rec["value"] < rec["chance"]


# --------------------------------------------------------------------------- pixels


def test_pixcorr_and_ssim_equal_numpy_and_skimage_on_425px_images():
    gt = _images(3, 424, seed=0)[:, :424, :424]
    gt = np.pad(gt, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")  # 425 px: no resize
    rec = _images(3, 424, seed=1)
    rec = np.pad(rec, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    out = F.pixel_metrics(rec, gt, n_boot=N_BOOT)
    for i in range(3):
        a, b = rec[i].astype(np.float32) / 255, gt[i].astype(np.float32) / 255
        assert out["pixcorr"]["per_item"][i] == pytest.approx(np.corrcoef(b.reshape(-1), a.reshape(-1))[0, 1], abs=1e-9)
        field = structural_similarity(rgb2gray(a), rgb2gray(b), gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0)
        assert out["ssim"]["per_item"][i] == pytest.approx(field, abs=1e-9)


def test_resizing_follows_torchvision_bilinear_antialiased_resize():
    torch = pytest.importorskip("torch")
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    for side in (64, 512):
        img = _images(1, side, seed=side)[0]
        tensor = torch.from_numpy(img).permute(2, 0, 1).float() / 255
        expected = TF.resize(tensor, 425, interpolation=InterpolationMode.BILINEAR, antialias=True)
        got = F.resize_image(img, 425)
        assert got.shape == (425, 425, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected.permute(1, 2, 0).numpy(), atol=1e-4)


def test_ground_truth_against_itself_reaches_ceiling():
    gt = _images(5, 32, seed=2)
    out = F.pixel_metrics(gt, gt, n_boot=N_BOOT)
    assert out["pixcorr"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert out["ssim"]["value"] == pytest.approx(1.0, abs=1e-9)
    feats = np.random.default_rng(0).standard_normal((5, 30))
    assert F.two_way(feats, feats, n_boot=N_BOOT, n_perm=N_PERM)["value"] == 1.0
    assert F.correlation_distance(feats, feats, n_boot=N_BOOT)["value"] == pytest.approx(0.0, abs=1e-12)


def test_pixel_chance_is_the_mean_over_every_mismatched_pair_when_few():
    gt = _images(4, 16, seed=3)
    rec = _images(4, 16, seed=4)
    out = F.pixel_metrics(rec, gt, n_boot=N_BOOT, size=32)
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    other = F.pixel_metrics(rec[[i for i, _ in pairs]], gt[[j for _, j in pairs]], n_boot=N_BOOT, size=32,
                            chance_pairs=0)
    for name in ("pixcorr", "ssim"):
        assert out[name]["chance"] == pytest.approx(other[name]["value"])
        assert out[name]["ci_low"] <= out[name]["value"] <= out[name]["ci_high"]


def test_a_degraded_reconstruction_scores_lower():
    gt = _images(6, 32, seed=5)
    rng = np.random.default_rng(6)
    noisy = np.clip(gt + rng.normal(0, 60, gt.shape), 0, 255).astype(np.uint8)
    good = F.pixel_metrics(gt, gt, n_boot=N_BOOT, size=64)
    bad = F.pixel_metrics(noisy, gt, n_boot=N_BOOT, size=64)
    for name in ("pixcorr", "ssim"):
        assert bad[name]["value"] < good[name]["value"]
        assert bad[name]["value"] > bad[name]["chance"]


def test_constant_reconstruction_has_no_pixcorr_and_says_so():
    gt = _images(3, 16, seed=7)
    rec = gt.copy()
    rec[1] = 128
    out = F.pixel_metrics(rec, gt, n_boot=N_BOOT, size=16)
    assert np.isnan(out["pixcorr"]["per_item"][1]) and out["pixcorr"]["n"] == 2
    assert "constant" in out["pixcorr"]["note"]
    assert np.isfinite(out["ssim"]["value"]) and out["ssim"]["note"] is None


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8), np.uint8), "square RGB images of shape (n, H, H, 3), got shape (2, 8, 8)"),
    (np.zeros((2, 8, 6, 3), np.uint8), "got shape (2, 8, 6, 3)"),
    (np.zeros((2, 8, 8, 4), np.uint8), "got shape (2, 8, 8, 4)"),
    (np.full((2, 8, 8, 3), 2.0), "in [0, 1], got values in [2.0, 2.0]"),
    (np.zeros((2, 8, 8, 3), np.int32), "uint8 or float images in [0, 1], got dtype int32"),
    (np.zeros((3, 8, 8, 3), np.uint8), "one reconstruction per ground-truth image, got 3 and 2"),
])
def test_images_of_the_wrong_shape_are_refused_in_one_line(bad, message):
    gt = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(InputError) as err:
        F.pixel_metrics(bad, gt)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_feature_shape_mismatch_is_refused():
    with pytest.raises(InputError, match=r"of one shape \(n, d\), got shapes \(3, 4\) and \(3, 5\)"):
        F.two_way(np.ones((3, 4)), np.ones((3, 5)))


# --------------------------------------------------------------------------- retrieval


def test_n_way_retrieval_matches_a_hand_computed_example():
    true = np.eye(4)
    pred = np.eye(4)[[0, 1, 2, 1]]  # prediction 3 copies stimulus 1
    # image retrieval: predictions 0-2 find their image; prediction 3 finds image 1 -> 3/4
    # brain retrieval: image 1 ties predictions 1 and 3 (a tie misses), image 3 ties everything -> 2/4
    out = F.n_way_retrieval(pred, true, n_way=4, n_draws=5, n_boot=N_BOOT)
    image, brain = out["retrieval_image_4"], out["retrieval_brain_4"]
    assert image["value"] == pytest.approx(0.75) and brain["value"] == pytest.approx(0.5)
    np.testing.assert_array_equal(image["per_item"], [1, 1, 1, 0])
    np.testing.assert_array_equal(brain["per_item"], [1, 0, 1, 0])
    assert image["chance"] == pytest.approx(0.25) and image["n"] == 4


def test_n_way_retrieval_averages_seeded_draws():
    rng = np.random.default_rng(8)
    true = rng.standard_normal((60, 16))
    pred = true + 1.2 * rng.standard_normal((60, 16))
    a = F.n_way_retrieval(pred, true, n_way=20, n_draws=30, seed=1, n_boot=N_BOOT)["retrieval_image_20"]
    b = F.n_way_retrieval(pred, true, n_way=20, n_draws=30, seed=1, n_boot=N_BOOT)["retrieval_image_20"]
    assert a["value"] == b["value"] and a["ci_low"] == b["ci_low"]
    # the value is the mean over the draws of the top-1 rate among that draw's 20 stimuli
    draws = np.random.default_rng(1)
    rates = []
    for _ in range(30):
        idx = draws.choice(60, size=20, replace=False)
        p = pred[idx] / np.linalg.norm(pred[idx], axis=1, keepdims=True)
        t = true[idx] / np.linalg.norm(true[idx], axis=1, keepdims=True)
        rates.append(np.mean(np.argmax(p @ t.T, axis=1) == np.arange(20)))
    assert a["value"] == pytest.approx(np.mean(rates))
    assert a["ci_low"] < a["value"] < a["ci_high"] and a["value"] > a["chance"]


def test_300_way_retrieval_is_not_computed_for_12_stimuli():
    out = F.n_way_retrieval(np.eye(12), np.eye(12))
    assert out["retrieval_image_300"]["value"] is None
    assert out["retrieval_image_300"]["note"] == "not computed: 300-way retrieval needs at least 300 stimuli, got 12"


# --------------------------------------------------------------------------- battery


@pytest.mark.parametrize("metric", list(F.FEATURE_METRICS))
def test_each_battery_feature_metric_matches_the_hand_computed_example(metric):
    """The eye(3) example of the two-way test, routed through the battery under every metric name."""
    gt = _images(3, 16, seed=10)
    truth = np.eye(3)
    recon = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 1.0]])
    out = F.score_battery(gt, gt, {metric: (recon, truth)}, size=16, n_boot=N_BOOT, n_perm=N_PERM)[metric]
    if F.FEATURE_METRICS[metric][0] == "two_way":
        np.testing.assert_allclose(out["per_item"], [1.0, 0.0, 0.5])
        assert out["chance"] == 0.5 and out["higher_is_better"]
    else:  # 1 - r: r = 1, -0.5 (e0 vs e1) and 0.5 ((0, 1, 1) vs e2)
        np.testing.assert_allclose(out["per_item"], [0.0, 1.5, 0.5], atol=1e-12)
        assert out["value"] == pytest.approx(2 / 3) and out["higher_is_better"] is False


def test_battery_reports_missing_features_instead_of_dropping_them():
    gt = _images(4, 16, seed=9)
    feats = np.random.default_rng(1).standard_normal((4, 10))
    out = F.score_battery(gt, gt, {"alexnet2": (feats, feats), "swav": "weights for swav not found at /w/swav.pth"},
                          size=16, n_boot=N_BOOT, n_perm=N_PERM)
    assert list(out) == ["pixcorr", "ssim", *F.FEATURE_METRICS]
    assert out["alexnet2"]["value"] == 1.0
    assert out["swav"]["value"] is None
    assert out["swav"]["note"] == "not computed: weights for swav not found at /w/swav.pth"
    assert out["clip"]["note"] == "not computed: no features were given for this metric"
    with pytest.raises(InputError, match="Unknown feature metric"):
        F.score_battery(gt, gt, {"vgg": (feats, feats)}, size=16)
