"""LocalExecutor's workers end with their pool: an interrupt stops their running tasks (whose
cleanup runs to its end), an idle worker leaves Ctrl-C to the pool's owner, and a worker whose
owner was killed exits instead of living on as an orphan. Real pools, real signals.

The whole `fmri2img ablate` command is tested the same way in test_ablate_interrupt.py (slow).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fmri2img
from fmri2img.core.executors import LocalExecutor

#: How long a worker may outlive its killed owner (it exits as soon as it notices; measured < 0.1 s).
GRACE_S = 10.0
#: How long a task waits for Ctrl-C: the tests fail, not hang, if it never comes.
TASK_WAIT_S = 30.0
REPO = Path(fmri2img.__file__).resolve().parents[1]


def wait_for_ctrl_c(folder: str) -> None:
    """Wait for Ctrl-C; on it, get a second one (as from the terminal) and clean up regardless."""
    path = Path(folder)
    try:  # started inside the try: a Ctrl-C sent once the file exists always finds the handler
        (path / f"started-{os.getpid()}").touch()
        time.sleep(TASK_WAIT_S)
    except KeyboardInterrupt:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the second Ctrl-C arrives during the cleanup
        (path / f"cleaned-{os.getpid()}").touch()
        raise


def pid_of(_: int) -> int:
    time.sleep(0.2)  # both workers take a task
    return os.getpid()


def square(x: int) -> int:
    return x * x


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TASK_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {TASK_WAIT_S} s"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited


def test_leaving_the_block_on_ctrl_c_interrupts_the_running_tasks(tmp_path):
    with pytest.raises(KeyboardInterrupt), LocalExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.map(wait_for_ctrl_c, [str(tmp_path)] * 2)
        _wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2, "two started tasks")
        del results
        raise KeyboardInterrupt  # as the handler of a Ctrl-C that reached this process only
    started = {p.name.split("-")[1] for p in tmp_path.glob("started-*")}
    assert {p.name.split("-")[1] for p in tmp_path.glob("cleaned-*")} == started


def test_an_idle_worker_leaves_ctrl_c_to_the_pools_owner():
    with LocalExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        workers = set(pool.map(pid_of, range(4)))
        for pid in workers:  # Ctrl-C reaches the whole process group
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert list(pool.map(square, range(6))) == [x * x for x in range(6)]  # the pool is not broken
        assert set(pool.map(pid_of, range(4))) == workers


_OWNER = """
import multiprocessing, os, sys, time
from fmri2img.core.executors import LocalExecutor

def report_and_wait(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    with LocalExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1])) as pool:
        list(pool.map(report_and_wait, [os.path.join(sys.argv[2], name) for name in ("a", "b")]))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_exit_when_their_owner_is_killed(tmp_path, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    (tmp_path / "owner.py").write_text(textwrap.dedent(_OWNER))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    owner = subprocess.Popen([sys.executable, str(tmp_path / "owner.py"), method, str(tmp_path)], env=env,
                             start_new_session=True)
    try:
        _wait_for(lambda: all((tmp_path / n).is_file() and (tmp_path / n).read_text() for n in "ab"), "workers")
        workers = [int((tmp_path / name).read_text()) for name in "ab"]
        owner.kill()
        owner.wait(timeout=30)
        deadline = time.monotonic() + GRACE_S
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their killed owner"
    finally:  # whatever the outcome, nothing of the test is left running
        try:
            os.killpg(owner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        owner.wait(timeout=30)
