"""End-to-end benchmark: the embedded-default study (`fmri2img ablate` on the synthetic world,
all four subjects, the full matrix, figures, MLflow) from a fresh working directory.

Usage::

    python benchmarks/bench_demo.py            # the full demo (minutes on 2 cores)
    python benchmarks/bench_demo.py --jobs 2   # cells in 2 worker processes
    python benchmarks/bench_demo.py --tiny     # one tiny subject, ridge, 2 configurations (CI)

Prints where the time goes (inputs, perception-only checkpoints, cells by configuration,
reports/figures) and ends with one machine-readable line ``demo_wall_s=<x>``.
Target (issue "Performance at NSD scale"): <= 120 s on 2 cores after install.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "projects" / "imagery" / "configs" / "ablation.yaml"
TINY_SHAPE = dict(grid=(10, 12, 10), n_mask_voxels=300, n_sessions=1, n_shared=30)


def _stamp(line: str) -> datetime:
    return datetime.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")


def stage_breakdown(workdir: Path) -> dict[str, float]:
    """Seconds per stage from the ablation log (1 s resolution) and each cell's own timing."""
    log = sorted((workdir / "outputs" / "logs" / "imagery").glob("ablate-*.log"))[-1].read_text().splitlines()
    start = _stamp(log[0])
    marks = {"inputs": None, "checkpoints": None, "cells": None, "end": None}
    for line in log:
        if "inputs ready" in line:
            marks["inputs"] = _stamp(line)
        elif "perception-only checkpoint" in line:
            marks["checkpoints"] = _stamp(line)
        elif re.search(r" cell .* (done|reused)$", line):
            marks["cells"] = _stamp(line)
        elif "ablation finished" in line:
            marks["end"] = _stamp(line)
    out = {
        "synth + index + embeddings": (marks["inputs"] - start).total_seconds(),
        "perception-only checkpoints": (marks["checkpoints"] - marks["inputs"]).total_seconds(),
        "cells (train + adapt + eval)": (marks["cells"] - marks["checkpoints"]).total_seconds(),
        "reports + figures + MLflow": (marks["end"] - marks["cells"]).total_seconds(),
    }
    per_config: dict[str, float] = defaultdict(float)
    for timings in (workdir / "outputs" / "imagery_ablations").glob("*/timings.json"):
        for cell, record in json.loads(timings.read_text()).items():
            per_config[cell] += record.get("cell_seconds") or 0.0
    out.update({f"  cell {k} (sum)": v for k, v in sorted(per_config.items())})
    return out


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux /proc/stat: user + nice + system +
    irq + softirq + steal), or None elsewhere. The study's workers are forked by a fork server,
    not waited for by this process, so its own rusage misses them; on a quiet machine the
    difference over the run is the study's CPU time."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="one tiny subject, ridge, two configurations")
    parser.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fmri2img-bench-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        config = CONFIG
        if args.tiny:
            from fmri2img.sim.world import WorldShape, write_world

            write_world(workdir / "data" / "synthetic", subjects=("subj01",), scale=WorldShape(**TINY_SHAPE),
                        progress=False)
            config = workdir / "tiny.yaml"
            config.write_text("subjects: [subj01]\ndecoders: [ridge]\nconfigurations: [perception_only, "
                              "adapter_linear]\neval: {n_boot: 100, n_perm: 100}\nadapt: {epochs: 5}\n")
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", TQDM_DISABLE="1")
        env.pop("MLFLOW_RUN_ID", None)
        cmd = [sys.executable, "-m", "fmri2img.cli.main", "ablate", "--config", str(config), "--jobs", str(args.jobs)]
        cpu_start, start = machine_cpu_seconds(), time.perf_counter()
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        cpu_end = machine_cpu_seconds()
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        print(f"fmri2img ablate ({'tiny' if args.tiny else 'demo'}, jobs={args.jobs}) on {os.cpu_count()} CPUs")
        print(f"{'stage':45s} {'seconds':>9s}")
        stages = stage_breakdown(workdir)
        for stage, seconds in stages.items():
            print(f"{stage:45s} {seconds:9.1f}")
        logged = sum(seconds for stage, seconds in stages.items() if not stage.startswith(" "))
        print(f"{'rest (interpreter, MLflow store and run, exit)':45s} {wall - logged:9.1f}")
        print(f"{'total wall (incl. interpreter start)':45s} {wall:9.1f}")
        if cpu_start is not None and cpu_end is not None:
            print(f"{'machine CPU seconds during the run':45s} {cpu_end - cpu_start:9.1f}")
        print(f"demo_wall_s={wall:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
