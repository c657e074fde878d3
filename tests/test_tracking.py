"""MLflow tracking: runs are read back from a real SQLite store."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fmri2img.core import tracking
from fmri2img.core.errors import TrackingError


def test_run_logs_params_seeds_versions_and_artifacts(tracking_uri, tmp_path):
    artifact = tmp_path / "result.json"
    artifact.write_text("{}\n")
    with tracking.run("unit", {"a": 1, "nested": {"b": "x"}}, tracking_uri=tracking_uri,
                      experiment="t/exp") as run:
        run.log_metrics({"m": 0.5, "skipped": None})
        run.log_artifact(artifact, "out")
        run.log_dict({"k": 1}, "meta/info.json")
    runs = mlflow.search_runs(experiment_names=["t/exp"], output_format="list")
    assert len(runs) == 1
    got = runs[0]
    assert got.info.status == "FINISHED"
    assert got.data.params["a"] == "1" and got.data.params["nested.b"] == "x"
    assert got.data.params["seed.split"] == "42" and got.data.params["seed.init"] == "123"
    assert "versions.mlflow" in got.data.params
    assert got.data.metrics == {"m": 0.5}
    assert got.data.tags[tracking.TAG_STAGE] == "unit"
    client = MlflowClient(tracking_uri)
    names = {a.path for a in client.list_artifacts(got.info.run_id, "out")}
    assert names == {"out/result.json"}
    assert {a.path for a in client.list_artifacts(got.info.run_id, "meta")} == {"meta/info.json"}


def test_failed_and_killed_status(tracking_uri):
    with pytest.raises(ValueError):
        with tracking.run("unit", tracking_uri=tracking_uri, experiment="t/status"):
            raise ValueError("bad")
    with pytest.raises(KeyboardInterrupt):
        with tracking.run("unit", tracking_uri=tracking_uri, experiment="t/status"):
            raise KeyboardInterrupt
    runs = sorted(mlflow.search_runs(experiment_names=["t/status"], output_format="list"), key=lambda r: r.info.status)
    assert [r.info.status for r in runs] == ["FAILED", "KILLED"]
    assert runs[0].data.tags[tracking.TAG_ERROR] == "ValueError: bad"  # why it failed, visible in the UI
    assert tracking.TAG_ERROR not in runs[1].data.tags


def test_nested_runs(tracking_uri):
    with tracking.run("parent", tracking_uri=tracking_uri, experiment="t/nest") as parent:
        with tracking.run("child", tracking_uri=tracking_uri, parent=parent) as child:
            pass
    run = MlflowClient(tracking_uri).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id


def test_unreachable_server_fails_fast():
    import time

    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        with tracking.run("unit", tracking_uri="http://127.0.0.1:9"):
            pass
    assert time.monotonic() - start < tracking.CONNECT_TIMEOUT_S + 2


def test_orphaned_runs_are_marked_killed(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("t/orphan")
    dead = client.create_run(exp, tags={tracking.TAG_PID: "999999999", tracking.TAG_HOST: __import__("socket").gethostname()})
    live = client.create_run(exp, tags={tracking.TAG_PID: str(os.getpid()), tracking.TAG_HOST: __import__("socket").gethostname()})
    marked = tracking.mark_orphaned_runs(tracking_uri, "t/orphan")
    assert marked == [dead.info.run_id]
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert client.get_run(live.info.run_id).info.status == "RUNNING"


def test_an_exited_but_unreaped_process_counts_as_dead():
    """A killed pool worker can linger as a zombie until its parent reaps it: its run is orphaned."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "Z" not in open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[-1][:3]:
        time.sleep(0.05)  # exited, not yet waited for: a zombie
    try:
        assert not tracking._pid_alive(child.pid)
        assert tracking._pid_alive(os.getpid())
    finally:
        child.wait()


def test_log_history_logs_every_epoch_as_steps_in_one_batch(tracking_uri, monkeypatch):
    # the step is the record's epoch (here 10..13), not its position in the list
    history = [{"epoch": 10 + e, "val_loss": 1.0 / (e + 1), "val_cosine": 0.5 + e / 10, "note": "x"} for e in range(4)]
    history[2]["val_loss"] = float("nan")  # non-finite values are skipped, like log_metrics
    with tracking.run("unit", tracking_uri=tracking_uri, experiment="t/history") as run:
        calls = []
        real = run.client.log_batch
        monkeypatch.setattr(run.client, "log_batch", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
        run.log_history(history, prefix="fold0/")
        monkeypatch.undo()
    assert len(calls) == 1
    client = MlflowClient(tracking_uri)
    steps = {m.step: m.value for m in client.get_metric_history(run.run_id, "fold0/val_loss")}
    assert steps == {10: 1.0, 11: 0.5, 13: 0.25}
    assert [m.step for m in client.get_metric_history(run.run_id, "fold0/val_cosine")] == [10, 11, 12, 13]
    assert client.get_metric_history(run.run_id, "fold0/epoch") == []
