"""The field's battery inside an ablation (``field_battery:``): each perception-only cell's test stimuli
are reconstructed and scored into the cell, the summary and the report, and the battery's settings are
part of the cell's key."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from _world import build_tiny
from mlflow.tracking import MlflowClient

from fmri2img.core.errors import ConfigError
from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.stages.ablation.executor import run_ablation
from fmri2img.stages.ablation.matrix import AblationConfig, FieldBattery


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("field_world"))


def test_field_battery_in_an_ablation(world, tmp_path, tracking_uri):
    cfg = AblationConfig(
        subjects=("subj01",), decoders=("ridge",), configurations=("perception_only", "mixed"),
        data_root=str(world["data"]), cache_root=str(world["cache"]), index_dir=str(world["cache"] / "indices"),
        manifest_dir=str(world["manifests"]), checkpoint_root=str(tmp_path / "ckpt"), output_root=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"), synthesize=False, eval=EvalOptions(n_boot=50, n_perm=50), figures=False,
        field_battery=FieldBattery(enabled=True, n_way=10))
    result = run_ablation(cfg, jobs=1, tracking_uri=tracking_uri, progress=False)
    cell = tmp_path / "out" / "subj01" / "eval" / "ridge__perception_only"
    table = pd.read_csv(cell / "field" / "field_table.csv")
    done = table[table["value"].notna()]
    assert {"pixcorr", "ssim", "retrieval_image_10"} <= set(done["metric"])
    assert set(done["test_set"]) >= {"shared1000", "imagery_vision", "imagery"}
    missing = table[table["value"].isna() & (table["stimulus_group"] == "all")]
    assert missing["note"].str.startswith("not computed: no weights configured for").all() and len(missing)
    assert not (tmp_path / "out" / "subj01" / "eval" / "ridge__mixed" / "field").exists()  # perception-only cells only
    summary = tmp_path / "out" / "summary"
    assert len(pd.read_csv(summary / "field_table.csv")) == len(table)
    report = (summary / "report.md").read_text()
    assert "## The field's reconstruction battery" in report and "| ridge | SSIM" in report
    assert json.loads((summary / "hypotheses.json").read_text())["field_battery"]["table"] == "field_table.csv"
    rec = next(r for r in result.records if r["cell"]["configuration"] == "perception_only")
    artifacts = {f.path for f in MlflowClient(tracking_uri).list_artifacts(rec["mlflow_run_id"], "field")}
    assert "field/field_table.csv" in artifacts

    # the battery's settings are part of the perception-only cell's key, not the others'
    again = run_ablation(dataclasses.replace(cfg, field_battery=FieldBattery(enabled=True, n_way=20)), jobs=1,
                         tracking_uri=tracking_uri, progress=False)
    assert {r["cell"]["configuration"]: r["skipped"] for r in again.records} == {"perception_only": False,
                                                                                  "mixed": True}


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown field_battery.backend 'dalle'; choose one of 'synthetic', 'unclip'"):
        AblationConfig(field_battery=FieldBattery(backend="dalle")).validate()
