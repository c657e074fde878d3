"""`fmri2img ablate --jobs 2` as a real command in its own process group (issue #22): nothing it
starts (fork server, resource tracker, pool workers) outlives it, whether it finishes, is
interrupted (Ctrl-C, SIGTERM) or is killed; an interrupt cancels the running cells, removes
their partial outputs, marks the MLflow run KILLED, and a rerun reuses the cells that finished.

Real subprocesses, a real process pool, a real MLflow store; every output in a temp folder.
The command's processes are found by their process group (orphans are re-parented to pid 1
but keep their group), read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _world import build_tiny
from mlflow.tracking import MlflowClient

import fmri2img
from fmri2img.core.files import read_json
from fmri2img.stages.report import MLFLOW_RUN_FILE

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")

#: How long a process of the command may outlive it. Measured here: none is left when it has
#: exited (it waits for its fork server); the rest is room for the resource tracker's own exit.
GRACE_S = 5.0
#: Limit of one `ablate` run of these tests (they take 10-30 s on the 2-core test machine).
RUN_TIMEOUT_S = 300.0
#: How often the tests look at the command's processes and output tree.
POLL_S = 0.05
#: Exit codes of the CLI wrapper (fmri2img/cli/_common.py): Ctrl-C, SIGTERM.
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
REPO = Path(fmri2img.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("world"))


def _config(world, root: Path, configurations: tuple[str, ...]) -> Path:
    """A one-subject ridge ablation reading ``world``, writing everything under ``root``."""
    config = {
        "subjects": ["subj01"], "decoders": ["ridge"], "configurations": list(configurations),
        "data_root": str(world["data"]), "cache_root": str(world["cache"]),
        "index_dir": str(world["cache"] / "indices"), "manifest_dir": str(world["manifests"]),
        "checkpoint_root": str(root / "checkpoints"), "output_root": str(root / "out"),
        "log_dir": str(root / "logs"), "synthesize": False, "figures": False,
        "adapt": {"epochs": 20}, "eval": {"n_boot": 200, "n_perm": 200},
    }
    path = root / "ablation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ... (None: gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _group(pgid: int) -> dict[tuple[int, str], str]:
    """Live processes of process group ``pgid``: (pid, start time) -> command line (zombies are dead)."""
    found = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is None or fields[0] == "Z" or int(fields[2]) != pgid:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[(int(entry.name), fields[19])] = cmdline.strip()
    return found


def _alive(processes: dict[tuple[int, str], str]) -> list[str]:
    """Those of ``processes`` still running (same pid and start time, not a zombie)."""
    out = []
    for (pid, started), cmdline in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == started and fields[0] != "Z":
            out.append(f"{pid} (ppid {fields[1]}): {cmdline[:150]}")
    return out


class Ablate:
    """One ``fmri2img ablate --jobs 2`` child in a new process group, with every process seen in it."""

    def __init__(self, config: Path, root: Path, *args: str) -> None:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.stderr_path = root / f"stderr-{time.monotonic_ns()}.txt"
        with self.stderr_path.open("w") as stderr:
            # a new session: its own process group, as a shell gives a job; SIGINT at its default
            # (a background test runner may ignore it, and Python then keeps ignoring it)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fmri2img.cli.main", "ablate", "--config", str(config), "--jobs", "2", *args],
                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.seen: dict[tuple[int, str], str] = {}
        self.exit_time: float | None = None

    def look(self) -> None:
        self.seen.update(_group(self.proc.pid))

    def wait_until(self, condition, what: str) -> None:
        """Poll until ``condition()`` holds while the command runs; fail if it exits or times out first."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not condition():
            self.look()
            assert self.proc.poll() is None, f"ablate exited ({self.proc.returncode}) before {what}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {what} within {RUN_TIMEOUT_S} s"
            time.sleep(POLL_S)

    def wait(self) -> int:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while self.proc.poll() is None:
            self.look()
            assert time.monotonic() < deadline, f"ablate still running after {RUN_TIMEOUT_S} s"
            time.sleep(POLL_S)
        self.exit_time = time.monotonic()
        return self.proc.returncode

    def survivors(self) -> list[str]:
        """The processes of the command still running :data:`GRACE_S` after it exited (or none, as soon as none is)."""
        while True:
            alive = _alive({**self.seen, **_group(self.proc.pid)})
            if not alive or time.monotonic() > self.exit_time + GRACE_S:
                return alive
            time.sleep(POLL_S)

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]

    def kill(self) -> None:
        """Cleanup, should a test fail: SIGKILL whatever of the command is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, started in self.seen:
            fields = _stat(pid)
            if fields is not None and fields[19] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def ablate():
    started: list[Ablate] = []

    def start(config: Path, root: Path, *args: str) -> Ablate:
        started.append(Ablate(config, root, *args))
        return started[-1]

    yield start
    for run in started:
        run.kill()


def _pool_workers(seen: dict[tuple[int, str], str]) -> int:
    """Fork-server processes seen (the server and the workers it forked)."""
    return sum("multiprocessing.forkserver" in cmdline for cmdline in seen.values())


def _cells(root: Path) -> tuple[set[str], set[str]]:
    """Cell folders of the output tree: (finished: with cell.json, partial: without)."""
    folders = [p for p in (root / "out" / "subj01" / "eval").glob("*") if p.is_dir()]
    finished = {p.name for p in folders if (p / "cell.json").is_file()}
    return finished, {p.name for p in folders} - finished


@pytest.mark.slow
def test_nothing_outlives_a_finished_parallel_ablate(world, tmp_path, ablate):
    run = ablate(_config(world, tmp_path, ("perception_only", "mixed")), tmp_path)
    assert run.wait() == 0, run.stderr()
    assert _pool_workers(run.seen) >= 2, run.seen  # the fork server and at least one worker ran
    assert run.survivors() == []


def test_nothing_outlives_a_failed_parallel_ablate(world, tmp_path, ablate):
    """An error after the fork server has started (here: no NSD release at data_root)."""
    (tmp_path / "empty").mkdir()
    config = _config({**world, "data": tmp_path / "empty"}, tmp_path, ("perception_only", "mixed"))
    run = ablate(config, tmp_path)
    assert run.wait() == 2, run.stderr()
    assert run.stderr().startswith("Error: File not found"), run.stderr()
    assert _pool_workers(run.seen) >= 1, run.seen  # the fork server had started
    assert run.survivors() == []


@pytest.mark.slow
def test_a_killed_ablate_leaves_no_orphans(world, tmp_path, ablate):
    """kill -9 of the command mid-cell: its workers (blocked on the task queue or in a cell) and,
    through them, the fork server would live on for good; they follow it instead."""
    run = ablate(_config(world, tmp_path, ("perception_only", "mixed", "adapter_linear")), tmp_path)
    run.wait_until(lambda: _cells(tmp_path)[1], "a cell started")
    run.proc.kill()
    assert run.wait() == -signal.SIGKILL
    assert _pool_workers(run.seen) >= 2, run.seen
    assert run.survivors() == []


@pytest.mark.slow
@pytest.mark.parametrize(("whom", "signum", "exit_code"), [
    ("process group", signal.SIGINT, EXIT_INTERRUPTED),  # Ctrl-C in a terminal
    ("command", signal.SIGTERM, EXIT_TERMINATED),  # `kill <pid>`: the workers are not signalled
], ids=["ctrl-c", "sigterm"])
def test_interrupt_cancels_the_cells_and_a_rerun_reuses_the_finished(world, tmp_path, ablate, whom, signum,
                                                                      exit_code):
    config = _config(world, tmp_path, ("perception_only", "mixed", "adapter_linear", "finetune"))
    run = ablate(config, tmp_path)
    run.wait_until(lambda: all(_cells(tmp_path)), "a finished cell and a running one")
    _, running = _cells(tmp_path)
    (os.killpg if whom == "process group" else os.kill)(run.proc.pid, signum)
    assert run.wait() == exit_code, run.stderr()
    assert "the MLflow run was marked KILLED" in run.stderr()
    assert run.survivors() == []

    finished, partial = _cells(tmp_path)
    assert not partial, f"cell folders without cell.json: {partial}"
    assert running - finished, f"the running cells {running} were finished, not cancelled"
    ablation_run = read_json(tmp_path / "out" / MLFLOW_RUN_FILE)
    assert MlflowClient(ablation_run["tracking_uri"]).get_run(ablation_run["run_id"]).info.status == "KILLED"

    rerun = ablate(config, tmp_path)
    assert rerun.wait() == 0, rerun.stderr()
    assert rerun.survivors() == []
    log = max((tmp_path / "logs").glob("ablate-*.log"), key=lambda p: p.stat().st_mtime).read_text()
    reused = set(re.findall(r"cell subj01/(\S+) reused", log))
    assert reused == finished, log
    assert _cells(tmp_path) == ({"ridge__perception_only", "ridge__mixed", "ridge__adapter_linear",
                                 "ridge__finetune"}, set())
