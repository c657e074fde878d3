"""Run a list of independent tasks here or on a Slurm cluster, results in input order.

A *task* is one call ``fn(item)`` of a picklable module-level function on one picklable item
(a tuple of arguments for a function that unpacks several). Tasks must be independent and
idempotent: running one twice gives the same result and the second run may reuse the first's
output. Both executors have the semantics of
``builtins.map`` / :meth:`concurrent.futures.Executor.map` with one iterable:
``executor.map(fn, items)`` yields ``fn(item)`` for each item, in input order.

- :class:`LocalExecutor`: a process pool of ``jobs`` workers (``jobs=1``: in this process). Its
  workers end with the ``with`` block however it ends: Ctrl-C or SIGTERM interrupts their running
  tasks (each task's cleanup runs) and the pool is shut down and joined; a worker whose owner
  died without that (``kill -9``, the OOM killer) exits at once instead of living on as an orphan.
- :class:`SlurmExecutor`: one Slurm job array per :meth:`~SlurmExecutor.map` call, through
  submitit (``AutoExecutor(folder, cluster="slurm")``), with the per-task resources of
  :class:`SlurmResources`. A task that is preempted or reaches its time limit is requeued with
  the same call (submitit's checkpointing; tasks are idempotent). A task that fails raises
  :class:`TaskFailedError` naming its Slurm job id, its log and the last lines of its stderr.
  Ctrl-C (or any other early exit) cancels every job of the array still queued or running.

This module knows nothing of what the tasks compute.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import submitit

from fmri2img.core import interrupts
from fmri2img.core.config import check_positive
from fmri2img.core.errors import ConfigError, Fmri2imgError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("fmri2img.executors")

#: Exit code of a command whose task failed: an ordinary failure (1), not bad input (2).
TASK_FAILED_EXIT_CODE = 1
#: Exit code of a pool worker whose owner process is gone (nobody is left to read its result).
ORPHANED_WORKER_EXIT_CODE = 1
#: Lines of a failed task's stderr quoted in :class:`TaskFailedError`.
STDERR_TAIL_LINES = 3
#: Slurm job states after which a job never runs again (``sacct`` names; Slurm's squeue(1)
#: "JOB STATE CODES"). PREEMPTED is absent: Slurm's PreemptMode=REQUEUE brings such a job back.
TERMINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                             "OUT_OF_MEMORY", "TIMEOUT"})
#: Seconds before its time limit that Slurm signals a task (submitit's ``signal_delay_s`` default,
#: ``#SBATCH --signal=USR2@90``); submitit then requeues it. A shorter limit would requeue at once.
SIGNAL_DELAY_S = 90
#: How long a finished task's stderr may lag behind its result file before the error is reported
#: (srun appends its own last line once the task's process has exited).
STDERR_SETTLE_S = 30.0


class TaskFailedError(Fmri2imgError, RuntimeError):
    """A task of a Slurm job array failed (raised, was killed, ran out of time or memory).

    The message is one line: the task's index, its Slurm job id and final state, the path of its
    stderr log and the last lines of that log."""

    exit_code = TASK_FAILED_EXIT_CODE

    def __init__(self, message: str, *, job_id: str = "", state: str = "", log_path: str = "",
                 stderr_tail: str = "") -> None:
        super().__init__(message)
        self.job_id, self.state, self.log_path, self.stderr_tail = job_id, state, log_path, stderr_tail


class TaskExecutor(abc.ABC):
    """Runs independent tasks and yields their results in input order; a context manager.

    Subclasses implement :meth:`map`; :meth:`close` releases what the executor holds (workers,
    jobs still on a cluster) and is called when the ``with`` block ends, however it ends."""

    @abc.abstractmethod
    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Yield ``fn(item)`` for each of ``items``, in input order.

        Parameters
        ----------
        fn : callable
            A module-level (importable, picklable) function of one argument.
        items : iterable
            One picklable argument per task (a tuple for several arguments).

        Returns
        -------
        iterator
            The results, in the order of ``items``. An exception of a task is raised when its
            result would be yielded (local) or as soon as it is seen (Slurm).
        """

    def close(self) -> None:
        """Release workers and cancel unfinished tasks (nothing to do by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class LocalExecutor(TaskExecutor):
    """Tasks in a process pool of ``jobs`` workers on this host, or in this process (``jobs=1``).

    The keyword arguments are those of :class:`concurrent.futures.ProcessPoolExecutor` (start
    method context, worker initializer and its arguments); one pool serves every :meth:`map`
    call until :meth:`close`.

    Notes
    -----
    A worker ignores SIGINT between tasks and takes the first one inside a task as Ctrl-C
    (:func:`fmri2img.core.interrupts.raised_once`). Leaving the ``with`` block on an interrupt
    (``KeyboardInterrupt``, or any other exception that is not an :class:`Exception`, such as
    the one a SIGTERM handler raises) calls :meth:`interrupt` before :meth:`close`, so the
    command returns once the running tasks have cleaned up, not once they have finished. Each
    worker also watches its owner (:func:`multiprocessing.parent_process`'s sentinel) and exits
    when the owner is gone.
    """

    def __init__(self, jobs: int = 1, *, mp_context: Any = None, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> None:
        self.jobs = jobs
        self.mp_context = mp_context
        self.initializer = initializer
        self.initargs = initargs
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        check_positive("jobs", self.jobs)
        if self.jobs == 1:
            return map(fn, items)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=self.mp_context,
                                             initializer=_start_worker, initargs=(self.initializer, self.initargs))
        return self._pool.map(functools.partial(_run_task, fn), items)

    def interrupt(self) -> None:
        """Ctrl-C for the running tasks: SIGINT to every worker (idle ones ignore it).

        What the terminal does when it signals the whole process group, for a process that was
        signalled alone (``kill -INT``, ``kill``): ``shutdown(cancel_futures=True)`` cancels only the
        tasks not yet started, and ``concurrent.futures`` has no way to stop running ones before
        Python 3.14's ``terminate_workers``, which kills them before they can clean up."""
        processes = self._pool._processes if self._pool is not None else None  # noqa: SLF001 - see the docstring
        for process in list((processes or {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)

    def close(self) -> None:
        """Cancel the tasks not yet started, wait for the running ones, join the workers."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):  # Ctrl-C, SIGTERM, SystemExit
            self.interrupt()
        self.close()


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Initializer of every :class:`LocalExecutor` worker: exit with the owner, leave Ctrl-C
    between tasks to the owner, then the caller's ``initializer``."""
    owner = multiprocessing.parent_process()  # the process that started the worker, also under forkserver
    if owner is not None:
        threading.Thread(target=_exit_when_gone, args=(owner.sentinel,), name="exit-with-owner",
                         daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _exit_when_gone(sentinel: int) -> None:
    """Exit this worker as soon as ``sentinel`` (its owner's) is ready, i.e. the owner has exited.

    An owner that dies without shutting the pool down (``kill -9``, the OOM killer) leaves its
    workers blocked on the task queue for good (each holds a copy of the queue's write end, so
    none ever reads end-of-file), and through them the fork server. A task cut off here cleans
    nothing up: outputs without their completion marker are never trusted and are redone."""
    multiprocessing.connection.wait([sentinel])
    os._exit(ORPHANED_WORKER_EXIT_CODE)


def _run_task(fn: Callable[[T], R], item: T) -> R:
    """One task in a worker: the first SIGINT meanwhile raises KeyboardInterrupt in it."""
    with interrupts.raised_once():
        return fn(item)


@dataclass(frozen=True)
class SlurmResources:
    """What each task of a job array asks Slurm for (the ``slurm:`` section of a stage config).

    Parameters
    ----------
    partition : str or None
        Slurm partition (``--partition``); None: the cluster's default partition.
    cpus_per_task : int
        CPUs of each task (``--cpus-per-task``).
    mem_gb : float or None
        Memory of each task in GB (``--mem``); None: the partition's default.
    gpus_per_task : int
        GPUs of each task (``--gpus-per-task``); 0 asks for none.
    timeout_min : int
        Time limit of each task in minutes (``--time``). Shortly before it, submitit requeues the
        task (see ``max_requeues``); an idempotent task then starts again from its last saved state.
    array_parallelism : int
        At most this many tasks of the array run at once (``--array=0-N%P``).
    max_requeues : int
        How often a task that reached its time limit is requeued before it fails (preemptions
        do not count).
    additional_parameters : dict
        Further sbatch options, name without dashes -> value (``{"qos": "high", "account": "lab"}``;
        ``True`` for a flag).
    """

    partition: str | None = None
    cpus_per_task: int = 1
    mem_gb: float | None = None
    gpus_per_task: int = 0
    timeout_min: int = 60
    array_parallelism: int = 64
    max_requeues: int = 3
    additional_parameters: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_positive("cpus_per_task", self.cpus_per_task)
        if self.mem_gb is not None:
            check_positive("mem_gb", self.mem_gb)
        check_positive("gpus_per_task", self.gpus_per_task, allow_zero=True)
        if self.timeout_min * 60 <= SIGNAL_DELAY_S:
            raise ConfigError(f"Invalid timeout_min={self.timeout_min!r}; expected at least "
                              f"{SIGNAL_DELAY_S // 60 + 1} minutes (Slurm warns a task {SIGNAL_DELAY_S} s before "
                              "its time limit, and submitit requeues it then).")
        check_positive("array_parallelism", self.array_parallelism)
        check_positive("max_requeues", self.max_requeues, allow_zero=True)
        if self.partition is not None and not self.partition.strip():
            raise ConfigError("Invalid partition=''; expected a Slurm partition name or null.")
        for key in self.additional_parameters:
            if not isinstance(key, str) or not key or key.startswith("-"):
                raise ConfigError(f"Invalid additional_parameters key {key!r}; expected an sbatch option name "
                                  "without leading dashes, e.g. 'qos'.")

    def submitit_parameters(self) -> dict[str, Any]:
        """The ``AutoExecutor.update_parameters`` keywords for these resources."""
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task,
                                  "slurm_array_parallelism": self.array_parallelism}
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.gpus_per_task:
            params["slurm_gpus_per_task"] = self.gpus_per_task
        if self.additional_parameters:
            params["slurm_additional_parameters"] = dict(self.additional_parameters)
        return params


class _Requeueable(submitit.helpers.Checkpointable):
    """``fn`` as a submitit checkpointable callable: when Slurm signals a preemption or the
    coming time limit, submitit calls :meth:`checkpoint`, whose default resubmits this same call
    (the task is idempotent), and requeues the job."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        return self.fn(item)


class SlurmExecutor(TaskExecutor):
    """Tasks as one Slurm job array per :meth:`map` call, submitted with submitit.

    Parameters
    ----------
    folder : str or path-like
        Where submitit writes each task's pickled call, result and logs
        (``<job id>_<task>_log.err``). Must be on a filesystem shared by this host and the nodes.
    resources : SlurmResources, optional
        What each task asks for; default ``SlurmResources()``.
    job_name : str
        The arrays' Slurm job name (``squeue``'s NAME).
    poll_interval_s : float
        How often the results are looked for and ``sacct`` is asked for the tasks' states.
    python : str, optional
        The command that runs Python on the nodes; default: this interpreter (``sys.executable``).

    Notes
    -----
    The tasks run with the environment of the submitting process (sbatch's default
    ``--export=ALL``), so ``PYTHONPATH``, ``MLFLOW_TRACKING_URI`` and the like carry over. A task is
    seen as failed once ``sacct`` reports a final state without a result (accounting, i.e.
    ``slurmdbd``, is needed for that), or as soon as its result holds an exception.
    """

    def __init__(self, folder: str | os.PathLike, resources: SlurmResources | None = None, *,
                 job_name: str = "fmri2img", poll_interval_s: float = 5.0, python: str | None = None) -> None:
        self.folder = folder
        self.resources = resources
        self.job_name = job_name
        self.poll_interval_s = poll_interval_s
        self.python = python
        self._unfinished: dict[str, list[submitit.Job]] = {}  # array id -> jobs, until its map ends

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if not items:
            return iter(())
        jobs = self._submit(fn, items)
        return self._results(jobs)

    def close(self) -> None:
        """Cancel the jobs of every array whose results were not all collected."""
        for array_id in list(self._unfinished):
            self._cancel(array_id)

    # -- submission ------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any], items: list[Any]) -> list[submitit.Job]:
        resources = self.resources if self.resources is not None else SlurmResources()
        resources.validate()
        check_positive("poll_interval_s", self.poll_interval_s)
        kwargs: dict[str, Any] = {"slurm_max_num_timeout": resources.max_requeues}
        if self.python is not None:
            kwargs["slurm_python"] = self.python
        # cluster="slurm" always: AutoExecutor() alone picks Slurm whenever `srun` is on PATH, and
        # "debug" would run the tasks here and enter pdb on an exception.
        executor = submitit.AutoExecutor(folder=Path(self.folder), cluster="slurm", **kwargs)
        executor.update_parameters(name=self.job_name, **resources.submitit_parameters())
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal; we raise it
                jobs = executor.map_array(_Requeueable(fn), items)
        except submitit.core.utils.FailedJobError as exc:  # sbatch refused the job array
            reason = " ".join(str(exc).split()) or "no message"
            raise ConfigError(f"Slurm refused the job array of {len(items)} tasks ({reason}); check the Slurm "
                              f"resources {dataclasses.asdict(resources)}.") from None
        array_id = _array_id(jobs[0])
        self._unfinished[array_id] = jobs
        log.info("submitted Slurm job array %s: %d tasks of %s; logs in %s", array_id, len(jobs),
                 getattr(fn, "__qualname__", fn), Path(self.folder).resolve())
        return jobs

    def _cancel(self, array_id: str) -> None:
        """Cancel every task of the array still queued or running (one ``scancel`` of its id)."""
        self._unfinished.pop(array_id, None)
        done = subprocess.run(["scancel", array_id], capture_output=True, text=True, check=False)
        log.info("cancelled Slurm job array %s%s", array_id, f" ({done.stderr.strip()})" if done.returncode else "")

    # -- results ---------------------------------------------------------------------------

    def _results(self, jobs: list[submitit.Job]) -> Iterator[Any]:
        """Yield the tasks' results in input order; raise at the first failure seen; cancel the
        array on any early exit (a failure, KeyboardInterrupt, the consumer closing the iterator)."""
        array_id = _array_id(jobs[0])
        results: dict[int, Any] = {}
        next_index = 0
        try:
            while next_index < len(jobs):
                for index in range(next_index, len(jobs)):
                    if index not in results:
                        self._collect(jobs, index, results)
                while next_index in results:
                    result = results.pop(next_index)
                    next_index += 1
                    yield result
                if next_index < len(jobs):
                    time.sleep(self.poll_interval_s)
                    jobs[0].watcher.update()  # one sacct call for every unfinished job
        finally:
            if next_index < len(jobs):
                self._cancel(array_id)
            self._unfinished.pop(array_id, None)

    def _collect(self, jobs: list[submitit.Job], index: int, results: dict[int, Any]) -> None:
        """Store task ``index``'s result in ``results`` if it has one; raise if it failed."""
        job = jobs[index]
        if job.paths.result_pickle.exists():
            try:
                results[index] = job.result()
            except submitit.core.utils.UncompletedJobError:  # the task raised: its result holds the traceback
                raise self._failure(jobs, index, _settled_state(job, self.poll_interval_s)) from None
            return
        state = _state(job)
        if state not in TERMINAL_STATES:
            return
        if state == "COMPLETED":  # the result may lag on a network filesystem: submitit waits for it
            try:
                results[index] = job.result()
                return
            except submitit.core.utils.UncompletedJobError:
                pass
        raise self._failure(jobs, index, job.watcher.get_state(job.job_id, mode="cache"))

    def _failure(self, jobs: list[submitit.Job], index: int, state: str) -> TaskFailedError:
        job = jobs[index]
        path = job.paths.stderr
        tail = _tail(path, STDERR_TAIL_LINES)
        where = f"log {path}" if path.exists() else f"no log at {path} (is the folder shared with the nodes?)"
        message = (f"Task {index} of {len(jobs)} failed: Slurm job {job.job_id} ended {state}; {where}; "
                   f"last lines of stderr: {tail or '(empty)'}")
        return TaskFailedError(message, job_id=job.job_id, state=state, log_path=str(path), stderr_tail=tail)


def _array_id(job: submitit.Job) -> str:
    """The id of the job array ``job`` belongs to (``"123_4"`` -> ``"123"``)."""
    return str(job.job_id).split("_")[0]


def _state(job: submitit.Job) -> str:
    """The job's last known Slurm state, first word only (``"CANCELLED by 0"`` -> ``"CANCELLED"``)."""
    state = job.watcher.get_state(job.job_id, mode="cache")
    return state.split()[0].upper() if state else "UNKNOWN"


def _settled_state(job: submitit.Job, poll_interval_s: float) -> str:
    """Wait (at most :data:`STDERR_SETTLE_S`) until ``sacct`` shows the job ended, so that its stderr
    is complete; return its full state."""
    deadline = time.monotonic() + STDERR_SETTLE_S
    while _state(job) not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(min(poll_interval_s, 1.0))
        job.watcher.update()
    return job.watcher.get_state(job.job_id, mode="cache")


def _tail(path: Path, n_lines: int) -> str:
    """The last ``n_lines`` non-blank lines of a text file, joined by `` | `` ("" if unreadable)."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    return " | ".join([line for line in lines if line][-n_lines:])
