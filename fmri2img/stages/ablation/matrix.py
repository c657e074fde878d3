"""The ablation matrix: its config, its cells, where each writes, the keys that decide what
reruns, and the CLI commands that reproduce a cell one stage at a time."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fmri2img
from fmri2img import __version__
from fmri2img.core.config import check_choice, check_positive, save_config
from fmri2img.core.constants import (
    DEFAULT_CACHE_ROOT,
    DEFAULT_CHECKPOINT_ROOT,
    DEFAULT_DATA_ROOT,
    DEFAULT_INDEX_DIR,
    DEFAULT_MANIFEST_DIR,
    DEFAULT_SUBJECTS,
    INIT_SEED,
    SYNTHETIC_TRUTH_EMBEDDINGS,
)
from fmri2img.core.errors import ConfigError
from fmri2img.core.executors import SlurmResources
from fmri2img.core.vocab import ADAPTER_CONFIGURATIONS, CELL_LOGGING, CONFIGURATIONS, DECODERS, EXECUTORS, MODES
from fmri2img.data import regions
from fmri2img.data.nsd_constants import subject_number
from fmri2img.data.regions import DEFAULT_REGION, DEFAULT_SELECTION
from fmri2img.evaluation.field_metrics import N_WAY
from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.models.reconstruct import RECONSTRUCTION_BACKENDS
from fmri2img.stages.adapt import AdaptConfig
from fmri2img.stages.train import TrainConfig

#: Torch decoders' training in the demo matrix: batch 256 with the learning rate doubled (linear
#: scaling rule, Goyal et al. 2017, "Accurate, Large Minibatch SGD"; the same validation cosine in
#: less time, docs/performance.md). The shipped ``ablation.yaml`` states the same values (a test
#: keeps the two equal), so `ablate` without that file runs the same study.
DEMO_DECODER_PARAMS = {
    "mlp": {"epochs": 30, "batch_size": 256, "lr": 0.002},
    "two_stage": {"epochs": 30, "batch_size": 256, "lr": 0.002},
}


#: Imagery strength of the demo world: at the generator's default (0.6) the demo world's imagery
#: offset outweighs its signal (ridge H1 -0.19 [-0.35, -0.04]); 0.78 plants degraded but clear
#: transfer (ridge H1 0.44 [0.32, 0.56] with the region-aware generator). Measured 2026-12-06, docs/trust.md.
DEMO_IMAGERY_STRENGTH = 0.78


@dataclass(frozen=True)
class FieldBattery:
    """The field's reconstruction battery on each perception-only cell (docs/comparing.md): its test
    stimuli reconstructed with ``backend`` (``fmri2img reconstruct``) and scored (``eval --predictions``).

    Off by default: with the synthetic backend and no feature weights it adds PixCorr / SSIM and the
    n-way retrieval; each network metric needs its local weights (``feature_weights``, a YAML of
    :func:`fmri2img.stages.battery.load_feature_weights`), else it is reported "not computed".
    """

    enabled: bool = False
    backend: str = "synthetic"  # one of fmri2img.models.reconstruct.RECONSTRUCTION_BACKENDS
    backend_params: dict[str, Any] = field(default_factory=dict)  # e.g. {pipeline_dir: ...} for unclip
    feature_weights: str | None = None
    n_way: int = N_WAY  # MindEye2's retrieval on shared1000 (the demo world has 100 shared images)

    def validate(self) -> None:
        check_choice("field_battery.backend", self.backend, RECONSTRUCTION_BACKENDS)
        check_positive("field_battery.n_way", self.n_way)


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
    regions: tuple[str, ...] = (DEFAULT_REGION,)  # an axis: every cell once per region (docs/regions.md)
    voxel_selection: str = DEFAULT_SELECTION  # within every region: all, ncsnr>=T or top-K
    synthesize: bool = True
    synth_seed: int | None = None
    synth_imagery_strength: float | None = DEMO_IMAGERY_STRENGTH  # the synthetic world's (None: the generator's)
    truth_table: str | None = None  # simulated truth of the synthetic world (calibrate --write-truth; None: shipped)
    folds: int = 3
    imagery_weight: float = 1.0
    device: str = "cpu"
    seed: int = INIT_SEED  # model initialisation of every decoder (adapt/eval have their own seeds)
    decoder_params: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEMO_DECODER_PARAMS))
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    figures: bool = True
    field_battery: FieldBattery = field(default_factory=FieldBattery)
    executor: str = "local"  # where checkpoints and cells run: local (process pool) or slurm (job arrays)
    slurm: SlurmResources = field(default_factory=SlurmResources)  # per task, for executor: slurm
    cell_logging: str = "full"  # what each cell's MLflow run holds: one of vocab.CELL_LOGGING

    def validate(self) -> None:
        for subject in self.subjects:
            subject_number(subject)
        for name in self.decoders:
            check_choice("decoder", name, DECODERS)
        for name in self.configurations:
            check_choice("configuration", name, CONFIGURATIONS)
        unknown = sorted(set(self.decoder_params) - set(DECODERS))
        if unknown:
            raise ConfigError(f"decoder_params: unknown decoder {unknown[0]!r}; allowed: {', '.join(DECODERS)}.")
        regions.parse_regions(self.regions)
        regions.parse_selection(self.voxel_selection)
        check_choice("mode", self.mode, MODES)
        if self.folds < 2:
            raise ConfigError(f"Invalid folds={self.folds}; expected at least 2 imagery folds.")
        check_positive("imagery_weight", self.imagery_weight)
        if self.truth_table is not None and not Path(self.truth_table).is_file():
            raise ConfigError(f"truth_table: {self.truth_table} not found; expected a truth table written by "
                              "`fmri2img calibrate --write-truth DIR` (or leave it out: shipped tables are used).")
        check_choice("executor", self.executor, EXECUTORS)
        check_choice("cell_logging", self.cell_logging, CELL_LOGGING)
        self.slurm.validate()
        self.field_battery.validate()
        self.adapt.validate()
        self.eval.validate()


@dataclass(frozen=True)
class Cell:
    subject: str
    decoder: str
    configuration: str
    region: str = DEFAULT_REGION
    voxel_selection: str = DEFAULT_SELECTION

    @property
    def tag(self) -> str:
        """Folder-safe region and selection; empty for nsdgeneral, all voxels."""
        return regions.tag(self.region, self.voxel_selection)

    @property
    def name(self) -> str:
        return f"{self.decoder}__{self.configuration}" + (f"__{self.tag}" if self.tag else "")


def matrix_cells(config: AblationConfig) -> list[Cell]:
    """Every cell of the matrix in its order: subject, region, decoder, configuration."""
    return [Cell(s, d, c, regions.parse_region(r), config.voxel_selection) for s in config.subjects
            for r in config.regions for d in config.decoders for c in config.configurations]


def base_cells(config: AblationConfig) -> list[Cell]:
    """One cell per perception-only checkpoint (subject, region, decoder)."""
    return [c for c in matrix_cells(config) if c.configuration == config.configurations[0]]


def code_sha256() -> str:
    """SHA-256 over the package's source files: a cell reruns when the code changes."""
    root = Path(fmri2img.__file__).resolve().parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def subject_dir(config: AblationConfig, subject: str) -> Path:
    return Path(config.output_root) / subject


def index_path(config: AblationConfig, subject: str) -> Path:
    return Path(config.index_dir) / f"{subject}.parquet"


def base_checkpoint_dir(config: AblationConfig, cell: Cell) -> Path:
    """``<checkpoint_root>/<decoder>/<subject>[/region-<tag>]``: the perception-only checkpoint of a cell."""
    path = Path(config.checkpoint_root) / cell.decoder / cell.subject
    return path / f"region-{cell.tag}" if cell.tag else path


def mixed_checkpoint_dir(config: AblationConfig, cell: Cell, fold: int) -> Path:
    return base_checkpoint_dir(config, cell) / "mixed" / f"fold{fold}"


def cell_dir(config: AblationConfig, cell: Cell) -> Path:
    return subject_dir(config, cell.subject) / "eval" / cell.name


def adapter_dir(config: AblationConfig, cell: Cell) -> Path:
    path = subject_dir(config, cell.subject) / "adapters" / cell.decoder
    return (path / f"region-{cell.tag}" if cell.tag else path) / cell.configuration


def train_config(config: AblationConfig, cell: Cell | None = None, *, decoder: str | None = None,
                 **extra: Any) -> TrainConfig:
    """The :class:`~fmri2img.stages.train.TrainConfig` of a cell's decoder and region in the matrix
    (or of ``decoder`` on nsdgeneral, all voxels: the stage configs of :func:`write_stage_configs`)."""
    decoder = cell.decoder if cell is not None else decoder
    where = {"region": cell.region, "voxel_selection": cell.voxel_selection} if cell is not None else {}
    return TrainConfig(model=decoder, embedding_set=config.embedding_set, device=config.device, seed=config.seed,
                       decoder_params=dict(config.decoder_params.get(decoder, {})), **where, **extra)


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
        save_config(train_config(config, decoder=decoder), paths[f"train_{decoder}"])
    return paths


def cell_commands(config: AblationConfig, cell: Cell) -> list[str]:
    """The exact CLI commands that reproduce ``cell`` one stage at a time (the stage configs
    are the files of :func:`write_stage_configs`)."""
    idx = str(index_path(config, cell.subject))
    base = str(base_checkpoint_dir(config, cell) / "best.pt")
    common = f"--cache-root {config.cache_root}"
    ev = str(cell_dir(config, cell))
    paths = stage_config_paths(config)
    cmds = [f"fmri2img index --subject {cell.subject} --data-root {config.data_root} {common} --output {idx} "
            f"--folds {config.folds} --manifest-dir {config.manifest_dir}"]
    train = (f"fmri2img train --config {paths[f'train_{cell.decoder}']} --index {idx} --model {cell.decoder} "
             f"--embeddings {config.embedding_set} {common}")
    if cell.tag:
        train += f" --region {cell.region} --voxel-selection '{cell.voxel_selection}'"
    evaluate = f"--mode {config.mode} --split test --config {paths['eval']}"
    if cell.configuration == "mixed":
        cmds.append("# the ablation scores the fold models together (each on its held-out fold's imagery stimuli, "
                    "shared1000 dealt round-robin); `eval` on one fold's checkpoint scores that fold alone")
        for fold in range(config.folds):
            out = mixed_checkpoint_dir(config, cell, fold)
            cmds.append(f"{train} --train-on mixed --holdout-fold {fold} --imagery-weight {config.imagery_weight} "
                        f"--output-dir {out}")
            cmds.append(f"fmri2img eval --index {idx} --checkpoint {out}/best.pt --model-type {cell.decoder} "
                        f"{evaluate} --output-dir {ev}/fold{fold} {common}")
        return cmds
    cmds.append(f"{train} --output-dir {base_checkpoint_dir(config, cell)}")
    if cell.configuration == "perception_only":
        cmds.append(f"fmri2img eval --index {idx} --checkpoint {base} --model-type {cell.decoder} "
                    f"{evaluate} --output-dir {ev} {common}")
        return cmds
    kind, cond = ADAPTER_CONFIGURATIONS[cell.configuration]
    adir = adapter_dir(config, cell)
    cmds.append(f"fmri2img adapt --config {paths['adapt']} --index {idx} --checkpoint {base} "
                f"--model-type {cell.decoder} --adapter {kind}{' --with-condition' if cond else ''} "
                f"--output-dir {adir} {common}")
    cmds.append(f"fmri2img eval --index {idx} --checkpoint {base} --model-type {cell.decoder} "
                f"--adapter-checkpoint {adir}/checkpoints/adapter_best.pt --adapter-type {kind} "
                f"{evaluate} --output-dir {ev} {common}")
    return cmds
