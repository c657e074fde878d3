"""Group statistics from per-stimulus scores: definitions checked on hand-built tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmri2img.core.errors import InputError
from fmri2img.evaluation import group as G

SUBJECTS = ("subj01", "subj02", "subj05")
STIMULI = ("img-A-a", "img-A-b", "nsd-00001", "nsd-00002")


def _scores(values: dict, decoder="ridge", baseline=0.5) -> pd.DataFrame:
    """values[(configuration, test_set)] = array (subjects, stimuli) of cosines."""
    rows = []
    for (cfg, ts), arr in values.items():
        for s, subject in enumerate(SUBJECTS):
            for i, stim in enumerate(STIMULI):
                rows.append({"subject": subject, "decoder": decoder, "configuration": cfg, "test_set": ts,
                             "stimulus_id": stim, "stimulus_type": "simple" if "img-A" in stim else "complex",
                             "cosine": baseline + arr[s, i], "cosine_mean_embedding_baseline": baseline})
    return pd.DataFrame(rows)


def test_h1_is_the_ratio_of_grand_means_above_baseline():
    rng = np.random.default_rng(0)
    vis = 0.1 + rng.normal(0, 0.01, (3, 4))
    ima = 0.03 + rng.normal(0, 0.01, (3, 4))
    h1 = G.h1_ratio(_scores({("perception_only", "imagery"): ima, ("perception_only", "imagery_vision"): vis}),
                    "ridge")
    assert h1["population"].estimate == pytest.approx(ima.mean() / vis.mean())
    assert h1["stimuli"].estimate == h1["population"].estimate
    assert h1["population"].n_subjects == 3 and h1["population"].n_stimuli == 4
    assert h1["population"].excludes(1.0) and h1["population"].excludes(0.0)


def test_specific_gain_removes_what_both_test_sets_gain():
    po, po_v = np.full((3, 4), 0.05), np.full((3, 4), 0.10)
    shift = np.arange(12).reshape(3, 4) * 1e-3
    mx, mx_v = po + 0.02 + shift, po_v + 0.02 + shift  # same gain on both: nothing specific
    scores = _scores({("perception_only", "imagery"): po, ("perception_only", "imagery_vision"): po_v,
                      ("mixed", "imagery"): mx, ("mixed", "imagery_vision"): mx_v})
    gain = G.specific_gain(scores, "ridge", "mixed")
    assert gain["population"].estimate == pytest.approx(0.0, abs=1e-12)
    rel = G.relative_change(scores, "ridge", "mixed", "perception_only", "imagery")
    assert rel["stimuli"].estimate == pytest.approx(mx.mean() / po.mean() - 1)
    drop = G.relative_change(scores, "ridge", "mixed", "perception_only", "imagery_vision", sign=-1.0)
    assert drop["stimuli"].estimate == pytest.approx(1 - mx_v.mean() / po_v.mean())


def test_missing_scores_and_conceptual_stimuli():
    scores = _scores({("perception_only", "imagery"): np.zeros((3, 4))})
    with pytest.raises(InputError, match="imagery_vision"):
        G.h1_ratio(scores, "ridge")
    table = G.above_baseline_table(scores, "ridge", "perception_only", "imagery", stimulus_types=("simple",))
    assert list(table.columns) == ["img-A-a", "img-A-b"]
    with pytest.raises(InputError, match="column 'cosine'"):
        G.above_baseline_table(scores.drop(columns="cosine"), "ridge", "perception_only", "imagery")


def test_stimuli_missing_for_one_subject_are_dropped():
    scores = _scores({("perception_only", "shared1000"): np.full((3, 4), 0.1)})
    scores = scores[~((scores["subject"] == "subj02") & (scores["stimulus_id"] == "nsd-00002"))]
    table = G.above_baseline_table(scores, "ridge", "perception_only", "shared1000")
    assert "nsd-00002" not in table.columns and table.shape == (3, 3)


def test_log_ratio_interval():
    iv = G.log_ratio_interval([10.0, 12.0, 8.0], [1.0, 1.0, 1.0])
    assert iv.estimate == pytest.approx((10 * 12 * 8) ** (1 / 3))
    assert iv.low < iv.estimate < iv.high
    with pytest.raises(InputError):
        G.log_ratio_interval([1.0, -1.0], [1.0, 1.0])


def _fold_world(rng, folds: bool, gain=0.02, fold_sd=0.02, noise_sd=0.01, n_subjects=4, n_stimuli=12):
    """Scores of one world where mixed training's fold models add an effect shared by a fold's stimuli:
    for every subject alike (which stimuli train a fold's model is the same for all subjects) plus a
    smaller subject x fold part; the population truth of the specific gain is ``gain``."""
    subjects = [f"subj{i:02d}" for i in range(1, n_subjects + 1)]
    stimuli = [f"img-A-{i}" for i in range(n_stimuli)]
    fold_of = np.arange(n_stimuli) % 3
    stim = rng.normal(0.1, 0.03, n_stimuli)
    subj = rng.normal(0.0, 0.01, n_subjects)[:, None]
    model = (rng.normal(0.0, fold_sd, 3)[None, :] + rng.normal(0.0, fold_sd / 4, (n_subjects, 3)))[:, fold_of]
    base = stim[None, :] + subj
    values = {("perception_only", "imagery"): base, ("perception_only", "imagery_vision"): base + 0.05,
              ("mixed", "imagery"): base + gain + model + rng.normal(0, noise_sd, base.shape),
              ("mixed", "imagery_vision"): base + 0.05}
    rows = [{"subject": s, "decoder": "ridge", "configuration": cfg, "test_set": ts, "stimulus_id": stimuli[i],
             "stimulus_type": "simple", "cosine": 0.5 + arr[k, i], "cosine_mean_embedding_baseline": 0.5,
             **({"fold": float(fold_of[i])} if folds else {})}
            for (cfg, ts), arr in values.items() for k, s in enumerate(subjects) for i in range(n_stimuli)]
    return pd.DataFrame(rows)


def test_fold_means_restore_coverage_when_fold_models_share_noise():
    """Per-fold models add an effect that a fold's stimuli share: intervals over stimuli are too narrow
    (they treat 12 stimuli in 3 correlated groups as independent); over folds they cover the truth."""
    covered = {True: 0, False: 0}
    n = 200
    for rep in range(n):
        for folds in (True, False):
            iv = G.specific_gain(_fold_world(np.random.default_rng(rep), folds), "ridge", "mixed")["population"]
            covered[folds] += iv.covers(0.02)
    assert covered[True] / n >= 0.9
    assert covered[False] / n < 0.8
    table = G.fold_means(_fold_world(np.random.default_rng(0), True),
                         G.above_baseline_table(_fold_world(np.random.default_rng(0), True), "ridge", "mixed",
                                                "imagery"))[0]
    assert list(table.columns) == ["fold0", "fold1", "fold2"] and table.shape == (4, 3)
