"""``fmri2img ablate``: the research track's whole experimental matrix in one command.

Cells are (subject, decoder, configuration); which cells run is a config file
(``projects/imagery/configs/ablation.yaml``) plus overrides, never a copied script.

Stages per subject (each reused when its inputs are unchanged):

1. the synthetic world (only when ``data_root`` holds none and ``synthesize`` is on);
2. the trial index + beta cache (``build_index`` is a no-op on unchanged inputs);
3. the embedding set (``synthetic-truth`` or a CLIP set already in the cache);
4. one perception-only checkpoint per decoder (shared by the perception-only, adapter
   and fine-tune cells; reused when its key matches);
5. the cells: ``perception_only`` (evaluate), ``mixed`` (one model per held-out imagery
   fold, H2), ``adapter_linear`` / ``adapter_mlp`` / ``adapter_mlp_condition`` (H3) and
   ``finetune`` (H3's baseline); each evaluated on the perception and imagery test sets.

Resumable: a cell writes ``eval/<cell>/cell.json`` (its key: config, input checksums and the
code's hash) last; a rerun skips cells whose key is unchanged; ``force`` reruns all. A crash
loses only the cell in progress (every file is written atomically). ``jobs > 1`` runs cells
in worker processes; results are identical to a serial run (every model is seeded and
trained deterministically, and each worker uses the same thread settings).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img import __version__, interrupts
from fmri2img.config import check_positive, save_config
from fmri2img.constants import (
    DEFAULT_CACHE_ROOT,
    DEFAULT_CHECKPOINT_ROOT,
    DEFAULT_DATA_ROOT,
    DEFAULT_EXPERIMENT,
    DEFAULT_INDEX_DIR,
    DEFAULT_MANIFEST_DIR,
    DEFAULT_SUBJECTS,
    INIT_SEED,
    SYNTHETIC_TRUTH_EMBEDDINGS,
)
from fmri2img.errors import ConfigError
from fmri2img.evaluation.evaluate import EvalOptions
from fmri2img.models.adapt import AdaptConfig

#: Every configuration of the research track's matrix, in report order.
CONFIGURATIONS = ("perception_only", "mixed", "adapter_linear", "adapter_mlp", "adapter_mlp_condition", "finetune")
DECODERS = ("ridge", "mlp", "two_stage")

#: Adapter configurations -> (adapter type, condition embedding).
ADAPTER_CELLS = {
    "adapter_linear": ("linear", False),
    "adapter_mlp": ("mlp", False),
    "adapter_mlp_condition": ("mlp", True),
    "finetune": ("finetune", False),
}


#: Torch decoders' training in the demo matrix: batch 256 with the learning rate doubled
#: (linear scaling rule, Goyal et al. 2017, "Accurate, Large Minibatch SGD"); on the demo world
#: (subj01, 2,430 training trials) the same validation cosine as the decoders' own batch 128 /
#: lr 1e-3 (MLP 0.9042 vs 0.9044, two-stage 0.8996 vs 0.8966) in 1.2-1.8x less time. The
#: shipped ``ablation.yaml`` states the same values (a test keeps the two equal), so `ablate`
#: without that file runs the same study.
DEMO_DECODER_PARAMS = {
    "mlp": {"epochs": 30, "batch_size": 256, "lr": 0.002},
    "two_stage": {"epochs": 30, "batch_size": 256, "lr": 0.002},
}


@dataclass(frozen=True)
class AblationConfig:
    """The ablation matrix and where it reads and writes. See ablation.yaml for comments."""

    subjects: tuple[str, ...] = DEFAULT_SUBJECTS
    decoders: tuple[str, ...] = DECODERS
    configurations: tuple[str, ...] = CONFIGURATIONS
    mode: str = "both"
    data_root: str = DEFAULT_DATA_ROOT
    cache_root: str = DEFAULT_CACHE_ROOT
    index_dir: str = DEFAULT_INDEX_DIR
    manifest_dir: str = DEFAULT_MANIFEST_DIR
    checkpoint_root: str = DEFAULT_CHECKPOINT_ROOT
    output_root: str = "outputs/imagery_ablations"
    log_dir: str = "outputs/logs/imagery"
    embedding_set: str = SYNTHETIC_TRUTH_EMBEDDINGS
    synthesize: bool = True
    synth_seed: int | None = None
    folds: int = 3
    imagery_weight: float = 1.0
    device: str = "cpu"
    seed: int = INIT_SEED  # model initialisation of every decoder (adapt/eval have their own seeds)
    decoder_params: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEMO_DECODER_PARAMS))
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    figures: bool = True

    def validate(self) -> None:
        from fmri2img.data.nsd_constants import subject_number

        for subject in self.subjects:
            subject_number(subject)
        for name in self.decoders:
            if name not in DECODERS:
                raise ConfigError(f"Unknown decoder {name!r}. Choose one of {', '.join(map(repr, DECODERS))}.")
        for name in self.configurations:
            if name not in CONFIGURATIONS:
                raise ConfigError(
                    f"Unknown configuration {name!r}. Choose one of {', '.join(map(repr, CONFIGURATIONS))}.")
        unknown = sorted(set(self.decoder_params) - set(DECODERS))
        if unknown:
            raise ConfigError(f"decoder_params: unknown decoder {unknown[0]!r}; allowed: {', '.join(DECODERS)}.")
        if self.mode not in ("perception", "imagery", "both"):
            raise ConfigError(f"Invalid mode {self.mode!r}; choose one of 'perception', 'imagery', 'both'.")
        if self.folds < 2:
            raise ConfigError(f"Invalid folds={self.folds}; expected at least 2 imagery folds.")
        check_positive("imagery_weight", self.imagery_weight)
        self.adapt.validate()
        self.eval.validate()


@dataclass(frozen=True)
class Cell:
    subject: str
    decoder: str
    configuration: str

    @property
    def name(self) -> str:
        return f"{self.decoder}__{self.configuration}"


# ----------------------------------------------------------------------------- keys

def code_sha256() -> str:
    """SHA-256 over the package's source files: a cell reruns when the code changes."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _key(obj: Any) -> str:
    from fmri2img.io import sha256_json

    return sha256_json(obj)


# ----------------------------------------------------------------------------- paths

def subject_dir(config: AblationConfig, subject: str) -> Path:
    return Path(config.output_root) / subject


def index_path(config: AblationConfig, subject: str) -> Path:
    return Path(config.index_dir) / f"{subject}.parquet"


def base_checkpoint_dir(config: AblationConfig, subject: str, decoder: str) -> Path:
    return Path(config.checkpoint_root) / decoder / subject


def cell_dir(config: AblationConfig, cell: Cell) -> Path:
    return subject_dir(config, cell.subject) / "eval" / cell.name


def adapter_dir(config: AblationConfig, cell: Cell) -> Path:
    return subject_dir(config, cell.subject) / "adapters" / cell.decoder / cell.configuration


# ----------------------------------------------------------------------------- stages

def ensure_inputs(config: AblationConfig, *, progress: bool = True) -> dict[str, Any]:
    """World, indices and embedding set for every subject; returns their fingerprints."""
    from fmri2img.data.index import build_index
    from fmri2img.io import sha256_file

    root = Path(config.data_root)
    if config.synthesize and not (root / "nsddata").exists():
        from fmri2img.data.synthetic import write_world

        # Always the default subjects (plus any others asked for), in that order: the world's
        # design depends on which subjects it holds, so `ablate --subject subj01` must see the
        # same world (and reproduce the same numbers) as the full demo.
        world_subjects = tuple(DEFAULT_SUBJECTS) + tuple(s for s in config.subjects if s not in DEFAULT_SUBJECTS)
        kwargs = {"subjects": world_subjects, "progress": progress}
        if config.synth_seed is not None:
            kwargs["seed"] = config.synth_seed
        write_world(root, **kwargs)
    fingerprints: dict[str, Any] = {}
    for subject in config.subjects:
        path = build_index(subject, config.data_root, config.cache_root, output=index_path(config, subject),
                           manifest_dir=config.manifest_dir, progress=progress, folds=config.folds)
        fingerprints[subject] = {"index_sha256": sha256_file(path)}
    embeddings = ensure_embeddings(config)
    for subject in config.subjects:
        fingerprints[subject]["embedding_set"] = embeddings
    return fingerprints


def ensure_embeddings(config: AblationConfig) -> dict[str, Any]:
    """Make sure the embedding set exists; return its identity (tag + content hash)."""
    from fmri2img.embeddings.cache import load_embedding_set, set_dir, synthetic_truth_set
    from fmri2img.errors import MissingInputError
    from fmri2img.io import sha256_file

    if config.embedding_set == SYNTHETIC_TRUTH_EMBEDDINGS:
        synthetic_truth_set(config.data_root, config.cache_root)
    else:
        try:
            load_embedding_set(config.cache_root, config.embedding_set)
        except MissingInputError:
            raise ConfigError(
                f"Embedding set {config.embedding_set!r} is not in {config.cache_root}/clip; compute it first with "
                "`fmri2img embed --index ... --model ... --checkpoint ...`.") from None
    folder = set_dir(config.cache_root, config.embedding_set)
    return {"tag": config.embedding_set, "sha256": sha256_file(folder / "embeddings.npy")}


def train_config(config: AblationConfig, decoder: str, **extra: Any):
    from fmri2img.models.training import TrainConfig

    return TrainConfig(model=decoder, embedding_set=config.embedding_set, device=config.device, seed=config.seed,
                       decoder_params=dict(config.decoder_params.get(decoder, {})), **extra)


def ensure_base_checkpoint(config: AblationConfig, subject: str, decoder: str, fingerprint: dict[str, Any],
                           parent_run, force: bool, progress: bool) -> Path:
    """Train (or reuse) the perception-only checkpoint of ``decoder`` for ``subject``."""
    from fmri2img.io import read_json
    from fmri2img.models.training import train_decoder

    cfg = train_config(config, decoder)
    key = _key({"train": dataclasses.asdict(cfg), "inputs": fingerprint, "code": code_sha256()})
    out = base_checkpoint_dir(config, subject, decoder)
    meta_path = out / "metadata.json"
    if not force and meta_path.is_file() and (out / "best.pt").is_file():
        if read_json(meta_path).get("ablation_key") == key:
            return out / "best.pt"
    result = train_decoder(index_path(config, subject), out, cfg, cache_root=config.cache_root,
                           tracking_uri=parent_run.tracking_uri, parent_run=parent_run, progress=progress,
                           extra_metadata={"ablation_key": key})
    return result.checkpoint


def stage_config_paths(config: AblationConfig) -> dict[str, Path]:
    """Where :func:`write_stage_configs` writes each stage's config: ``<output_root>/configs/``
    ``train_<decoder>.yaml``, ``adapt.yaml``, ``eval.yaml``."""
    root = Path(config.output_root) / "configs"
    return {"adapt": root / "adapt.yaml", "eval": root / "eval.yaml",
            **{f"train_{d}": root / f"train_{d}.yaml" for d in config.decoders}}


def write_stage_configs(config: AblationConfig) -> dict[str, Path]:
    """Write the configs the cells run with (TrainConfig per decoder, AdaptConfig, EvalOptions)
    as YAML; ``commands.txt`` passes them with ``--config``, so each command reproduces its
    stage exactly (decoder parameters, seeds and statistics options included). Per-cell
    settings (mixed training's fold, the adapter type) stay on the command line."""
    paths = stage_config_paths(config)
    save_config(config.eval, paths["eval"])
    save_config(dataclasses.replace(config.adapt, device=config.device), paths["adapt"])
    for decoder in config.decoders:
        save_config(train_config(config, decoder), paths[f"train_{decoder}"])
    return paths


def _cell_commands(config: AblationConfig, cell: Cell) -> list[str]:
    """The exact CLI commands that reproduce ``cell`` one stage at a time (the stage configs
    are the files of :func:`write_stage_configs`)."""
    idx = str(index_path(config, cell.subject))
    base = str(base_checkpoint_dir(config, cell.subject, cell.decoder) / "best.pt")
    common = f"--cache-root {config.cache_root}"
    ev = str(cell_dir(config, cell))
    paths = stage_config_paths(config)
    cmds = [f"fmri2img index --subject {cell.subject} --data-root {config.data_root} {common} --output {idx} "
            f"--folds {config.folds} --manifest-dir {config.manifest_dir}"]
    train = (f"fmri2img train --config {paths[f'train_{cell.decoder}']} --index {idx} --model {cell.decoder} "
             f"--embeddings {config.embedding_set} {common}")
    evaluate = f"--mode {config.mode} --split test --config {paths['eval']}"
    if cell.configuration == "mixed":
        cmds.append("# the ablation scores the fold models together (each on its held-out fold's imagery stimuli, "
                    "shared1000 dealt round-robin); `eval` on one fold's checkpoint scores that fold alone")
        for fold in range(config.folds):
            out = Path(config.checkpoint_root) / cell.decoder / cell.subject / "mixed" / f"fold{fold}"
            cmds.append(f"{train} --train-on mixed --holdout-fold {fold} --imagery-weight {config.imagery_weight} "
                        f"--output-dir {out}")
            cmds.append(f"fmri2img eval --index {idx} --checkpoint {out}/best.pt --model-type {cell.decoder} "
                        f"{evaluate} --output-dir {ev}/fold{fold} {common}")
        return cmds
    cmds.append(f"{train} --output-dir {base_checkpoint_dir(config, cell.subject, cell.decoder)}")
    if cell.configuration == "perception_only":
        cmds.append(f"fmri2img eval --index {idx} --checkpoint {base} --model-type {cell.decoder} "
                    f"{evaluate} --output-dir {ev} {common}")
        return cmds
    kind, cond = ADAPTER_CELLS[cell.configuration]
    adir = adapter_dir(config, cell)
    cmds.append(f"fmri2img adapt --config {paths['adapt']} --index {idx} --checkpoint {base} "
                f"--model-type {cell.decoder} --adapter {kind}{' --with-condition' if cond else ''} "
                f"--output-dir {adir} {common}")
    cmds.append(f"fmri2img eval --index {idx} --checkpoint {base} --model-type {cell.decoder} "
                f"--adapter-checkpoint {adir}/checkpoints/adapter_best.pt --adapter-type {kind} "
                f"{evaluate} --output-dir {ev} {common}")
    return cmds


def run_cell(config: AblationConfig, cell: Cell, fingerprint: dict[str, Any], parent_run_id: str,
             tracking_uri: str, force: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run one cell (train what it needs, evaluate) unless its key is unchanged; return its record."""
    out = cell_dir(config, cell)
    try:
        return _run_cell(config, cell, fingerprint, parent_run_id, tracking_uri, force, progress, out)
    except BaseException:
        # Ctrl-C or an error: remove the cell's partial outputs (kill -9 cannot clean up, but a
        # cell without cell.json is never trusted and reruns from scratch).
        if not (out / "cell.json").is_file():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_cell(config, cell, fingerprint, parent_run_id, tracking_uri, force, progress, out) -> dict[str, Any]:
    from fmri2img import tracking
    from fmri2img.data.index import read_index
    from fmri2img.embeddings.cache import load_embedding_set
    from fmri2img.evaluation.evaluate import evaluate_predictor
    from fmri2img.io import read_json, write_json
    from fmri2img.models.adapt import adapter_predictor, train_adapters
    from fmri2img.models.checkpoint import load_checkpoint
    from fmri2img.models.predictors import Predictor, decoder_fn
    from fmri2img.models.training import train_decoder

    base_ckpt = base_checkpoint_dir(config, cell.subject, cell.decoder) / "best.pt"
    key_parts = {"cell": dataclasses.asdict(cell), "inputs": fingerprint, "code": code_sha256(),
                 "mode": config.mode, "eval": dataclasses.asdict(config.eval), "folds": config.folds,
                 "train": dataclasses.asdict(train_config(config, cell.decoder)),
                 "base_checkpoint": read_json(base_ckpt.parent / "metadata.json").get("weights_sha256")}
    if cell.configuration == "mixed":
        key_parts["imagery_weight"] = config.imagery_weight
    if cell.configuration in ADAPTER_CELLS:
        key_parts["adapt"] = dataclasses.asdict(config.adapt)
    key = _key(key_parts)
    marker = out / "cell.json"
    if not force and marker.is_file() and (out / "metrics.json").is_file():
        record = read_json(marker)
        if record.get("key") == key:
            return {**record, "skipped": True}

    parent = tracking.attach(parent_run_id, tracking_uri)
    index = read_index(index_path(config, cell.subject))
    tags = {"subject": cell.subject, "decoder": cell.decoder, "configuration": cell.configuration,
            "test_domain": config.mode, "cell": cell.name}
    start = time.perf_counter()
    with tracking.run("cell", {"cell": dataclasses.asdict(cell), "key": key}, tracking_uri=tracking_uri,
                      run_name=f"{cell.subject}/{cell.name}", tags=tags, parent=parent) as run:
        decoder, meta = load_checkpoint(base_ckpt, expected_decoder=cell.decoder)
        embedding_set = load_embedding_set(config.cache_root, meta["embedding_set"])
        extra: dict[str, Any] = {}
        if cell.configuration == "perception_only":
            predictor = Predictor(single=decoder_fn(decoder))
        elif cell.configuration == "mixed":
            from fmri2img.data import selection

            fold_models = {}
            seconds = 0.0
            for fold in selection.imagery_folds(index):
                cfg = train_config(config, cell.decoder, train_on="mixed", holdout_fold=fold,
                                   imagery_weight=config.imagery_weight)
                result = train_decoder(index_path(config, cell.subject),
                                       Path(config.checkpoint_root) / cell.decoder / cell.subject / "mixed" / f"fold{fold}",
                                       cfg, cache_root=config.cache_root, tracking_uri=tracking_uri, parent_run=run,
                                       progress=progress)
                fold_model, _ = load_checkpoint(result.checkpoint, expected_decoder=cell.decoder)
                fold_models[fold] = decoder_fn(fold_model)
                seconds += result.metadata["train_seconds"]
            predictor = Predictor(fold_models=fold_models)
            extra["train_seconds_total"] = seconds
        else:
            kind, cond = ADAPTER_CELLS[cell.configuration]
            acfg = dataclasses.replace(config.adapt, adapter=kind, condition=cond, device=config.device)
            result = train_adapters(index_path(config, cell.subject), base_ckpt, adapter_dir(config, cell), acfg,
                                    model_type=cell.decoder, cache_root=config.cache_root, tracking_uri=tracking_uri,
                                    parent_run=run, progress=progress)
            predictor, ameta = adapter_predictor(decoder, result.checkpoint, base_ckpt, kind)
            extra.update({k: ameta[k] for k in ("train_seconds_total", "n_trainable_parameters",
                                               "n_base_parameters", "parameter_overhead")})
            # fold models that never beat their initial state on the validation stimuli (the
            # identity adapter, the unchanged decoder copy): the report names such no-ops
            extra["n_fold_models"] = len(ameta["fold_details"])
            extra["n_folds_kept_initial"] = sum(f.get("best_epoch") == -1 for f in ameta["fold_details"])
        evaluate_predictor(
            index, predictor, embedding_set, out, decoder=cell.decoder, configuration=cell.configuration,
            n_voxels=meta["n_voxels"], mode=config.mode, zscore=meta.get("zscore", True), options=config.eval,
            cache_root=config.cache_root, run=run,
            info={"cell": cell.name, "index": str(index_path(config, cell.subject)),
                  "base_checkpoint": str(base_ckpt), "embedding_set": meta["embedding_set"],
                  # wall times vary run to run: they go to timings.json, never into metrics files
                  **{k: v for k, v in extra.items() if "seconds" not in k}})
        run.log_metrics({k: v for k, v in extra.items() if isinstance(v, (int, float))})
        record = {"cell": dataclasses.asdict(cell), "key": key, "mlflow_run_id": run.run_id,
                  "seconds": time.perf_counter() - start, "commands": _cell_commands(config, cell), **extra}
        write_json(marker, record)
    return {**record, "skipped": False}


#: Order in which cells are handed to the worker pool: the longest first (mixed training fits
#: one model per imagery fold), so that the workers finish together (longest-processing-time
#: scheduling). Results are collected in matrix order whatever the submission order.
SUBMIT_ORDER = ("mixed", "finetune", "adapter_mlp_condition", "adapter_mlp", "adapter_linear", "perception_only")


#: Threads of the BLAS and OpenMP pools (numpy/scipy: ridge, PCA; torch outside training) inside
#: a checkpoint or cell task, serial or in a worker: parallelism comes from ``--jobs``, and a fixed
#: count keeps results independent of the machine's cores and of ``--jobs`` (BLAS sums in a
#: thread-count-dependent order: a ridge fit's coef moved by ~2e-9 between 1 and 2 threads).
#: Two workers with two OpenBLAS threads each on 2 cores made each ridge fit ~3x slower
#: (threads spin while they wait for a core). Torch training is single-threaded already
#: (:data:`fmri2img.models.torch_utils.DETERMINISTIC_CPU_THREADS`).
TASK_THREADS = 1


def _task_threads():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=TASK_THREADS)


# Entry points of the pool's tasks (module-level: importable by spawned or forked workers).
def _run_cell_star(args):
    with _task_threads():
        return run_cell(*args)


def _base_checkpoint_star(args) -> str:
    # one perception-only checkpoint, logged as a child of the ablation run
    from fmri2img import tracking

    config, subject, decoder, fingerprint, parent_run_id, tracking_uri, force, progress = args
    parent = tracking.attach(parent_run_id, tracking_uri)
    with _task_threads():
        return str(ensure_base_checkpoint(config, subject, decoder, fingerprint, parent, force, progress))


def _figures_star(folder: str) -> str:
    # the figures of one ablation folder (logged to the run in mlflow_run.json)
    from fmri2img.reporting.figures import make_figures

    make_figures(folder, Path(folder) / "figures")
    return folder


# ----------------------------------------------------------------------------- report

def collect_subject(config: AblationConfig, subject: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Write the subject's results_table.csv/.md, metrics_all.json and commands.txt."""
    from fmri2img.io import read_json, write_json, write_text

    sdir = subject_dir(config, subject)
    frames, metrics_all, timings, commands = [], {}, {}, []
    for rec in sorted(records, key=lambda r: (DECODERS.index(r["cell"]["decoder"]),
                                              CONFIGURATIONS.index(r["cell"]["configuration"]))):
        cell = Cell(**rec["cell"])
        cdir = cell_dir(config, cell)
        table = pd.read_csv(cdir / "results_table.csv")
        frames.append(table)
        metrics_all[cell.name] = read_json(cdir / "metrics.json")
        timings[cell.name] = {"cell_seconds": rec.get("seconds"), "train_seconds_total": rec.get("train_seconds_total"),
                              "n_trainable_parameters": rec.get("n_trainable_parameters"),
                              "n_base_parameters": rec.get("n_base_parameters"),
                              "parameter_overhead": rec.get("parameter_overhead")}
        commands.append(f"# {subject} {cell.name}")
        commands.extend(rec["commands"])
        commands.append("")
    table = pd.concat(frames, ignore_index=True)
    is_base = table["configuration"].str.startswith("baseline_")
    baselines = table[is_base].drop_duplicates(["test_set", "configuration", "stimulus_type", "metric"])
    table = pd.concat([table[~is_base], baselines], ignore_index=True)
    write_text(sdir / "results_table.csv", table.to_csv(index=False))
    write_text(sdir / "results_table.md", markdown_table(table))
    write_json(sdir / "metrics_all.json", metrics_all)
    write_json(sdir / "timings.json", timings)
    write_text(sdir / "commands.txt", "\n".join(commands) + "\n")
    return table


def markdown_table(table: pd.DataFrame, metrics=("cosine", "retrieval_at_1", "retrieval_at_5", "two_way")) -> str:
    """Compact markdown: one row per (decoder, configuration, test set), stimulus type ``all``;
    each metric cell is the first matching row's value (CI, chance), ``n/a`` where none has a value."""
    key_columns = ["subject", "decoder", "configuration", "test_set"]
    sub = table[(table["stimulus_type"] == "all") & table["metric"].isin(metrics)]
    lines = ["| subject | decoder | configuration | test set | " + " | ".join(metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    # one pass over the rows (a boolean filter per table cell was quadratic: ~2.5 s per subject)
    first = sub.drop_duplicates([*key_columns, "metric"], keep="first")
    found = dict(zip(first[[*key_columns, "metric"]].itertuples(index=False, name=None),
                     first[["value", "ci_low", "ci_high", "chance"]].itertuples(index=False, name=None)))
    for key in sub[key_columns].drop_duplicates().itertuples(index=False, name=None):
        cells = []
        for metric in metrics:
            value, ci_low, ci_high, chance = found.get((*key, metric), (math.nan,) * 4)
            if pd.isna(value) or any(pd.isna(k) for k in key):  # a missing key never matches (NaN != NaN)
                cells.append("n/a")
                continue
            text = f"{value:.3f}"
            if not pd.isna(ci_low):
                text += f" [{ci_low:.3f}, {ci_high:.3f}]"
            if not pd.isna(chance):
                text += f" (chance {chance:.3f})"
            cells.append(text)
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

#: Modules every worker imports, loaded once by the fork server (about 10 s of imports per
#: process on 2 cores: torch, torch._dynamo (which torch.optim imports on first use), MLflow,
#: pandas, pingouin); the workers forked from it start with them loaded.
WORKER_PRELOAD = ("fmri2img.ablation", "fmri2img.models.training", "fmri2img.models.adapt",
                  "fmri2img.evaluation.evaluate", "fmri2img.tracking", "torch._dynamo")


def _mp_context():
    """The pool's start method: 'forkserver' where the platform has it (workers are forked from
    a single-threaded server process that has imported :data:`WORKER_PRELOAD`, so they neither
    re-import everything nor inherit the parent's threads), else 'spawn'. Neither inherits the
    parent's memory (RNG states, caches); :func:`_init_worker` gives each worker the parent's
    environment as it is when the pool starts (as 'spawn' does), so results do not depend on it."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server(jobs: int) -> None:
    """Start the fork server now (jobs > 1), so that its imports overlap the serial stages."""
    ctx = _mp_context()
    if jobs > 1 and ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

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
        from fmri2img.logs import log_to_file

        log_to_file(log_path)


@dataclass
class AblationResult:
    output_root: Path
    records: list[dict[str, Any]]
    summary_dir: Path
    hypotheses: dict[str, Any]
    run_id: str
    seconds: float


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
    from tqdm import tqdm

    from fmri2img import tracking
    from fmri2img.io import ensure_dir, write_json
    from fmri2img.reporting.hypotheses import hypothesis_report

    config.validate()
    check_positive("jobs", jobs)
    start = time.perf_counter()
    ensure_dir(config.output_root)
    tracking.check_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    orphans = tracking.mark_orphaned_runs(tracking_uri, experiment)
    params = {"stage": "ablate", "config": dataclasses.asdict(config), "jobs": jobs, "force": force}
    from fmri2img.logs import get_logger, stage_log

    log = get_logger("ablate")
    with stage_log(config.log_dir, "ablate") as log_path, tracking.run(
            "ablate", params, tracking_uri=tracking_uri, experiment=experiment, run_name="ablation",
            tags={"n_orphaned_runs_marked": len(orphans)}) as run:
        log.info("ablation run %s: %d subjects x %d decoders x %d configurations; %d orphaned runs marked KILLED",
                 run.run_id, len(config.subjects), len(config.decoders), len(config.configurations), len(orphans))
        write_json(Path(config.output_root) / "mlflow_run.json",
                   {"run_id": run.run_id, "tracking_uri": run.tracking_uri})
        start_worker_server(jobs)
        fingerprints = ensure_inputs(config, progress=progress)
        log.info("inputs ready: %s", {s: f["index_sha256"][:12] for s, f in fingerprints.items()})
        stage_configs = write_stage_configs(config)
        cells = [Cell(s, d, c) for s in config.subjects for d in config.decoders for c in config.configurations]
        with _executor(jobs, log_path) as pool:
            mapper = pool.map if pool is not None else map
            # 1. perception-only checkpoints (independent: in parallel when jobs > 1)
            bases = [(config, s, d, fingerprints[s], run.run_id, run.tracking_uri, force, progress and pool is None)
                     for s in config.subjects for d in config.decoders]
            for path in mapper(_base_checkpoint_star, bases):
                interrupts.check()
                log.info("perception-only checkpoint %s", path)
            # 2. the cells, longest first
            order = sorted(cells, key=lambda c: SUBMIT_ORDER.index(c.configuration))
            args = [(config, cell, fingerprints[cell.subject], run.run_id, run.tracking_uri, force, False)
                    for cell in order]
            records: list[dict[str, Any]] = []
            bar = tqdm(total=len(cells), desc="ablation cells", unit="cell", file=sys.stderr, disable=not progress)
            for rec in mapper(_run_cell_star, args):
                interrupts.check()
                records.append(rec)
                log.info("cell %s/%s__%s %s", rec["cell"]["subject"], rec["cell"]["decoder"],
                         rec["cell"]["configuration"], "reused" if rec["skipped"] else "done")
                bar.update()
            bar.close()
            records.sort(key=lambda r: cells.index(Cell(**r["cell"])))
            tables = [collect_subject(config, s, [r for r in records if r["cell"]["subject"] == s])
                      for s in config.subjects]
            summary_dir = ensure_dir(Path(config.output_root) / "summary")
            summary = pd.concat(tables, ignore_index=True)
            from fmri2img.io import write_text

            write_text(summary_dir / "results_table.csv", summary.to_csv(index=False))
            write_text(summary_dir / "results_table.md", markdown_table(summary))
            hypotheses = hypothesis_report(config, summary, records, summary_dir)
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
                    write_json(folder / "mlflow_run.json", {"run_id": run.run_id, "tracking_uri": run.tracking_uri})
                for folder in mapper(_figures_star, [str(f) for f in folders]):
                    log.info("figures %s/figures", folder)
        run.log_metrics({"n_cells": len(cells), "n_cells_skipped": sum(r["skipped"] for r in records),
                         "wall_seconds": time.perf_counter() - start})
        log.info("ablation finished in %.1f s", time.perf_counter() - start)
        run.log_artifact(log_path, "logs")
    return AblationResult(output_root=Path(config.output_root), records=records, summary_dir=summary_dir,
                          hypotheses=hypotheses, run_id=run.run_id, seconds=time.perf_counter() - start)
