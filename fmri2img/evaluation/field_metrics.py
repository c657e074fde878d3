"""The field's reconstruction metric battery (MindEye2 / Brain-Diffuser / NSD-Imagery protocol).

Pure functions on arrays: images or feature matrices in, numbers out. Feature extraction (AlexNet,
InceptionV3, CLIP, EfficientNet-B1, SwAV) lives in :mod:`fmri2img.embeddings.features`; every
definition below, with the repository and file it comes from, is in ``docs/field_metrics_notes.md``.

Every metric returns the same record (a dict):

``value``
    The field's number (mean over stimuli; for n-way retrieval the mean over random draws), or
    None when the metric was not computed.
``ci_low``, ``ci_high``
    95 % percentile bootstrap interval over stimuli (:mod:`fmri2img.evaluation.resampling`); None for
    fewer than 2 stimuli.
``chance``
    Two-way: 0.5. N-way top-1: 1 / N. PixCorr, SSIM and the correlation distances have no fixed
    chance: it is the *shuffled-pair baseline*, the mean score of reconstructions paired with the
    ground truth of another stimulus (all ordered pairs i != j for features; for images all pairs
    when there are at most :data:`CHANCE_PAIRS`, else that many seeded random pairs).
``n``, ``p_value``, ``higher_is_better``, ``per_item``, ``note``
    Stimuli scored; permutation p against chance (two-way only, as
    :func:`fmri2img.evaluation.resampling.permutation_test_two_way`), else None; the direction of the
    metric; the per-stimulus scores, float64 (n,) (the bootstrap's input); and ``"not computed:
    ..."`` when the value is missing (weights absent, too few stimuli), else None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from tqdm import tqdm

from fmri2img.core.errors import InputError
from fmri2img.data.stimuli import check_images
from fmri2img.evaluation import metrics, resampling

#: Side to which reconstruction and ground truth are resized for PixCorr and SSIM: NSD's stimulus size
#: (MedARC-AI/MindEyeV2 src/final_evaluations.ipynb, ``transforms.Resize(425, BILINEAR)``; Brain-Diffuser
#: scripts/evaluate_reconstruction.py resizes to (425, 425)). The NSD-Imagery benchmark code
#: (MedARC-AI/MindEye_Imagery src/final_evaluations_mi_multi.ipynb) uses 512 instead.
FIELD_IMAGE_SIZE = 425

#: ``skimage.metrics.structural_similarity`` arguments of the field (MindEyeV2 final_evaluations.ipynb):
#: Gaussian window of sigma 1.5 (Wang et al. 2004), population covariance, images in [0, 1].
#: (The notebooks also pass ``multichannel=True``, a no-op on grayscale images since scikit-image
#: 0.20 removed that argument; see the notes for Brain-Diffuser's scikit-image 0.17.)
SSIM_KWARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}

#: Gallery size and number of random draws of MindEye2's retrieval (final_evaluations.ipynb:
#: ``np.random.choice(len(all_images), size=300, replace=False)`` in a loop of 30).
N_WAY = 300
N_WAY_DRAWS = 30

#: Mismatched image pairs of the shuffled-pair baseline of PixCorr / SSIM. 200 SSIMs at 425 px take
#: ~3 s; the baseline's Monte-Carlo standard error is then ~0.007 for an SSIM spread of 0.1.
CHANCE_PAIRS = 200

#: Feature metrics of the battery: name -> (kind, display label as in the papers' tables).
FEATURE_METRICS = {
    "alexnet2": ("two_way", "AlexNet(2)"),
    "alexnet5": ("two_way", "AlexNet(5)"),
    "inception_v3": ("two_way", "InceptionV3"),
    "clip": ("two_way", "CLIP"),
    "efficientnet_b1": ("distance", "EffNet-B"),
    "swav": ("distance", "SwAV"),
}

#: Display labels of every metric, in the field's column order.
METRIC_LABELS = {"pixcorr": "PixCorr", "ssim": "SSIM",
                 **{name: label for name, (_, label) in FEATURE_METRICS.items()},
                 "retrieval_image_300": "Image retrieval (300-way)", "retrieval_brain_300": "Brain retrieval (300-way)"}


# --------------------------------------------------------------------------- records


def _record(per_item: np.ndarray, value: float, chance: float | None, higher_is_better: bool, n_boot: int,
            seed: int, p_value: float | None = None, ci: tuple[float, float] | None = None,
            note: str | None = None) -> dict[str, Any]:
    """The metric record (module docstring) with the bootstrap CI of the mean of ``per_item``."""
    finite = per_item[np.isfinite(per_item)]
    if ci is None and finite.size >= 2:
        ci = tuple(resampling.bootstrap_ci(finite, n_boot=n_boot, seed=seed))
    return {"value": float(value), "ci_low": None if ci is None else float(ci[0]),
            "ci_high": None if ci is None else float(ci[1]), "chance": chance, "n": int(finite.size),
            "p_value": p_value, "higher_is_better": higher_is_better, "per_item": per_item, "note": note}


def not_computed(reason: str, higher_is_better: bool = True, chance: float | None = None) -> dict[str, Any]:
    """The record of a metric that could not be computed; ``note`` is ``"not computed: <reason>"``."""
    return {"value": None, "ci_low": None, "ci_high": None, "chance": chance, "n": 0, "p_value": None,
            "higher_is_better": higher_is_better, "per_item": None, "note": f"not computed: {reason}"}


# --------------------------------------------------------------------------- images



def _check_image_pair(recons: Any, truths: Any) -> tuple[np.ndarray, np.ndarray]:
    rec = check_images(recons, "reconstructions")
    gt = check_images(truths, "ground-truth images")
    if len(rec) != len(gt):
        raise InputError(f"Expected one reconstruction per ground-truth image, got {len(rec)} and {len(gt)}.")
    return rec, gt


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one image to (size, size) as the field does: bilinear, antialiased, in float.

    Pillow's float ("F") bilinear resize, channel by channel: the same filter as the field's
    ``torchvision.transforms.Resize(size, InterpolationMode.BILINEAR)`` on float tensors
    (antialias on; measured agreement 3e-5, float32 rounding).

    Parameters
    ----------
    image : uint8 or float array of shape (H, H, 3), floats in [0, 1]
    size : int

    Returns
    -------
    float32 array of shape (size, size, 3), values in [0, 1]
    """

    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c])).resize((size, size), Image.BILINEAR))
                for c in range(3)]
    return np.stack(channels, axis=-1)


#: The pixel metrics of the battery.
PIXEL_METRICS = ("pixcorr", "ssim")


def _pixel_pair(rec: np.ndarray, gt: np.ndarray, size: int, which: tuple[str, ...]) -> list[float]:
    """PixCorr and/or SSIM (``which``) of one reconstruction against one ground truth, resized to ``size``."""

    a, b = resize_image(rec, size), resize_image(gt, size)
    out = []
    for name in which:
        if name == "pixcorr":  # np.corrcoef of the flattened pixels, in float64; NaN for a constant image
            x = a.reshape(-1).astype(np.float64)
            y = b.reshape(-1).astype(np.float64)
            x -= x.mean()
            y -= y.mean()
            denom = np.sqrt((x @ x) * (y @ y))
            out.append(float(x @ y / denom) if denom > 0 else float("nan"))
        else:
            out.append(float(structural_similarity(rgb2gray(a), rgb2gray(b), **SSIM_KWARGS)))
    return out


def _chance_pairs(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mismatched ordered pairs (i, j), i != j: all of them if n (n - 1) <= max_pairs, else
    ``max_pairs`` drawn with ``default_rng(seed)``."""
    if n * (n - 1) <= max_pairs:
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    return i, (i + rng.integers(1, n, size=max_pairs)) % n


def pixel_metrics(recons: Any, truths: Any, *, size: int = FIELD_IMAGE_SIZE, n_boot: int = resampling.DEFAULT_N_BOOT,
                  seed: int = resampling.DEFAULT_SEED, chance_pairs: int = CHANCE_PAIRS, which: tuple[str, ...] = PIXEL_METRICS,
                  progress: bool = False) -> dict[str, dict[str, Any]]:
    """PixCorr and SSIM of each reconstruction against its ground truth (the field's low-level metrics).

    Both images are resized to ``size`` (:func:`resize_image`). PixCorr: Pearson correlation of the
    flattened RGB pixels (``np.corrcoef``). SSIM: ``skimage.metrics.structural_similarity`` of the
    ``skimage.color.rgb2gray`` images with :data:`SSIM_KWARGS`.

    Parameters
    ----------
    recons, truths : uint8 or float array of shape (n, H, H, 3) and (n, H', H', 3)
        Row i of ``recons`` reconstructs row i of ``truths``; sizes may differ, floats in [0, 1].
    size : int
        Side of the comparison (default 425; the NSD-Imagery benchmark code uses 512).
    n_boot, seed : int
        Bootstrap resamples and seed (also the seed of the baseline's pairs).
    chance_pairs : int
        Largest number of mismatched pairs of the shuffled-pair baseline (``chance``).
    which : tuple of {"pixcorr", "ssim"}
        The metrics to compute (SSIM costs ~15 ms a pair at 425 px, PixCorr ~1 ms).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict metric name (of ``which``) -> metric record (module docstring). A constant image has no
    PixCorr (NaN per item, left out of the mean, said in ``note``).
    """

    rec, gt = _check_image_pair(recons, truths)
    if not which or set(which) - set(PIXEL_METRICS):
        raise InputError(f"Expected pixel metrics among {list(PIXEL_METRICS)}, got {list(which)}.")
    n = len(rec)
    ci, cj = _chance_pairs(n, chance_pairs, seed)
    pairs = list(zip(range(n), range(n))) + list(zip(ci.tolist(), cj.tolist()))
    scores = np.array([_pixel_pair(rec[i], gt[j], size, tuple(which))
                       for i, j in tqdm(pairs, desc="/".join(which), unit="pair", disable=not progress)])
    out = {}
    for col, name in enumerate(which):
        own, null = scores[:n, col], scores[n:, col]
        bad = int(np.sum(~np.isfinite(own)))
        note = f"{bad} constant image(s): PixCorr undefined, left out" if bad else None
        if bad == n:
            out[name] = not_computed("every image pair has a constant image (PixCorr undefined)")
            continue
        chance = float(np.nanmean(null)) if null.size and np.isfinite(null).any() else None
        out[name] = _record(own, float(np.nanmean(own)), chance, True, n_boot, seed, note=note)
    return out


def pixcorr(recons: Any, truths: Any, **kwargs: Any) -> dict[str, Any]:
    """PixCorr record alone: ``pixel_metrics(recons, truths, which=("pixcorr",), **kwargs)["pixcorr"]``."""
    return pixel_metrics(recons, truths, which=("pixcorr",), **kwargs)["pixcorr"]


def ssim(recons: Any, truths: Any, **kwargs: Any) -> dict[str, Any]:
    """SSIM record alone: ``pixel_metrics(recons, truths, which=("ssim",), **kwargs)["ssim"]``."""
    return pixel_metrics(recons, truths, which=("ssim",), **kwargs)["ssim"]


# --------------------------------------------------------------------------- features


def _check_feature_pair(first: Any, second: Any, what: str = "reconstruction and ground-truth features"
                        ) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(first)
    b = np.asarray(second)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"Expected {what} of one shape (n, d), got shapes {a.shape} and {b.shape}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError(f"Expected finite values in the {what}, got NaN or inf.")
    return a, b


def two_way(recon_features: Any, truth_features: Any, *, n_boot: int = resampling.DEFAULT_N_BOOT,
            n_perm: int = resampling.DEFAULT_N_PERM, seed: int = resampling.DEFAULT_SEED) -> dict[str, Any]:
    """Two-way identification on network features, as the field computes it.

    For reconstruction i and every other stimulus j, a comparison is won when
    ``corr(recon_i, truth_i) > corr(recon_i, truth_j)`` (Pearson over feature dimensions, ties
    lose); per item, the fraction of its n - 1 comparisons won; the value is their mean
    (MindEyeV2 ``two_way_identification``; Brain-Diffuser ``pairwise_corr_all``). It is exactly
    :func:`fmri2img.evaluation.metrics.two_way_identification` on features.

    Parameters
    ----------
    recon_features, truth_features : array of shape (n, d), n >= 2
        Flattened features of the reconstructions and of their ground truths, same row order.
    n_boot, n_perm, seed : int
        Bootstrap resamples, permutations of the test against chance, seed.

    Returns
    -------
    dict
        Metric record, ``chance`` 0.5, ``p_value`` from
        :func:`fmri2img.evaluation.resampling.permutation_test_two_way`.
    """
    a, b = _check_feature_pair(recon_features, truth_features)
    if len(a) < 2:
        return not_computed(f"two-way identification needs at least 2 stimuli, got {len(a)}", chance=metrics.TWO_WAY_CHANCE)
    result = metrics.two_way_identification(a, b)
    p = resampling.permutation_test_two_way(a, b, n_perm=n_perm, seed=seed)
    return _record(result.per_item, result.mean, metrics.TWO_WAY_CHANCE, True, n_boot, seed, p_value=p)


def correlation_distance(recon_features: Any, truth_features: Any, *, n_boot: int = resampling.DEFAULT_N_BOOT,
                         seed: int = resampling.DEFAULT_SEED) -> dict[str, Any]:
    """Correlation distance of each reconstruction's features to its ground truth's (lower is better).

    ``scipy.spatial.distance.correlation(truth_i, recon_i) = 1 - pearson(truth_i, recon_i)``, mean
    over stimuli (the field's EfficientNet-B1 and SwAV scores).

    Parameters
    ----------
    recon_features, truth_features : array of shape (n, d)

    Returns
    -------
    dict
        Metric record, ``higher_is_better`` False; ``chance``: mean distance of each reconstruction
        to the *other* stimuli's ground truths (all i != j; None when n = 1).
    """
    a, b = _check_feature_pair(recon_features, truth_features)
    dist = 1.0 - metrics.correlation_matrix(a, b)  # (n, n): recon i vs truth j
    n = len(a)
    chance = float(dist[~np.eye(n, dtype=bool)].mean()) if n > 1 else None
    per_item = np.diag(dist).copy()
    return _record(per_item, float(per_item.mean()), chance, False, n_boot, seed)


# --------------------------------------------------------------------------- retrieval


def n_way_retrieval(pred: Any, true: Any, *, n_way: int = N_WAY, n_draws: int = N_WAY_DRAWS,
                    seed: int = resampling.DEFAULT_SEED, n_boot: int = resampling.DEFAULT_N_BOOT) -> dict[str, dict[str, Any]]:
    """MindEye2's n-way top-1 retrieval, both directions, averaged over random draws.

    Each draw picks ``n_way`` stimuli without replacement (``default_rng(seed).choice``, one
    generator for all draws). *Image retrieval*: for each predicted (brain) embedding of the draw,
    is its own image's embedding the most cosine-similar of the ``n_way``? *Brain retrieval*: the
    same from each image embedding to the predictions. Both directions use the same draws; ties
    count as misses (:func:`fmri2img.evaluation.metrics.retrieval_ranks`).

    Parameters
    ----------
    pred : array of shape (n, d)
        Predicted embeddings, one per stimulus (repeats averaged).
    true : array of shape (n, d)
        Embeddings of the same stimuli's images, same order.
    n_way, n_draws, seed, n_boot : int

    Returns
    -------
    dict ``"retrieval_image_300"``, ``"retrieval_brain_300"`` (the number is ``n_way``) -> record
        ``value`` = hits / trials over all draws (the mean over draws), ``chance`` 1 / n_way,
        ``per_item`` each stimulus' hit rate over the draws that held it (NaN if none); CI: paired
        bootstrap over stimuli of hits / trials (:func:`fmri2img.evaluation.resampling.bootstrap_ratio_ci`,
        whose ratio is the value). Not computed when n < n_way.
    """
    pred, true = _check_feature_pair(pred, true, "predicted and image embeddings")
    n = len(pred)
    names = (f"retrieval_image_{n_way}", f"retrieval_brain_{n_way}")
    if n < n_way or n_way < 2:
        reason = f"{n_way}-way retrieval needs at least {max(n_way, 2)} stimuli, got {n}"
        return {name: not_computed(reason, chance=1.0 / n_way if n_way > 0 else None) for name in names}
    rng = np.random.default_rng(seed)
    hits = np.zeros((2, n))
    trials = np.zeros(n)
    own = np.arange(n_way)
    for _ in range(int(n_draws)):
        idx = rng.choice(n, size=n_way, replace=False)
        trials[idx] += 1
        hits[0, idx] += metrics.retrieval_ranks(pred[idx], true[idx], own) == 1
        hits[1, idx] += metrics.retrieval_ranks(true[idx], pred[idx], own) == 1
    drawn = trials > 0
    out = {}
    for row, name in enumerate(names):
        ratio = resampling.bootstrap_ratio_ci(hits[row, drawn], trials[drawn], n_boot=n_boot, seed=seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_item = np.where(drawn, hits[row] / np.maximum(trials, 1), np.nan)
        rec = _record(per_item, ratio.ratio, 1.0 / n_way, True, n_boot, seed, ci=(ratio.ci_low, ratio.ci_high))
        rec["n"] = int(drawn.sum())
        out[name] = rec
    return out


# --------------------------------------------------------------------------- the battery


def score_battery(recons: Any, truths: Any, features: Mapping[str, Any], *, size: int = FIELD_IMAGE_SIZE,
                  n_boot: int = resampling.DEFAULT_N_BOOT, n_perm: int = resampling.DEFAULT_N_PERM, seed: int = resampling.DEFAULT_SEED,
                  chance_pairs: int = CHANCE_PAIRS, progress: bool = False) -> dict[str, dict[str, Any]]:
    """The whole image battery for one set of (reconstruction, ground truth) pairs.

    Parameters
    ----------
    recons, truths : uint8 or float array of shape (n, H, H, 3)
        Reconstructions and ground truths, row i with row i.
    features : mapping metric name -> (recon_features, truth_features) or str
        For each name of :data:`FEATURE_METRICS`: two arrays of shape (n, d_metric)
        (:func:`fmri2img.embeddings.features.battery_features`), or the reason it is missing (e.g.
        ``"weights for alexnet not found at PATH"``). A name absent from the mapping is reported as
        not computed, never dropped.
    size, n_boot, n_perm, seed, chance_pairs, progress
        As :func:`pixel_metrics`, :func:`two_way`.

    Returns
    -------
    dict metric name -> record, in the field's column order (``pixcorr``, ``ssim``, then
    :data:`FEATURE_METRICS`). Labels for tables: :data:`METRIC_LABELS`.
    """
    unknown = sorted(set(features) - set(FEATURE_METRICS))
    if unknown:
        raise InputError(f"Unknown feature metric(s) {unknown}; expected names among {list(FEATURE_METRICS)}.")
    out = pixel_metrics(recons, truths, size=size, n_boot=n_boot, seed=seed, chance_pairs=chance_pairs,
                        progress=progress)
    n = len(np.asarray(recons))
    for name, (kind, _) in FEATURE_METRICS.items():
        entry = features.get(name)
        higher = kind == "two_way"
        if entry is None or isinstance(entry, str):
            reason = entry.removeprefix("not computed: ") if entry else "no features were given for this metric"
            out[name] = not_computed(reason, higher, metrics.TWO_WAY_CHANCE if higher else None)
            continue
        recon_f, truth_f = entry
        if len(recon_f) != n:
            raise InputError(f"Expected {n} rows of {name} features (one per image), got {len(recon_f)}.")
        if kind == "two_way":
            out[name] = two_way(recon_f, truth_f, n_boot=n_boot, n_perm=n_perm, seed=seed)
        else:
            out[name] = correlation_distance(recon_f, truth_f, n_boot=n_boot, seed=seed)
    return out


__all__ = [
    "CHANCE_PAIRS", "FEATURE_METRICS", "FIELD_IMAGE_SIZE", "METRIC_LABELS", "N_WAY", "N_WAY_DRAWS", "PIXEL_METRICS",
    "SSIM_KWARGS", "check_images", "correlation_distance", "n_way_retrieval", "not_computed", "pixcorr",
    "pixel_metrics", "resize_image", "score_battery", "ssim", "two_way",
]
