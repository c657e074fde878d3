"""Calibration: truth assignment (exact in a null world, leave-one-out elsewhere), coverage and
false-positive counts against hand-computed cases and a simulation with known coverage, and a tiny
`fmri2img calibrate` run end to end (real worlds, real ablations, MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.errors import InputError
from fmri2img.evaluation import calibration


def _rows(setting, strength, estimates, lows, highs, statistic="h1_ratio", decoder="ridge"):
    n = len(estimates)
    return pd.DataFrame({"setting": setting, "strength": strength, "world_seed": np.arange(n), "decoder": decoder,
                         "statistic": statistic, "estimand": "population", "estimate": estimates,
                         "low": lows, "high": highs})


def test_null_truth_is_exact_and_planted_truth_is_leave_one_out():
    null = _rows("null", 1.0, [1.0, 1.1, 0.9], [0.8, 1.05, 0.5], [1.2, 1.2, 1.0])
    planted = _rows("s", 0.5, [0.2, 0.4, 0.6], [0.0, 0.3, 0.55], [0.55, 0.5, 0.7])
    rows = calibration.assign_truth(pd.concat([null, planted], ignore_index=True))
    assert rows.loc[rows["setting"] == "null", "truth"].tolist() == [1.0, 1.0, 1.0]
    assert rows.loc[rows["setting"] == "s", "truth"].tolist() == pytest.approx([0.5, 0.4, 0.3])
    summary = calibration.summarize(rows).set_index("setting")
    # null: worlds 0 and 2 cover 1, world 1 excludes it (a false positive)
    assert summary.loc["null", "n_covered"] == 2 and summary.loc["null", "n_rejected"] == 1
    assert summary.loc["null", "rejection_rate"] == pytest.approx(1 / 3)
    # planted: truths 0.5, 0.4, 0.3 -> covered, covered, not covered; bias mean(est - truth)
    assert summary.loc["s", "n_covered"] == 2
    assert np.isnan(summary.loc["s", "bias"])  # a leave-one-out truth: mean error 0 by construction
    assert summary.loc["null", "bias"] == pytest.approx(np.mean([0.0, 0.1, -0.1]))
    assert summary.loc["s", "rmse"] == pytest.approx(np.sqrt(np.mean([0.3**2, 0.0, 0.3**2])))
    lo, hi = stats.binomtest(2, 3).proportion_ci(method="exact")
    assert (summary.loc["s", "coverage_ci_low"], summary.loc["s", "coverage_ci_high"]) == pytest.approx((lo, hi))
    head = calibration.headline(summary.reset_index())
    assert head == {"coverage_min": pytest.approx(2 / 3), "fpr_max": pytest.approx(1 / 3)}


def test_coverage_of_exact_t_intervals_is_nominal():
    """Simulated worlds whose intervals are exact t intervals: coverage ~95%, FPR ~5% (a check that can fail)."""
    rng = np.random.default_rng(7)
    n_worlds, n = 2000, 6
    rows = []
    for setting, strength, mu in (("null", 1.0, 1.0), ("s", 0.5, 0.4)):
        x = rng.normal(mu, 0.2, size=(n_worlds, n))
        m, se = x.mean(1), x.std(1, ddof=1) / np.sqrt(n)
        half = stats.t.ppf(0.975, n - 1) * se
        rows.append(_rows(setting, strength, m, m - half, m + half))
    summary = calibration.summarize(calibration.assign_truth(pd.concat(rows, ignore_index=True)))
    assert summary["coverage"].between(0.93, 0.97).all()
    assert summary.set_index("setting").loc["null", "rejection_rate"] == pytest.approx(0.05, abs=0.015)


def test_leave_one_out_needs_two_worlds_and_columns_are_checked():
    with pytest.raises(InputError, match="at least 2 worlds"):
        calibration.assign_truth(_rows("s", 0.5, [0.2], [0.0], [0.5]))
    with pytest.raises(InputError, match="lack column"):
        calibration.assign_truth(pd.DataFrame({"setting": ["s"]}))


TINY_CONFIG = """
worlds: 2
first_seed: 7
strengths: [0.5]
include_null: true
subjects: [subj01, subj02]
decoders: [ridge]
configurations: [perception_only, mixed, adapter_linear, finetune]
grid: [10, 12, 10]
n_mask_voxels: 300
n_sessions: 1
n_shared: 20
folds: 3
adapt: {epochs: 2, lr_steps: 1}
"""


def test_calibrate_command_end_to_end(tmp_path, tracking_uri):
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG + f"output_root: {tmp_path / 'out'}\n")
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--jobs", "1", "--tracking-uri", tracking_uri,
                                   "--write-truth", str(tmp_path / "truth")])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("coverage_min=") and " fpr_max=" in last
    out = tmp_path / "out"
    worlds = pd.read_csv(out / "calibration_worlds.csv")
    assert set(worlds["setting"]) == {"strength_0.5", "null_world"} and worlds["world_seed"].nunique() == 2
    assert set(worlds["statistic"]) == {"h1_ratio", "h2_specific_gain", "h3_specific_gain"}
    assert (worlds.loc[worlds["setting"] == "null_world", "truth"].isin([0.0, 1.0])).all()
    assert "coverage (count)" in (out / "calibration.md").read_text()
    assert (out / "calibration.png").is_file()
    assert not [p for p in (out / "work").rglob("*") if p.is_file()]  # every world deleted after use
    table = json.loads((tmp_path / "truth" / "strength_0.5.json").read_text())
    assert table["params"]["imagery_strength"] == 0.5 and "h1_ratio" in table["decoders"]["ridge"]
    h1 = worlds[(worlds["setting"] == "strength_0.5") & (worlds["estimand"] == "population")
                & (worlds["statistic"] == "h1_ratio")]["estimate"]
    assert table["n_worlds"] == 2 and table["decoders"]["ridge"]["h1_ratio"] == pytest.approx(h1.mean())
    assert table["se"]["ridge"]["h1_ratio"] == pytest.approx(h1.std(ddof=1) / np.sqrt(2))
    run = MlflowClient(tracking_uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri).search_experiments()],
        "tags.`fmri2img.stage` = 'calibrate'")[0]
    assert "coverage_min" in run.data.metrics and "null_world.ridge.h1_ratio.coverage" in run.data.metrics
    # a rerun reuses every finished world
    res2 = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--jobs", "1", "--tracking-uri", tracking_uri])
    assert res2.exit_code == 0 and res2.output.strip().splitlines()[-1] == last


def test_calibrate_refuses_a_strength_outside_0_1(tmp_path):
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG.replace("strengths: [0.5]", "strengths: [1.5]"))
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg)])
    assert res.exit_code == 2 and "strengths" in res.output and "Traceback" not in res.output
