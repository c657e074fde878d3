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
