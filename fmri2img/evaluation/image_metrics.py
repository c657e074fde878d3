"""Secondary image metrics (SSIM, pixel MSE, PixCorr, optional LPIPS) and reconstruction by retrieval.

Images are uint8 RGB arrays of shape (H, W, 3) (batches: (n, H, W, 3)). Reconstruction by
retrieval, the gallery image whose embedding is nearest the prediction, is the honest baseline
every generative decoder must beat; a generator plugs in through :class:`ImageGenerator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from skimage.metrics import structural_similarity

from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError, OfflineError
from fmri2img.evaluation.metrics import cosine_similarity_matrix

#: skimage's default SSIM window (7 x 7, Wang et al. 2004 use 11 with Gaussian weights); smaller
#: images use the largest odd window that fits.
SSIM_WIN_SIZE = 7

#: Dynamic range of uint8 pixels.
UINT8_RANGE = 255

#: torchvision checkpoints the `lpips` package loads for its backbone (file names from
#: torchvision.models' weight URLs); they must already be in the torch hub cache.
LPIPS_BACKBONE_WEIGHTS = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


# --------------------------------------------------------------------------- validation


def _check_image(img: Any, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(
            f"Expected {name} as a uint8 RGB array of shape (H, W, 3), got {arr.dtype} {arr.shape}."
        )
    return arr


def _check_pair(img_a: Any, img_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _check_image(img_a, "img_a")
    b = _check_image(img_b, "img_b")
    if a.shape != b.shape:
        raise InputError(f"Expected images of the same shape, got {a.shape} and {b.shape}.")
    return a, b


# --------------------------------------------------------------------------- metrics


def ssim(img_a: Any, img_b: Any) -> float:
    """Structural similarity of two RGB images: ``skimage.metrics.structural_similarity``.

    Mean SSIM over the three channels, ``data_range=255``, uniform window of
    :data:`SSIM_WIN_SIZE` (or the largest odd size that fits an image smaller than 7 px).
    Note: MindEye / Brain-Diffuser compute SSIM on grayscale 425 px images with Gaussian
    weights, so absolute values are comparable only within this benchmark.

    Parameters
    ----------
    img_a, img_b : uint8 array of shape (H, W, 3), H, W >= 3

    Returns
    -------
    float in [-1, 1]; 1 for identical images.
    """
    a, b = _check_pair(img_a, img_b)
    return float(structural_similarity(a, b, channel_axis=2, data_range=UINT8_RANGE, win_size=_ssim_window(a.shape)))


def pixel_mse(img_a: Any, img_b: Any) -> float:
    """Mean squared pixel error, with pixels scaled to [0, 1].

    Parameters
    ----------
    img_a, img_b : uint8 array of shape (H, W, 3)

    Returns
    -------
    float in [0, 1]; 0 for identical images.
    """
    a, b = _check_pair(img_a, img_b)
    return float(_pixel_scores(a[None], b[None])["pixel_mse"][0])


def pixcorr(img_a: Any, img_b: Any) -> float:
    """PixCorr: Pearson correlation of the flattened pixel values (the field's PixCorr).

    Parameters
    ----------
    img_a, img_b : uint8 array of shape (H, W, 3)

    Returns
    -------
    float in [-1, 1]; NaN when either image is constant (correlation undefined).
    """
    a, b = _check_pair(img_a, img_b)
    return float(_pixel_scores(a[None], b[None])["pixcorr"][0])


#: Images scored at a time by :func:`score_images` (bounds its float64 temporaries).
SCORE_CHUNK = 256


def _ssim_window(shape: tuple[int, ...]) -> int:
    """SSIM window side for images of shape (H, W, 3) (:data:`SSIM_WIN_SIZE` or the largest odd fit)."""
    side = min(shape[0], shape[1])
    if side < 3:
        raise InputError(f"SSIM needs images of at least 3 x 3 pixels, got {tuple(shape[:2])}.")
    return min(SSIM_WIN_SIZE, side if side % 2 else side - 1)


def _pixel_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel MSE (pixels in [0, 1]) and PixCorr of each pair of two uint8 batches -> float64 (n,)."""
    x = pred.reshape(len(pred), -1).astype(np.float64)
    y = true.reshape(len(true), -1).astype(np.float64)
    mse = np.mean(((x - y) / UINT8_RANGE) ** 2, axis=1)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    return {"pixcorr": _pixcorr(x, y, np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)),
            "pixel_mse": mse}


def _pixcorr(x: np.ndarray, y: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Pearson correlation of centred pixel rows x, y (n, P) with squared norms xx, yy (n,) -> (n,)."""
    denom = np.sqrt(xx * yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.einsum("ij,ij->i", x, y) / denom, np.nan)


def score_images(pred_images: Any, true_images: Any) -> dict[str, np.ndarray]:
    """SSIM, PixCorr and pixel MSE of each reconstructed image against its true image.

    Parameters
    ----------
    pred_images, true_images : uint8 array of shape (n, H, W, 3)

    Returns
    -------
    dict ``ssim``, ``pixcorr``, ``pixel_mse`` -> float64 array of shape (n,)
    """
    pred = np.asarray(pred_images)
    true = np.asarray(true_images)
    if pred.ndim != 4 or pred.shape != true.shape or pred.shape[-1] != 3 or pred.dtype != np.uint8 \
            or true.dtype != np.uint8:
        raise InputError(
            f"Expected two uint8 image batches of the same shape (n, H, W, 3), got {pred.dtype} {pred.shape} "
            f"and {true.dtype} {true.shape}."
        )
    win = _ssim_window(pred.shape[1:]) if len(pred) else SSIM_WIN_SIZE
    out: dict[str, list[np.ndarray]] = {"ssim": [], "pixcorr": [], "pixel_mse": []}
    for start in range(0, pred.shape[0], SCORE_CHUNK):
        p, t = pred[start:start + SCORE_CHUNK], true[start:start + SCORE_CHUNK]
        out["ssim"].append(np.array([structural_similarity(a, b, channel_axis=2, data_range=UINT8_RANGE, win_size=win)
                                     for a, b in zip(p, t)], dtype=np.float64))
        for name, values in _pixel_scores(p, t).items():
            out[name].append(values)
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}


def score_image_pairs(images: Any, first: Any, second: Any) -> dict[str, np.ndarray]:
    """``score_images(images[first], images[second])``: reconstruction by retrieval among a set's own
    images (``first``: the retrieved image of each stimulus, ``second``: its true image).

    Parameters
    ----------
    images : uint8 array of shape (m, H, W, 3)
    first, second : int arrays of shape (n,), values in [0, m)

    Returns
    -------
    dict ``ssim``, ``pixcorr``, ``pixel_mse`` -> float64 array of shape (n,)
    """
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.dtype != np.uint8 or imgs.shape[-1] != 3:
        raise InputError(f"Expected a uint8 image batch of shape (m, H, W, 3), got {imgs.dtype} {imgs.shape}.")
    j = np.asarray(first)
    i = np.asarray(second)
    if j.ndim != 1 or j.shape != i.shape or not (np.issubdtype(j.dtype, np.integer)
                                                 and np.issubdtype(i.dtype, np.integer)):
        raise InputError(f"Expected two int index arrays of shape (n,), got {j.dtype} {j.shape} and "
                         f"{i.dtype} {i.shape}.")
    if j.size and (min(j.min(), i.min()) < 0 or max(j.max(), i.max()) >= len(imgs)):
        raise InputError(f"Expected image indices in [0, {len(imgs) - 1}].")
    return score_images(imgs[j], imgs[i])


def lpips_distance(img_a: Any, img_b: Any, net: str = "alex") -> float:
    """LPIPS distance (Zhang et al. 2018), only when the optional ``lpips`` package and its
    backbone weights are available locally (nothing is downloaded).

    Parameters
    ----------
    img_a, img_b : uint8 array of shape (H, W, 3)
    net : {'alex', 'vgg', 'squeeze'}

    Returns
    -------
    float >= 0; 0 for identical images.

    Raises
    ------
    OfflineError
        If ``lpips`` is not installed or the backbone weights are not in the torch hub cache.
    """
    a, b = _check_pair(img_a, img_b)
    check_choice("LPIPS network", net, LPIPS_BACKBONE_WEIGHTS, error=InputError)
    try:
        import lpips  # optional dependency
    except ImportError:
        raise OfflineError(
            "LPIPS is unavailable: the optional 'lpips' package is not installed (pip install lpips)."
        ) from None
    import torch

    weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_WEIGHTS[net]
    if not weights.is_file():
        raise OfflineError(f"LPIPS is unavailable: backbone weights {weights} are not cached locally.")
    model = lpips.LPIPS(net=net, verbose=False).eval()

    def to_tensor(img: np.ndarray) -> Any:  # uint8 (H, W, 3) -> float (1, 3, H, W) in [-1, 1]
        return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]

    with torch.no_grad():
        return float(model(to_tensor(a), to_tensor(b)).item())


# --------------------------------------------------------------------------- reconstruction


def retrieve_images(pred: Any, gallery_embeddings: Any) -> np.ndarray:
    """Index of the gallery item whose embedding is nearest (cosine) each prediction.

    Parameters
    ----------
    pred : array of shape (n, d)
    gallery_embeddings : array of shape (m, d)

    Returns
    -------
    indices : int64 array of shape (n,)
        Exact ties go to the lowest gallery index (``numpy.argmax``), so the result is deterministic.
    """
    return np.argmax(cosine_similarity_matrix(pred, gallery_embeddings), axis=1).astype(np.int64)


@runtime_checkable
class ImageGenerator(Protocol):
    """Hook for anything that turns predicted embeddings into images.

    The default is :class:`RetrievalGenerator`. A generative decoder (e.g. an unCLIP diffusion
    model) implements the same method and is scored by :func:`score_images` unchanged.
    """

    def generate(self, pred_embeddings: np.ndarray) -> np.ndarray:
        """Map predictions of shape (n, d) to uint8 RGB images of shape (n, H, W, 3)."""
        ...


class RetrievalGenerator:
    """Reconstruction by retrieval: return the gallery image nearest each prediction.

    Parameters
    ----------
    gallery_embeddings : array of shape (m, d)
        Embeddings of the candidate images.
    gallery_images : uint8 array of shape (m, H, W, 3)
        The candidate images, same order.
    """

    def __init__(self, gallery_embeddings: Any, gallery_images: Any) -> None:
        self.gallery_embeddings = gallery_embeddings
        self.gallery_images = gallery_images

    def generate(self, pred_embeddings: np.ndarray) -> np.ndarray:
        """Images of shape (n, H, W, 3): ``gallery_images[retrieve_images(pred, gallery)]``."""
        images = np.asarray(self.gallery_images)
        emb = np.asarray(self.gallery_embeddings)
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] != emb.shape[0]:
            raise InputError(
                f"Expected gallery_images as uint8 (m, H, W, 3) with m = {emb.shape[0]} gallery embeddings, "
                f"got {images.dtype} {images.shape}."
            )
        return images[retrieve_images(pred_embeddings, emb)]
