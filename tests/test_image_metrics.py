"""Image metrics (SSIM, PixCorr, pixel MSE, LPIPS availability) and reconstruction by retrieval."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fmri2img.core.errors import InputError, OfflineError
from fmri2img.evaluation import image_metrics


def _image(seed: int = 0, size: int = 16) -> np.ndarray:
    """A smooth-ish uint8 RGB image (gradients plus texture), so SSIM has structure to measure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * 200
    return np.clip(base + 30 * rng.random((size, size, 3)), 0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, sd: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(scale=sd, size=img.shape)
    return np.clip(img.astype(float) + noise, 0, 255).astype(np.uint8)


def test_identity_scores():
    x = _image()
    assert image_metrics.ssim(x, x) == pytest.approx(1.0)
    assert image_metrics.pixcorr(x, x) == pytest.approx(1.0)
    assert image_metrics.pixel_mse(x, x) == 0.0


def test_noisier_image_scores_worse():
    x = _image()
    mild, strong = _noisy(x, 10), _noisy(x, 60)
    assert image_metrics.ssim(x, mild) > image_metrics.ssim(x, strong)
    assert image_metrics.pixcorr(x, mild) > image_metrics.pixcorr(x, strong)
    assert image_metrics.pixel_mse(x, mild) < image_metrics.pixel_mse(x, strong)
    assert image_metrics.ssim(x, mild) < 1.0


def test_pixel_metrics_against_independent_formulas():
    a, b = _image(0), _image(5)
    fa, fb = a.astype(float).ravel(), b.astype(float).ravel()
    assert image_metrics.pixcorr(a, b) == pytest.approx(np.corrcoef(fa, fb)[0, 1], rel=1e-12)
    assert image_metrics.pixel_mse(a, b) == pytest.approx(np.mean(((fa - fb) / 255) ** 2), rel=1e-12)
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert image_metrics.pixel_mse(black, white) == 1.0
    assert np.isnan(image_metrics.pixcorr(black, white))  # constant images: correlation undefined


@pytest.mark.parametrize("size", [3, 4, 5, 6])
def test_ssim_small_images(size):
    x = _image(size=size)
    assert image_metrics.ssim(x, x) == pytest.approx(1.0)
    assert image_metrics.ssim(x, _noisy(x, 80)) < 1.0


@pytest.mark.parametrize(
    "a, b",
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32)),  # not uint8
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)),  # not RGB
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)),  # shape mismatch
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)),  # too small for SSIM
    ],
)
def test_ssim_rejects_bad_images(a, b):
    with pytest.raises(InputError):
        image_metrics.ssim(a, b)


def test_lpips_unavailable_raises_offline_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    x = _image()
    with pytest.raises(OfflineError, match="lpips"):
        image_metrics.lpips_distance(x, x)
    with pytest.raises(InputError):
        image_metrics.lpips_distance(x, x, net="resnet")


def test_retrieve_images_hand_computed_and_ties():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # item 2 duplicates item 0
    pred = np.array([[0.2, 1.0], [1.0, 0.1], [2.0, 0.0]])
    np.testing.assert_array_equal(image_metrics.retrieve_images(pred, gallery), [1, 0, 0])  # tie -> lowest index


def test_retrieval_generator_and_scores():
    rng = np.random.default_rng(3)
    images = np.stack([_image(s) for s in range(5)])
    emb = rng.normal(size=(5, 8))
    gen = image_metrics.RetrievalGenerator(emb, images)
    assert isinstance(gen, image_metrics.ImageGenerator)
    # ground-truth embeddings retrieve their own images: perfect scores
    out = gen.generate(emb)
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out, images)
    perfect = image_metrics.score_images(out, images)
    np.testing.assert_allclose(perfect["ssim"], 1.0)
    np.testing.assert_allclose(perfect["pixel_mse"], 0.0)
    # predictions nearest another item retrieve that item's image
    shifted = gen.generate(emb[[1, 2, 3, 4, 0]])
    np.testing.assert_array_equal(shifted, images[[1, 2, 3, 4, 0]])
    worse = image_metrics.score_images(shifted, images)
    assert set(worse) == {"ssim", "pixcorr", "pixel_mse"}
    assert np.all(worse["ssim"] < 1.0) and np.all(worse["pixel_mse"] > 0.0)
    with pytest.raises(InputError):
        image_metrics.RetrievalGenerator(emb, images[:3]).generate(emb)


@pytest.mark.parametrize("size", [5, 6, 16, 33])
def test_batched_scores_equal_skimage_and_pairwise_formulas(size):
    """score_images against skimage's structural_similarity (exactly: it is what runs) and numpy formulas."""
    from skimage.metrics import structural_similarity

    true = np.stack([_image(seed, size) for seed in range(7)])
    pred = np.stack([_noisy(img, 10.0 * (k + 1), seed=k) for k, img in enumerate(true)])
    pred[3] = 77  # constant image: PixCorr undefined (NaN), SSIM still defined
    scored = image_metrics.score_images(pred, true)
    win = min(image_metrics.SSIM_WIN_SIZE, size if size % 2 else size - 1)
    ref_ssim = [structural_similarity(p, t, channel_axis=-1, data_range=255, win_size=win) for p, t in zip(pred, true)]
    np.testing.assert_array_equal(scored["ssim"], ref_ssim)
    np.testing.assert_array_equal(scored["ssim"], [image_metrics.ssim(p, t) for p, t in zip(pred, true)])
    ref_mse = [np.mean((p.astype(float) / 255 - t.astype(float) / 255) ** 2) for p, t in zip(pred, true)]
    np.testing.assert_allclose(scored["pixel_mse"], ref_mse, rtol=1e-12)
    keep = [k for k in range(len(pred)) if k != 3]
    ref_corr = [np.corrcoef(pred[k].ravel().astype(float), true[k].ravel().astype(float))[0, 1] for k in keep]
    np.testing.assert_allclose(scored["pixcorr"][keep], ref_corr, rtol=1e-10)
    assert np.isnan(scored["pixcorr"][3])


def test_score_images_chunks_do_not_change_results(monkeypatch):
    true = np.stack([_image(seed, 12) for seed in range(5)])
    pred = np.stack([_noisy(img, 20.0, seed=k) for k, img in enumerate(true)])
    whole = image_metrics.score_images(pred, true)
    monkeypatch.setattr(image_metrics, "SCORE_CHUNK", 2)
    chunked = image_metrics.score_images(pred, true)
    for key in whole:
        np.testing.assert_array_equal(whole[key], chunked[key])


def test_score_image_pairs_equals_score_images_of_the_pairs():
    """Reconstruction by retrieval among a set's own images scores each (retrieved, true) pair."""
    rng = np.random.default_rng(4)
    images = np.stack([_noisy(_image(s % 5, 12), 25.0, seed=s) for s in range(9)])
    images[4] = 90  # constant: PixCorr NaN
    for n in (1, 2, 9, 17):
        first, second = rng.integers(0, 9, n), rng.integers(0, 9, n)
        got = image_metrics.score_image_pairs(images, first, second)
        ref = image_metrics.score_images(images[first], images[second])
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key])
    empty = image_metrics.score_image_pairs(images, np.array([], int), np.array([], int))
    assert set(empty) == {"ssim", "pixcorr", "pixel_mse"}
    with pytest.raises(InputError):
        image_metrics.score_image_pairs(images, np.array([0, 9]), np.array([0, 1]))
    with pytest.raises(InputError):
        image_metrics.score_image_pairs(images.astype(float), np.array([0, 1]), np.array([0, 1]))
