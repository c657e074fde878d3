"""The one place that talks to MLflow.

Every command that produces results runs inside :func:`run`, which

* resolves the tracking URI (``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > MLflow's own
  default, ``sqlite:///mlflow.db`` in the working directory, artifacts under ``./mlruns``),
  and fails fast with one line when a remote server cannot be reached;
* logs the resolved parameters, the seeds, the git commit (if any), package versions, the
  command line and the process id (so a later run can tell a crashed run from a live one);
* ends the run FINISHED on success, FAILED on an error and KILLED on Ctrl-C / SIGTERM.

It uses :class:`mlflow.tracking.MlflowClient` explicitly (no fluent global state), so
nested runs and parallel workers never step on each other's "active run".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from fmri2img.core.constants import DEFAULT_EXPERIMENT, INIT_SEED, SPLIT_SEED
from fmri2img.core.errors import TrackingError
from fmri2img.core.files import dumps_json
from fmri2img.core.provenance import git_commit, package_versions

#: MLflow's own default store in MLflow 3.x (see the MLflow tracking docs, "Backend stores").
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: Seconds to wait for a remote tracking server before failing (fail fast, never hang).
CONNECT_TIMEOUT_S = 3.0

#: MLflow rejects parameter values longer than this many characters (MLflow 3 limit is 6000).
MAX_PARAM_CHARS = 6000

TAG_PID = "fmri2img.pid"
TAG_HOST = "fmri2img.host"
TAG_STAGE = "fmri2img.stage"
#: Tag of a FAILED run: the error's type and text (what the CLI printed), so the UI shows why it failed.
TAG_ERROR = "fmri2img.error"
#: MLflow's limit on a tag value (``MAX_TAG_VAL_LENGTH`` in ``mlflow/utils/validation.py``).
MAX_TAG_CHARS = 8000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str) -> None:
    """Fail fast (one line) if the store at ``uri`` is obviously unusable."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            raise TrackingError(
                f"Tracking server {uri} is unreachable ({exc.strerror or exc}); start it, "
                "or use a local store with --tracking-uri sqlite:///mlflow.db."
            ) from None
    elif parsed.scheme == "sqlite":
        db_path = uri[len("sqlite:///"):]
        parent = Path(db_path).parent if db_path else Path(".")
        if db_path and not (parent.is_dir() and os.access(parent, os.W_OK)):
            raise TrackingError(
                f"Tracking store {uri}: folder {parent} does not exist or is not writable."
            )
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        parent = path if path.exists() else path.parent
        if not (parent.exists() and os.access(parent, os.W_OK)):
            raise TrackingError(f"Tracking store {uri}: {parent} is not a writable folder.")


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else dumps_json(value).strip()
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


@dataclass
class Run:
    """Handle on one MLflow run (what :func:`run` yields)."""

    client: Any
    run_id: str
    experiment_id: str
    tracking_uri: str
    _logged_params: dict[str, str] = field(default_factory=dict)

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Log (nested) parameters; nested keys become ``a.b``. Re-logging a key is skipped."""
        flat = {k: v for k, v in _flatten(params, prefix).items() if k not in self._logged_params}
        if flat:
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])
            self._logged_params.update(flat)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        """Log numeric metrics (``None`` and non-finite values are skipped)."""
        self._log_metric_values((key, value, step or 0) for key, value in metrics.items())

    def log_history(self, history: Sequence[Mapping[str, Any]], prefix: str = "") -> None:
        """Log a per-epoch history (one dict per epoch) as metrics stepped by the epoch (the
        ``epoch`` key itself is the step, not a metric; records without it use their position),
        in as few batches as possible.

        One ``log_batch`` call per 900 values instead of one per epoch: on the SQLite store every
        call is a transaction. Non-numeric and non-finite values are skipped.
        """
        self._log_metric_values((f"{prefix}{key}", value, int(record.get("epoch", i)))
                                for i, record in enumerate(history) for key, value in record.items()
                                if key != "epoch" and isinstance(value, (int, float)))

    def _log_metric_values(self, values) -> None:
        """``(key, value, step)`` triples -> batched ``log_batch`` calls (None / non-finite skipped)."""
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value, step in values
                 if value is not None and math.isfinite(float(value))]
        for start in range(0, len(batch), 900):  # MLflow accepts 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[start:start + 900])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, os.fspath(path), artifact_path)

    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, os.fspath(folder), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Log ``obj`` as a deterministic JSON artifact named ``artifact_file``."""
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_text(dumps_json(obj), encoding="utf-8")
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(target), None if parent == "." else parent)


class NullRun:
    """A :class:`Run` that logs nothing (``run_id`` None): a stage whose caller logs its results
    into a run of its own (an ablation cell) works in one of these."""

    run_id = None
    experiment_id = None
    tracking_uri = None

    def _ignore(self, *args, **kwargs) -> None:
        return None

    log_params = log_metrics = log_history = set_tags = log_artifact = log_artifacts = log_dict = _ignore


#: The one :class:`NullRun` (it has no state).
NULL_RUN = NullRun()


@functools.lru_cache(maxsize=8)
def _client(uri: str):
    """One client per store and process: opening a SQLite store (SQLAlchemy engine, schema
    check) costs seconds, and an ablation opens hundreds of runs."""
    _quiet_mlflow()
    _create_sqlite_store_atomically(uri)
    return MlflowClient(tracking_uri=uri)


def _create_sqlite_store_atomically(uri: str) -> None:
    """Create a new SQLite store under a temporary name and link it into place.

    MLflow creates its tables with a sequence of schema migrations; a process killed in the
    middle (kill -9 of a first run) would leave a half-migrated ``mlflow.db`` that every later
    run refuses ("table ... already exists"). Built aside and linked (which fails if another
    process got there first), the store appears complete or not at all.
    """
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists() or not path.parent.is_dir():
        return
    tmp = path.with_name(f".fmri2img-tmp-{os.getpid()}-{path.name}")
    try:
        store = MlflowClient(tracking_uri=f"sqlite:///{tmp}")._tracking_client.store  # runs the migrations
        store.engine.dispose()
        try:
            os.link(tmp, path)
        except FileExistsError:  # created concurrently by another process: use theirs
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by a parallel worker
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so the run ends KILLED."""


@contextlib.contextmanager
def run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent: Run | None = None,
    seeds: Mapping[str, int] | None = None,
) -> Iterator[Run]:
    """Open an MLflow run for ``stage``; close it FINISHED / FAILED / KILLED.

    Parameters
    ----------
    stage : str
        Command name (``synth``, ``index``, ``train``...), stored as a tag.
    params : mapping
        Resolved configuration; nested mappings are flattened to ``a.b`` keys.
    parent : Run, optional
        Makes this a nested child run of ``parent`` (same experiment).
    seeds : mapping, optional
        Seeds used; defaults to the project seeds (split 42, init 123).
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    outer = os.environ.get("MLFLOW_RUN_ID") if parent is None else None
    if outer:  # launched by `mlflow run`: log into the run MLflow opened (and let it close it)
        os.environ.pop("MLFLOW_RUN_ID")
        yield from _adopt(outer, uri, stage, params, tags, seeds)
        return
    try:
        client = _client(uri)
        exp_id = parent.experiment_id if parent else _experiment_id(client, experiment)
        all_tags = {
            TAG_STAGE: stage,
            TAG_PID: str(os.getpid()),
            TAG_HOST: socket.gethostname(),
            "mlflow.source.name": "fmri2img " + " ".join(sys.argv[1:])[:200],
        }
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if run_name:
            all_tags["mlflow.runName"] = run_name
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        created = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    except TrackingError:
        raise
    except Exception as exc:  # store cannot be opened or written
        raise TrackingError(f"Cannot use tracking store {uri}: {exc}".splitlines()[0]) from None

    handle = Run(client=client, run_id=created.info.run_id, experiment_id=exp_id, tracking_uri=uri)
    previous_handler = None
    if parent is None and _is_main_thread():
        previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_terminated)
    status = "FAILED"
    try:
        handle.log_params({"seed": dict(seeds or {"split": SPLIT_SEED, "init": INIT_SEED})})
        handle.log_params({"versions": package_versions()})
        if params:
            handle.log_params(params)
        yield handle
        status = "FINISHED"
    except (KeyboardInterrupt, _Terminated):
        status = "KILLED"
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):  # the run still ends FAILED if the store refuses the tag
            client.set_tag(handle.run_id, TAG_ERROR, f"{type(exc).__name__}: {exc}"[:MAX_TAG_CHARS])
        raise
    finally:
        with contextlib.suppress(Exception):
            client.set_terminated(handle.run_id, status=status)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _adopt(run_id, uri, stage, params, tags, seeds):
    client = _client(uri)
    info = client.get_run(run_id).info
    handle = Run(client=client, run_id=run_id, experiment_id=info.experiment_id, tracking_uri=uri)
    handle.set_tags({TAG_STAGE: stage, TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(), **(tags or {})})
    handle.log_params({"seed": dict(seeds or {"split": SPLIT_SEED, "init": INIT_SEED})})
    handle.log_params({"versions": package_versions()})
    if params:
        handle.log_params(params)
    yield handle


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated()


def mark_orphaned_runs(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> list[str]:
    """Mark RUNNING runs of this host whose process is gone as KILLED; return their ids.

    A process killed with SIGKILL cannot close its run, so MLflow keeps showing it as
    RUNNING. ``ablate`` calls this at start so such runs never look live or FINISHED.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    marked = []
    for info in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = info.data.tags
        if tags.get(TAG_HOST) != host:
            continue
        try:
            pid = int(tags.get(TAG_PID, "-1"))
        except ValueError:
            continue
        if pid > 0 and not _pid_alive(pid):
            client.set_tag(info.info.run_id, "fmri2img.orphaned", "process died without closing the run")
            client.set_terminated(info.info.run_id, status="KILLED")
            marked.append(info.info.run_id)
    return marked


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (an exited process that its
    parent has not reaped yet still answers ``kill(pid, 0)``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # the state follows the parenthesised command name


def log_artifacts_to_run(
    run_id: str, folder: str | os.PathLike, artifact_path: str | None = None, tracking_uri: str | None = None
) -> None:
    """Attach the files of ``folder`` to an existing (possibly finished) run, e.g. figures
    made later from an ablation."""
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    _client(uri).log_artifacts(run_id, os.fspath(folder), artifact_path)


def attach(run_id: str, tracking_uri: str | None = None) -> Run:
    """A :class:`Run` handle on an existing run (e.g. the ablation's parent, from a worker process)."""
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    info = client.get_run(run_id).info
    return Run(client=client, run_id=run_id, experiment_id=info.experiment_id, tracking_uri=uri)
