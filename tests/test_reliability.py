"""Reliability: reproducibility, kill -9 at random moments, Ctrl-C (issue: reliability).

The fault tests start the real console commands as subprocesses, kill them with SIGKILL at
seeded random moments, check that no file under its final name is corrupt, then rerun to
completion and compare with an uninterrupted run. The default suite runs a few kills per
command; ``-m slow`` runs ten.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _world import build_tiny
from mlflow.tracking import MlflowClient

from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.stages.ablation.executor import run_ablation
from fmri2img.stages.ablation.matrix import AblationConfig
from fmri2img.stages.adapt import AdaptConfig

CLI = [sys.executable, "-m", "fmri2img.cli.main"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny(tmp_path_factory.mktemp("world"))


def _config(world, root: Path, **over) -> AblationConfig:
    cfg = AblationConfig(
        subjects=("subj01",), decoders=("ridge",), configurations=("perception_only", "mixed", "adapter_linear"),
        data_root=str(world["data"]), cache_root=str(world["cache"]), index_dir=str(world["cache"] / "indices"),
        manifest_dir=str(world["manifests"]), checkpoint_root=str(root / "checkpoints"),
        output_root=str(root / "out"), log_dir=str(root / "logs"), synthesize=False, figures=False,
        adapt=AdaptConfig(epochs=4), eval=EvalOptions(n_boot=50, n_perm=50))
    return dataclasses.replace(cfg, **over)


def test_same_seeds_same_bytes_other_seeds_differ(world, tmp_path, tracking_uri):
    # Same checkpoint folder (paths are recorded in the metrics); `force` retrains everything.
    ckpt = str(tmp_path / "checkpoints")
    a = _config(world, tmp_path / "a", checkpoint_root=ckpt)
    b = _config(world, tmp_path / "b", checkpoint_root=ckpt)
    c = _config(world, tmp_path / "c", checkpoint_root=ckpt, adapt=AdaptConfig(epochs=4, seed=7),
                eval=EvalOptions(n_boot=50, n_perm=50, seed=7))
    for cfg in (a, b, c):
        run_ablation(cfg, tracking_uri=tracking_uri, progress=False, force=True)
    files = ("metrics_all.json", "results_table.csv", "results_table.md")
    for name in files:
        assert (tmp_path / "a/out/subj01" / name).read_bytes() == (tmp_path / "b/out/subj01" / name).read_bytes(), name
    assert (tmp_path / "a/out/subj01/metrics_all.json").read_bytes() != \
        (tmp_path / "c/out/subj01/metrics_all.json").read_bytes()


def _kill_at(cmd: list[str], delay: float, env: dict[str, str], cwd: Path) -> int | None:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return proc.returncode  # finished before the kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def _no_corrupt_files(root: Path) -> None:
    """Every file under its final name is complete: JSON parses, .npy loads, Parquet reads."""
    import json

    import pyarrow.parquet as pq

    for path in root.rglob("*"):
        if not path.is_file() or path.name.startswith(".fmri2img-tmp-"):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False, mmap_mode="r")
        elif path.suffix == ".parquet":
            pq.read_table(path)


def _env(tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    return env


@pytest.mark.parametrize("n_kills", [pytest.param(3, id="3-kills"),
                                     pytest.param(10, id="10-kills", marks=pytest.mark.slow)])
def test_index_survives_kill9(world, tmp_path, tracking_uri, n_kills):
    rng = np.random.default_rng(1234)
    reference = world["subj01"].read_bytes()
    cache = tmp_path / "cache"
    out = cache / "indices" / "subj01.parquet"
    cmd = [*CLI, "index", "--subject", "subj01", "--data-root", str(world["data"]), "--cache-root", str(cache),
           "--output", str(out), "--manifest-dir", str(tmp_path / "manifests"), "--no-progress"]
    for _ in range(n_kills):
        _kill_at(cmd, float(rng.uniform(0.5, 8.0)), _env(tracking_uri), tmp_path)
        _no_corrupt_files(tmp_path)
    done = subprocess.run(cmd, env=_env(tracking_uri), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == reference  # same bytes as the uninterrupted build
    from fmri2img.data.betas import load_betas
    from fmri2img.data.schema import read_index

    np.testing.assert_array_equal(load_betas(read_index(out), cache), load_betas(read_index(world["subj01"]),
                                                                                 world["cache"]))


@pytest.mark.parametrize("n_kills", [pytest.param(2, id="2-kills"),
                                     pytest.param(10, id="10-kills", marks=pytest.mark.slow)])
def test_ablate_survives_kill9_and_marks_killed_runs(world, tmp_path, tracking_uri, n_kills):
    import yaml

    # Reference and faulty runs share the checkpoint folder (paths are recorded in the metrics)
    # and the process settings (BLAS thread counts change float results in the last bits).
    ckpt = str(tmp_path / "checkpoints")
    commands = {}
    for name in ("ref", "faulty"):
        cfg_path = tmp_path / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(dataclasses.asdict(_config(world, tmp_path / name, checkpoint_root=ckpt))))
        commands[name] = [*CLI, "ablate", "--config", str(cfg_path), "--force"]
    ref = subprocess.run(commands["ref"], env=_env(tracking_uri), cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr
    cmd = commands["faulty"][:-1]  # no --force: the rerun must resume
    rng = np.random.default_rng(99)
    for _ in range(n_kills):
        _kill_at(cmd, float(rng.uniform(4.0, 25.0)), _env(tracking_uri), tmp_path)
        _no_corrupt_files(tmp_path / "faulty")
    done = subprocess.run(cmd, env=_env(tracking_uri), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("metrics_all.json", "results_table.csv"):
        assert (tmp_path / "ref/out/subj01" / name).read_bytes() == \
            (tmp_path / "faulty/out/subj01" / name).read_bytes(), name
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("fmri2img/imagery")
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id], max_results=5000)]
    assert "RUNNING" not in statuses  # killed runs were marked KILLED by the last ablate


def test_ctrl_c_marks_run_killed_and_leaves_no_checkpoint(world, tmp_path, tracking_uri):
    out = tmp_path / "ckpt"
    config = tmp_path / "train.yaml"  # no early stop: training runs until interrupted
    config.write_text("model: mlp\ndecoder_params: {patience: 100000}\n")
    cmd = [*CLI, "train", "--config", str(config), "--index", str(world["subj01"]), "--epochs", "100000",
           "--cache-root", str(world["cache"]), "--output-dir", str(out)]
    client = MlflowClient(tracking_uri)
    client.search_experiments()  # create the store before the child opens it (plain MLflow is not atomic)
    # Ctrl-C in a terminal: the child gets the default SIGINT handling even when this test runs in
    # a background job (which inherits SIGINT ignored, and Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen(cmd, env=_env(tracking_uri), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    run = None
    while time.monotonic() < deadline and run is None:  # wait until the run exists and training started
        time.sleep(1.0)
        exp = client.get_experiment_by_name("fmri2img/imagery")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        run = next((r for r in runs if r.data.params.get("decoder.hidden_dim")), None)
    if run is None:
        proc.kill()
        pytest.fail(f"training never started: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # generous: a loaded CI machine; a lost Ctrl-C would time out
    # 130, not death by SIGINT: see test_interrupts.py for the two ways a Ctrl-C went wrong here
    assert proc.returncode == 130, err
    assert "Interrupted; the MLflow run was marked KILLED" in err
    assert "Traceback" not in err
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not (out / "best.pt").exists()
