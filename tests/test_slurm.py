"""SlurmExecutor against a real Slurm cluster (scripts/slurm/start-cluster.sh; CI starts one).

Skipped, with the reason, when no cluster answers (see tests/_slurm.py). The toy tasks below are
module-level and travel to the nodes by value (cloudpickle), so the nodes need not import this file.
Each test names its job array uniquely, to find it with squeue/sacct.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from _slurm import run, sacct_states, squeue_ids

from fmri2img.core.errors import ConfigError, Fmri2imgError
from fmri2img.core.executors import LocalExecutor, SlurmExecutor, SlurmResources, TaskFailedError

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]
cloudpickle.register_pickle_by_value(sys.modules[__name__])

POLL_S = 0.3  # the tests poll fast; the default (5 s) suits a lab cluster
WAIT_S = 30.0  # how long a test waits for the cluster to do something


# ----------------------------------------------------------------------------- toy tasks

def compute(item: tuple[int, int, float]) -> tuple[int, float]:
    """A deterministic computation that sleeps first, so tasks finish out of input order."""
    index, seed, sleep_s = item
    time.sleep(sleep_s)
    x = np.random.default_rng(seed).standard_normal((64, 32))
    return index, float(np.linalg.norm(x @ x.T))


def failing(item: int) -> int:
    if item == 2:
        raise ValueError(f"bad item {item}")
    if item == 3:
        time.sleep(600)  # still running when task 2 fails: cancelled with the array
    return item


def slurm_view(_: int) -> dict[str, str | None]:
    """What a task sees of its allocation."""
    names = ("SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE", "SLURM_JOB_PARTITION", "FMRI2IMG_TEST_FLAG")
    return {name: os.environ.get(name) for name in names}


def marked(item: tuple[int, str]) -> list[int]:
    """Idempotent task: a finished task's marker (written atomically) is its result on a rerun.

    Each run appends its Slurm job id to ``runs-<i>`` and writes ``started-<i>`` (``<job id> <pid>``);
    while ``hold-<i>`` exists the task waits (to be killed, signalled or cancelled there)."""
    index, folder_name = item
    folder = Path(folder_name)
    done = folder / f"done-{index}.json"
    if done.exists():
        return json.loads(done.read_text())
    with open(folder / f"runs-{index}", "a") as runs:
        runs.write(os.environ["SLURM_JOB_ID"] + "\n")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")  # a map of one task is a plain job, not an array
    job_id = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    (folder / f"started-{index}").write_text(f"{job_id} {os.getpid()}")
    while (folder / f"hold-{index}").exists():
        time.sleep(0.1)
    result = [index, index * index]
    tmp = folder / f"done-{index}.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, done)
    return result


# ----------------------------------------------------------------------------- helpers

def _name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _wait_for(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _started(folder: Path, index: int) -> tuple[str, int]:
    """(Slurm job id, pid) of task ``index`` once it has started."""
    path = folder / f"started-{index}"
    text = _wait_for(lambda: path.exists() and path.read_text(), f"task {index} to start")
    job_id, pid = text.split()
    return job_id, int(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _array_states(name: str) -> dict[str, str]:
    """sacct's view of the one array named ``name``."""
    # --starttime: without -j, sacct lists only jobs since midnight (a test running across it would miss its job)
    listed = run("sacct", "-n", "-X", "-P", "--name", name, "--starttime", "now-1hours", "-o", "JobID").stdout
    ids = {line.split("_")[0] for line in listed.split()}
    assert len(ids) == 1, f"expected one job array named {name}, sacct lists {sorted(ids)}"
    return sacct_states(ids.pop())


# ----------------------------------------------------------------------------- tests

def test_job_array_results_in_input_order_and_equal_to_local(slurm_cluster, tmp_path):
    items = [(i, 100 + i, s) for i, s in enumerate([1.0, 0.2, 0.6, 0.0, 0.3, 0.0])]
    name = _name()
    slurm = SlurmExecutor(tmp_path / "slurm", SlurmResources(array_parallelism=3), job_name=name,
                          poll_interval_s=POLL_S)
    on_slurm = list(slurm.map(compute, items))
    with LocalExecutor(jobs=1) as serial, LocalExecutor(jobs=2) as pool:
        assert on_slurm == list(serial.map(compute, items)) == list(pool.map(compute, items))
    assert [index for index, _ in on_slurm] == list(range(len(items)))
    # they did run as one Slurm job array (accounting hears of the last end a moment after its result)
    _wait_for(lambda: sorted(_array_states(name).values()) == ["COMPLETED"] * len(items), "sacct: all COMPLETED")


def test_resources_reach_the_tasks(slurm_cluster, tmp_path):
    resources = SlurmResources(partition=slurm_cluster.partition, cpus_per_task=2, mem_gb=0.5, timeout_min=2,
                               additional_parameters={"export": "ALL,FMRI2IMG_TEST_FLAG=42"})
    [seen] = SlurmExecutor(tmp_path, resources, poll_interval_s=POLL_S).map(slurm_view, [0])
    assert seen == {"SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "512",
                    "SLURM_JOB_PARTITION": slurm_cluster.partition, "FMRI2IMG_TEST_FLAG": "42"}
    script = next(tmp_path.glob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@" in script  # Slurm warns of the time limit: submitit then requeues


def test_failed_task_names_job_log_and_stderr_and_cancels_the_rest(slurm_cluster, tmp_path):
    name = _name()
    executor = SlurmExecutor(tmp_path, SlurmResources(array_parallelism=2), job_name=name, poll_interval_s=POLL_S)
    with pytest.raises(TaskFailedError) as info:
        list(executor.map(failing, [0, 1, 2, 3]))
    error = info.value
    message = str(error)
    assert isinstance(error, Fmri2imgError) and error.exit_code == 1
    assert "\n" not in message
    assert error.job_id.endswith("_2") and f"Slurm job {error.job_id} ended FAILED" in message
    assert Path(error.log_path).is_file() and f"log {error.log_path}" in message
    assert "ValueError: bad item 2" in error.stderr_tail and error.stderr_tail in message
    still_running = error.job_id.replace("_2", "_3")
    _wait_for(lambda: _array_states(name).get(still_running, "").startswith("CANCELLED"), "task 3 to be cancelled")
    assert _array_states(name)[error.job_id] == "FAILED"


@pytest.mark.parametrize("kill", ["scancel", "kill -9"])
def test_killed_task_is_seen_failed_and_a_rerun_redoes_only_unfinished_tasks(slurm_cluster, tmp_path, kill):
    folder = tmp_path / "work"
    folder.mkdir()
    items = [(i, str(folder)) for i in range(4)]
    (folder / "hold-1").touch()
    executor = SlurmExecutor(tmp_path / "slurm", SlurmResources(array_parallelism=2), job_name=_name(),
                             poll_interval_s=POLL_S)
    results = executor.map(marked, items)
    job_id, pid = _started(folder, 1)
    _wait_for(lambda: all((folder / f"done-{i}.json").exists() for i in (0, 2, 3)), "the other tasks")
    if kill == "scancel":
        subprocess.run(["scancel", job_id], check=True)
    else:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(TaskFailedError) as info:
        list(results)
    print(f"{kill}: failure seen {time.monotonic() - killed:.1f}s after the kill")
    assert info.value.job_id == job_id and info.value.state.split()[0] in ("CANCELLED", "FAILED")
    # a cancelled task's process gets SIGTERM, which submitit ignores, then SIGKILL after KillWait
    _wait_for(lambda: not _alive(pid), f"the killed task's process {pid} to end")
    (folder / "hold-1").unlink()
    assert list(executor.map(marked, items)) == [[i, i * i] for i in range(4)]
    runs = {i: (folder / f"runs-{i}").read_text().split() for i in range(4)}
    assert [len(runs[i]) for i in range(4)] == [1, 2, 1, 1], runs  # only the killed task ran again


def test_signalled_task_is_requeued_and_finishes(slurm_cluster, tmp_path):
    """USR2 is what Slurm sends before the time limit (--signal=USR2@...) and what submitit treats as
    preemption: the task is checkpointed (the same call) and the job requeued."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "hold-0").touch()
    name = _name()
    executor = SlurmExecutor(tmp_path / "slurm", job_name=name, poll_interval_s=POLL_S)
    results = executor.map(marked, [(0, str(folder)), (1, str(folder))])
    job_id, _ = _started(folder, 0)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    _wait_for(lambda: sacct_states(job_id).get(job_id) in ("REQUEUED", "PENDING"), "the requeue")
    (folder / "hold-0").unlink()  # Slurm starts it again once its old credential expired (cred_expire)
    assert list(results) == [[0, 0], [1, 1]]
    assert len((folder / "runs-0").read_text().split()) == 2  # the same call ran twice: requeued once
    _wait_for(lambda: _array_states(name)[job_id] == "COMPLETED", f"sacct: {job_id} COMPLETED")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_task_at_its_time_limit_is_requeued_and_finishes(slurm_cluster, tmp_path):
    """The real thing: Slurm itself signals the task SIGNAL_DELAY_S before its 2-minute limit."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "hold-0").touch()
    name = _name()
    executor = SlurmExecutor(tmp_path / "slurm", SlurmResources(timeout_min=2), job_name=name,
                             poll_interval_s=POLL_S)
    results = executor.map(marked, [(0, str(folder))])
    job_id, _ = _started(folder, 0)
    _wait_for(lambda: sacct_states(job_id).get(job_id) in ("REQUEUED", "PENDING"), "the requeue", timeout_s=150)
    (folder / "hold-0").unlink()
    assert list(results) == [[0, 0]]
    assert len((folder / "runs-0").read_text().split()) == 2
    log = (tmp_path / "slurm" / f"{job_id}_0_log.out").read_text()
    assert "this job is timed-out" in log and "Requeued job" in log


def test_keyboard_interrupt_cancels_the_array(slurm_cluster, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    for i in range(4):
        (folder / f"hold-{i}").touch()
    name = _name()
    executor = SlurmExecutor(tmp_path / "slurm", SlurmResources(array_parallelism=1), job_name=name,
                             poll_interval_s=POLL_S)

    def press_ctrl_c() -> None:
        _started(folder, 0)
        os.kill(os.getpid(), signal.SIGINT)

    results = executor.map(marked, [(i, str(folder)) for i in range(4)])
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        list(results)
    presser.join()
    _wait_for(lambda: not squeue_ids(name), "the array to leave the queue")
    states = _array_states(name)
    assert states and all(state.startswith("CANCELLED") for state in states.values()), states
    assert not (folder / "runs-1").exists()  # the queued tasks never started


def test_refused_submission_is_a_config_error(slurm_cluster, tmp_path):
    executor = SlurmExecutor(tmp_path, SlurmResources(partition="no_such_partition"), poll_interval_s=POLL_S)
    with pytest.raises(ConfigError, match="Slurm refused the job array of 2 tasks.*invalid partition"):
        executor.map(compute, [(0, 0, 0.0), (1, 1, 0.0)])
