"""The planted-truth check of the hypothesis report: direction of the mean decides a match,
and a match whose CI over subjects includes zero is reported as thin."""

from __future__ import annotations

import json

from fmri2img.reporting.hypotheses import planted_truth_check, render_markdown


def _group(per_subject, low, high):
    return {"mean": sum(per_subject) / len(per_subject), "ci_low": low, "ci_high": high,
            "n_subjects": len(per_subject), "per_subject": per_subject}


def _report(h2_group):
    h1 = {"group": {"mean": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n_subjects": 4}, "verdict": "v"}
    return {"subjects": ["a", "b", "c", "d"],
            "decoders": {"ridge": {"H1": h1, "H2": {"imagery_gain": h2_group, "perception_drop": _group([0.0] * 4, 0, 0),
                                                     "verdict": "v"}}}}


def _check(folder, report):
    """The stage's call: the world's truth/params.json, read, against the report."""
    return planted_truth_check(json.loads((folder / "truth" / "params.json").read_text()), "truth/params.json", report)


def test_thin_and_clear_matches_and_mismatch(tmp_path):
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "params.json").write_text(json.dumps({"null": False}))
    clear = _check(tmp_path, _report(_group([0.2, 0.3, 0.1, 0.2], 0.12, 0.27)))
    h2 = clear["checks"][1]
    assert clear["all_match"] and h2["clear"] is True and h2["n_subjects_positive"] == 4
    text = render_markdown({**_report(_group([0.2] * 4, 0.1, 0.3)), "planted_truth": clear})
    assert "thin" not in text
    assert "ridge H1: planted 'degraded but non-zero transfer (0 < ratio CI < 1)' -> OK " \
           "(ratio 0.400 [95% CI 0.300, 0.500])" in text

    thin = _check(tmp_path, _report(_group([-0.01, 0.44, 0.05, -0.07], -0.04, 0.33)))
    h2 = thin["checks"][1]
    assert thin["all_match"] and h2["clear"] is False and (h2["n_subjects_positive"], h2["n_subjects"]) == (2, 4)
    text = render_markdown({**_report(_group([0.1] * 4, 0, 0)), "planted_truth": thin})
    assert "all match (1 thin" in text
    assert "ridge H2: planted 'mixed training improves imagery' -> OK (+10.2% [95% CI -4.0%, +33.0%], " \
           "2 of 4 subjects > 0; thin: the CI includes 0)" in text

    wrong = _check(tmp_path, _report(_group([-0.2, -0.1, 0.05, -0.1], -0.2, 0.0)))
    text = render_markdown({**_report(_group([0.1] * 4, 0, 0)), "planted_truth": wrong})
    assert not wrong["all_match"] and "MISMATCH (-8.8% [95% CI -20.0%, +0.0%], 1 of 4 subjects > 0; " \
        "the CI includes 0)" in text and "thin" not in text

    # a mismatch whose CI lies wholly on the wrong side is not called thin, nor said to include 0
    far = _check(tmp_path, _report(_group([-0.9, -0.85, -0.88, -0.93], -0.94, -0.84)))
    text = render_markdown({**_report(_group([0.1] * 4, 0, 0)), "planted_truth": far})
    assert "MISMATCH (-89.0% [95% CI -94.0%, -84.0%], 0 of 4 subjects > 0)" in text


def test_null_world_gain_up_to_threshold_is_no_effect(tmp_path):
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "params.json").write_text(json.dumps({"null": True}))
    out = _check(tmp_path, _report(_group([0.1, 0.0, 0.05, 0.1], -0.02, 0.1)))
    h2 = out["checks"][1]
    assert h2["ok"] and h2["clear"] is None
    assert out["checks"][0]["planted"] == "no transfer deficit (ratio CI includes 1, or mean > 0.8)"
    assert not _check(tmp_path, _report(_group([0.3, 0.2, 0.4, 0.3], 0.2, 0.4)))["checks"][1]["ok"]


def test_report_names_configurations_that_kept_their_initial_weights():
    """A fine-tune or adapter whose fold models never beat their initial state is a no-op (it
    equals perception-only); the report says how many fold models kept their initial weights,
    per decoder, whether or not the matrix has H3's fine-tune baseline."""
    from fmri2img.reporting.hypotheses import kept_initial

    records = [{"cell": {"subject": "a", "decoder": "ridge", "configuration": "perception_only"}}]
    for subject in ("a", "b"):
        for decoder, configuration, kept in (("ridge", "finetune", 3), ("ridge", "adapter_linear", 0),
                                             ("ridge", "adapter_mlp", 1), ("mlp", "adapter_mlp", 3)):
            records.append({"cell": {"subject": subject, "decoder": decoder, "configuration": configuration},
                            "n_fold_models": 3, "n_folds_kept_initial": kept})
    assert kept_initial(records, "ridge") == {"finetune": [6, 6], "adapter_mlp": [2, 6]}
    assert kept_initial(records, "two_stage") == {}
    h1 = {"group": {"mean": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n_subjects": 2}, "verdict": "v"}
    text = render_markdown({"subjects": ["a", "b"], "decoders": {
        "ridge": {"H1": h1, "kept_initial": kept_initial(records, "ridge")}, "mlp": {"H1": h1}}})
    assert "kept their initial weights" in text and "finetune 6 of 6, adapter_mlp 2 of 6." in text
    assert text.count("kept their initial weights") == 1


def test_h3_speed_up_reads_as_a_factor():
    h1 = {"group": {"mean": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n_subjects": 4}, "verdict": "v"}
    adapter = {"performance_vs_finetune": {"mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "n_subjects": 4},
               "speedup_vs_finetune": {"mean": 3.5, "ci_low": 3.25, "ci_high": 3.75, "n_subjects": 4}}
    text = render_markdown({"subjects": ["a", "b", "c", "d"], "decoders": {"mlp": {
        "H1": h1, "H3": {"adapters": {"adapter_mlp": adapter}, "best_adapter": "adapter_mlp", "verdict": "v"}}}})
    assert "- **H3** adapter_mlp: 90.0% [95% CI 85.0%, 95.0%] (n=4 subjects) of fine-tuning, " \
           "speed-up 3.500x [95% CI 3.250x, 3.750x] (n=4 subjects). Verdict: v." in text
