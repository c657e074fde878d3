"""Tables and the reconstruction grid of the field's battery (fmri2img.reporting.field_report)."""

from __future__ import annotations

import numpy as np

from fmri2img.evaluation import field_metrics as F
from fmri2img.reporting import field_report as R


def _records():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 10))
    return {"clip": F.two_way(feats + 0.1 * rng.standard_normal((6, 10)), feats, n_boot=50, n_perm=50),
            "swav": F.not_computed("weights for swav not found at /w/swav.pth", higher_is_better=False)}


def test_rows_keep_every_metric_and_the_markdown_says_why_one_is_missing():
    table = R.battery_frame(R.battery_rows(_records(), source="m", test_set="imagery", stimulus_group="all"))
    assert list(table.columns) == list(R.FIELD_COLUMNS) and list(table.metric) == ["clip", "swav"]
    text = R.format_battery_markdown(table)
    clip = table[table.metric == "clip"].iloc[0]
    assert f"{100 * clip.value:.1f}%" in text and "50.0%" in text  # two-way in percent, with its chance
    assert "not computed: weights for swav not found at /w/swav.pth" in text and "SwAV ↓" in text


def test_grid_has_a_row_per_stimulus_and_a_column_per_source():
    image = np.zeros((8, 8, 3), np.uint8)
    fig = R.reconstruction_grid(["a", "b"], {"a": image}, {"imagery_vision": {"a": image, "b": image},
                                                           "imagery": {"b": image}})
    assert len(fig.axes) == 2 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["ground truth", "imagery_vision", "imagery"]
