"""Calibration: truth assignment (exact in a null world, leave-one-out elsewhere), coverage and
false-positive counts against hand-computed cases and a simulation with known coverage, and a tiny
`fmri2img calibrate` run end to end (real worlds, real ablations, MLflow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.errors import InputError
from fmri2img.evaluation import calibration
from fmri2img.evaluation.intervals import crossed_variance_from_mean_squares
from fmri2img.reporting.calibration import sources_table
from fmri2img.stages.evaluate import flat_metrics

RULES_SCRIPT = Path(__file__).resolve().parents[1] / "projects" / "imagery" / "interval_rules.py"


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


def test_worlds_without_an_interval_are_counted_apart():
    """A world whose interval is undefined (no spread: NaN bounds) is neither a hit nor a miss, and the
    table says how many there were."""
    from fmri2img.reporting.calibration import markdown_table

    planted = _rows("s", 0.5, [0.2, 0.4, 0.6, 0.0], [0.0, 0.3, 0.55, np.nan], [0.55, 0.5, 0.7, np.nan])
    summary = calibration.summarize(calibration.assign_truth(planted))
    assert summary.loc[0, "n_worlds"] == 4 and summary.loc[0, "n_defined"] == 3
    n = summary.loc[0, "n_covered"]
    assert f"({n}/3; 1 world without an interval)" in markdown_table(summary)
    assert "without an interval" not in markdown_table(calibration.summarize(calibration.assign_truth(planted[:3])))


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


def _family_rows(estimates, estimand, roles, seed=0, setting="s", strength=0.5):
    n = len(estimates)
    return pd.DataFrame({"setting": setting, "strength": strength, "world_seed": seed, "decoder": "ridge",
                         "statistic": "h1_ratio", "estimand": estimand, "estimate": estimates,
                         "low": np.asarray(estimates) - 0.05, "high": np.asarray(estimates) + 0.05,
                         "role": roles, "sibling": range(n)})


def test_sibling_truth_is_the_mean_of_the_other_members_of_the_estimands_family():
    W, ST, SU = calibration.ROLE_WORLD, calibration.ROLE_NEW_STIMULI, calibration.ROLE_NEW_SUBJECTS
    roles = [W, ST, ST, SU, SU]
    rows = pd.concat([_family_rows([0.1, 0.2, 0.3, 0.4, 0.5], "population", roles),
                      _family_rows([0.1, 0.2, 0.3, 0.4, 0.5], "stimuli", roles),
                      _family_rows([0.9, 0.7, 0.6], "population", [W, ST, SU], seed=1),
                      _family_rows([0.9, 0.8, 0.7], "stimuli", [W, ST, SU], seed=1, setting="null", strength=1.0)],
                     ignore_index=True)
    out = calibration.assign_truth(rows)
    pop = out[(out["estimand"] == "population") & (out["setting"] == "s")]
    # population: the world and its new-stimuli siblings (seed 0: 0.1, 0.2, 0.3; seed 1: 0.9, 0.7)
    assert pop["role"].tolist() == [W, ST, ST, W, ST]
    assert pop["truth"].tolist() == pytest.approx([0.25, 0.2, 0.15, 0.7, 0.9])
    assert pop["truth_n"].tolist() == [2, 2, 2, 1, 1]
    stim = out[(out["estimand"] == "stimuli") & (out["setting"] == "s")]
    assert stim["role"].tolist() == [W, SU, SU] and stim["truth"].tolist() == pytest.approx([0.45, 0.3, 0.25])
    null = out[out["setting"] == "null"]  # every null-world row keeps its exact truth
    assert len(null) == 3 and (null["truth"] == 1.0).all() and np.isinf(null["truth_n"]).all()
    # new-stimuli siblings only (calibrate_demo.yaml): the these-stimuli rows have no family to be judged in
    only = calibration.assign_truth(_family_rows([0.1, 0.2, 0.3], "population", [W, ST, ST]).pipe(
        lambda r: pd.concat([r, _family_rows([0.1, 0.2, 0.3], "stimuli", [W, ST, ST])], ignore_index=True)))
    assert set(only["estimand"]) == {"population"} and only["truth"].tolist() == pytest.approx([0.25, 0.2, 0.15])


def test_conditional_truth_calibrates_intervals_that_a_cross_world_truth_calls_too_narrow():
    """Worlds with a family-level random effect (tau) that their own intervals cannot see: against the
    mean of the other worlds they look too narrow (width factor sqrt(1 + tau^2 / sigma^2)); against the
    mean of their family's other members they are calibrated (factor ~1, coverage ~ what calibrated
    intervals reach against a 2-world truth, 89%)."""
    rng = np.random.default_rng(11)
    n_families, k, sigma, tau = 600, 2, 0.1, 0.1
    W, ST = calibration.ROLE_WORLD, calibration.ROLE_NEW_STIMULI
    frames = []
    for f in range(n_families):
        est = 0.5 + rng.normal(0, tau) + rng.normal(0, sigma, size=k + 1)
        frame = _family_rows(est, "population", [W] + [ST] * k, seed=f)
        frame["low"], frame["high"] = est - 1.96 * sigma, est + 1.96 * sigma
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    conditional = calibration.summarize(calibration.assign_truth(rows)).iloc[0]
    expected = 2 * stats.norm.cdf(1.96 / np.sqrt(1 + 1 / k)) - 1
    assert conditional["expected_coverage"] == pytest.approx(expected, abs=1e-3)
    assert conditional["coverage"] == pytest.approx(expected, abs=0.025)
    assert conditional["width_factor"] == pytest.approx(1.0, abs=0.07)
    worlds_only = rows[rows["role"] == W].drop(columns=["role", "sibling"])
    across = calibration.summarize(calibration.assign_truth(worlds_only)).iloc[0]
    assert across["width_factor"] == pytest.approx(np.sqrt(2.0), abs=0.12) and across["coverage"] < 0.88


def test_variance_sources_is_the_sd_of_a_redraw():
    W, ST, SU = calibration.ROLE_WORLD, calibration.ROLE_NEW_STIMULI, calibration.ROLE_NEW_SUBJECTS
    rows = pd.concat([_family_rows([0.5, 0.7, 0.4], "population", [W, ST, SU], seed=0),
                      _family_rows([0.2, 0.1, 0.2], "population", [W, ST, SU], seed=1)], ignore_index=True)
    sources = calibration.variance_sources(rows).set_index("role")["sd_redraw"]
    assert sources[ST] == pytest.approx(np.sqrt((0.2**2 + 0.1**2) / 2 / 2))
    assert sources[SU] == pytest.approx(np.sqrt((0.1**2 + 0.0**2) / 2 / 2))
    assert calibration.variance_sources(rows.drop(columns=["role"])).empty


def test_sibling_seeds_keep_the_named_families_and_never_collide():
    from fmri2img.sim.seeds import WorldSeeds
    from fmri2img.stages.calibrate import world_seeds

    W, ST, SU, OF = (calibration.ROLE_WORLD, calibration.ROLE_NEW_STIMULI, calibration.ROLE_NEW_SUBJECTS,
                     calibration.ROLE_NEW_OFFSET)
    assert world_seeds(5, W, 0) == WorldSeeds.single(5)
    st, su, of = world_seeds(5, ST, 1), world_seeds(5, SU, 1), world_seeds(5, OF, 1)
    assert st.world == su.world == su.stimuli == 5 and st.stimuli == st.subjects != 5 and su.subjects != 5
    assert (of.world, of.stimuli, of.subjects) == (5, 5, 5) and of.offset > 10**6
    seeds = [world_seeds(w, role, k) for w in (0, 1, 999) for role in (ST, SU, OF) for k in (1, 2, 49)]
    drawn = [s.offset if s.offset is not None else s.subjects for s in seeds]
    assert len(set(drawn)) == len(drawn) and min(drawn) > 10**6


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
    # H3 rows count the chosen adapter's no-op fold models (0..2 subjects x 3 folds), other rows have none;
    # an H3 row has no interval (NaN bounds) exactly when its adapter kept its initial weights in half of its
    # 6 fold models or more (hypotheses.NO_OP_FOLD_SHARE; every H3 row is checked, whichever side it falls on)
    h3 = worlds["statistic"] == "h3_specific_gain"
    kept = worlds["kept_initial_folds"]
    assert h3.any() and kept[h3].between(0, 6).all() and kept[~h3].isna().all()
    flat = worlds["low"].isna()
    assert (flat[h3] == (kept[h3] >= 3)).all() and not flat[~h3].any()
    # each interval's make-up is kept: half-width = t(df) x se, items = stimuli (H1) or folds (H2, H3)
    ok = worlds[~flat]
    t = stats.t.ppf(0.975, ok["df"])
    assert np.allclose(ok["high"] - ok["estimate"], t * ok["se"], equal_nan=False)
    assert set(worlds["n_subjects"]) == {2} and worlds["n_items"].min() >= 2
    # ... and the mean squares its variance came from: another variance rule needs no rerun
    pop = ok[ok["estimand"] == "population"]
    var = [crossed_variance_from_mean_squares(r.ms_subject, r.ms_item, r.ms_residual, r.n_subjects, r.n_items)[0]
           for r in pop.itertuples()]
    assert len(pop) and np.allclose(pop["se"] ** 2, var, rtol=1e-9)
    same = calibration.remake_intervals(worlds)  # the reported rule, remade from the mean squares
    assert np.allclose(same[["low", "high"]], worlds[["low", "high"]], rtol=1e-9, equal_nan=True)
    wider = calibration.remake_intervals(worlds, fold_factor=2.5)
    folds = (wider["estimand"] == "population") & wider["statistic"].isin(calibration.FOLD_STATISTICS) & ~flat
    assert folds.any() and (wider.loc[folds, "se"] > worlds.loc[folds, "se"]).all()  # (widths need not grow)
    assert np.allclose(wider.loc[~folds, ["low", "high"]], worlds.loc[~folds, ["low", "high"]], equal_nan=True)
    rules = subprocess.run([sys.executable, str(RULES_SCRIPT), str(out / "calibration_worlds.csv")],
                           capture_output=True, text=True, check=True).stdout
    reported = pd.read_csv(out / "calibration_summary.csv").query("estimand == 'population'")
    for _, r in reported.iterrows():  # the rescoring rule for older runs changes nothing on a run that applied it
        for rule in ("capped df (reported)", "capped df + no-op-fold rule"):
            assert (f"| {r['setting']} | {r['decoder']} | {r['statistic']} | {rule} | {r['coverage']:.0%} "
                    f"({r['n_covered']}/{r['n_defined']}) |") in rules
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
    # a rerun reuses every finished world, also when it runs fewer settings (no world is written again)
    written = {p: p.stat().st_mtime_ns for p in (out / "worlds").rglob("*.json")}
    res2 = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--jobs", "1", "--tracking-uri", tracking_uri])
    assert res2.exit_code == 0 and res2.output.strip().splitlines()[-1] == last
    res3 = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--jobs", "1", "--tracking-uri", tracking_uri,
                                    "--no-null"])
    assert res3.exit_code == 0, res3.output
    assert {p: p.stat().st_mtime_ns for p in (out / "worlds").rglob("*.json")} == written


def test_calibrate_refuses_a_strength_outside_0_1(tmp_path):
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG.replace("strengths: [0.5]", "strengths: [1.5]"))
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg)])
    assert res.exit_code == 2 and "strengths" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("line, match", [("siblings: -1", "siblings"), ("siblings: 50", "siblings"),
                                          ("first_seed: 1000000000", "first_seed"),
                                          ("sibling_roles: [new planets]", "sibling role"),
                                          ("cell_logging: none", "Unknown cell_logging 'none'; choose one of 'full', "
                                                                 "'metrics'")])
def test_calibrate_refuses_bad_siblings_and_seeds(tmp_path, line, match):
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG + line + "\n")
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg)])
    assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output


def test_first_seed_on_the_command_line_replaces_the_configs(tmp_path):
    """--first-seed (held-out worlds without a copied config) goes through the config's own seed check."""
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG)
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--first-seed", "999999999"])
    assert res.exit_code == 2 and "first_seed=999999999" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--first-seed", "-1"])
    assert res.exit_code == 2 and "--first-seed" in res.output


def test_a_truth_table_with_siblings_is_one_familys(tmp_path):
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG + "siblings: 1\n")
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--write-truth", str(tmp_path / "truth")])
    assert res.exit_code == 2 and f"{cfg}: worlds=2" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "truth").exists()


def test_calibrate_with_siblings_end_to_end(tmp_path, tracking_uri):
    """One world and one sibling of each role: population rows of the world and its new-stimuli sibling
    are each other's truth, these-stimuli rows likewise with the new-subjects sibling; both tables; the
    new-offset sibling's imagery differs (its estimates move)."""
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG.replace("worlds: 2", "worlds: 1").replace("include_null: true", "include_null: false")
                   + "siblings: 1\nsibling_roles: [new stimuli, new subjects, new offset]\nkeep_worlds: true\n"
                   + f"output_root: {tmp_path / 'out'}\n")
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--jobs", "1", "--tracking-uri", tracking_uri,
                                   "--write-truth", str(tmp_path / "truth")])
    assert res.exit_code == 0, res.output
    worlds = pd.read_csv(tmp_path / "out" / "calibration_worlds.csv")
    h1 = worlds[worlds["statistic"] == "h1_ratio"].set_index(["estimand", "role"])
    W, ST, SU = calibration.ROLE_WORLD, calibration.ROLE_NEW_STIMULI, calibration.ROLE_NEW_SUBJECTS
    # the truth table of a family: its new-stimuli siblings' mean, the world itself left out
    table = json.loads((tmp_path / "truth" / "strength_0.5.json").read_text())
    assert table["world_seed"] == 7 and table["n_worlds"] == 1
    assert table["decoders"]["ridge"]["h1_ratio"] == pytest.approx(h1.loc[("population", ST), "estimate"])
    assert sorted(h1.index) == sorted([("population", W), ("population", ST), ("stimuli", W), ("stimuli", SU)])
    assert h1.loc[("population", W), "truth"] == pytest.approx(h1.loc[("population", ST), "estimate"])
    assert h1.loc[("stimuli", SU), "truth"] == pytest.approx(h1.loc[("stimuli", W), "estimate"])
    # the new-subjects sibling sees the same stimuli, yet other subjects: another estimate
    assert h1.loc[("stimuli", SU), "estimate"] != h1.loc[("stimuli", W), "estimate"]
    table = (tmp_path / "out" / "calibration.md").read_text()
    assert "Population intervals" in table and "These-stimuli intervals" in table and "What each redraw moves" in table
    names = sorted(p.name for p in (tmp_path / "out" / "worlds" / "strength_0.5").iterdir())
    assert names == ["7-new-offset-1.json", "7-new-stimuli-1.json", "7-new-subjects-1.json", "7.json"]
    offset = json.loads((tmp_path / "out" / "worlds" / "strength_0.5" / "7-new-offset-1.json").read_text())["rows"]
    h1_offset = next(r for r in offset if r["statistic"] == "h1_ratio" and r["estimand"] == "population")
    assert h1_offset["estimate"] != h1.loc[("population", W), "estimate"]
    # a kept world's cells logged metrics only (calibrate's cell_logging default): their metrics and
    # intervals as in the cell's metrics file, no figure, files, datasets or logged models
    world = tmp_path / "out" / "work" / "strength_0.5" / "7"
    client = MlflowClient(f"sqlite:///{world / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    cells = client.search_runs(experiments, "tags.`fmri2img.role` = 'cell'")
    assert len(cells) == 2 * 4  # 2 subjects x 4 configurations of the ridge decoder
    for run in cells:
        subject, decoder, configuration = run.data.tags["mlflow.runName"].split("/")
        table = pd.read_csv(world / "out" / subject / "eval" / f"{decoder}__{configuration}" / "results_table.csv")
        metrics = flat_metrics(table, configuration)
        assert len(metrics) > 10 and {k: run.data.metrics[k] for k in metrics} == metrics
        assert any(k.endswith("_ci_low") for k in run.data.metrics)
        assert client.list_artifacts(run.info.run_id) == [] and not run.inputs.dataset_inputs
    assert client.search_logged_models(experiments) == []


def test_remaking_intervals_needs_the_mean_squares():
    rows = pd.DataFrame([{"setting": "s", "strength": 0.5, "world_seed": 1, "decoder": "ridge",
                          "statistic": "h1_ratio", "estimand": "population", "estimate": 0.4, "low": 0.2,
                          "high": 0.6, "n_subjects": 4, "n_items": 18}])
    with pytest.raises(InputError, match="'ms_subject'.*mean squares"):
        calibration.remake_intervals(rows)


def test_the_redraw_table_has_one_row_per_statistic():
    sources = pd.DataFrame([{"setting": "s", "decoder": "ridge", "statistic": "h1_ratio", "estimand": "population",
                             "role": role, "n_pairs": 3, "sd_redraw": sd}
                            for role, sd in (("new stimuli", 0.1), ("new subjects", 0.05))])
    table = sources_table(sources)
    assert "| setting | decoder | statistic | sd, new stimuli | sd, new subjects |" in table
    assert "| s | ridge | H1 ratio | 0.1000 | 0.0500 |" in table


def test_calibrate_scores_the_planted_region_ordering(tmp_path, tracking_uri):
    """With several regions each world adds the planted-ordering check's difference (highest minus lowest
    planted-gain region, both estimands), scored like H1-H3: leave-one-out truth, 0 in the null world."""
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG.replace("configurations: [perception_only, mixed, adapter_linear, finetune]",
                                       "configurations: [perception_only]")
                   + f"regions: [V1+V2+V3, ventral]\nkeep_worlds: true\noutput_root: {tmp_path / 'out'}\n")
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg), "--jobs", "1", "--tracking-uri", tracking_uri])
    assert res.exit_code == 0, res.output
    worlds = pd.read_csv(tmp_path / "out" / "calibration_worlds.csv")
    assert set(worlds["statistic"]) == {"h1_ratio", calibration.REGION_STATISTIC}  # no H2/H3 cells, no rows
    region = worlds[worlds["statistic"] == calibration.REGION_STATISTIC]
    assert len(region) == 2 * 2 * 2  # settings x worlds x estimands
    assert (region.loc[region["setting"] == "null_world", "truth"] == 0.0).all()
    planted = region[(region["setting"] == "strength_0.5") & (region["estimand"] == "population")]
    assert np.allclose(planted["truth"], planted["estimate"].to_numpy()[::-1])  # each world's truth: the other's
    # each row is the difference interval of its world's report (ventral minus V1+V2+V3)
    report = json.loads((tmp_path / "out" / "work" / "strength_0.5" / "7" / "out" / "summary" /
                         "hypotheses.json").read_text())
    check = report["regions"]["planted"]["checks"][0]
    assert (check["high"], check["low"]) == ("ventral", "V1+V2+V3")
    row = planted[planted["world_seed"] == 7].iloc[0]
    iv = check["intervals"]["population"]
    assert (row["estimate"], row["low"], row["high"]) == pytest.approx((iv["estimate"], iv["low"], iv["high"]))
    assert np.isfinite(region["low"]).all() and (region["low"] < region["high"]).all()
    assert "H1 ratio, highest - lowest planted region" in (tmp_path / "out" / "calibration.md").read_text()


@pytest.mark.parametrize("line, match", [("regions: [V9]", "Unknown region 'V9'"),
                                          ("regions: [V1+V3, V3+V1]", "names a region twice"),
                                          ("regions: []", "expected at least one region")])
def test_calibrate_refuses_bad_regions_before_any_world(tmp_path, line, match):
    cfg = tmp_path / "calibrate.yaml"
    cfg.write_text(TINY_CONFIG + line + f"\noutput_root: {tmp_path / 'out'}\n")
    res = CliRunner().invoke(app, ["calibrate", "--config", str(cfg)])
    assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_the_no_op_fold_rule_rescores_runs_made_before_it():
    """interval_rules.py withdraws the H3 intervals of rows whose chosen adapter kept its initial weights in half
    of its fold models or more (subjects x folds), leaves the others, and skips the rule without the column."""
    spec = importlib.util.spec_from_file_location("interval_rules", RULES_SCRIPT)
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    rows = _rows("s", 0.78, [0.01, 0.02, 0.0, 0.01], [-0.01, 0.0, -0.001, 0.005], [0.03, 0.04, 0.001, 0.02],
                 statistic="h3_specific_gain").assign(se=0.01, n_subjects=4, n_items=3,
                                                      kept_initial_folds=[0, 5, 6, 12])
    out = rules.withdraw_no_ops(rows)
    assert out["low"].isna().tolist() == [False, False, True, True] and out["se"].isna().sum() == 2
    assert out["estimate"].tolist() == rows["estimate"].tolist()
    older = pd.concat([rows.assign(**{c: 1.0 for c in calibration.MEAN_SQUARE_COLUMNS}),
                       rows.assign(statistic="h1_ratio", kept_initial_folds=np.nan)], ignore_index=True)
    older = calibration.assign_truth(older)
    assert "capped df + no-op-fold rule" in set(rules.compare(older)["rule"])
    assert "capped df + no-op-fold rule" not in set(rules.compare(older.drop(columns="kept_initial_folds"))["rule"])
