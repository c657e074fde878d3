"""The research track's group statistics, computed from per-stimulus scores of many subjects.

Input: one long table of per-stimulus scores (the ``per_stimulus.csv`` of every evaluated
cell), columns ``subject, decoder, configuration, test_set, stimulus_id, stimulus_type,
cosine, cosine_mean_embedding_baseline``; on imagery and its matched perception ``cosine`` is
the trial-count-matched ``cosine_matched`` (:mod:`fmri2img.evaluation.scoring`). Every effect is measured **above the mean-embedding
baseline** (``cosine - cosine_mean_embedding_baseline``, the score a constant guess already
reaches) and every statistic is a mean, a difference or a ratio of means over a
subjects x stimuli table, so each gets the two intervals of :mod:`fmri2img.evaluation.intervals`
(``population``: new subjects and new stimuli; ``stimuli``: these stimuli, new subjects).

Statistics (per decoder):

* ``h1_ratio``: imagery / matched perception (NSD-Imagery vision trials of the same stimuli),
  perception-only decoder. Tested against 1 (a transfer deficit) and 0 (some transfer).
* ``h2_specific_gain``: mixed training's gain on imagery minus its gain on matched perception
  (cosine units). Tested against 0: the gain that is specific to imagery; extra training data
  alone moves both test sets alike, so this is 0 when imagery is distributed like perception.
* ``h2_imagery_gain`` / ``h2_perception_drop``: the roadmap's relative changes (imagery test set;
  NSD shared1000).
* ``h3_specific_gain``, ``h3_imagery_gain``: the same for the adapter chosen on validation data.
* ``h3_vs_finetune``: the chosen adapter's imagery score as a fraction of full fine-tuning's.

Mixed training and the adapters fit one model per imagery fold, and a fold's model scores all of that
fold's stimuli: their scores share the model's chance variation. When the scores carry a ``fold``
column, the statistics of those configurations (gains, relative imagery gains, the adapter's ratio to
fine-tuning) take their intervals from the subjects x folds table of fold means (folds are random
groupings of stimuli, so the crossed decomposition stays valid, with folds as its items); stimuli without
a fold (NSD shared1000) stay items of their own. H1 (one perception-only model) uses stimuli.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fmri2img.core.errors import InputError
from fmri2img.evaluation.intervals import (
    ESTIMANDS,
    Interval,
    mean_interval,
    ratio_difference_interval,
    ratio_interval,
)

#: Stimulus types scored together as "all" (conceptual stimuli have no image: reported apart).
IMAGE_TYPES = ("natural", "simple", "complex")

SCORE_COLUMNS = ("subject", "decoder", "configuration", "test_set", "stimulus_id", "stimulus_type",
                 "cosine", "cosine_mean_embedding_baseline")
#: Optional column: the imagery fold of a stimulus (its per-fold models' unit of variation).
FOLD_COLUMN = "fold"


def above_baseline_table(scores: pd.DataFrame, decoder: str, configuration: str, test_set: str,
                         stimulus_types: Sequence[str] = IMAGE_TYPES) -> pd.DataFrame:
    """Cosine above the mean-embedding baseline, subjects x stimuli (rows and columns sorted).

    Only stimuli scored for every subject are kept (NSD subjects who did not finish all sessions
    lack some shared1000 repeats). Raises :class:`InputError` when nothing is left.
    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(f"Per-stimulus scores lack column {missing[0]!r}; expected {', '.join(SCORE_COLUMNS)}.")
    sel = scores[(scores["decoder"] == decoder) & (scores["configuration"] == configuration)
                 & (scores["test_set"] == test_set) & scores["stimulus_type"].isin(stimulus_types)]
    if sel.empty:
        raise InputError(f"No per-stimulus scores for {decoder}/{configuration} on {test_set}.")
    values = sel.assign(above=sel["cosine"] - sel["cosine_mean_embedding_baseline"])
    table = values.pivot_table(index="subject", columns="stimulus_id", values="above", aggfunc="first")
    return table.dropna(axis=1).sort_index().sort_index(axis=1)


def _common(*tables: pd.DataFrame) -> list[pd.DataFrame]:
    """The tables restricted to their common subjects and stimuli (before any averaging over folds)."""
    subjects = sorted(set.intersection(*(set(t.index) for t in tables)))
    stimuli = sorted(set.intersection(*(set(t.columns) for t in tables)))
    if not subjects or not stimuli:
        raise InputError("The compared configurations share no subject or no stimulus.")
    return [t.loc[subjects, stimuli] for t in tables]


def _aligned(*tables: pd.DataFrame) -> list[np.ndarray]:
    """The tables restricted to their common subjects and stimuli, as arrays."""
    subjects = sorted(set.intersection(*(set(t.index) for t in tables)))
    stimuli = sorted(set.intersection(*(set(t.columns) for t in tables)))
    if not subjects or not stimuli:
        raise InputError("The compared configurations share no subject or no stimulus.")
    return [t.loc[subjects, stimuli].to_numpy(dtype=np.float64) for t in tables]


def fold_means(scores: pd.DataFrame, *tables: pd.DataFrame) -> list[pd.DataFrame]:
    """Each subjects x stimuli table as subjects x folds (the mean of each fold's stimuli) when ``scores``
    has a fold for them (:data:`FOLD_COLUMN`); stimuli without a fold stay columns of their own."""
    if FOLD_COLUMN not in scores.columns:
        return list(tables)
    known = scores.dropna(subset=[FOLD_COLUMN]).drop_duplicates("stimulus_id")
    folds = {s: f"fold{int(f)}" for s, f in zip(known["stimulus_id"], known[FOLD_COLUMN])}
    return [t.T.groupby([folds.get(s, s) for s in t.columns], sort=True).mean().T for t in tables]


def _both(fn, *args, **kwargs) -> dict[str, Interval]:
    return {estimand: fn(*args, estimand=estimand, **kwargs) for estimand in ESTIMANDS}


def h1_ratio(scores: pd.DataFrame, decoder: str) -> dict[str, Interval]:
    """Imagery / matched perception, above baseline, perception-only decoder."""
    imagery = above_baseline_table(scores, decoder, "perception_only", "imagery")
    vision = above_baseline_table(scores, decoder, "perception_only", "imagery_vision")
    N, D = _aligned(imagery, vision)
    return _both(ratio_interval, N, D)


def h1_ratio_difference(scores_a: pd.DataFrame, scores_b: pd.DataFrame, decoder: str) -> dict[str, Interval]:
    """H1's ratio in ``scores_a`` minus that in ``scores_b`` (e.g. two regions), on their common
    subjects and stimuli."""
    tables = [above_baseline_table(scores, decoder, "perception_only", test_set)
              for scores in (scores_a, scores_b) for test_set in ("imagery", "imagery_vision")]
    N1, D1, N2, D2 = _aligned(*tables)
    return _both(ratio_difference_interval, N1, D1, N2, D2)


def specific_gain(scores: pd.DataFrame, decoder: str, configuration: str) -> dict[str, Interval]:
    """(config - perception-only) on imagery minus the same on matched perception (cosine units)."""
    tables = [above_baseline_table(scores, decoder, c, t)
              for c in (configuration, "perception_only") for t in ("imagery", "imagery_vision")]
    ci, ci_v, po, po_v = _aligned(*fold_means(scores, *_common(*tables)))
    return _both(mean_interval, (ci - po) - (ci_v - po_v))


def relative_change(scores: pd.DataFrame, decoder: str, new: str, old: str, test_set: str,
                    sign: float = 1.0) -> dict[str, Interval]:
    """``sign * (mean(new) / mean(old) - 1)`` above baseline on ``test_set`` (sign -1: a drop)."""
    N, D = _aligned(*fold_means(scores, *_common(above_baseline_table(scores, decoder, new, test_set),
                                                  above_baseline_table(scores, decoder, old, test_set))))
    if sign == 1.0:
        return _both(ratio_interval, N, D, shift=-1.0)
    # a drop 1 - N/D is the ratio (D - N) / D
    return _both(ratio_interval, D - N, D)


def mean_interval_of(scores: pd.DataFrame, decoder: str, configuration: str, test_set: str,
                     estimand: str = "population") -> Interval:
    """Mean score above baseline of one configuration on one test set, with its interval."""
    return mean_interval(above_baseline_table(scores, decoder, configuration, test_set), estimand=estimand)


def performance_ratio(scores: pd.DataFrame, decoder: str, configuration: str, reference: str,
                      test_set: str = "imagery") -> dict[str, Interval]:
    """``mean(configuration) / mean(reference)`` above baseline on ``test_set``."""
    N, D = _aligned(*fold_means(scores, *_common(above_baseline_table(scores, decoder, configuration, test_set),
                                                  above_baseline_table(scores, decoder, reference, test_set))))
    return _both(ratio_interval, N, D)


def log_ratio_interval(numerator: Sequence[float], denominator: Sequence[float]) -> Interval:
    """Geometric-mean ratio over subjects with a t interval on the log scale (e.g. a CPU-time
    speed-up: per subject, fine-tuning's CPU seconds over the adapter's)."""
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or not (num > 0).all() or not (den > 0).all():
        raise InputError("A log-ratio interval needs matching positive values per subject.")
    logs = mean_interval(np.log(num / den)[:, None], estimand="stimuli")
    return Interval(float(np.exp(logs.estimate)), float(np.exp(logs.low)), float(np.exp(logs.high)),
                    logs.se, logs.df, logs.level, "subjects", "t on log ratios over subjects",
                    logs.n_subjects, 1, logs.note)
