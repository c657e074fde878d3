"""NSD-scale benchmark: one subject's whole matrix (3 decoders x 6 configurations) on the local executor.

Usage::

    python benchmarks/bench_study.py                   # NSD scale: ~9,000 training images, hdf5 betas
    python benchmarks/bench_study.py --device cuda     # the same with the decoders on a GPU
    python benchmarks/bench_study.py --tiny            # a demo-scale world, ridge, 2 configurations (CI)

Writes a synthetic subject (``fmri2img synth --scale nsd --sessions N --format hdf5``; N is the
fewest sessions that show ``--train-images`` distinct training images, computed from the world's
design), then runs ``fmri2img ablate`` on it with ``--jobs`` local workers. Prints wall time, busy
CPU seconds of the machine (``/proc/stat``: the workers are forked by a fork server, so this
process's rusage misses them; measure on a quiet machine), the peak memory of the command's whole
process tree (sampled proportional set size: shared pages count once) and, with ``--device cuda``,
of the GPUs (``nvidia-smi``), per stage: synthesis, inputs (index + embeddings), the perception-only
checkpoints, the cells, reports and figures; then each configuration's cell seconds
(summed over decoders, one worker's time). Ends with one machine-readable line ``study_wall_s=<x>``:
the ``ablate`` command, world on disk to reports (synthesis excluded: a real study starts from the
downloaded release).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fmri2img.core.constants import DEFAULT_WORLD_SEED
from fmri2img.data.nsd_constants import NSD_SESSIONS, TRIALS_PER_SESSION
from fmri2img.sim.model import make_design
from fmri2img.sim.world import SCALES

SUBJECT = "subj01"
#: Distinct training (non-shared) images the NSD-scale subject is shown: NSD's subj01 saw all 9,000
#: of its own images over 40 sessions; the first 32 sessions show 8,927 of them (1-2 GB each in hdf5).
DEFAULT_TRAIN_IMAGES = 8_900
SAMPLE_S = 0.5  # how often the process tree's memory and the machine's CPU counters are read
TINY_CONFIG = ("decoders: [ridge]\nconfigurations: [perception_only, adapter_linear]\n"
                "eval: {n_boot: 100, n_perm: 100}\nadapt: {epochs: 5}\n")
#: Ablation log lines that end a stage (bench_demo.py reads the same lines).
STAGE_MARKS = (("inputs (index + embeddings)", r"inputs ready"),
               ("perception-only checkpoints", r"perception-only checkpoint "),
               ("cells (train + adapt + eval)", r" cell \S+ (done|reused)$"),
               ("reports + figures + MLflow", r"ablation finished"))


def sessions_for(train_images: int, seed: int = DEFAULT_WORLD_SEED) -> int:
    """The fewest sessions in which the synthetic subject is shown ``train_images`` distinct
    training images (from the world's design, as ``fmri2img synth`` draws it)."""
    shape = SCALES["nsd"]
    design = make_design(shape, (SUBJECT,), seed)
    for n in range(1, NSD_SESSIONS[SUBJECT] + 1):
        shown = design.masterordering[:n * TRIALS_PER_SESSION]
        if len(np.unique(shown[shown >= shape.n_shared])) >= train_images:
            return n
    raise SystemExit(f"Error: {SUBJECT} is shown fewer than {train_images} training images in "
                     f"{NSD_SESSIONS[SUBJECT]} sessions.")


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (Linux /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tree_memory_bytes(root_pid: int) -> int:
    """Memory of ``root_pid`` and all its descendants: the sum of their proportional set sizes
    (Linux ``/proc/<pid>/smaps_rollup``), so that pages a fork server shares with its workers count
    once, not once per worker as a sum of RSS would."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root_pid}, {root_pid}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in tree}
        tree |= frontier
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total


def gpu_memory_bytes() -> int:
    """Memory in use on the machine's GPUs (``nvidia-smi``), 0 without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(int(v) for v in out.split()) * 2**20


def monitored(cmd: list[str], cwd: Path, env: dict[str, str],
              gpu: bool = False) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``cmd``; return its result and samples ``(unix time, machine CPU s, tree memory bytes,
    GPU memory bytes (0 unless ``gpu``))``."""
    samples: list[tuple[float, float, int, int]] = []
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), machine_cpu_seconds(), tree_memory_bytes(proc.pid),
                            gpu_memory_bytes() if gpu else 0))
            done.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    samples.append((time.time(), machine_cpu_seconds(), 0, 0))
    done.set()
    thread.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), samples


def _between(samples: list, t0: float, t1: float) -> tuple[float, float, float]:
    """Machine CPU seconds, the process tree's and the GPUs' peak memory (bytes) between unix times t0 and t1."""
    times = np.array([s[0] for s in samples])
    cpu = np.interp([t0, t1], times, [s[1] for s in samples])
    inside = [s for s in samples if t0 - SAMPLE_S <= s[0] <= t1 + SAMPLE_S] or [(0, 0, 0, 0)]
    return float(cpu[1] - cpu[0]), float(max(s[2] for s in inside)), float(max(s[3] for s in inside))


def _stamp(line: str) -> float:
    return datetime.strptime(line[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def stage_bounds(log_path: Path, start: float, end: float) -> list[tuple[str, float, float]]:
    """(stage, start, end) in unix time from the ablation log's stage lines (1 s resolution); the
    first stage starts with the log's first line."""
    lines = log_path.read_text().splitlines()
    last: dict[str, float] = {}
    for line in lines:
        for stage, pattern in STAGE_MARKS:
            if re.search(pattern, line):
                last[stage] = _stamp(line)
    t0 = min(max(_stamp(lines[0]), start), end)
    bounds = []
    for stage, _ in STAGE_MARKS:
        t1 = min(max(last.get(stage, t0), t0), end)
        bounds.append((stage, t0, t1))
        t0 = t1
    return bounds


def run_study(workdir: Path, args: argparse.Namespace) -> int:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", TQDM_DISABLE="1")
    env.pop("MLFLOW_RUN_ID", None)
    cli = [sys.executable, "-m", "fmri2img.cli.main"]
    if args.tiny:
        scale, sessions = "demo", 1
    else:
        scale, sessions = "nsd", sessions_for(args.train_images)
    rows = []
    if args.reuse_world:
        params = workdir / "data" / "truth" / "params.json"
        written = json.loads(params.read_text())["sessions_written"] if params.is_file() else {}
        if written.get(SUBJECT) != sessions:
            raise SystemExit(f"Error: --reuse-world: {params} is not a world of {SUBJECT} with {sessions} sessions "
                             f"(found {written or 'no world'}); expected the world this benchmark writes.")
        rows.append(("synthesis (reused: not measured)", 0.0, 0.0, float("nan"), float("nan"), float("nan")))
    else:
        synth_cmd = [*cli, "synth", "--subject", SUBJECT, "--scale", scale, "--sessions", str(sessions),
                     "--format", "hdf5", "--out", str(workdir / "data"), "--force"]
        done, samples = monitored(synth_cmd, workdir, env)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        rows.append(("synthesis (not in study_wall_s)", samples[0][0], samples[-1][0],
                     *_between(samples, samples[0][0], samples[-1][0])))
    config = workdir / "study.yaml"
    config.write_text(f"subjects: [{SUBJECT}]\nsynthesize: false\ndevice: {args.device}\n"
                      + (TINY_CONFIG if args.tiny else ""))
    ablate_cmd = [*cli, "ablate", "--config", str(config), "--data-root", str(workdir / "data"),
                  "--jobs", str(args.jobs), "--executor", "local"]
    done, samples = monitored(ablate_cmd, workdir, env, gpu=args.device == "cuda")
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    start, end = samples[0][0], samples[-1][0]
    log_path = sorted((workdir / "outputs" / "logs" / "imagery").glob("ablate-*.log"))[-1]
    bounds = stage_bounds(log_path, start, end)
    for stage, t0, t1 in bounds:
        rows.append((stage, t0, t1, *_between(samples, t0, t1)))
    cpu_total, mem_total, gpu_total = _between(samples, start, end)
    # the rest: interpreter start and imports before the log's first line, MLflow's close and exit after the last
    rest_wall = (bounds[0][1] - start) + (end - bounds[-1][2])
    rest_cpu = cpu_total - sum(r[3] for r in rows[1:])
    rows.append(("interpreter, MLflow run, exit", 0.0, rest_wall, rest_cpu, mem_total, gpu_total))
    print(f"fmri2img ablate, one subject ({scale} scale, sessions={sessions}, hdf5), device={args.device}, "
          f"jobs={args.jobs}, on {os.cpu_count()} CPUs")
    print(f"{'stage':40s} {'wall s':>9s} {'CPU s':>9s} {'peak PSS GB':>12s} {'peak GPU GB':>12s}")
    for stage, t0, t1, cpu, mem, gpu in rows:
        print(f"{stage:40s} {t1 - t0:9.1f} {cpu:9.1f} {mem / 1e9:12.2f} {gpu / 1e9:12.2f}")
    per_config: dict[str, float] = defaultdict(float)
    for cell, record in json.loads((workdir / "outputs" / "imagery_ablations" / SUBJECT / "timings.json")
                                   .read_text()).items():
        per_config[cell.split("__")[-1]] += record.get("cell_seconds") or 0.0
    for configuration, seconds in sorted(per_config.items()):
        print(f"  cells {configuration:32s} {seconds:9.1f}  (summed over decoders, one worker's seconds)")
    print(f"{'total ablate':40s} {end - start:9.1f} {cpu_total:9.1f} {mem_total / 1e9:12.2f} {gpu_total / 1e9:12.2f}")
    print(f"study_wall_s={end - start:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="local workers (default: "
                        "the cores available)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES,
                        help="distinct training images to write sessions for (NSD scale)")
    parser.add_argument("--tiny", action="store_true", help="demo-scale world (1 session), ridge, 2 configurations")
    parser.add_argument("--reuse-world", action="store_true", help="use the world already in --workdir/data (written "
                        "by an earlier run; its synthesis is not measured again)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the world and outputs here (default: a "
                        "temporary folder; NSD scale needs ~1.1 GB per session)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fmri2img-bench-study-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        return run_study(workdir, args)


if __name__ == "__main__":
    raise SystemExit(main())
