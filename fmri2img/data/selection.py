"""Which index rows each stage uses. The one place that encodes the benchmark's data rules.

* Decoders train on NSD perception trials of the ``train`` split, stop early on ``val``;
  they never see shared1000 (``test``) nor any NSD-Imagery trial unless trained ``mixed``.
* Test sets (docs/contracts.md section 6):

  - ``shared1000``: NSD perception trials of the shared images (the field's standard test);
  - ``imagery_vision``: NSD-Imagery *vision* trials of the 18 stimuli (the matched perception reference);
  - ``imagery``: NSD-Imagery *imagery* trials of the same stimuli (cross-domain).
* Mixed training, adapters and fine-tuning use imagery trials of the training folds only; the
  held-out fold's stimuli are never seen (stimulus-disjoint folds come from the index).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from fmri2img.errors import InputError

TEST_SETS = ("shared1000", "imagery_vision", "imagery")

#: ``--mode`` of ``eval`` -> test sets scored.
MODE_TEST_SETS = {
    "perception": ("shared1000", "imagery_vision"),
    "imagery": ("imagery_vision", "imagery"),
    "both": TEST_SETS,
}


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
    if test_set == "shared1000":
        return nsd_split_rows(index, "test")
    if test_set == "imagery_vision":
        return imagery_rows(index, "perception", folds)
    if test_set == "imagery":
        return imagery_rows(index, "imagery", folds)
    raise InputError(f"Unknown test set {test_set!r}. Choose one of {', '.join(map(repr, TEST_SETS))}.")


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
