"""``fmri2img calibrate``: run the study on many independent synthetic worlds with known truth and
report how far its intervals and verdicts can be trusted (coverage, false-positive rate, bias, RMSE).

Each world is one task: write a small world (its own seed; imagery strength of its setting, 1 =
the null world), run a reduced ablation on it (:func:`fmri2img.stages.ablation.executor.run_ablation`,
logged to the world's own SQLite store), keep the H1-H3 statistics and their intervals
(``worlds/<setting>/<seed>.json``: a rerun skips finished worlds) and delete the world. With
``siblings: K`` each world also gets K siblings that keep its world family (latent geometry, imagery
offset direction) and redraw its stimuli and subjects, and K that keep its stimuli too and redraw only
its subjects (:class:`WorldSeeds`): the conditional truths of docs/trust.md. Worlds run in parallel on
:class:`fmri2img.core.executors.LocalExecutor`. Then :mod:`fmri2img.evaluation.calibration` scores
them against the truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fmri2img.core import tracking
from fmri2img.core.config import check_choice, check_positive, from_dict
from fmri2img.core.constants import DEFAULT_SUBJECTS
from fmri2img.core.errors import ConfigError
from fmri2img.core.executors import LocalExecutor
from fmri2img.core.files import ensure_dir, read_json, sha256_json, write_json, write_text
from fmri2img.core.vocab import CELL_LOGGING, CONFIGURATIONS, DECODERS, DEFAULT_REGION
from fmri2img.data.regions import parse_regions
from fmri2img.evaluation.calibration import (
    MEAN_SQUARE_COLUMNS,
    REGION_STATISTIC,
    ROLE_NEW_OFFSET,
    ROLE_NEW_STIMULI,
    ROLE_NEW_SUBJECTS,
    ROLE_WORLD,
    ROW_COLUMNS,
    SIBLING_ROLES,
    assign_truth,
    headline,
    summarize,
    variance_sources,
)
from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.reporting.calibration import coverage_figure, markdown_table, sources_table
from fmri2img.reporting.hypotheses import CHECKED_STATISTICS
from fmri2img.sim.seeds import WorldSeeds
from fmri2img.sim.shape import WorldShape
from fmri2img.sim.world import write_world
from fmri2img.stages.ablation.executor import run_ablation
from fmri2img.stages.ablation.matrix import AblationConfig, code_sha256
from fmri2img.stages.adapt import AdaptConfig
from fmri2img.stages.report import save_figure

#: The reduced matrix: what H1-H3 need (H3 chooses among two adapters).
CALIBRATION_CONFIGURATIONS = ("perception_only", "mixed", "adapter_linear", "adapter_mlp", "finetune")

#: Name of the null-world setting (not "null": pandas reads that back from CSV as a missing value).
NULL_SETTING = "null_world"

#: The hypothesis statistics read from each world's report: statistic -> its hypothesis.
STATISTIC_OF = {stat: hyp for stat, (hyp, _) in CHECKED_STATISTICS.items()}

#: Sibling seeds are ``SIBLING_SEED_BASE + MAX_SIBLINGS * (2 * world_seed + kind) + k`` (kind 0: new
#: stimuli, 1: new subjects; new offsets take kind 1 and k + MAX_SIBLINGS // 2): above every world seed a
#: config can name (first_seed + worlds <= SIBLING_SEED_BASE) and distinct per world, role and k.
SIBLING_SEED_BASE = 10**9
MAX_SIBLINGS = 100

#: Per row, how its interval was made (se, t degrees of freedom, subjects and items of its table, the mean
#: squares of its two-way ANOVA): what an alternative interval rule (docs/trust.md) can be judged from
#: without rerunning the worlds.
INTERVAL_DETAIL = ("se", "df", "n_subjects", "n_items", *MEAN_SQUARE_COLUMNS)
#: Per H3 row, the chosen adapter's fold models that kept their initial weights (no-ops; summed over
#: subjects; NaN on other rows): a no-op fold's gains are exactly 0, which narrows the interval
#: (docs/trust.md, "Intervals with no spread").
KEPT_INITIAL_COLUMN = "kept_initial_folds"

#: Config keys a world's result does not depend on (which worlds and settings a run holds, where results go;
#: a world's own seed and strength enter its key).
NOT_IN_WORLD_KEY = ("worlds", "first_seed", "strengths", "include_null", "siblings", "sibling_roles", "output_root",
                    "keep_worlds", "cell_logging")


def world_seeds(seed: int, role: str, k: int) -> WorldSeeds:
    """Seeds of world ``seed`` (role :data:`ROLE_WORLD`) or of its ``k``-th sibling of ``role`` (k >= 1)."""
    if role == ROLE_WORLD:
        return WorldSeeds.single(seed)
    kind = 0 if role == ROLE_NEW_STIMULI else 1
    new = SIBLING_SEED_BASE + MAX_SIBLINGS * (2 * seed + kind) + k + (MAX_SIBLINGS // 2 if role == ROLE_NEW_OFFSET else 0)
    if role == ROLE_NEW_STIMULI:
        return WorldSeeds(seed, new, new)
    return WorldSeeds(seed, seed, new) if role == ROLE_NEW_SUBJECTS else WorldSeeds(seed, seed, seed, offset=new)


@dataclass(frozen=True)
class CalibrationConfig:
    """Which worlds and which study (defaults as projects/imagery/configs/calibrate.yaml; docs/trust.md)."""

    worlds: int = 50
    first_seed: int = 1000
    #: per world, this many siblings of each of ``sibling_roles`` (0: the leave-one-out truth over worlds)
    siblings: int = 0
    sibling_roles: tuple[str, ...] = (ROLE_NEW_STIMULI, ROLE_NEW_SUBJECTS)
    #: imagery strengths of the planted settings; 1.0 (the null world) is added by ``include_null``
    strengths: tuple[float, ...] = (0.6, 0.78, 0.95)
    include_null: bool = True
    subjects: tuple[str, ...] = DEFAULT_SUBJECTS
    decoders: tuple[str, ...] = ("ridge",)
    configurations: tuple[str, ...] = CALIBRATION_CONFIGURATIONS
    #: the ablation's regions (docs/regions.md); with more than one, each world adds the H1-ratio difference
    #: of its highest and lowest planted-gain regions (statistic ``region_difference``)
    regions: tuple[str, ...] = (DEFAULT_REGION,)
    grid: tuple[int, int, int] = (14, 16, 14)
    n_mask_voxels: int = 800
    n_sessions: int = 2
    n_shared: int = 50
    folds: int = 3
    adapt: AdaptConfig = field(default_factory=lambda: AdaptConfig(epochs=10, lr_steps=2))
    output_root: str = "outputs/calibration"
    keep_worlds: bool = False
    #: what a world's cell runs log (vocab.CELL_LOGGING): "metrics" leaves out the models, files and datasets
    #: that a deleted world's store would only throw away (the statistics come from the metrics files)
    cell_logging: str = "metrics"

    def validate(self) -> None:
        check_positive("worlds", self.worlds)
        if self.worlds < 2 and self.siblings == 0:
            raise ConfigError(f"worlds={self.worlds}: a leave-one-out truth needs at least 2 worlds per setting "
                              "(or siblings >= 1).")
        if not 0 <= self.siblings < MAX_SIBLINGS // 2:
            raise ConfigError(f"siblings={self.siblings!r}: expected an integer in [0, {MAX_SIBLINGS // 2 - 1}].")
        for role in self.sibling_roles:
            check_choice("sibling role", role, SIBLING_ROLES)
        if not (0 <= self.first_seed and self.first_seed + self.worlds <= SIBLING_SEED_BASE):
            raise ConfigError(f"first_seed={self.first_seed!r}: expected 0 <= first_seed and first_seed + worlds "
                              f"<= {SIBLING_SEED_BASE} (the sibling seeds start there).")
        for s in self.strengths:
            if not 0.0 < s < 1.0:
                raise ConfigError(f"strengths: {s!r} is not in (0, 1); 1 is the null world (include_null).")
        for name in self.decoders:
            check_choice("decoder", name, DECODERS)
        for name in self.configurations:
            check_choice("configuration", name, CONFIGURATIONS)
        parse_regions(self.regions)
        if "perception_only" not in self.configurations:
            raise ConfigError("configurations must include 'perception_only' (H1 and every gain are relative to it).")
        check_choice("cell_logging", self.cell_logging, CELL_LOGGING)
        self.adapt.validate()

    @property
    def settings(self) -> dict[str, float]:
        """Setting name -> imagery strength."""
        named = {f"strength_{s:g}": float(s) for s in self.strengths}
        return {**named, NULL_SETTING: 1.0} if self.include_null else named

    @property
    def shape(self) -> WorldShape:
        return WorldShape(grid=tuple(self.grid), n_mask_voxels=self.n_mask_voxels, n_sessions=self.n_sessions,
                          n_shared=self.n_shared)


@dataclass(frozen=True)
class CalibrationResult:
    rows: pd.DataFrame
    summary: pd.DataFrame
    headline: dict[str, float]
    output_root: Path
    run_id: str
    seconds: float


def _world_rows(report: dict[str, Any], setting: str, strength: float, seed: int, role: str,
                k: int) -> list[dict[str, Any]]:
    """One row per (decoder, statistic, estimand) of a world's hypotheses report (and, with regions,
    per decoder and estimand of its planted region-ordering check)."""
    found = []  # (decoder, statistic, {estimand: interval dict}, no-op folds)
    for decoder, entry in report["decoders"].items():
        kept = entry.get("kept_initial") or {}
        for stat, hyp in STATISTIC_OF.items():
            if hyp in entry:
                no_ops = kept.get(entry[hyp]["chosen_adapter"], [0])[0] if hyp == "H3" else float("nan")
                found.append((decoder, stat, entry[hyp]["intervals"], no_ops))
    for check in report.get("regions", {}).get("planted", {}).get("checks", []):
        found.append((check["decoder"], REGION_STATISTIC, check["intervals"], float("nan")))
    rows = []
    for decoder, stat, intervals, no_ops in found:
        for estimand, iv in intervals.items():
            squares = iv.get("mean_squares") or (float("nan"),) * 3
            rows.append({"setting": setting, "strength": strength, "world_seed": seed, "decoder": decoder,
                         "statistic": stat, "estimand": estimand, "estimate": iv["estimate"],
                         "low": iv["low"], "high": iv["high"], "se": iv["se"], "df": iv["df"],
                         "n_subjects": iv["n_subjects"], "n_items": iv["n_stimuli"],
                         **dict(zip(MEAN_SQUARE_COLUMNS, squares)), KEPT_INITIAL_COLUMN: no_ops,
                         "role": role, "sibling": k})
    return rows


def calibrate_world(task: tuple[dict[str, Any], str, float, int, str, int]) -> dict[str, Any]:
    """One world (or sibling ``k`` of ``role``) of one setting: its statistics (cached in
    ``worlds/<setting>/<seed>[-<role>-<k>].json``)."""
    config_dict, setting, strength, seed, role, k = task
    config = from_dict(CalibrationConfig, config_dict)
    seeds = world_seeds(seed, role, k)
    name = str(seed) if role == ROLE_WORLD else f"{seed}-{role.replace(' ', '-')}-{k}"
    done = Path(config.output_root) / "worlds" / setting / f"{name}.json"
    # what a world's result depends on (the code is part of it: a changed generator or statistic must
    # not reuse old worlds)
    study = {key: v for key, v in config_dict.items() if key not in NOT_IN_WORLD_KEY}
    key = sha256_json({"study": study, "setting": setting, "strength": strength, "seed": seed,
                       **({} if role == ROLE_WORLD else {"seeds": dataclasses.asdict(seeds)}),
                       "code": code_sha256()})
    if done.is_file() and read_json(done).get("key") == key:
        return read_json(done)
    root = Path(config.output_root).resolve() / "work" / setting / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    start = time.process_time()
    summary = write_world(root / "data", subjects=config.subjects, scale=config.shape, seed=seeds.world,
                          stimulus_seed=seeds.stimuli, subject_seed=seeds.subjects, offset_seed=seeds.offset,
                          progress=False,
                          imagery_strength=strength if strength < 1.0 else None, null=strength == 1.0)
    ablation = AblationConfig(
        subjects=config.subjects, decoders=config.decoders, configurations=config.configurations,
        regions=config.regions, data_root=str(root / "data"), cache_root=str(root / "cache"),
        index_dir=str(root / "cache" / "indices"),
        manifest_dir=str(root / "manifests"), checkpoint_root=str(root / "checkpoints"),
        output_root=str(root / "out"), log_dir=str(root / "logs"), synthesize=False, folds=config.folds,
        adapt=config.adapt, eval=EvalOptions(n_boot=100, n_perm=100, image_metrics=False), figures=False,
        cell_logging=config.cell_logging)
    with contextlib.chdir(root):  # the world's MLflow store keeps its artifacts in ./mlruns: inside the world
        result = run_ablation(ablation, jobs=1, tracking_uri=f"sqlite:///{root / 'mlflow.db'}", progress=False)
    truth = read_json(summary.root / "truth" / "params.json")
    record = {"key": key, "rows": _world_rows(result.hypotheses, setting, strength, seed, role, k),
              "world": {"params": truth["params"], "shape": truth["shape"]},
              "cpu_seconds": time.process_time() - start}
    if not config.keep_worlds:
        shutil.rmtree(root, ignore_errors=True)
    write_json(done, record)
    return record


def truth_tables(records: list[dict[str, Any]], rows: pd.DataFrame, settings: dict[str, float]) -> dict[str, Any]:
    """Per planted setting: ``{params, shape, n_worlds, decoders: {decoder: {statistic: population truth}},
    se: {decoder: {statistic: its standard error}}}`` (the mean estimate over the worlds and the standard
    deviation over worlds / sqrt(n_worlds)), the table the ablation's planted-truth check reads.

    Without siblings the mean is over independent worlds (every world family). With siblings (one world,
    ``worlds: 1``) it is over the world's new-stimuli siblings only, the population truth conditional on
    its family (latent geometry, renderer, imagery offset direction; docs/trust.md), and the table adds
    ``world_seed``: it then applies to that world family alone."""
    tables = {}
    for setting, strength in settings.items():
        if strength == 1.0:
            continue
        part = rows[(rows["setting"] == setting) & (rows["estimand"] == "population")]
        family = bool((part["role"] != ROLE_WORLD).any())
        # siblings are draws of their family's population, not of every family's: one family or none
        part = part[part["role"] == (ROLE_NEW_STIMULI if family else ROLE_WORLD)]  # one family: run_calibration
        world = next(r["world"] for r in records if r["rows"] and r["rows"][0]["setting"] == setting)
        draws = part.groupby(["decoder", "statistic"])["estimate"]
        means, ses = draws.mean(), draws.std(ddof=1) / np.sqrt(draws.count())

        def per_decoder(values: pd.Series) -> dict[str, dict[str, float]]:
            return {d: {s: float(v) for (dd, s), v in values.items() if dd == d} for d in part["decoder"].unique()}

        tables[setting] = {"params": world["params"], "shape": world["shape"],
                           "n_worlds": int(len(part[["world_seed", "sibling"]].drop_duplicates())),
                           **({"world_seed": int(part["world_seed"].iloc[0])} if family else {}),
                           "decoders": per_decoder(means), "se": per_decoder(ses)}
    return tables


def run_calibration(config: CalibrationConfig, *, jobs: int = 1, tracking_uri: str | None = None,
                    write_truth: str | None = None, progress: bool = True) -> CalibrationResult:
    """Run every world of every setting; write the tables, the figure and MLflow metrics."""
    config.validate()
    check_positive("jobs", jobs)
    if write_truth and config.siblings and config.worlds != 1:
        raise ConfigError(f"worlds={config.worlds}: a truth table with siblings is one world family's "
                          "(set worlds: 1 with --write-truth).")
    start = time.perf_counter()
    out = ensure_dir(config.output_root)
    config_dict = dataclasses.asdict(config)
    # seeds outermost: an interrupted run has covered every setting about equally (and resumes)
    members = [(ROLE_WORLD, 0)] + [(role, k) for k in range(1, config.siblings + 1) for role in config.sibling_roles]
    tasks = [(config_dict, setting, strength, config.first_seed + i, role, k)
             for i in range(config.worlds) for setting, strength in config.settings.items() for role, k in members]
    with tracking.run("calibrate", {"config": config_dict, "jobs": jobs}, tracking_uri=tracking_uri,
                      run_name="calibration") as run:
        # spawned workers: a fork of this process (MLflow's threads, torch) is not safe to train in
        with LocalExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            records = list(tqdm(pool.map(calibrate_world, tasks), total=len(tasks), desc="calibration worlds",
                                unit="world", disable=not progress))
        rows_all = pd.DataFrame([r for rec in records for r in rec["rows"]],
                                columns=[*ROW_COLUMNS, *INTERVAL_DETAIL, KEPT_INITIAL_COLUMN, "role", "sibling"])
        rows = assign_truth(rows_all)
        summary = summarize(rows)
        head = headline(summary)
        write_text(out / "calibration_worlds.csv", rows.to_csv(index=False))
        write_text(out / "calibration_summary.csv", summary.to_csv(index=False))
        estimands = [e for e in ("population", "stimuli") if (summary["estimand"] == e).any()]
        tables = [markdown_table(summary, e) for e in estimands]
        if config.siblings:
            # an estimate is the same for both estimands (only its interval differs): one table of redraws
            tables.append(sources_table(variance_sources(rows_all[rows_all["estimand"] == "population"])))
        write_text(out / "calibration.md", "\n".join(tables))
        save_figure(coverage_figure(summary), out / "calibration")
        if write_truth:
            for setting, table in truth_tables(records, rows, config.settings).items():
                write_json(Path(write_truth) / f"{setting}.json", table)
        for _, r in summary[summary["estimand"] == "population"].iterrows():
            name = f"{r['setting']}.{r['decoder']}.{r['statistic']}"
            run.log_metrics({f"{name}.coverage": r["coverage"], f"{name}.rejection_rate": r["rejection_rate"],
                             f"{name}.bias": r["bias"], f"{name}.rmse": r["rmse"],
                             f"{name}.expected_coverage": r["expected_coverage"],
                             f"{name}.width_factor": r["width_factor"]})
        run.log_metrics({**head, "n_worlds": len(tasks), "cpu_seconds_worlds": sum(r["cpu_seconds"] for r in records)})
        for name in ("calibration_worlds.csv", "calibration_summary.csv", "calibration.md", "calibration.png"):
            if (out / name).is_file():
                run.log_artifact(out / name, "calibration")
    return CalibrationResult(rows=rows, summary=summary, headline=head, output_root=out, run_id=run.run_id,
                             seconds=time.perf_counter() - start)
