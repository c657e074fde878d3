"""``fmri2img ablate``: run the whole matrix, serially or in a pool of worker processes.

Workers are forked from a fork server that has imported :data:`WORKER_PRELOAD`; results are
identical to a serial run (every model is seeded and trained deterministically, every task uses
:data:`TASK_THREADS` BLAS threads). Each worker process keeps one :class:`~fmri2img.core.memo.Memo`
(:data:`WORKER_MEMO`): every cell of a subject reads the same sessions and test images and scores
the same baselines, which are then computed once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from fmri2img.core import interrupts, tracking
from fmri2img.core.config import check_positive
from fmri2img.core.constants import DEFAULT_EXPERIMENT
from fmri2img.core.files import ensure_dir, write_json
from fmri2img.core.logs import get_logger, log_to_file, stage_log
from fmri2img.core.memo import Memo
from fmri2img.stages.ablation.cells import ensure_base_checkpoint, ensure_inputs, run_cell
from fmri2img.stages.ablation.matrix import AblationConfig, Cell, subject_dir, write_stage_configs
from fmri2img.stages.ablation.study_log import finish_study_run, start_study_run
from fmri2img.stages.ablation.summary import collect_subject, write_summary
from fmri2img.stages.report import MLFLOW_RUN_FILE, make_figures

#: Order in which cells are handed to the worker pool: the longest first (mixed training fits
#: one model per imagery fold), so that the workers finish together (longest-processing-time
#: scheduling). Results are collected in matrix order whatever the submission order.
SUBMIT_ORDER = ("mixed", "finetune", "adapter_mlp_condition", "adapter_mlp", "adapter_linear", "perception_only")

#: Threads of the BLAS and OpenMP pools (numpy/scipy: ridge, PCA; torch outside training) inside
#: a checkpoint or cell task, serial or in a worker: parallelism comes from ``--jobs``, and a fixed
#: count keeps results independent of the machine's cores and of ``--jobs`` (BLAS sums in a
#: thread-count-dependent order). Torch training is single-threaded already
#: (:data:`fmri2img.models.loop.DETERMINISTIC_CPU_THREADS`).
TASK_THREADS = 1

#: Modules every worker imports, loaded once by the fork server (torch, torch._dynamo (which
#: torch.optim imports on first use), MLflow, pandas, pingouin); the workers forked from it start
#: with them loaded.
WORKER_PRELOAD = ("fmri2img.stages.ablation.executor", "torch._dynamo")

#: What this process reuses across tasks (see the module docstring).
WORKER_MEMO = Memo()


# Entry points of the pool's tasks (module-level: importable by spawned or forked workers).
def _run_cell_task(args):
    with threadpool_limits(limits=TASK_THREADS):
        return run_cell(*args, memo=WORKER_MEMO)


def _base_checkpoint_task(args) -> str:
    # one perception-only checkpoint, logged as a child of the ablation run
    config, subject, decoder, fingerprint, parent_run_id, tracking_uri, force, progress = args
    parent = tracking.attach(parent_run_id, tracking_uri)
    with threadpool_limits(limits=TASK_THREADS):
        return str(ensure_base_checkpoint(config, subject, decoder, fingerprint, parent, force, progress,
                                          memo=WORKER_MEMO))


def _figures_task(folder: str) -> str:
    # the figures of one ablation folder (logged to the run in mlflow_run.json)
    make_figures(folder, Path(folder) / "figures")
    return folder


def _mp_context():
    """The pool's start method: 'forkserver' where the platform has it (workers are forked from
    a single-threaded server process that has imported :data:`WORKER_PRELOAD`, so they neither
    re-import everything nor inherit the parent's threads), else 'spawn'. Neither inherits the
    parent's memory (RNG states, memos); :func:`_init_worker` gives each worker the parent's
    environment as it is when the pool starts (as 'spawn' does), so results do not depend on it."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server(jobs: int) -> None:
    """Start the fork server now (jobs > 1), so that its imports overlap the serial stages."""
    ctx = _mp_context()
    if jobs > 1 and ctx.get_start_method() == "forkserver":
        forkserver.ensure_running()


@contextlib.contextmanager
def _executor(jobs: int, log_path: Path | None = None) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool of ``jobs`` workers (see :func:`_mp_context`; logging to ``log_path``
    too), or None (run in this process) for jobs=1."""
    if jobs == 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=_mp_context(), initializer=_init_worker,
                             initargs=(None if log_path is None else str(log_path), dict(os.environ))) as pool:
        yield pool


def _init_worker(log_path: str | None, environ: dict[str, str] | None = None) -> None:
    # A forked worker has the fork server's environment (from when it started): take the parent's.
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    # Workers draw no progress bars (their output would interleave); only the parent's bar shows.
    os.environ["TQDM_DISABLE"] = "1"
    if log_path is not None:  # their log records go to the ablation's log file, like the parent's
        log_to_file(log_path)


@dataclass
class AblationResult:
    output_root: Path
    records: list[dict[str, Any]]
    summary_dir: Path
    hypotheses: dict[str, Any]
    run_id: str
    seconds: float


def _run_matrix(config: AblationConfig, pool, run, fingerprints, force: bool, progress: bool,
                log) -> list[dict[str, Any]]:
    """The perception-only checkpoints, then the cells (longest first); records in matrix order."""
    mapper = pool.map if pool is not None else map
    cells = [Cell(s, d, c) for s in config.subjects for d in config.decoders for c in config.configurations]
    bases = [(config, s, d, fingerprints[s], run.run_id, run.tracking_uri, force, progress and pool is None)
             for s in config.subjects for d in config.decoders]
    for path in mapper(_base_checkpoint_task, bases):
        interrupts.check()
        log.info("perception-only checkpoint %s", path)
    order = sorted(cells, key=lambda c: SUBMIT_ORDER.index(c.configuration))
    args = [(config, cell, fingerprints[cell.subject], run.run_id, run.tracking_uri, force, False) for cell in order]
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(cells), desc="ablation cells", unit="cell", file=sys.stderr, disable=not progress)
    for rec in mapper(_run_cell_task, args):
        interrupts.check()
        records.append(rec)
        log.info("cell %s/%s__%s %s", rec["cell"]["subject"], rec["cell"]["decoder"],
                 rec["cell"]["configuration"], "reused" if rec["skipped"] else "done")
        bar.update()
    bar.close()
    records.sort(key=lambda r: cells.index(Cell(**r["cell"])))
    return records


def _report(config: AblationConfig, pool, run, records, stage_configs, log) -> tuple[Path, dict[str, Any]]:
    """Per-subject tables, the summary and its hypotheses, the figures; all logged to ``run``."""
    tables = [collect_subject(config, s, [r for r in records if r["cell"]["subject"] == s])
              for s in config.subjects]
    summary_dir, hypotheses = write_summary(config, tables, records)
    run.log_dict(hypotheses, "summary/hypotheses.json")
    run.log_artifacts(summary_dir, "summary")
    for path in stage_configs.values():
        run.log_artifact(path, "configs")
    for subject in config.subjects:
        sdir = subject_dir(config, subject)
        for name in ("results_table.csv", "results_table.md", "metrics_all.json", "commands.txt"):
            run.log_artifact(sdir / name, subject)
    if config.figures:
        # make_figures logs each figures/ folder to the run named in <folder>/mlflow_run.json.
        folders = [summary_dir, *(subject_dir(config, s) for s in config.subjects)]
        for folder in folders:
            write_json(folder / MLFLOW_RUN_FILE, {"run_id": run.run_id, "tracking_uri": run.tracking_uri})
        mapper = pool.map if pool is not None else map
        for folder in mapper(_figures_task, [str(f) for f in folders]):
            log.info("figures %s/figures", folder)
    finish_study_run(run, summary_dir, hypotheses)
    return summary_dir, hypotheses


def run_ablation(
    config: AblationConfig,
    *,
    jobs: int = 1,
    force: bool = False,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    progress: bool = True,
) -> AblationResult:
    """Run the whole matrix; write per-subject trees, a cross-subject summary and figures."""
    config.validate()
    check_positive("jobs", jobs)
    start = time.perf_counter()
    ensure_dir(config.output_root)
    tracking.check_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    orphans = tracking.mark_orphaned_runs(tracking_uri, experiment)
    params = {"stage": "ablate", "config": dataclasses.asdict(config), "jobs": jobs, "force": force}
    log = get_logger("ablate")
    with stage_log(config.log_dir, "ablate") as log_path, tracking.run(
            "ablate", params, tracking_uri=tracking_uri, experiment=experiment, run_name="ablation",
            tags={"n_orphaned_runs_marked": len(orphans)}) as run:
        start_study_run(run)
        log.info("ablation run %s: %d subjects x %d decoders x %d configurations; %d orphaned runs marked KILLED",
                 run.run_id, len(config.subjects), len(config.decoders), len(config.configurations), len(orphans))
        write_json(Path(config.output_root) / MLFLOW_RUN_FILE, {"run_id": run.run_id, "tracking_uri": run.tracking_uri})
        start_worker_server(jobs)
        fingerprints = ensure_inputs(config, progress=progress)
        log.info("inputs ready: %s", {s: f["index_sha256"][:12] for s, f in fingerprints.items()})
        stage_configs = write_stage_configs(config)
        with _executor(jobs, log_path) as pool:
            records = _run_matrix(config, pool, run, fingerprints, force, progress, log)
            summary_dir, hypotheses = _report(config, pool, run, records, stage_configs, log)
        run.log_metrics({"n_cells": len(records), "n_cells_skipped": sum(r["skipped"] for r in records),
                         "wall_seconds": time.perf_counter() - start})
        log.info("ablation finished in %.1f s", time.perf_counter() - start)
        run.log_artifact(log_path, "logs")
    return AblationResult(output_root=Path(config.output_root), records=records, summary_dir=summary_dir,
                          hypotheses=hypotheses, run_id=run.run_id, seconds=time.perf_counter() - start)
