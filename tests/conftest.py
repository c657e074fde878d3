"""Shared pytest fixtures: every test gets its own MLflow store and working directory."""

from __future__ import annotations

import os
import signal

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking_store(tmp_path_factory):
    """No test writes mlflow.db or mlruns/ into the checkout: by default every test logs to a
    session-wide store in a temp folder (the working directory moves there too, because MLflow
    puts a SQLite store's artifacts under ./mlruns)."""
    root = tmp_path_factory.mktemp("mlflow-session")
    previous_cwd, previous_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.chdir(root)
    yield
    os.chdir(previous_cwd)
    if previous_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous_uri

@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests():
    """A test run started in the background (``nohup``, ``&`` in a shell without job control) inherits
    SIGINT ignored, and so would every command the Ctrl-C tests start (tests/test_interrupts.py,
    test_slurm.py, test_ablate_interrupt.py): give the session Python's default handler, as an
    interactive shell does, and restore what it had afterwards."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# Tests must be deterministic and must not oversubscribe the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store under tmp_path, also exported as MLFLOW_TRACKING_URI.

    The working directory moves to tmp_path too, because MLflow puts the artifacts of a
    SQLite store under ``./mlruns``.
    """
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(scope="session")
def slurm_cluster():
    """The Slurm cluster to submit to (see tests/_slurm.py); skips the test when none answers,
    fails it instead where FMRI2IMG_REQUIRE_SLURM=1 (CI starts one)."""
    from _slurm import REQUIRE_ENV, find_cluster

    cluster, reason = find_cluster()
    if cluster is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return cluster
