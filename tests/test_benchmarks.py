"""Benchmarks are not timed tests: CI runs each at a tiny size only to prove it runs and
prints its machine-readable line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, line", [
    ("bench_ridge.py", r"^speedup_vs_best_peer=[0-9.]+$"),
    ("bench_demo.py", r"^demo_wall_s=[0-9.]+$"),
    ("bench_study.py", r"^study_wall_s=[0-9.]+$"),
])
def test_benchmark_runs_tiny(script, line, tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / script), "--tiny"], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(line, out.stdout, re.M), out.stdout[-2000:]
