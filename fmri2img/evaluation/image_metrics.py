"""Secondary image metrics (SSIM, pixel MSE, PixCorr, optional LPIPS) and reconstruction by retrieval.

Images are uint8 RGB arrays of shape (H, W, 3) (batches: (n, H, W, 3)). Reconstruction by
retrieval, the gallery image whose embedding is nearest the prediction, is the honest baseline
every generative decoder must beat; a generator plugs in through :class:`ImageGenerator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.ndimage import uniform_filter

from fmri2img.core.errors import InputError, OfflineError
from fmri2img.core.memo import Memo, digest
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
    """Structural similarity of two RGB images, as ``skimage.metrics.structural_similarity``.

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
    return float(_ssim_batch(a[None], b[None])[0])


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


#: Images scored at a time by :func:`score_images` (bounds its float64 temporaries: five filtered
#: copies of a chunk, 256 x 64 x 64 x 3 x 8 B = 25 MB each at the synthetic image size).
SCORE_CHUNK = 256

#: skimage's SSIM constants (Wang et al. 2004): C1 = (K1 R)^2, C2 = (K2 R)^2.
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _ssim_window(shape: tuple[int, ...]) -> int:
    """SSIM window side for images of shape (n, H, W, 3) (:data:`SSIM_WIN_SIZE` or the largest odd fit)."""
    side = min(shape[1], shape[2])
    if side < 3:
        raise InputError(f"SSIM needs images of at least 3 x 3 pixels, got {tuple(shape[1:3])}.")
    return min(SSIM_WIN_SIZE, side if side % 2 else side - 1)


def _box(x: np.ndarray, win: int) -> np.ndarray:
    """Uniform (box) filter of side ``win`` over the two image axes of (n, H, W, 3) (reflect borders)."""
    return uniform_filter(x, size=(1, win, win, 1))


def _ssim_moments(x: np.ndarray, win: int) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and sample variance of float64 images (n, H, W, 3), each of that shape.

    Filtering is line by line, so an image's moments do not depend on the batch it is in.
    """
    n_px = win * win
    cov_norm = n_px / (n_px - 1.0)
    mu = _box(x, win)
    return mu, cov_norm * (_box(x * x, win) - mu * mu)


def _ssim_from_moments(a: np.ndarray, b: np.ndarray, ux: np.ndarray, uy: np.ndarray, vx: np.ndarray,
                       vy: np.ndarray, win: int) -> np.ndarray:
    """SSIM of each pair of float64 image batches (n, H, W, 3) given their :func:`_ssim_moments` -> (n,)."""
    n_px = win * win
    cov_norm = n_px / (n_px - 1.0)
    vxy = cov_norm * (_box(a * b, win) - ux * uy)
    c1, c2 = (SSIM_K1 * UINT8_RANGE) ** 2, (SSIM_K2 * UINT8_RANGE) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    inner = s_map[:, pad:s_map.shape[1] - pad, pad:s_map.shape[2] - pad, :]
    return inner.mean(axis=(1, 2)).mean(axis=1)


def _ssim_batch(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """SSIM of each pair of two uint8 batches (n, H, W, 3) -> float64 (n,).

    skimage's computation (uniform window, sample covariance, ``data_range=255``, borders of
    half a window cropped, mean over channels) on a whole batch per filter call instead of one
    image and channel at a time (tested against skimage to 1e-12).
    """
    win = _ssim_window(pred.shape)
    a = pred.astype(np.float64)
    b = true.astype(np.float64)
    ux, vx = _ssim_moments(a, win)
    uy, vy = _ssim_moments(b, win)
    return _ssim_from_moments(a, b, ux, uy, vx, vy, win)


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

    Vectorised over the batch, in chunks of :data:`SCORE_CHUNK` (the pairwise functions
    :func:`ssim`, :func:`pixcorr` and :func:`pixel_mse` are the same code on a batch of one).

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
    out: dict[str, list[np.ndarray]] = {"ssim": [], "pixcorr": [], "pixel_mse": []}
    for start in range(0, pred.shape[0], SCORE_CHUNK):
        p, t = pred[start:start + SCORE_CHUNK], true[start:start + SCORE_CHUNK]
        out["ssim"].append(_ssim_batch(p, t))
        for name, values in _pixel_scores(p, t).items():
            out[name].append(values)
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}


#: Pairs scored at a time by :func:`score_image_pairs` (small enough for the temporaries of a
#: chunk of 64 x 64 images to stay in cache; results do not depend on it).
PAIR_CHUNK = 16


class _ImageSetStats:
    """Per-image statistics of one image set (m, H, W, 3) for :func:`score_image_pairs`.

    ``pixels`` float64 (m, H, W, 3); ``mu``, ``var``: SSIM moments (same shape); ``centred``:
    mean-free pixel rows (m, H*W*3) and ``sq`` their squared norms (m,); ``pairs``: scores of
    pairs already computed, (first, second) -> (ssim, pixcorr, pixel_mse).
    """

    def __init__(self, images: np.ndarray) -> None:
        self.win = _ssim_window(images.shape)
        self.pixels = images.astype(np.float64)
        self.mu, self.var = _ssim_moments(self.pixels, self.win)
        flat = self.pixels.reshape(len(images), -1)
        self.centred = flat - flat.mean(axis=1, keepdims=True)
        self.sq = np.einsum("ij,ij->i", self.centred, self.centred)
        self.pairs: dict[tuple[int, int], tuple[float, float, float]] = {}

    def score(self, first: np.ndarray, second: np.ndarray) -> None:
        """Score the pairs (first[k], second[k]) (int arrays of shape (p,)) into :attr:`pairs`.

        Pairs are scored in batches of at least 2 (a lone pair is scored twice): numpy's einsum
        sums a batch of one row in another order than a row of a larger batch, and
        :func:`score_images` scores its batches of n >= 2 pairs.
        """
        for start in range(0, len(first), PAIR_CHUNK):
            j, i = first[start:start + PAIR_CHUNK], second[start:start + PAIR_CHUNK]
            if len(j) == 1:
                j, i = np.repeat(j, 2), np.repeat(i, 2)
            a, b = self.pixels[j], self.pixels[i]
            ssim_v = _ssim_from_moments(a, b, self.mu[j], self.mu[i], self.var[j], self.var[i], self.win)
            x, y = a.reshape(len(j), -1), b.reshape(len(i), -1)
            mse = np.mean(((x - y) / UINT8_RANGE) ** 2, axis=1)
            corr = _pixcorr(self.centred[j], self.centred[i], self.sq[j], self.sq[i])
            for jj, ii, s_, c_, m_ in zip(j.tolist(), i.tolist(), ssim_v, corr, mse):
                self.pairs[(jj, ii)] = (float(s_), float(c_), float(m_))


#: Image sets whose :class:`_ImageSetStats` a memo keeps (by content hash): the test-set images are
#: the same in every cell of a subject, and so are most retrieved pairs.
IMAGE_SET_MEMO_SIZE = 4

#: Largest image set (uint8 bytes) given :class:`_ImageSetStats`: they hold four float64 copies
#: (32 x the uint8 bytes, 128 MB here). Larger sets are scored by :func:`score_images` in chunks.
IMAGE_SET_MAX_BYTES = 4 * 2**20


def score_image_pairs(images: Any, first: Any, second: Any, memo: Memo | None = None) -> dict[str, np.ndarray]:
    """``score_images(images[first], images[second])``, computed once per distinct pair.

    For reconstruction by retrieval among a set's own images (``first``: the retrieved image of
    each stimulus, ``second``: its true image). Per-image statistics (SSIM local moments, centred
    pixels) are computed once per image set and pair scores once per pair, both kept in ``memo``
    when given (same numbers as :func:`score_images`: every statistic is computed image by image).

    Parameters
    ----------
    images : uint8 array of shape (m, H, W, 3)
    first, second : int arrays of shape (n,), values in [0, m)

    Returns
    -------
    dict ``ssim``, ``pixcorr``, ``pixel_mse`` -> float64 array of shape (n,)
    """
    imgs = np.ascontiguousarray(images)
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
    if j.size % SCORE_CHUNK == 1 or len(imgs) < 2 or imgs.nbytes > IMAGE_SET_MAX_BYTES:
        # a batch of one (einsum sums a single row in another order) or a set too large to keep
        return score_images(imgs[j], imgs[i])
    if j.size == 0:
        return {"ssim": np.empty(0), "pixcorr": np.empty(0), "pixel_mse": np.empty(0)}
    stats = (_ImageSetStats(imgs) if memo is None else
             memo.get("image_sets", digest(imgs), lambda: _ImageSetStats(imgs), limit=IMAGE_SET_MEMO_SIZE))
    wanted = list(zip(j.tolist(), i.tolist()))
    todo = sorted(set(wanted) - stats.pairs.keys())
    if todo:
        stats.score(np.array([p[0] for p in todo]), np.array([p[1] for p in todo]))
    table = np.array([stats.pairs[p] for p in wanted], dtype=np.float64)
    return {"ssim": table[:, 0], "pixcorr": table[:, 1], "pixel_mse": table[:, 2]}


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
    if net not in LPIPS_BACKBONE_WEIGHTS:
        choices = ", ".join(map(repr, LPIPS_BACKBONE_WEIGHTS))
        raise InputError(f"Unknown LPIPS network {net!r}. Choose one of {choices}.")
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
