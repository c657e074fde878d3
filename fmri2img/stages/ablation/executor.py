"""``fmri2img ablate``: run the whole matrix here (serially or in a pool of worker processes) or
as Slurm job arrays; reports and figures are made here, at the end.

Stages: the inputs (here), the perception-only checkpoints (one map: a job array on Slurm), the
cells (a second map, once every checkpoint exists), the tables, summary and figures (here). Where
the tasks run is :mod:`.workers`; results are identical wherever they run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fmri2img.core import interrupts, tracking
from fmri2img.core.config import check_positive
from fmri2img.core.constants import DEFAULT_EXPERIMENT
from fmri2img.core.executors import LocalExecutor, TaskExecutor
from fmri2img.core.files import ensure_dir, write_json
from fmri2img.core.logs import get_logger, stage_log
from fmri2img.stages.ablation.cells import ensure_inputs
from fmri2img.stages.ablation.matrix import (
    AblationConfig,
    Cell,
    base_cells,
    matrix_cells,
    subject_dir,
    write_stage_configs,
)
from fmri2img.stages.ablation.study_log import finish_study_run, start_study_run
from fmri2img.stages.ablation.summary import collect_subject, write_summary
from fmri2img.stages.ablation.workers import (
    SLURM_POLL_S,
    base_checkpoint_task,
    check_remote_tracking,
    default_jobs,
    figures_task,
    make_executor,
    run_cell_task,
    start_worker_server,
    task,
)
from fmri2img.stages.report import MLFLOW_RUN_FILE

#: Order in which cells are handed to the executor: the longest first (mixed training fits
#: one model per imagery fold), so that the workers finish together (longest-processing-time
#: scheduling). Results are collected in matrix order whatever the submission order.
SUBMIT_ORDER = ("mixed", "finetune", "adapter_mlp_condition", "adapter_mlp", "adapter_linear", "perception_only")


@dataclass
class AblationResult:
    output_root: Path
    records: list[dict[str, Any]]
    summary_dir: Path
    hypotheses: dict[str, Any]
    run_id: str
    seconds: float


def _in_this_process(executor: TaskExecutor) -> bool:
    return isinstance(executor, LocalExecutor) and executor.jobs == 1


def _run_matrix(config: AblationConfig, executor: TaskExecutor, run, fingerprints, force: bool, progress: bool,
                log) -> list[dict[str, Any]]:
    """The perception-only checkpoints, then the cells (longest first); records in matrix order."""
    cells = matrix_cells(config)
    bars = progress and _in_this_process(executor)  # a worker's bar would interleave with the others'
    bases = [(config, c, fingerprints[c.subject], run.run_id, run.tracking_uri, force, bars) for c in base_cells(config)]
    for path in executor.map(task(executor, base_checkpoint_task, run.tracking_uri), bases):
        interrupts.check()
        log.info("perception-only checkpoint %s", path)
    order = sorted(cells, key=lambda c: SUBMIT_ORDER.index(c.configuration))
    args = [(config, cell, fingerprints[cell.subject], run.run_id, run.tracking_uri, force, False) for cell in order]
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(cells), desc="ablation cells", unit="cell", file=sys.stderr, disable=not progress)
    for rec in executor.map(task(executor, run_cell_task, run.tracking_uri), args):
        interrupts.check()
        records.append(rec)
        log.info("cell %s/%s %s", rec["cell"]["subject"], Cell(**rec["cell"]).name,
                 "reused" if rec["skipped"] else "done")
        bar.update()
    bar.close()
    records.sort(key=lambda r: cells.index(Cell(**r["cell"])))
    return records


def _report(config: AblationConfig, executor: TaskExecutor, run, records, stage_configs,
            log) -> tuple[Path, dict[str, Any]]:
    """Per-subject tables, the summary and its hypotheses, the figures (on this host: in the
    local pool, or in this process when the cells ran on Slurm); all logged to ``run``."""
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
        mapper = executor.map if isinstance(executor, LocalExecutor) else map
        for folder in mapper(figures_task, [str(f) for f in folders]):
            log.info("figures %s/figures", folder)
    finish_study_run(run, summary_dir, hypotheses)
    return summary_dir, hypotheses


def run_ablation(
    config: AblationConfig,
    *,
    jobs: int | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    progress: bool = True,
    slurm_poll_s: float = SLURM_POLL_S,
) -> AblationResult:
    """Run the whole matrix; write per-subject trees, a cross-subject summary and figures.

    Parameters
    ----------
    config : AblationConfig
        The matrix; ``config.executor`` says where its tasks run (``local`` or ``slurm``, with the
        per-task resources ``config.slurm``).
    jobs : int, optional
        Worker processes of the local executor; default: the cores available to this process
        (:func:`~fmri2img.stages.ablation.workers.default_jobs`). Slurm runs ``config.slurm.array_parallelism``
        tasks at once instead.
    force : bool
        Rerun every checkpoint and cell even if its key is unchanged.
    tracking_uri : str, optional
        MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``); Slurm
        needs a tracking server (``http://...``) or a database server, never a SQLite file.
    slurm_poll_s : float
        Seconds between two looks at a job array's results and states.
    """
    config.validate()
    jobs = default_jobs() if jobs is None else jobs
    check_positive("jobs", jobs)
    start = time.perf_counter()
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_uri(uri)
    if config.executor == "slurm":
        check_remote_tracking(uri)
    ensure_dir(config.output_root)
    orphans = tracking.mark_orphaned_runs(tracking_uri, experiment)
    params = {"stage": "ablate", "config": dataclasses.asdict(config), "jobs": jobs, "force": force}
    log = get_logger("ablate")
    with stage_log(config.log_dir, "ablate") as log_path, tracking.run(
            "ablate", params, tracking_uri=tracking_uri, experiment=experiment, run_name="ablation",
            tags={"n_orphaned_runs_marked": len(orphans)}) as run:
        start_study_run(run)
        log.info("ablation run %s: %d subjects x %d regions x %d decoders x %d configurations on %s; %d orphaned "
                 "runs marked KILLED", run.run_id, len(config.subjects), len(config.regions), len(config.decoders),
                 len(config.configurations),
                 "Slurm" if config.executor == "slurm" else f"{jobs} local worker(s)", len(orphans))
        write_json(Path(config.output_root) / MLFLOW_RUN_FILE, {"run_id": run.run_id, "tracking_uri": run.tracking_uri})
        start_worker_server(jobs if config.executor == "local" else 1)
        fingerprints = ensure_inputs(config, progress=progress)
        log.info("inputs ready: %s", {s: f["index_sha256"][:12] for s, f in fingerprints.items()})
        stage_configs = write_stage_configs(config)
        # the executor's close() (leaving the block, however) cancels Slurm jobs still queued or running
        with make_executor(config, jobs, log_path, slurm_poll_s) as executor:
            records = _run_matrix(config, executor, run, fingerprints, force, progress, log)
            summary_dir, hypotheses = _report(config, executor, run, records, stage_configs, log)
        # once more at the end: a pool worker of a killed earlier run may have exited only after the start
        late = tracking.mark_orphaned_runs(tracking_uri, experiment)
        run.log_metrics({"n_cells": len(records), "n_cells_skipped": sum(r["skipped"] for r in records),
                         "wall_seconds": time.perf_counter() - start, "n_orphaned_runs_marked_late": len(late)})
        log.info("ablation finished in %.1f s", time.perf_counter() - start)
        run.log_artifact(log_path, "logs")
    return AblationResult(output_root=Path(config.output_root), records=records, summary_dir=summary_dir,
                          hypotheses=hypotheses, run_id=run.run_id, seconds=time.perf_counter() - start)
