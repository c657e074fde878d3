"""Which index rows each stage uses. The one place that encodes the benchmark's data rules.

* Decoders train on NSD perception trials of the ``train`` split, stop early on ``val``;
  they never see shared1000 (``test``) nor any NSD-Imagery trial unless trained ``mixed``.
* Test sets (docs/contracts.md section 6):

  - ``shared1000``: NSD perception trials of the shared images (the field's standard test);
  - ``imagery_vision``: NSD-Imagery *vision* trials of the 18 stimuli (the matched perception reference);
  - ``imagery``: NSD-Imagery *imagery* trials of the same stimuli (cross-domain).
* Mixed training, adapters and fine-tuning use imagery trials of the training folds only; the
  held-out fold's stimuli are never seen (stimulus-disjoint folds come from the index).

Mixed training (H2): NSD perception ``train`` trials plus the NSD-Imagery *imagery* trials of every
fold except the hold-out, weighted by ``imagery_weight``; early stopping on the ``val`` split plus
the mean trial of a held-out ``imagery_val_fraction`` of the training folds' imagery stimuli.
Adapters (H3): imagery trials (condition adapters: also vision trials) of the other folds, a
seeded ``imagery_fraction`` of each stimulus' trials, early stopping on a seeded
``val_stimulus_fraction`` of those stimuli held out whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.config import check_choice
from fmri2img.core.errors import ConfigError, InputError
from fmri2img.core.vocab import TEST_SETS
from fmri2img.data.betas import load_betas


def _nonempty(mask: np.ndarray, what: str, index_name: str = "the index") -> np.ndarray:
    if not mask.any():
        raise InputError(f"No trials for {what} in {index_name}; expected at least one (empty split).")
    return mask


def nsd_split_rows(index: pd.DataFrame, split: str, *, required: bool = True) -> np.ndarray:
    """Boolean mask of NSD perception trials of ``split`` (``train`` / ``val`` / ``test``)."""
    mask = np.array(
        (index["dataset"] == "nsd") & (index["condition"] == "perception") & (index["split"] == split), dtype=bool
    )
    return _nonempty(mask, f"NSD split {split!r}") if required else mask


def imagery_rows(
    index: pd.DataFrame, condition: str, folds: Iterable[int] | None = None, *, required: bool = True
) -> np.ndarray:
    """Boolean mask of NSD-Imagery trials of ``condition`` (``imagery`` / ``perception``),
    optionally restricted to stimulus ``folds``."""
    mask = np.array((index["dataset"] == "nsdimagery") & (index["condition"] == condition), dtype=bool)
    if folds is not None:
        mask = mask & np.array(index["fold"].isin(list(folds)), dtype=bool)
    return _nonempty(mask, f"NSD-Imagery {condition} trials (folds {folds})") if required else mask


def test_set_rows(index: pd.DataFrame, test_set: str, folds: Iterable[int] | None = None) -> np.ndarray:
    """Boolean mask of the rows of ``test_set`` (see :data:`TEST_SETS`)."""
    check_choice("test set", test_set, TEST_SETS, error=InputError)
    if test_set == "shared1000":
        return nsd_split_rows(index, "test")
    return imagery_rows(index, "perception" if test_set == "imagery_vision" else "imagery", folds)


def imagery_folds(index: pd.DataFrame) -> list[int]:
    """Sorted fold numbers of the NSD-Imagery stimuli in ``index``."""
    folds = index.loc[index["dataset"] == "nsdimagery", "fold"].dropna().astype(int).unique()
    if len(folds) == 0:
        raise InputError("The index has no NSD-Imagery folds; build it with --dataset both or imagery.")
    return sorted(int(f) for f in folds)


def training_folds(index: pd.DataFrame, holdout_fold: int) -> list[int]:
    """All imagery folds except ``holdout_fold`` (which must exist)."""
    folds = imagery_folds(index)
    if holdout_fold not in folds:
        raise InputError(f"Unknown hold-out fold {holdout_fold}; the index has folds {folds}.")
    return [f for f in folds if f != holdout_fold]


def subsample_by_fraction(rows: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Keep a seeded ``fraction`` of the True entries of ``rows`` (at least one per group).

    Parameters
    ----------
    rows : bool array of shape (n_rows,)
    fraction : float in (0, 1]
    groups : array of shape (n_rows,), optional
        Stimulus ids: the fraction is taken within each stimulus so every training stimulus
        keeps at least one trial.
    """
    if not (0.0 < fraction <= 1.0):
        raise InputError(f"Invalid fraction={fraction!r}; expected a fraction in (0, 1].")
    rng = np.random.default_rng(seed)
    keep = np.zeros_like(rows)
    positions = np.flatnonzero(rows)
    if groups is None:
        n_keep = max(1, int(round(fraction * len(positions))))
        keep[np.sort(rng.choice(positions, size=n_keep, replace=False))] = True
        return keep
    for group in sorted(set(groups[positions])):
        members = positions[groups[positions] == group]
        n_keep = max(1, int(round(fraction * len(members))))
        keep[np.sort(rng.choice(members, size=n_keep, replace=False))] = True
    return keep


# ----------------------------------------------------------------------------- trials by stimulus

def average_by_stimulus(
    arr: Any, stimulus_ids: Sequence[Any] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Average the rows (repeats) that share a stimulus id.

    Parameters
    ----------
    arr : array of shape (n,) or (n, d)
        Per-trial values (e.g. per-trial scores, or embeddings).
    stimulus_ids : sequence of length n
        Stimulus id of each row (str or int).

    Returns
    -------
    averaged : array of shape (n_stimuli,) or (n_stimuli, d), float64
        Mean over the rows of each stimulus.
    unique_ids : array of shape (n_stimuli,)
        The stimulus ids, in order of **first appearance** in ``stimulus_ids`` (so the output
        order follows the input order and does not depend on how ids sort).
    """
    values = np.asarray(arr, dtype=np.float64)
    ids = np.asarray(stimulus_ids)
    if values.ndim not in (1, 2):
        raise InputError(f"Expected arr of shape (n,) or (n, d), got shape {values.shape}.")
    if ids.shape != (values.shape[0],):
        raise InputError(
            f"Expected {values.shape[0]} stimulus ids (one per row), got shape {ids.shape}."
        )
    sorted_ids, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # position in sorted_ids -> first-appearance rank
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse.ravel()]
    counts = np.bincount(group, minlength=order.size).astype(np.float64)
    sums = _ordered_group_sums(values, group, order.size)
    averaged = sums / (counts if values.ndim == 1 else counts[:, None])
    return averaged, sorted_ids[order]


def average_by_chunk(arr: Any, stimulus_ids: Sequence[Any] | np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Average consecutive chunks of ``chunk`` rows of each stimulus (rows in the given order; a last
    chunk shorter than ``chunk`` is dropped), so that scores of test sets with different repeat counts
    compare like with like: NSD-Imagery has 8 vision but 16 imagery trials per stimulus, and a mean
    over 16 trials scores higher than one over 8 for the same signal.

    Parameters
    ----------
    arr : array of shape (n, d)
    stimulus_ids : sequence of length n
    chunk : int >= 1

    Returns
    -------
    averaged : array of shape (n_chunks, d), float64
    chunk_ids : array of shape (n_chunks,), the stimulus of each chunk
    """
    values = np.asarray(arr, dtype=np.float64)
    ids = np.asarray(stimulus_ids)
    if chunk < 1 or values.ndim != 2 or ids.shape != (values.shape[0],):
        raise InputError(f"Expected arr (n, d), n stimulus ids and chunk >= 1; got shapes {values.shape}, "
                         f"{ids.shape} and chunk {chunk}.")
    means, chunk_ids = [], []
    for stimulus in average_by_stimulus(np.zeros(len(ids)), ids)[1]:
        rows = np.flatnonzero(ids == stimulus)
        for start in range(0, len(rows) - chunk + 1, chunk):
            means.append(values[rows[start:start + chunk]].mean(axis=0))
            chunk_ids.append(stimulus)
    return np.asarray(means).reshape(len(means), values.shape[1]), np.asarray(chunk_ids)


def _ordered_group_sums(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group sums of the rows of ``values`` (n,) or (n, d), ``group`` int (n,) in [0, n_groups).

    The sums ``np.add.at(zeros, group, values)`` makes (each group's rows added one after the
    other in input order, starting from 0.0), vectorised over groups: round r adds the r-th row
    of every group (distinct groups, so a plain indexed add).
    """
    sums = np.zeros((n_groups,) + values.shape[1:], dtype=np.float64)
    if values.shape[0] == 0:
        return sums
    order = np.argsort(group, kind="stable")  # rows grouped, input order within a group
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_group = np.empty(group.size, dtype=np.int64)
    rank_in_group[order] = np.arange(group.size) - np.repeat(starts, counts)
    for r in range(int(counts.max())):
        rows = np.flatnonzero(rank_in_group == r)
        sums[group[rows]] += values[rows]
    return sums


def stimulus_means(X: np.ndarray, Y: np.ndarray, rows: pd.DataFrame,
                   condition: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ``X`` and ``Y`` over the trials of each stimulus (and condition), in order of
    first appearance.

    Early stopping scores these means wherever evaluation does (evaluation scores each
    stimulus' mean prediction): a per-trial validation loss also rewards shrinking noisy
    trials towards the mean embedding, which does not help the evaluated score. For an affine
    adapter the mean of the adapted outputs equals the adapted mean.

    Parameters
    ----------
    X : array of shape (n_trials, p); Y : array of shape (n_trials, d)
    rows : DataFrame with a ``stimulus_id`` column, one row per trial
    condition : int array of shape (n_trials,), optional
        Trials of one stimulus under different conditions are averaged separately.

    Returns
    -------
    X_mean float32 (n_groups, p), Y_mean float32 (n_groups, d), condition int64 (n_groups,)
    """
    cond = np.zeros(len(rows), dtype=np.int64) if condition is None else np.asarray(condition, dtype=np.int64)
    keys = [f"{stimulus}|{c}" for stimulus, c in zip(rows["stimulus_id"].to_numpy(), cond)]
    Xm, groups = average_by_stimulus(X, keys)
    Ym, _ = average_by_stimulus(Y, keys)
    cond_of = dict(zip(keys, cond.tolist()))
    return (Xm.astype(np.float32), Ym.astype(np.float32),
            np.array([cond_of[g] for g in groups], dtype=np.int64))


# ----------------------------------------------------------------------------- design matrices

@dataclass
class Dataset:
    """Design matrices of one stage.

    X : float32 array of shape (n_trials, n_voxels)
    Y : float32 array of shape (n_trials, n_dims)
    rows : DataFrame of the n_trials index rows, in the order of X (or None)
    sample_weight : float32 array of shape (n_trials,) or None
    condition : int64 array of shape (n_trials,) or None (condition ids of condition adapters)
    """

    X: np.ndarray
    Y: np.ndarray
    rows: pd.DataFrame | None = None
    sample_weight: np.ndarray | None = None
    condition: np.ndarray | None = None


def load_rows(index: pd.DataFrame, mask: np.ndarray, cache_root: str | Path, embeddings, zscore: bool = True,
              memo=None) -> Dataset:
    """Betas and target embeddings (``embeddings.lookup``) of the rows of ``index`` selected by ``mask``."""
    rows = index.loc[mask]
    X = load_betas(index, cache_root, rows=np.flatnonzero(mask), zscore=zscore, memo=memo)
    Y = embeddings.lookup(rows["stimulus_id"].tolist())
    return Dataset(X=np.asarray(X, dtype=np.float32), Y=np.asarray(Y, dtype=np.float32), rows=rows)


def training_data(index: pd.DataFrame, cache_root: str | Path, embeddings, *, mixed: bool,
                  holdout_fold: int | None, imagery_weight: float, imagery_val_fraction: float, seed: int,
                  zscore: bool = True, memo=None) -> tuple[Dataset, Dataset]:
    """(train, val) datasets of a decoder (see the module docstring for the rules)."""
    train_mask = nsd_split_rows(index, "train")
    val = load_rows(index, nsd_split_rows(index, "val"), cache_root, embeddings, zscore, memo)
    train = load_rows(index, train_mask, cache_root, embeddings, zscore, memo)
    train.sample_weight = np.ones(len(train.X), dtype=np.float32)
    if not mixed:
        return train, val
    folds = training_folds(index, holdout_fold)
    imagery_mask = imagery_rows(index, "imagery", folds)
    val_mask = _imagery_val_rows(index, imagery_mask, imagery_val_fraction, seed, holdout_fold)
    imagery = load_rows(index, imagery_mask & ~val_mask, cache_root, embeddings, zscore, memo)
    if val_mask.any():
        # early stopping also scores imagery of stimuli the model does not train on: each
        # held-out stimulus' mean trial (as eval scores means), the imagery part weighted to
        # count as much as the perception validation trials together
        held = load_rows(index, val_mask, cache_root, embeddings, zscore, memo)
        Xm, Ym, _ = stimulus_means(held.X, held.Y, held.rows)
        n_perception = len(val.X)
        val = Dataset(
            X=np.concatenate([val.X, Xm]), Y=np.concatenate([val.Y, Ym]),
            rows=pd.concat([val.rows, held.rows.drop_duplicates("stimulus_id")]),
            sample_weight=np.concatenate([np.ones(n_perception, dtype=np.float32),
                                          np.full(len(Xm), n_perception / len(Xm), dtype=np.float32)]),
        )
    train = Dataset(
        X=np.concatenate([train.X, imagery.X]),
        Y=np.concatenate([train.Y, imagery.Y]),
        rows=pd.concat([train.rows, imagery.rows]),
        sample_weight=np.concatenate(
            [train.sample_weight, np.full(len(imagery.X), imagery_weight, dtype=np.float32)]
        ),
    )
    return train, val


def _imagery_val_rows(index: pd.DataFrame, imagery_mask: np.ndarray, fraction: float, seed: int,
                      holdout_fold: int) -> np.ndarray:
    """Rows of a seeded ``fraction`` of the imagery stimuli in ``imagery_mask``."""
    ids = index["stimulus_id"].to_numpy()
    stimuli = np.unique(ids[imagery_mask])
    n_val = int(round(fraction * len(stimuli)))
    if n_val == 0:
        return np.zeros(len(index), dtype=bool)
    if n_val >= len(stimuli):
        raise ConfigError(f"imagery_val_fraction={fraction} holds out all {len(stimuli)} "
                          "training-fold imagery stimuli; expected a value that leaves at least one to train on.")
    rng = np.random.default_rng([seed, int(holdout_fold)])
    chosen = rng.choice(stimuli, size=n_val, replace=False)
    return imagery_mask & np.isin(ids, chosen)


def adapter_fold_rows(index: pd.DataFrame, fold: int, *, with_vision: bool, imagery_fraction: float,
                      val_stimulus_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train_mask, val_mask, validation stimulus ids) of the adapters of hold-out ``fold``: imagery
    (and, ``with_vision``, vision) rows of the other folds (see the module docstring)."""
    train_folds = training_folds(index, fold)
    ids = index["stimulus_id"].to_numpy()
    conditions = ["imagery", "perception"] if with_vision else ["imagery"]
    pool = np.zeros(len(index), dtype=bool)
    for condition in conditions:
        pool |= imagery_rows(index, condition, train_folds)
    stimuli = np.unique(ids[pool])
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_stimulus_fraction * len(stimuli))))
    if n_val >= len(stimuli):
        raise ConfigError(f"Too few training stimuli ({len(stimuli)}) to hold out {n_val} for early stopping.")
    val_stimuli = set(rng.choice(stimuli, size=n_val, replace=False).tolist())
    is_val = np.isin(ids, list(val_stimuli))
    train = subsample_by_fraction(pool & ~is_val, imagery_fraction, seed, groups=ids)
    val = pool & is_val
    return train, val, sorted(val_stimuli)
