"""benchmarks/bench_extract.py runs end to end at the tiny size and ends with its two result lines.

Like tests/test_benchmarks.py: not a timed test, only proof that the benchmark runs (CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_extract.py"


def test_bench_extract_tiny_prints_machine_readable_lines(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--root", str(tmp_path / "world")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert (tmp_path / "world" / "truth" / "params.json").is_file()  # written where asked
    assert "formats_equal=True" in lines  # .nii.gz and .hdf5 extractions agree exactly
    ratio = re.fullmatch(r"extract_vs_decompress=(\d+\.\d+)", lines[-2])
    peak = re.fullmatch(r"peak_rss_mb=(\d+)", lines[-1])
    assert ratio and peak, lines[-3:]
    assert float(ratio.group(1)) > 0 and int(peak.group(1)) > 0
