"""tracking_layout: a toy study logged to a real SQLite MLflow store, read back through MLflow's client."""

from __future__ import annotations

import json

import _toy_study as toy
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fmri2img.core import tracking_layout as layout
from fmri2img.core.errors import InputError, MissingInputError
from fmri2img.core.files import sha256_file


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    study, cells, view = toy.build(root / "files")
    ids = layout.log_study(MlflowClient(uri), toy.EXPERIMENT, "A toy study.", study, cells, view)
    return {"uri": uri, "client": MlflowClient(uri), "study": study, "cells": cells, **ids}


def _runs(logged):
    return logged["client"].search_runs([logged["experiment_id"]], max_results=1000)


def test_experiment_is_classic_ml_with_description(logged):
    tags = logged["client"].get_experiment(logged["experiment_id"]).tags
    assert tags[layout.EXPERIMENT_KIND_TAG] == layout.EXPERIMENT_KIND_ML
    assert tags[layout.NOTE_TAG] == "A toy study."


def test_cells_are_the_parents_direct_children_and_nothing_is_deeper(logged):
    runs = _runs(logged)
    parent = logged["study_run_id"]
    assert len(runs) == 1 + len(logged["cells"])
    children = {r.info.run_id for r in runs if r.data.tags.get(layout.PARENT_TAG) == parent}
    assert children == set(logged["cell_run_ids"])
    assert all(r.data.tags.get(layout.PARENT_TAG) in (None, parent) for r in runs)
    names = [logged["client"].get_run(i).info.run_name for i in logged["cell_run_ids"]]
    assert names == [c.name for c in logged["cells"]] and len(set(names)) == len(names)


def test_cell_params_are_what_differs_versions_and_key_are_tags(logged):
    client = logged["client"]
    for cell, run_id in zip(logged["cells"], logged["cell_run_ids"]):
        run = client.get_run(run_id)
        expected = {k: layout._text(v) for k, v in cell.params.items() if v is not None}
        assert run.data.params == expected
        assert not any(k.startswith("versions") for k in run.data.params)
        assert json.loads(run.data.tags[layout.VERSIONS_TAG]) == dict(cell.versions)
        assert run.data.tags[layout.CACHE_KEY_TAG] == cell.cache_key
        assert run.data.tags[layout.ROLE_TAG] == layout.ROLE_CELL
    params = [client.get_run(i).data.params for i in logged["cell_run_ids"]]
    for key in ("configuration", "decoder", "subject"):
        assert len({p[key] for p in params}) > 1, key


def test_metrics_carry_interval_companions_and_curves_their_steps(logged):
    client = logged["client"]
    cell, run_id = logged["cells"][0], logged["cell_run_ids"][0]
    metrics = client.get_run(run_id).data.metrics
    for name, (low, high) in cell.intervals.items():
        assert metrics[name + layout.CI_LOW_SUFFIX] == pytest.approx(low)
        assert metrics[name + layout.CI_HIGH_SUFFIX] == pytest.approx(high)
        assert low <= metrics[name] <= high
    for name, values in cell.curves.items():
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(len(values)))
        np.testing.assert_allclose([m.value for m in history], values)


def test_duration_covers_the_whole_work(logged):
    client = logged["client"]
    for cell, run_id in zip(logged["cells"], logged["cell_run_ids"]):
        info = client.get_run(run_id).info
        assert (info.start_time, info.end_time) == (int(cell.start_time * 1000), int(cell.end_time * 1000))
        assert info.status == "FINISHED"
    parent = client.get_run(logged["study_run_id"]).info
    assert parent.end_time - parent.start_time == len(logged["cells"]) * toy.CELL_SECONDS * 1000


def test_artifacts_of_cells_and_parent(logged):
    client = logged["client"]
    for cell, run_id in zip(logged["cells"], logged["cell_run_ids"]):
        assert [a.path for a in client.list_artifacts(run_id, "figures")] == [f"figures/{p.name}" for p in cell.figures]
    parent = logged["study_run_id"]
    assert {a.path for a in client.list_artifacts(parent)} >= {"figures", "report", "hypotheses.json"}
    tags = client.get_run(parent).data.tags
    assert tags[layout.VERDICT_TAG_PREFIX + "H1"] == "supported"
    assert tags[layout.ROLE_TAG] == layout.ROLE_STUDY


def test_logged_model_is_listed_and_loads_back_from_its_run(logged, monkeypatch):
    import mlflow.artifacts
    import mlflow.pytorch
    import torch

    client = logged["client"]
    cell, run_id = logged["cells"][0], logged["cell_run_ids"][0]
    models = client.search_logged_models([logged["experiment_id"]])
    assert [(m.name, m.source_run_id, m.status.name) for m in models] == [("decoder", run_id, "READY")]
    module, example = cell.models["decoder"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])  # runs:/ finds the model through it
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/decoder")
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/decoder")
    x = torch.from_numpy(np.asarray(example, dtype=np.float32))
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x).numpy(), module(x).numpy())
    signature = mlflow.models.get_model_info(local).signature
    assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 6)
    linked = {m.key for m in client.get_logged_model(models[0].model_id).metrics or []}
    assert linked == set(layout.with_intervals(cell.metrics, cell.intervals))


def test_datasets_name_digest_source_and_context(logged):
    run = logged["client"].get_run(logged["cell_run_ids"][0])
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"trial_index", "split_manifest"}
    for spec in logged["cells"][0].datasets:
        got = inputs[spec.name]
        assert got.dataset.digest == sha256_file(spec.source)[:layout.DATASET_DIGEST_CHARS]
        assert json.loads(got.dataset.source)["uri"] == str(spec.source.resolve())
        assert {t.key: t.value for t in got.tags}[layout.DATASET_CONTEXT_TAG] == spec.context
    assert json.loads(inputs["trial_index"].dataset.profile)["num_rows"] == 12


def test_saved_view_is_the_envelope_the_ui_reads(logged):
    tags = logged["client"].get_experiment(logged["experiment_id"]).tags
    envelope = json.loads(tags[layout.SHARED_VIEW_TAG_PREFIX + layout.COMPARE_VIEW_KEY])
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "configuration"},
                                               {"mode": "param", "groupByData": "decoder"}]
    assert "metrics.`clip_similarity`" in state["selectedColumns"]
    assert state["searchFilter"] == f"tags.`{layout.ROLE_TAG}` = 'cell'"
    found = logged["client"].search_runs([logged["experiment_id"]], filter_string=state["searchFilter"])
    assert {r.info.run_id for r in found} == set(logged["cell_run_ids"])


def test_urls():
    assert layout.runs_url("http://h:1/", "7", "k") == \
        "http://h:1/#/experiments/7/runs?viewStateShareKey=k&workflowType=machine_learning"
    assert layout.runs_url("http://h:1", "7") == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"
    assert layout.run_url("http://h:1", "7", "r", "figures/a.png") == \
        "http://h:1/#/experiments/7/runs/r/artifacts/figures/a.png?workflowType=machine_learning"


def test_bad_inputs_are_refused_before_anything_is_written(tracking_uri, tmp_path):
    with pytest.raises(InputError, match="no metric 'x'"):
        layout.with_intervals({"m": 1.0}, {"x": (0.0, 1.0)})
    with pytest.raises(InputError, match="low <= high"):
        layout.with_intervals({"m": 1.0}, {"m": (2.0, 1.0)})
    with pytest.raises(InputError, match="Unknown aggregate"):
        layout.compare_view_state(group_by=["a"], metrics=["m"], aggregate="median")
    client = MlflowClient(tracking_uri)
    exp = layout.setup_experiment(client, "t/bad", "d")
    parent = layout.start_study(client, exp, "p")
    with pytest.raises(MissingInputError, match="missing.png"):
        layout.log_cell(client, exp, parent,
                        layout.CellLog("c", {"a": 1}, {"m": 1.0}, figures=[tmp_path / "missing.png"]))
    failed = [r for r in client.search_runs([exp]) if r.info.run_id != parent]
    assert [r.info.status for r in failed] == ["FAILED"]
    with pytest.raises(InputError, match="at most 20000"):
        layout.save_view(client, exp, {"searchFilter": "x" * 30000})
