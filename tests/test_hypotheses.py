"""H1-H3 verdicts from per-stimulus scores: direction and roadmap magnitude apart, the adapter chosen on
validation data, relative changes only on a base clearly above zero, and the quantitative planted-truth
check (truth, estimate, interval; OK only when the interval covers the truth)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmri2img.evaluation.intervals import Interval
from fmri2img.reporting import hypotheses
from fmri2img.reporting.verdicts import render_markdown
from fmri2img.sim.truth_tables import matching_truth, shipped_truth_tables, truth_table_for

SUBJECTS = ("subj01", "subj02", "subj05", "subj07")
STIMULI = tuple(f"s{i:02d}" for i in range(12))
BASE = 0.5  # the mean-embedding baseline's cosine


def _iv(low, high, estimate=None):
    estimate = (low + high) / 2 if estimate is None else estimate
    return Interval(estimate, low, high, 0.1, 10.0, 0.95, "population", "t", 4, 12)


@pytest.mark.parametrize("low, high, side, expected", [
    (0.2, 0.6, "below", "supported"), (1.1, 1.3, "below", "not supported"), (0.8, 1.2, "below", "inconclusive"),
    (0.01, 0.05, "above", "supported"), (-0.05, -0.01, "above", "not supported"), (-0.01, 0.02, "above",
                                                                                    "inconclusive")])
def test_direction(low, high, side, expected):
    null = 1.0 if side == "below" else 0.0
    assert hypotheses.direction(_iv(low, high), null, side) == expected


def test_direction_and_magnitude_of_an_undefined_interval_are_inconclusive():
    nan = float("nan")
    assert hypotheses.direction(_iv(nan, nan, 0.5), 1.0, "below") == "inconclusive"
    assert hypotheses.magnitude(_iv(nan, nan, 0.5), 0.6, 0.8) == "inconclusive"


@pytest.mark.parametrize("low, high, expected", [(0.62, 0.78, "met"), (0.3, 0.5, "not met"), (0.85, 0.9, "not met"),
                                                  (0.5, 0.7, "inconclusive"), (0.5, 0.9, "inconclusive")])
def test_magnitude(low, high, expected):
    assert hypotheses.magnitude(_iv(low, high), 0.6, 0.8) == expected


def _scores(effects: dict[tuple[str, str], float], seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    """Per-stimulus scores: cosine = baseline + effect[(configuration, test_set)] (1 + stimulus + subject) + noise."""
    rng = np.random.default_rng(seed)
    stim = dict(zip(STIMULI, rng.normal(0, 0.1, len(STIMULI))))
    subj = dict(zip(SUBJECTS, rng.normal(0, 0.1, len(SUBJECTS))))
    imagined = dict(zip(STIMULI, rng.normal(0, 0.3, len(STIMULI))))  # how well each stimulus is imagined
    rows = []
    for (configuration, test_set), effect in effects.items():
        for s in SUBJECTS:
            for i in STIMULI:
                rows.append({"subject": s, "decoder": "ridge", "configuration": configuration, "test_set": test_set,
                             "stimulus_id": i, "stimulus_type": "simple",
                             "cosine": BASE + effect * (1 + stim[i] + subj[s]) * (1 + imagined[i] * (test_set == "imagery"))
                             + rng.normal(0, noise),
                             "cosine_mean_embedding_baseline": BASE})
    return pd.DataFrame(rows)


def _effects(ratio=0.4, vision=0.2, mixed_gain=0.05, adapter_gain=0.04, finetune_gain=0.05, shared=0.3):
    effects = {}
    for cfg, gain in (("perception_only", 0.0), ("mixed", mixed_gain), ("adapter_linear", adapter_gain),
                      ("adapter_mlp", adapter_gain / 2), ("finetune", finetune_gain)):
        effects[(cfg, "imagery")] = ratio * vision + gain
        effects[(cfg, "imagery_vision")] = vision
        effects[(cfg, "shared1000")] = shared
    return effects


def _records(val=None, cpu=None):
    val = val or {"adapter_linear": 0.8, "adapter_mlp": 0.7}
    cpu = cpu or {"adapter_linear": 1.0, "adapter_mlp": 2.0, "finetune": 4.0}
    records = []
    for s_i, s in enumerate(SUBJECTS):
        # fine-tuning's time varies by subject around its ratio (the factors' product is 1: the
        # geometric-mean speed-up stays cpu["finetune"] / cpu[adapter]; a constant ratio has no interval)
        jitter = {"finetune": 1.05 if s_i % 2 else 1 / 1.05}
        for cfg in ("adapter_linear", "adapter_mlp", "finetune"):
            records.append({"cell": {"subject": s, "decoder": "ridge", "configuration": cfg},
                            "val_cosine_mean": val.get(cfg, 0.6),
                            "train_cpu_seconds_total": cpu[cfg] * (1 + 0.1 * s_i) * jitter.get(cfg, 1.0)})
    return records


def test_a_planted_world_is_decided_from_population_intervals():
    report = hypotheses.decide_hypotheses(_scores(_effects()), _records(), subjects=list(SUBJECTS),
                                          decoders=["ridge"])
    ridge = report["decoders"]["ridge"]
    h1 = ridge["H1"]
    assert h1["direction"] == "supported" and h1["magnitude"] == "not met"  # 0.4 is below 60-80%
    pop, these = h1["intervals"]["population"], h1["intervals"]["stimuli"]
    assert pop["low"] < 0.4 < pop["high"]
    assert pop["high"] - pop["low"] > these["high"] - these["low"]  # stimulus variance is in the population CI
    assert ridge["H2"]["direction"] == "supported"
    h2 = ridge["H2"]["intervals"]["population"]
    assert h2["low"] < 0.05 < h2["high"]
    assert ridge["H3"]["direction"] == "supported"
    assert ridge["H3"]["speedup_vs_finetune"]["estimate"] == pytest.approx(4.0, rel=1e-9)
    assert ridge["H3"]["magnitude"] == "not met"  # 4x < 10x


def test_h3_chooses_the_adapter_on_validation_not_on_test_scores():
    # adapter_mlp scores better on the test data; adapter_linear wins on its validation stimuli
    effects = _effects(adapter_gain=0.02)
    for t in ("imagery",):
        effects[("adapter_mlp", t)] = effects[("perception_only", t)] + 0.06
    report = hypotheses.decide_hypotheses(_scores(effects), _records(), subjects=list(SUBJECTS), decoders=["ridge"])
    assert report["decoders"]["ridge"]["H3"]["chosen_adapter"] == "adapter_linear"
    report = hypotheses.decide_hypotheses(_scores(effects), _records(val={"adapter_mlp": 0.9}),
                                          subjects=list(SUBJECTS), decoders=["ridge"])
    assert report["decoders"]["ridge"]["H3"]["chosen_adapter"] == "adapter_mlp"


def test_relative_gains_of_a_base_not_clearly_above_zero_are_not_reported():
    scores = _scores(_effects(ratio=0.0, vision=0.2), noise=0.05)
    report = hypotheses.decide_hypotheses(scores, _records(), subjects=list(SUBJECTS), decoders=["ridge"])
    h2 = report["decoders"]["ridge"]["H2"]
    assert h2["imagery_gain"]["reported"] is False and "not clearly above 0" in h2["imagery_gain"]["note"]
    assert h2["magnitude"] == "inconclusive"
    text = render_markdown(report)
    assert "relative imagery gain not reported" in text


def test_null_world_truth_is_exact_and_checked_by_coverage():
    null = _effects(ratio=1.0, mixed_gain=0.0, adapter_gain=0.0, finetune_gain=0.0)
    report = hypotheses.decide_hypotheses(_scores(null), _records(), subjects=list(SUBJECTS), decoders=["ridge"],
                                          truth={"null": True, "params": {"imagery_strength": 1.0}})
    truth = report["planted_truth"]
    assert truth["null_world"] and truth["n_checked"] == 3
    by_stat = {c["statistic"]: c for c in truth["checks"]}
    assert by_stat["h1_ratio"]["truth"] == 1.0 and by_stat["h2_specific_gain"]["truth"] == 0.0
    for c in truth["checks"]:
        assert c["ok"] == (c["ci"][0] <= c["truth"] <= c["ci"][1])
    assert report["decoders"]["ridge"]["H1"]["direction"] in ("inconclusive", "not supported")


def test_planted_world_without_a_truth_table_lists_estimates_unchecked_and_says_so():
    report = hypotheses.decide_hypotheses(_scores(_effects()), _records(), subjects=list(SUBJECTS),
                                          decoders=["ridge"], truth={"null": False, "params": {"imagery_strength": 0.6}})
    truth = report["planted_truth"]
    assert truth["n_checked"] == 0 and truth["all_match"] is None
    assert all(c["ok"] is None and c["truth"] is None for c in truth["checks"])
    assert "No truth is tabulated" in render_markdown(report)


def test_a_truth_table_outside_the_interval_is_a_miss():
    scores = _scores(_effects())
    table = {"decoders": {"ridge": {"h1_ratio": 0.4, "h2_specific_gain": 0.5, "h3_specific_gain": 0.04}},
             "se": {"ridge": {"h1_ratio": 0.012}}, "n_worlds": 6}
    report = hypotheses.decide_hypotheses(scores, _records(), subjects=list(SUBJECTS), decoders=["ridge"],
                                          truth={"null": False, "params": {"imagery_strength": 0.6}}, truth_table=table)
    checks = {c["statistic"]: c["ok"] for c in report["planted_truth"]["checks"]}
    assert checks == {"h1_ratio": True, "h2_specific_gain": False, "h3_specific_gain": True}
    text = render_markdown(report)
    assert "2 of 3 population intervals cover the truth" in text and "| **no** |" in text
    assert "| 0.400 +/- 0.012 |" in text and "mean of the same statistic over 6 other worlds" in text


def test_report_wording_separates_direction_from_magnitude():
    report = hypotheses.decide_hypotheses(_scores(_effects()), _records(), subjects=list(SUBJECTS),
                                          decoders=["ridge"])
    text = render_markdown(report)
    assert "Direction (below 1 and above 0): **supported**" in text
    assert "Roadmap magnitude (60-80% of matched perception): **not met**" in text
    assert "chosen on validation cosine" in text and "in CPU time" in text
    assert "bootstrap over subjects" not in text


def test_kept_initial_counts_no_op_fold_models():
    records = []
    for s in ("a", "b"):
        for cfg, kept in (("finetune", 3), ("adapter_mlp", 1), ("adapter_linear", 0)):
            records.append({"cell": {"subject": s, "decoder": "ridge", "configuration": cfg},
                            "n_fold_models": 3, "n_folds_kept_initial": kept})
    assert hypotheses.kept_initial(records, "ridge") == {"finetune": [6, 6], "adapter_mlp": [2, 6]}
    assert hypotheses.kept_initial(records, "two_stage") == {}


def test_a_truth_table_applies_only_to_the_world_it_was_simulated_for():
    truth = {"params": {"imagery_strength": 0.6, "noise_sd": 4.0}, "shape": {"n_mask_voxels": 800}}
    table = {"params": truth["params"], "shape": truth["shape"], "decoders": {"ridge": {"h1_ratio": 0.4}}}
    assert matching_truth(table, truth) == table
    other = {**truth, "params": {**truth["params"], "imagery_strength": 0.3}}
    assert matching_truth(table, other) is None
    assert matching_truth(None, truth) is None
    # a family's table (calibrate with siblings) serves that world family only
    family = {**table, "world_seed": 0}
    assert matching_truth(family, {**truth, "seeds": {"world": 0, "stimuli": 0, "subjects": 0}}) == family
    assert matching_truth(family, {**truth, "seeds": {"world": 3, "stimuli": 0, "subjects": 0}}) is None
    assert matching_truth(family, truth) is None


def test_a_config_table_comes_first_and_shipped_tables_serve_their_own_worlds_only():
    shipped = shipped_truth_tables()
    assert shipped, "the package ships the demo world's truth table"
    demo = shipped[0]
    world = {"params": demo["params"], "shape": demo["shape"], "seeds": {"world": demo.get("world_seed")}}
    assert truth_table_for(world) == demo
    assert {"decoders", "se", "n_worlds"} <= set(demo) and demo["n_worlds"] >= 2
    own = {**demo, "decoders": {"ridge": {"h1_ratio": 0.5}}}
    assert truth_table_for(world, own) == own
    other = {**world, "params": {**world["params"], "imagery_strength": 0.31}}
    assert truth_table_for(other) is None and truth_table_for(other, own) is None


def test_a_missing_truth_table_file_is_a_config_error(tmp_path):
    from fmri2img.core.errors import ConfigError
    from fmri2img.stages.ablation.matrix import AblationConfig

    with pytest.raises(ConfigError, match=r"truth_table: .*nope\.json not found"):
        AblationConfig(truth_table=str(tmp_path / "nope.json")).validate()


def test_the_shipped_demo_table_is_for_the_world_make_demo_writes():
    """Fails when the generator's defaults, the demo's shape or its strength change: then re-simulate the
    table (projects/imagery/configs/calibrate_demo.yaml), or the demo's check would silently go unchecked."""
    import dataclasses
    import json

    from fmri2img.core.constants import DEFAULT_WORLD_SEED
    from fmri2img.sim.model import GeneratorParams
    from fmri2img.sim.seeds import WorldSeeds
    from fmri2img.sim.world import SCALES
    from fmri2img.stages.ablation.matrix import AblationConfig

    shape = SCALES["demo"]
    params = GeneratorParams(imagery_strength=AblationConfig().synth_imagery_strength)
    shape_dict = {**dataclasses.asdict(shape), "images_per_subject": shape.images_per_subject}
    world = json.loads(json.dumps({"params": dataclasses.asdict(params), "shape": shape_dict,
                                   "seeds": dataclasses.asdict(WorldSeeds.single(DEFAULT_WORLD_SEED))}))
    table = truth_table_for(world)
    assert table is not None and set(table["decoders"]) == {"ridge", "mlp", "two_stage"}
    assert table.get("world_seed") == DEFAULT_WORLD_SEED  # the demo world's own family (calibrate_demo.yaml)


@pytest.mark.parametrize("kept_per_subject, withdrawn", [((2, 1, 1, 1), False), ((2, 1, 2, 1), True),
                                                         ((3, 3, 3, 3), True)])
def test_h3_gets_no_interval_where_the_chosen_adapter_mostly_kept_its_initial_weights(kept_per_subject, withdrawn):
    """5 of 12 no-op fold models keep H3's interval; 6 of 12 (half) or more withdraw it, both estimands, the
    estimate unchanged; the direction reads inconclusive, the planted check n/a instead of a miss."""
    records = _records()
    for r in records:
        if r["cell"]["configuration"] == "adapter_linear":  # the chosen adapter (highest validation cosine)
            r.update(n_fold_models=3, n_folds_kept_initial=kept_per_subject[SUBJECTS.index(r["cell"]["subject"])])
    scores = _scores(_effects())
    plain = hypotheses.decide_hypotheses(scores, _records(), subjects=list(SUBJECTS), decoders=["ridge"])
    truth = {"params": {"imagery_strength": 0.5}}
    table = {"decoders": {"ridge": {"h1_ratio": 0.4, "h2_specific_gain": 0.05, "h3_specific_gain": 0.04}},
             "se": {}, "n_worlds": 6}
    report = hypotheses.decide_hypotheses(scores, records, subjects=list(SUBJECTS), decoders=["ridge"],
                                          truth=truth, truth_table=table)
    h3, before = report["decoders"]["ridge"]["H3"], plain["decoders"]["ridge"]["H3"]
    assert h3["chosen_adapter"] == "adapter_linear" and before["direction"] == "supported"
    kept = sum(kept_per_subject)
    for estimand, iv in h3["intervals"].items():
        assert iv["estimate"] == before["intervals"][estimand]["estimate"]
        assert np.isnan(iv["low"]) == np.isnan(iv["high"]) == withdrawn
        assert (f"kept its initial weights in {kept} of its 12 fold models" in (iv["note"] or "")) == withdrawn
    assert h3["direction"] == ("inconclusive" if withdrawn else "supported")
    check = next(c for c in report["planted_truth"]["checks"] if c["hypothesis"] == "H3")
    assert (check["ok"] is None) == withdrawn and report["planted_truth"]["n_checked"] == 3 - withdrawn
    text = render_markdown(report)
    assert ("| ridge | H3 | h3_specific_gain | 0.040 |" in text and "| no interval | n/a |" in text) == withdrawn
    assert ("(no interval: the chosen adapter kept its initial weights" in text) == withdrawn
