"""Where the ablation's tasks run: a process pool on this host, or Slurm job arrays.

:func:`make_executor` returns a :class:`~fmri2img.core.executors.TaskExecutor` for the config's
``executor``; the task entry points below run under either.

Local (``executor: local``): workers are forked from a fork server that has imported
:data:`WORKER_PRELOAD`; results are identical to a serial run (every model is seeded and
trained deterministically, every task uses :data:`TASK_THREADS` BLAS threads). Each worker
process keeps one :class:`~fmri2img.core.memo.Memo` (:data:`WORKER_MEMO`): every cell of a
subject reads the same sessions and test images and scores the same baselines, which are then
computed once per process. Nothing of the pool outlives the command, however it ends: see
:class:`~fmri2img.core.executors.LocalExecutor` (the workers) and :func:`stop_worker_server`.

Slurm (``executor: slurm``): one job array per stage (submitit), each task a fresh Python process
running :class:`SlurmTask` (no progress bars, log records on the task's stderr log, the tracking
server's URI). The same entry points, the same thread counts: the same numbers as a local run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from threadpoolctl import threadpool_limits

from fmri2img.core import tracking
from fmri2img.core.errors import ConfigError
from fmri2img.core.executors import LocalExecutor, SlurmExecutor, TaskExecutor
from fmri2img.core.logs import LOG_FORMAT, LOGGER, log_to_file
from fmri2img.core.memo import Memo
from fmri2img.stages.ablation.cells import ensure_base_checkpoint, run_cell
from fmri2img.stages.ablation.matrix import AblationConfig
from fmri2img.stages.report import make_figures

#: Threads of the BLAS and OpenMP pools (numpy/scipy: ridge, PCA; torch outside training) inside
#: a checkpoint or cell task, serial, in a worker or on a Slurm node: parallelism comes from
#: ``--jobs`` (or the job array), and a fixed count keeps results independent of the machine's
#: cores and of ``--jobs`` (BLAS sums in a thread-count-dependent order). Torch training is
#: single-threaded already (:data:`fmri2img.models.loop.DETERMINISTIC_CPU_THREADS`).
TASK_THREADS = 1

#: Modules every worker imports, loaded once by the fork server (torch, torch._dynamo (which
#: torch.optim imports on first use), MLflow, pandas, pingouin); the workers forked from it start
#: with them loaded.
WORKER_PRELOAD = ("fmri2img.stages.ablation.workers", "torch._dynamo")

#: What this process reuses across tasks (see the module docstring).
WORKER_MEMO = Memo()

#: The Slurm job name of the ablation's arrays (``squeue -n fmri2img-ablate``).
SLURM_JOB_NAME = "fmri2img-ablate"

#: Seconds between two looks at a job array's results and states (one ``sacct`` call each): cells
#: run for minutes, and a lab's controller should not be polled much faster.
SLURM_POLL_S = 5.0

#: Tracking URI schemes that workers on several nodes cannot share: a SQLite file (its locks do
#: not hold on network filesystems) or a local folder (``file:`` or a bare path).
LOCAL_TRACKING_SCHEMES = ("sqlite", "file", "")


def default_jobs() -> int:
    """The CPU cores this process may run on (its affinity mask: what ``taskset``, a container or a
    Slurm allocation grants, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Entry points of the tasks (module-level: importable by forked, spawned or Slurm workers).
def run_cell_task(args) -> dict[str, Any]:
    """One cell (``args``: :func:`~fmri2img.stages.ablation.cells.run_cell`'s positional arguments)."""
    with threadpool_limits(limits=TASK_THREADS):
        return run_cell(*args, memo=WORKER_MEMO)


def base_checkpoint_task(args) -> str:
    """One perception-only checkpoint, logged as a child of the ablation run."""
    config, cell, fingerprint, parent_run_id, tracking_uri, force, progress = args
    parent = tracking.attach(parent_run_id, tracking_uri)
    with threadpool_limits(limits=TASK_THREADS):
        return str(ensure_base_checkpoint(config, cell, fingerprint, parent, force, progress, memo=WORKER_MEMO))


def figures_task(folder: str) -> str:
    """The figures of one ablation folder (logged to the run in its mlflow_run.json)."""
    make_figures(folder, Path(folder) / "figures")
    return folder


@dataclass(frozen=True)
class SlurmTask:
    """A task entry point as a Slurm task runs it: what :func:`init_worker` does for a local
    worker, in the task's own process.

    Parameters
    ----------
    fn : callable
        The entry point (:func:`run_cell_task`, :func:`base_checkpoint_task`).
    tracking_uri : str
        The tracking server the task logs to (exported as ``MLFLOW_TRACKING_URI`` too).
    """

    fn: Callable[[Any], Any]
    tracking_uri: str

    def __call__(self, item: Any) -> Any:
        os.environ["TQDM_DISABLE"] = "1"  # a bar would fill the task's log with carriage returns
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        # log records go to the task's stderr, i.e. its submitit log (<job id>_<task>_0_log.err),
        # whose last lines a failed cell's error quotes; nodes never append to one shared file
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        root = logging.getLogger(LOGGER)
        root.setLevel(logging.INFO)
        root.addHandler(handler)
        try:
            return self.fn(item)
        finally:
            root.removeHandler(handler)


def mp_context():
    """The pool's start method: 'forkserver' where the platform has it (workers are forked from
    a single-threaded server process that has imported :data:`WORKER_PRELOAD`, so they neither
    re-import everything nor inherit the parent's threads), else 'spawn'. Neither inherits the
    parent's memory (RNG states, memos); :func:`init_worker` gives each worker the parent's
    environment as it is when the pool starts (as 'spawn' does), so results do not depend on it."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server(jobs: int) -> None:
    """Start the fork server now (jobs > 1), so that its imports overlap the serial stages; this
    process stops it when it exits (:func:`stop_worker_server`)."""
    ctx = mp_context()
    if jobs > 1 and ctx.get_start_method() == "forkserver":
        forkserver.ensure_running()
        atexit.unregister(stop_worker_server)  # once, however many ablations this process runs
        atexit.register(stop_worker_server)


def stop_worker_server() -> None:
    """Stop the fork server and wait until it has exited, unless a worker of this process is alive.

    Left alone, the server exits once its clients are gone, but only after it has imported
    :data:`WORKER_PRELOAD` and torn itself down: seconds after a command that failed or was
    interrupted before its pool started. A live worker would keep the server, and so this wait,
    going; pools are shut down before ``atexit`` runs, and the workers of one that was not exit
    only once this process has.
    """
    if not multiprocessing.active_children():
        with contextlib.suppress(OSError):  # already gone: nothing to stop
            forkserver._forkserver._stop()  # noqa: SLF001 - multiprocessing's own stop (no public one)


def init_worker(log_path: str | None, environ: dict[str, str] | None = None) -> None:
    """Initializer of a local worker: the parent's environment, no progress bars, the parent's log."""
    # A forked worker has the fork server's environment (from when it started): take the parent's.
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    # Workers draw no progress bars (their output would interleave); only the parent's bar shows.
    os.environ["TQDM_DISABLE"] = "1"
    if log_path is not None:  # their log records go to the ablation's log file, like the parent's
        log_to_file(log_path)


def local_executor(jobs: int, log_path: Path | None = None) -> LocalExecutor:
    """A pool of ``jobs`` workers (see :func:`mp_context`; logging to ``log_path`` too), or this
    process (``jobs=1``)."""
    return LocalExecutor(jobs, mp_context=mp_context(), initializer=init_worker,
                         initargs=(None if log_path is None else str(log_path), dict(os.environ)))


def check_remote_tracking(tracking_uri: str) -> None:
    """Refuse a tracking store that Slurm tasks on other nodes cannot share (a SQLite file, a folder)."""
    if urlparse(tracking_uri).scheme in LOCAL_TRACKING_SCHEMES:
        raise ConfigError(
            f"executor 'slurm' needs an MLflow tracking server, got tracking URI {tracking_uri!r}: tasks on "
            "other nodes cannot share a SQLite file or folder. Start one (`mlflow server --backend-store-uri "
            "sqlite:///mlflow.db --host 0.0.0.0 --port 5000`; docs/cluster.md) and pass "
            "--tracking-uri http://<host>:5000.")


def slurm_folder(config: AblationConfig) -> Path:
    """Where submitit keeps the tasks' calls, results and logs: ``<log_dir>/slurm`` (shared with the nodes)."""
    return Path(config.log_dir) / "slurm"


def make_executor(config: AblationConfig, jobs: int, log_path: Path | None,
                  poll_interval_s: float = SLURM_POLL_S) -> TaskExecutor:
    """The executor of ``config.executor``: :func:`local_executor` (``jobs`` workers) or a
    :class:`~fmri2img.core.executors.SlurmExecutor` with the config's ``slurm`` resources, asking
    Slurm for its tasks' states every ``poll_interval_s`` seconds."""
    if config.executor == "slurm":
        return SlurmExecutor(slurm_folder(config), config.slurm, job_name=SLURM_JOB_NAME,
                             poll_interval_s=poll_interval_s)
    return local_executor(jobs, log_path)


def task(executor: TaskExecutor, fn: Callable[[Any], Any], tracking_uri: str) -> Callable[[Any], Any]:
    """``fn`` as ``executor`` runs it (wrapped in a :class:`SlurmTask` for Slurm)."""
    return SlurmTask(fn, tracking_uri) if isinstance(executor, SlurmExecutor) else fn
