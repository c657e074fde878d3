"""Run MLflow's UI server on the project's tracking store, and stop all of it.

``mlflow server`` starts a tree of processes (uvicorn and its workers, a job runner and its huey
consumers; about 3 GB together) and does not pass a SIGTERM on to them. :func:`serve` therefore
starts it in a process group of its own, forwards Ctrl-C / SIGTERM / SIGHUP to that whole group,
waits, kills what is left after a timeout and returns only when no process of the group remains.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from fmri2img.core import tracking_layout as layout
from fmri2img.core.errors import InputError, MissingInputError, TrackingError

#: MLflow 3's default store (MLflow tracking docs, "Backend stores"); relative to the working directory.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: Seconds the server's processes get to exit after SIGTERM before the group is killed.
STOP_TIMEOUT_S = 10.0

#: Signals forwarded to the server's process group (Ctrl-C, ``kill``, a closed terminal).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Environment of the server: no GenAI job runner (7 huey consumer processes this UI does not need),
#: no telemetry (the machine may be offline). Names from ``mlflow/environment_variables.py``.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class Store:
    """A resolved tracking store: its URI, its SQLite file (if any) and where new artifacts go."""

    uri: str
    path: Path | None
    artifact_root: Path | None

    def describe(self) -> str:
        return f"store {self.uri}" + (f" (artifacts under {self.artifact_root})" if self.artifact_root else "")


def resolve_store(uri: str | None = None, *, create: bool = False) -> Store:
    """The store ``fmri2img ui`` opens: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    in the working directory, made absolute. A missing SQLite file is refused unless ``create``.

    Raises
    ------
    MissingInputError
        The SQLite file (or its folder) does not exist.
    InputError
        ``uri`` is a tracking server, which serves its own UI.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        raise InputError(f"Tracking URI {uri} is a tracking server; it serves its own UI at that address.")
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri[len("sqlite://"):]).resolve()
        if not path.parent.is_dir():
            raise MissingInputError(f"Tracking store {uri}: folder {path.parent} does not exist.")
        if not path.is_file() and not create:
            raise MissingInputError(f"Tracking store {path} does not exist; run `make demo` in the project folder, "
                                    "pass --tracking-uri, or add --create to open a new empty store.")
        return Store(f"sqlite:///{path}", path, path.parent / "mlruns")
    if scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme == "file" else uri).resolve()
        if not path.is_dir() and not create:
            raise MissingInputError(f"Tracking store folder {path} does not exist; pass --tracking-uri or --create.")
        return Store(path.as_uri(), None, path)
    return Store(uri, None, None)  # another database: the server checks it


def server_command(store: Store, *, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for ``store``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    if store.artifact_root is not None:
        cmd += ["--default-artifact-root", str(store.artifact_root)]
    return cmd


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`InputError` if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InputError(f"Cannot serve on {host}:{port} ({exc.strerror or exc}); choose another --port.") from None


def experiment_id(store: Store, name: str) -> str | None:
    """The id of experiment ``name`` in ``store``, or ``None`` (also for a store that does not exist yet)."""
    if store.path is not None and not store.path.is_file():
        return None


    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    try:
        experiment = MlflowClient(tracking_uri=store.uri).get_experiment_by_name(name)
    except Exception as exc:  # not an MLflow store, or an unreadable one
        raise TrackingError(f"Cannot read tracking store {store.uri}: {exc}".splitlines()[0]) from None
    return experiment.experiment_id if experiment is not None else None


def has_view(store: Store, experiment: str, key: str = layout.COMPARE_VIEW_KEY) -> bool:
    """Whether ``experiment`` holds the saved view ``key``."""

    return (layout.SHARED_VIEW_TAG_PREFIX + key) in MlflowClient(tracking_uri=store.uri).get_experiment(experiment).tags


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, read from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pgid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM process group ``pgid``, wait up to ``timeout`` seconds, SIGKILL what is left, and
    return once no live process of the group remains."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True), ``proc`` exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a local http URL
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def serve(cmd: list[str], *, env: Mapping[str, str] | None = None, stop_timeout: float = STOP_TIMEOUT_S,
          on_start: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run ``cmd`` in its own process group until it exits or a forwarded signal stops it.

    Returns the server's exit status, or ``128 + signal`` when a signal stopped it (130 for Ctrl-C,
    143 for SIGTERM). No process of the group is left when this returns.
    """
    received: list[int] = []
    proc = subprocess.Popen(cmd, env={**os.environ, **SERVER_ENV, **(env or {})}, start_new_session=True)

    def forward(signum, frame):  # noqa: ARG001 - signal handler signature
        received.append(signum)
        _signal_group(proc.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        if on_start is not None:
            on_start(proc)
        stopping_since = None
        while proc.poll() is None:
            if received and stopping_since is None:
                stopping_since = time.monotonic()
            if stopping_since is not None and time.monotonic() - stopping_since > stop_timeout:
                _signal_group(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        stop_group(proc.pid, stop_timeout)
        proc.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 + received[0] if received else proc.returncode
