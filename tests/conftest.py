"""Shared pytest fixtures: every test gets its own MLflow store and working directory."""

from __future__ import annotations

import os

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
