"""``fmri2img ui``: which store it opens, when it refuses, and that a signal stops the whole server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _procs import children
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core import tracking_layout as layout
from fmri2img.core import ui_server
from fmri2img.core.errors import InputError, MissingInputError

ROOT = Path(__file__).resolve().parents[1]
#: Seconds a real MLflow server may take to answer /health on the 2-core CI machine.
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _store(path: Path, experiment: str = "t/ui", view: bool = False) -> str:
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    exp = layout.setup_experiment(client, experiment, "d")
    if view:
        layout.save_view(client, exp, layout.compare_view_state(group_by=["decoder"], metrics=["m"]))
    return uri


def test_default_store_is_mlflow_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError, match=str(tmp_path / "mlflow.db")):
        ui_server.resolve_store()
    store = ui_server.resolve_store(create=True)
    assert (store.uri, store.artifact_root) == (f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///sub.db")
    (tmp_path / "sub.db").touch()
    assert ui_server.resolve_store().path == tmp_path / "sub.db"


def test_refusals(tmp_path):
    with pytest.raises(InputError, match="tracking server"):
        ui_server.resolve_store("http://127.0.0.1:5000")
    with pytest.raises(MissingInputError, match="folder .*nowhere does not exist"):
        ui_server.resolve_store(f"sqlite:///{tmp_path / 'nowhere' / 'm.db'}", create=True)
    with pytest.raises(MissingInputError, match="--create"):
        ui_server.resolve_store(str(tmp_path / "file-store"))


def test_cli_refuses_a_missing_store_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["ui", "--print"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "mlflow.db") in lines[0] and "--create" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()
    result = CliRunner().invoke(app, ["ui", "--print", "--create"])
    assert result.exit_code == 0, result.output
    assert f"Store: sqlite:///{tmp_path / 'mlflow.db'}" in result.output


def test_cli_prints_store_artifacts_and_urls(tmp_path):
    uri = _store(tmp_path / "m.db", view=True)
    exp = MlflowClient(uri).get_experiment_by_name("t/ui").experiment_id
    result = CliRunner().invoke(app, ["ui", "--print", "--tracking-uri", uri, "--experiment", "t/ui",
                                      "--port", "5123", "--compare"])
    assert result.exit_code == 0, result.output
    assert f"Store: {uri}" in result.output and f"Artifacts: {tmp_path / 'mlruns'}" in result.output
    assert f"Compare: {layout.runs_url('http://127.0.0.1:5123', exp, layout.COMPARE_VIEW_KEY)}" in result.output
    assert "--port 5123" in result.output


def test_cli_compare_without_a_view_and_busy_port_are_refused(tmp_path):
    uri = _store(tmp_path / "m.db")
    result = CliRunner().invoke(app, ["ui", "--print", "--compare", "--tracking-uri", uri, "--experiment", "t/ui"])
    assert result.exit_code == 2 and "no compare view" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--tracking-uri", uri, "--port", str(port)])
    assert result.exit_code == 2 and f"127.0.0.1:{port}" in result.output


def test_stop_group_kills_processes_that_ignore_sigterm():
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); time.sleep(600)']); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 20
    while len(ui_server.group_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(ui_server.group_members(proc.pid)) == 2
    started = time.monotonic()
    ui_server.stop_group(proc.pid, timeout=1.0)
    proc.wait(timeout=5)
    assert ui_server.group_members(proc.pid) == [] and time.monotonic() - started < 10


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_server_and_all_its_workers(tmp_path, signum, expected):
    uri = _store(tmp_path / "m.db")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = subprocess.Popen([sys.executable, "-m", "fmri2img.cli.main", "ui", "--tracking-uri", uri, "--port",
                            str(port), "--workers", "2"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pgid = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and cli.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        servers = children(cli.pid)
        pgid = servers[0] if len(servers) == 1 else None
        assert pgid is not None, (servers, cli.poll())
        assert os.getpgid(pgid) == pgid != os.getpgid(cli.pid)  # the server has its own group
        assert len(ui_server.group_members(pgid)) >= 3  # server, uvicorn, its workers
        cli.send_signal(signum)
        _, err = cli.communicate(timeout=60)
    finally:  # whatever failed above: leave no process behind
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
        if pgid is not None:
            ui_server.stop_group(pgid, timeout=5)
    assert cli.returncode == expected, err[-2000:]
    assert ui_server.group_members(pgid) == []
