"""Shared pytest fixtures: every test gets its own MLflow store and working directory."""

from __future__ import annotations

import os

import pytest

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
