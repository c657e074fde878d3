"""Embedding-space metrics: cosine, retrieval@K, two-way identification, baselines.

Pure numpy functions, no I/O. All arithmetic is done in float64 whatever the input dtype, so
results are identical across runs on the same inputs.

Conventions
-----------
- ``pred`` are decoded embeddings, ``true`` their targets, one row per trial (or per stimulus
  after :func:`fmri2img.data.trials.average_by_stimulus`), ``gallery`` the candidate set for retrieval.
- Ties are always resolved *against* the prediction (conservative): a gallery item that is
  exactly as similar as the target counts as ranked above it, and in two-way identification an
  exact tie counts as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fmri2img.core.constants import RETRIEVAL_KS
from fmri2img.core.errors import InputError

#: Chance level of two-way identification: one of two candidates (Kay et al. 2008; the
#: NSD-Imagery and Brain-Diffuser papers report it as 50 %).
TWO_WAY_CHANCE = 0.5


class TwoWayResult(NamedTuple):
    """Result of :func:`two_way_identification` (unpacks as ``per_item, mean``)."""

    #: array of shape (n,): per item, the fraction of the other ``n - 1`` targets it beats.
    per_item: np.ndarray
    #: mean of ``per_item``.
    mean: float


# --------------------------------------------------------------------------- validation


def _as_2d(arr: Any, name: str) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"Expected {name} of shape (n, d), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"Expected finite values in {name}, got NaN or inf.")
    return arr


def _pair(pred: Any, true: Any, true_name: str = "true") -> tuple[np.ndarray, np.ndarray]:
    pred = _as_2d(pred, "pred")
    true = _as_2d(true, true_name)
    if pred.shape != true.shape:
        raise InputError(
            f"Expected pred and {true_name} of the same shape, got {pred.shape} and {true.shape}."
        )
    return pred, true


def _unit_rows(arr: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise InputError(
            f"Cosine similarity is undefined for zero vectors: row {int(zero[0])} of {name} "
            "is all zeros."
        )
    return arr / norms


def _zscore_rows(arr: np.ndarray, name: str) -> np.ndarray:
    centred = arr - arr.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    const = np.flatnonzero(norms[:, 0] == 0)
    if const.size:
        raise InputError(
            f"Pearson correlation is undefined for constant vectors: row {int(const[0])} of {name} "
            "is constant."
        )
    return centred / norms


def check_target_index(target_index: Any, n: int, m: int) -> np.ndarray:
    """``target_index`` as int64 (n,) with values in [0, m)."""
    idx = np.asarray(target_index)
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(
            f"Expected target_index of {n} integers (one per prediction), got dtype {idx.dtype} "
            f"shape {idx.shape}."
        )
    if n and (idx.min() < 0 or idx.max() >= m):
        raise InputError(
            f"Expected target_index in [0, {m - 1}] (gallery of {m} items), got values in "
            f"[{int(idx.min())}, {int(idx.max())}]."
        )
    return idx.astype(np.int64)


# --------------------------------------------------------------------------- metrics


def cosine_similarity(pred: Any, true: Any) -> np.ndarray:
    """Cosine similarity of each prediction with its own target.

    Parameters
    ----------
    pred : array of shape (n, d)
        Predicted embeddings.
    true : array of shape (n, d)
        Target embeddings, row ``i`` is the target of ``pred[i]``.

    Returns
    -------
    cos : array of shape (n,), float64
        ``cos[i] = <pred_i, true_i> / (|pred_i| |true_i|)``.

    Raises
    ------
    InputError
        On shape mismatch, non-finite values or an all-zero row.
    """
    pred, true = _pair(pred, true)
    return np.einsum("ij,ij->i", _unit_rows(pred, "pred"), _unit_rows(true, "true"))


def cosine_similarity_matrix(pred: Any, gallery: Any) -> np.ndarray:
    """Cosine similarity of every prediction with every gallery item.

    Parameters
    ----------
    pred : array of shape (n, d)
    gallery : array of shape (m, d)

    Returns
    -------
    sim : array of shape (n, m), float64
    """
    pred = _as_2d(pred, "pred")
    gallery = _as_2d(gallery, "gallery")
    if pred.shape[1] != gallery.shape[1]:
        raise InputError(
            f"Expected pred and gallery of the same dimension, got {pred.shape[1]} and "
            f"{gallery.shape[1]}."
        )
    return _unit_rows(pred, "pred") @ _unit_rows(gallery, "gallery").T


def retrieval_ranks(pred: Any, gallery: Any, target_index: Any) -> np.ndarray:
    """Rank of each prediction's target in the gallery, ranked by cosine similarity.

    Tie rule (conservative): ``rank_i = #{j : sim(pred_i, gallery_j) >= sim(pred_i, gallery_t)}``
    with ``t = target_index[i]``, i.e. 1 + the number of *other* gallery items at least as
    similar as the target. Exact ties (e.g. duplicate gallery embeddings) thus count against
    the prediction; a constant prediction cannot score above chance by exploiting ties.

    Parameters
    ----------
    pred : array of shape (n, d)
        Predicted embeddings.
    gallery : array of shape (m, d)
        Candidate embeddings.
    target_index : int array of shape (n,)
        Row of ``gallery`` that is the true stimulus of each prediction.

    Returns
    -------
    ranks : int64 array of shape (n,)
        1-based ranks in ``[1, m]``; rank 1 means the target is strictly the most similar.
    """
    sim = cosine_similarity_matrix(pred, gallery)
    idx = check_target_index(target_index, *sim.shape)
    target_sim = sim[np.arange(sim.shape[0]), idx]
    return (sim >= target_sim[:, None]).sum(axis=1).astype(np.int64)


def retrieval_at_k(
    pred: Any, gallery: Any, target_index: Any, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[int, np.ndarray | None]:
    """Top-K retrieval hits of each prediction among a gallery.

    Parameters
    ----------
    pred : array of shape (n, d)
    gallery : array of shape (m, d)
    target_index : int array of shape (n,)
        Row of ``gallery`` holding the true stimulus of each prediction.
    ks : sequence of int
        Cut-offs, default :data:`fmri2img.core.constants.RETRIEVAL_KS`.

    Returns
    -------
    hits : dict int -> bool array of shape (n,) or None
        ``hits[k][i]`` is True when ``retrieval_ranks(...)[i] <= k`` (see its tie rule);
        ``None`` when ``k > m`` (not applicable: the gallery is smaller than K).
    """
    ranks = retrieval_ranks(pred, gallery, target_index)
    m = np.asarray(gallery).shape[0]
    out: dict[int, np.ndarray | None] = {}
    for k in ks:
        k = int(k)
        if k < 1:
            raise InputError(f"Expected retrieval cut-offs K >= 1, got {k}.")
        out[k] = None if k > m else ranks <= k
    return out


def chance_level(k: int, m: int) -> float | None:
    """Chance level of retrieval@K in a gallery of ``m`` items: ``k / m``.

    Returns ``None`` when ``k > m`` (retrieval@K not applicable).
    """
    if m < 1 or k < 1:
        raise InputError(f"Expected K >= 1 and a gallery of at least 1 item, got K={k}, m={m}.")
    return None if k > m else k / m


def correlation_matrix(pred: Any, true: Any) -> np.ndarray:
    """Pearson correlation of every prediction with every target.

    Parameters
    ----------
    pred : array of shape (n, d)
    true : array of shape (m, d)

    Returns
    -------
    corr : array of shape (n, m), float64
        ``corr[i, j] = pearson(pred_i, true_j)`` across the d embedding dimensions.
    """
    pred = _as_2d(pred, "pred")
    true = _as_2d(true, "true")
    if pred.shape[1] != true.shape[1]:
        raise InputError(
            f"Expected pred and true of the same dimension, got {pred.shape[1]} and {true.shape[1]}."
        )
    return _zscore_rows(pred, "pred") @ _zscore_rows(true, "true").T


def two_way_identification(pred: Any, true: Any) -> TwoWayResult:
    """Two-way identification accuracy (Pearson correlation, the field's standard).

    For each prediction ``i`` and every other item ``j != i``, a trial succeeds when
    ``corr(pred_i, true_i) > corr(pred_i, true_j)`` (strictly: ties fail). This is the
    formulation of Ozcelik & VanRullen (2023, Brain-Diffuser) and the NSD-Imagery paper
    (Kneeland et al. 2025); chance is :data:`TWO_WAY_CHANCE`.

    Parameters
    ----------
    pred : array of shape (n, d)
        Predicted embeddings, n >= 2 (one per stimulus: average repeats first).
    true : array of shape (n, d)
        Target embeddings of the same n stimuli, same order.

    Returns
    -------
    TwoWayResult
        ``per_item`` array of shape (n,): fraction of the n - 1 comparisons won by item i;
        ``mean``: its mean (the reported two-way accuracy).
    """
    pred, true = _pair(pred, true)
    n = pred.shape[0]
    if n < 2:
        raise InputError(f"Two-way identification needs at least 2 items, got {n}.")
    corr = correlation_matrix(pred, true)
    own = np.diag(corr)
    wins = (own[:, None] > corr).sum(axis=1)  # the diagonal never beats itself
    per_item = wins / (n - 1)
    return TwoWayResult(per_item=per_item, mean=float(per_item.mean()))


# --------------------------------------------------------------------------- baselines


def random_unit_embeddings(n: int, d: int, seed: int) -> np.ndarray:
    """Lower-bound baseline: i.i.d. isotropic Gaussian directions, L2-normalised.

    Parameters
    ----------
    n, d : int
        Number of rows and dimension.
    seed : int
        Seed of ``numpy.random.default_rng``; same seed, same bytes.

    Returns
    -------
    Y : float32 array of shape (n, d), unit rows.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def mean_embedding_prediction(Y_train: Any, n: int) -> np.ndarray:
    """Constant-predictor baseline: the mean training embedding, repeated ``n`` times.

    CLIP embeddings share a large common direction, so this guess already scores a high
    cosine; every cosine should be reported beside it. (Its retrieval and two-way scores
    are at or below chance by the conservative tie rules.)

    Parameters
    ----------
    Y_train : array of shape (n_train, d)
        Training targets.
    n : int
        Number of predictions to make.

    Returns
    -------
    Y : float32 array of shape (n, d), every row the (unnormalised) training mean.
    """
    Y_train = _as_2d(Y_train, "Y_train")
    if Y_train.shape[0] == 0:
        raise InputError("Expected at least one training embedding, got 0 rows.")
    return np.tile(Y_train.mean(axis=0), (n, 1)).astype(np.float32)


# --------------------------------------------------------------------------- all at once


def score_predictions(
    pred: Any,
    true: Any,
    gallery: Any,
    target_index: Any,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, Any]:
    """Every embedding metric for one set of predictions.

    Parameters
    ----------
    pred : array of shape (n, d)
        Predictions, one per row (per stimulus if repeats were averaged).
    true : array of shape (n, d)
        Targets of the same rows.
    gallery : array of shape (m, d)
        Retrieval candidates.
    target_index : int array of shape (n,)
        Row of ``gallery`` that is each prediction's true stimulus.
    ks : sequence of int

    Returns
    -------
    dict with keys
        ``n``, ``gallery_size``; scalar metrics ``cosine``, ``two_way`` (None when n < 2),
        ``retrieval_at_{k}`` (hit rate, None when K > m); ``chance``: metric name -> chance
        level (``two_way`` 0.5, ``retrieval_at_{k}`` K/m or None); ``per_item``: metric
        name -> array of shape (n,) (cosine, two_way, retrieval_at_{k} as float 0/1), the
        inputs of the bootstrap and permutation statistics.
    """
    pred, true = _pair(pred, true)
    m = _as_2d(gallery, "gallery").shape[0]
    n = pred.shape[0]
    cos = cosine_similarity(pred, true)
    out: dict[str, Any] = {"n": n, "gallery_size": m, "cosine": float(cos.mean()) if n else None}
    chance: dict[str, float | None] = {}
    per_item: dict[str, np.ndarray] = {"cosine": cos}
    if n >= 2:
        tw = two_way_identification(pred, true)
        out["two_way"] = tw.mean
        per_item["two_way"] = tw.per_item
    else:
        out["two_way"] = None
    chance["two_way"] = TWO_WAY_CHANCE
    for k, hits in retrieval_at_k(pred, gallery, target_index, ks).items():
        name = f"retrieval_at_{k}"
        chance[name] = chance_level(k, m)
        if hits is None:
            out[name] = None
        else:
            out[name] = float(hits.mean()) if n else None
            per_item[name] = hits.astype(np.float64)
    out["chance"] = chance
    out["per_item"] = per_item
    return out
