"""`ablate --executor slurm` against a real Slurm cluster and a real MLflow tracking server.

The cluster is the one of tests/_slurm.py (scripts/slurm/start-cluster.sh; CI starts one); the
tracking server is `mlflow server` with a SQLite backend in tmp, started here and stopped by its PID.
One small ablation (one subject, ridge, two configurations) runs locally, then on Slurm with one
cell task cancelled mid-run (the command stops naming its job, log and stderr), then on Slurm again
(the rerun completes): its results tables must be byte-identical to the local run's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _slurm import run, sacct_states
from _world import build_tiny
from mlflow.tracking import MlflowClient

from fmri2img.core.errors import ConfigError
from fmri2img.core.executors import SlurmResources, TaskFailedError
from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.stages.ablation.executor import run_ablation
from fmri2img.stages.ablation.matrix import AblationConfig
from fmri2img.stages.ablation.workers import SLURM_JOB_NAME, slurm_folder
from fmri2img.stages.adapt import AdaptConfig

SERVER_START_S = 90.0  # `mlflow server` imports MLflow and migrates its store before it answers
POLL_S = 0.5
WAIT_S = 30.0  # how long the test waits for the cluster to do something
#: A cell task's submitit log (``<array id>_<task>_0_log.err``); the checkpoint stage is a single job
#: (``<job id>_0_log.err``), which this does not match.
ARRAY_TASK_LOG = re.compile(r"^(\d+_\d+)_0_log\.err$")


def _wait_for(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """``mlflow server`` on a free local port (SQLite backend, proxied artifacts in tmp); its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                MlflowClient(uri).search_experiments()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny(tmp_path_factory.mktemp("world"))


def _config(world, root: Path, **over) -> AblationConfig:
    cfg = AblationConfig(
        subjects=("subj01",), decoders=("ridge",), configurations=("perception_only", "adapter_linear"),
        data_root=str(world["data"]), cache_root=str(world["cache"]), index_dir=str(world["cache"] / "indices"),
        manifest_dir=str(world["manifests"]), checkpoint_root=str(root / "checkpoints"),
        output_root=str(root / "out"), log_dir=str(root / "logs"), synthesize=False, figures=False,
        adapt=AdaptConfig(epochs=2), eval=EvalOptions(n_boot=30, n_perm=30))
    return dataclasses.replace(cfg, **over)


def _cancel_first_cell_task(folder: Path, cancelled: list[str], stop: threading.Event) -> None:
    """Wait for the first cell task to start (its log appears), then ``scancel`` it while it is
    still importing (a task needs seconds for that: it is killed mid-run)."""
    while not stop.is_set():
        started = sorted(m.group(1) for p in (folder.glob("*_log.err") if folder.is_dir() else ())
                         if (m := ARRAY_TASK_LOG.match(p.name)))
        if started:
            run("scancel", started[0])
            cancelled.append(started[0])
            return
        time.sleep(0.05)


@pytest.mark.slurm
@pytest.mark.timeout(1200)
def test_slurm_ablation_survives_a_killed_task_and_equals_local(slurm_cluster, world, tmp_path, tracking_server):
    local = _config(world, tmp_path / "local")
    run_ablation(local, jobs=1, tracking_uri=f"sqlite:///{tmp_path / 'local.db'}", progress=False)

    on_slurm = _config(world, tmp_path / "slurm", executor="slurm",
                       slurm=SlurmResources(partition=slurm_cluster.partition, cpus_per_task=1, timeout_min=5))
    folder = slurm_folder(on_slurm)
    cancelled: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=_cancel_first_cell_task, args=(folder, cancelled, stop), daemon=True)
    killer.start()
    try:
        with pytest.raises(TaskFailedError) as info:
            run_ablation(on_slurm, tracking_uri=tracking_server, progress=False, slurm_poll_s=POLL_S)
    finally:
        stop.set()
        killer.join()
    error = info.value
    assert cancelled and error.job_id == cancelled[0] and error.state.startswith("CANCELLED")
    assert f"Slurm job {error.job_id} ended CANCELLED" in str(error) and error.log_path in str(error)
    assert "\n" not in str(error)
    # the rest of the cells' array was cancelled (scancel returns before Slurm has ended the tasks)
    array_id = error.job_id.split("_")[0]
    _wait_for(lambda: not [j for j in run("squeue", "-h", "-n", SLURM_JOB_NAME, "-o", "%i").stdout.split()
                           if j.startswith(f"{array_id}_")], f"array {array_id} to leave the queue")
    assert all(state.split()[0] in ("CANCELLED", "COMPLETED") for state in sacct_states(array_id).values())

    again = run_ablation(on_slurm, tracking_uri=tracking_server, progress=False, slurm_poll_s=POLL_S)
    # task 0 of the cells' array is the first cell in submission order (adapter_linear): redone now
    assert {r["cell"]["configuration"]: r["skipped"] for r in again.records}["adapter_linear"] is False
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    table = "out/subj01/results_table.csv"
    assert (slurm_dir / table).read_bytes() == (local_dir / table).read_bytes()
    # metrics_all.json also names each cell's checkpoint and index files: equal up to the output root
    metrics = "out/subj01/metrics_all.json"
    assert (slurm_dir / metrics).read_text().replace(str(slurm_dir), "<root>") == \
        (local_dir / metrics).read_text().replace(str(local_dir), "<root>")
    # the cells' runs reached the tracking server, as children of the ablation run
    client = MlflowClient(tracking_server)
    children = client.search_runs([client.get_run(again.run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{again.run_id}'")
    assert "subj01/ridge/adapter_linear" in {r.info.run_name for r in children}, \
        [r.info.run_name for r in children]


def test_slurm_refuses_a_sqlite_tracking_store(tmp_path):
    """Before any work, with one line and exit code 2 (the CLI's bad-input code)."""
    from typer.testing import CliRunner

    from fmri2img.cli.main import app

    cfg = AblationConfig(output_root=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"), executor="slurm")
    with pytest.raises(ConfigError, match="needs an MLflow tracking server.*sqlite:///"):
        run_ablation(cfg, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", progress=False)
    config = tmp_path / "ablation.yaml"
    config.write_text(f"output_root: {tmp_path / 'out'}\nlog_dir: {tmp_path / 'logs'}\n")
    result = CliRunner().invoke(app, ["ablate", "--config", str(config), "--executor", "slurm",
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "Error: executor 'slurm' needs an MLflow tracking server" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


def test_unknown_slurm_key_is_refused_with_the_allowed_keys(tmp_path):
    from fmri2img.core.config import load_config

    path = tmp_path / "ablation.yaml"
    path.write_text("executor: slurm\nslurm:\n  cpus: 4\n")
    with pytest.raises(ConfigError, match=r"slurm: unknown key 'cpus'; allowed keys: additional_parameters, "
                                          r"array_parallelism, cpus_per_task"):
        load_config(AblationConfig, path)
    path.write_text("executor: pbs\n")
    with pytest.raises(ConfigError, match="Unknown executor 'pbs'; choose one of 'local', 'slurm'"):
        load_config(AblationConfig, path)
    path.write_text("cell_logging: models\n")
    with pytest.raises(ConfigError, match="Unknown cell_logging 'models'; choose one of 'full', 'metrics'"):
        load_config(AblationConfig, path)
