"""The ``train`` stage: fit a decoder on an index's trials and write a trusted checkpoint.

``train_decoder`` is the one library function behind ``fmri2img train``. It

1. reads the trial index (schema- and checksum-verified) and the cached masked betas
   (per-session z-scored with training statistics only);
2. selects the training trials (:mod:`fmri2img.data.trials`): NSD perception ``train``
   split, plus, for ``train_on="mixed"`` (H2), the NSD-Imagery *imagery* trials of every fold
   except ``holdout_fold``, weighted by ``imagery_weight`` (the perception trials alone set the
   decoder's feature space: ``stats_rows``); ``val`` split for early stopping (mixed: plus the
   mean trial of a held-out ``imagery_val_fraction`` of the training folds' imagery stimuli);
3. looks up the target embeddings of each trial's stimulus in an embedding set;
4. fits the decoder, logs its params and per-epoch curves to MLflow, and writes
   ``best.pt`` + ``metadata.json`` (docs/contracts.md section 5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fmri2img.core import tracking
from fmri2img.core.config import check_choice, check_positive
from fmri2img.core.constants import (
    DEFAULT_CACHE_ROOT,
    DEFAULT_CHECKPOINT_ROOT,
    DEFAULT_EXPERIMENT,
    INIT_SEED,
    SPLIT_SEED,
    SYNTHETIC_TRUTH_EMBEDDINGS,
)
from fmri2img.core.errors import ConfigError
from fmri2img.core.files import ensure_dir, plain_data, read_json, sha256_file
from fmri2img.core.memo import Memo
from fmri2img.core.provenance import package_versions
from fmri2img.core.vocab import DECODERS, DEVICES, TRAIN_ON
from fmri2img.data import regions
from fmri2img.data.betas import region_info
from fmri2img.data.schema import META_SPLIT_MANIFEST, read_index
from fmri2img.data.trials import training_data
from fmri2img.embeddings.cache import load_embedding_set
from fmri2img.models.checkpoint import METADATA_FILE, save_checkpoint
from fmri2img.models.registry import decoder_class, make_decoder

#: Options that only torch decoders take (``--epochs`` etc. on ridge is an error, not ignored).
TORCH_ONLY_OPTIONS = ("epochs", "lr", "batch_size")


@dataclass(frozen=True)
class TrainConfig:
    """What to train. Stored in the checkpoint's metadata and logged as MLflow params."""

    model: str = "ridge"  # one of DECODERS
    train_on: str = "perception"  # one of TRAIN_ON
    imagery_weight: float = 1.0
    holdout_fold: int | None = None
    #: mixed training: share of the training folds' imagery stimuli held out (whole) for early
    #: stopping, so that the stopping epoch also reflects imagery of unseen stimuli
    imagery_val_fraction: float = 0.25
    embedding_set: str = SYNTHETIC_TRUTH_EMBEDDINGS
    #: the voxels decoded from (fmri2img.data.regions): a region name or union, and a selection in it
    region: str = regions.DEFAULT_REGION
    voxel_selection: str = regions.DEFAULT_SELECTION
    zscore: bool = True
    device: str = "cpu"
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = INIT_SEED
    decoder_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # one spelling per region ('V3+V1' is 'V1+V3'), so equal regions share checkpoints and keys
        object.__setattr__(self, "region", regions.parse_region(self.region))
        object.__setattr__(self, "voxel_selection", str(self.voxel_selection).replace(" ", ""))

    def validate(self) -> None:
        check_choice("model", self.model, DECODERS)
        check_choice("train_on", self.train_on, TRAIN_ON)
        check_choice("device", self.device, DEVICES)
        check_positive("imagery_weight", self.imagery_weight)
        regions.parse_selection(self.voxel_selection)
        if not 0.0 <= self.imagery_val_fraction < 1.0:
            raise ConfigError(f"Invalid imagery_val_fraction={self.imagery_val_fraction!r}; expected 0 <= value < 1.")
        for name in TORCH_ONLY_OPTIONS:
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)
                if self.model == "ridge":
                    raise ConfigError(f"--{name.replace('_', '-')} does not apply to decoder 'ridge'; "
                                      "it applies to 'mlp' and 'two_stage'.")
        if self.train_on == "mixed" and self.holdout_fold is None:
            raise ConfigError("Mixed training needs --holdout-fold K: the imagery fold kept out for evaluation.")
        if self.train_on == "perception" and self.holdout_fold is not None:
            raise ConfigError("--holdout-fold applies to --train-on mixed only.")

    def decoder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the decoder: its params plus device/seed/epochs/lr/batch_size."""
        allowed = set(decoder_class(self.model)._param_names())
        kwargs = dict(self.decoder_params)
        for name in (*TORCH_ONLY_OPTIONS, "device", "seed"):
            value = getattr(self, name)
            if value is not None and name in allowed:
                kwargs[name] = value
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ConfigError(
                f"Unknown parameter {unknown[0]!r} for decoder {self.model!r}; allowed: {', '.join(sorted(allowed))}."
            )
        return kwargs

    def data_rules(self) -> dict[str, Any]:
        """Keyword arguments of :func:`fmri2img.data.trials.training_data` for this config."""
        return {"mixed": self.train_on == "mixed", "holdout_fold": self.holdout_fold,
                "imagery_weight": self.imagery_weight, "imagery_val_fraction": self.imagery_val_fraction,
                "seed": self.seed, "zscore": self.zscore}


@dataclass
class TrainResult:
    checkpoint: Path
    metadata: dict[str, Any]
    run_id: str | None = None
    #: per-epoch records of the fit (torch decoders; empty for ridge)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the fitted decoder
    decoder: Any = None


def index_fingerprint(index_path: str | Path) -> dict[str, str | None]:
    """SHA-256 of the index file and of its split manifest (from the Parquet metadata)."""
    meta = pq.read_schema(index_path).metadata or {}
    manifest = meta.get(META_SPLIT_MANIFEST.encode())
    return {
        "index_sha256": sha256_file(index_path),
        "split_manifest_sha256": manifest.decode() if manifest else None,
    }


def default_checkpoint_dir(config: TrainConfig, subject: str, root: str | Path = DEFAULT_CHECKPOINT_ROOT) -> Path:
    """``checkpoints/<model>/<subject>`` (the roadmap's layout; another region than nsdgeneral, all
    voxels, adds ``region-<tag>``); mixed models get a sub-folder per hold-out fold:
    ``checkpoints/<model>/<subject>/mixed/fold<k>``."""
    path = Path(root) / config.model / subject
    if tag := regions.tag(config.region, config.voxel_selection):
        path = path / f"region-{tag}"
    if config.train_on == "mixed":
        path = path / "mixed" / f"fold{config.holdout_fold}"
    return path


def train_decoder(
    index_path: str | Path,
    output_dir: str | Path | None,
    config: TrainConfig,
    *,
    cache_root: str | Path = DEFAULT_CACHE_ROOT,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run=None,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    memo: Memo | None = None,
    track: bool = True,
    run_tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train ``config.model`` on the trials of ``index_path``; write ``output_dir/best.pt``.

    Returns the checkpoint path, its metadata, the fitted decoder and its per-epoch history. Runs
    inside one MLflow run (a child of ``parent_run`` when given, with extra ``run_tags``), or
    none with ``track=False`` (an ablation cell logs the result into its own run); ``memo``
    keeps the sessions' z-scoring statistics for later calls.
    """
    config.validate()
    index = regions.restrict(read_index(index_path), config.region, config.voxel_selection)
    subject = str(index["subject"].iloc[0])
    output_dir = ensure_dir(output_dir or default_checkpoint_dir(config, subject))
    embeddings = load_embedding_set(cache_root, config.embedding_set)
    params = {"stage": "train", "index": str(index_path), "subject": subject, "output_dir": str(output_dir),
              "config": dataclasses.asdict(config)}
    tags = {"subject": subject, "decoder": config.model, "train_on": config.train_on, "region": config.region,
            **(run_tags or {})}
    opened = tracking.run("train", params, tracking_uri=tracking_uri, experiment=experiment,
                          run_name=f"train-{config.model}-{subject}-{config.train_on}", tags=tags,
                          parent=parent_run) if track else contextlib.nullcontext(tracking.NULL_RUN)
    with opened as run:
        train, val = training_data(index, cache_root, embeddings, memo=memo, **config.data_rules())
        decoder = make_decoder(config.model, **config.decoder_kwargs())
        if hasattr(decoder, "progress"):
            decoder.set_params(progress=progress)
        run.log_params({"decoder": decoder.get_params()})
        start = time.perf_counter()
        decoder.fit(train.X, train.Y, X_val=val.X, Y_val=val.Y, sample_weight=train.sample_weight,
                    stats_rows=(train.rows["dataset"] == "nsd").to_numpy(), val_sample_weight=val.sample_weight)
        seconds = time.perf_counter() - start
        run.log_history(getattr(decoder, "history_", []) or [])
        val_cos = _mean_cosine(decoder.predict(val.X), val.Y)
        run.log_metrics({"val_cosine": val_cos, "train_seconds": seconds,
                         "n_train_trials": len(train.X), "n_voxels": train.X.shape[1]})
        metadata = {
            "decoder": config.model,
            "params": plain_data(decoder.get_params()),
            "n_voxels": int(train.X.shape[1]),
            "region": config.region,
            "voxel_selection": config.voxel_selection,
            "region_info": region_info(index, cache_root),
            "dim": int(train.Y.shape[1]),
            "embedding_set": config.embedding_set,
            **index_fingerprint(index_path),
            "index_path": str(index_path),
            "subject": subject,
            "seeds": {"split": SPLIT_SEED, "init": config.seed},
            "train_seconds": seconds,
            "versions": package_versions(),
            "train_on": config.train_on,
            "holdout_fold": config.holdout_fold,
            "imagery_weight": config.imagery_weight if config.train_on == "mixed" else None,
            "zscore": config.zscore,
            "n_train_trials": int(len(train.X)),
            "val_cosine": val_cos,
            "best_epoch": getattr(decoder, "best_epoch_", None),  # torch decoders: the restored epoch
            "mlflow_run_id": run.run_id,
            **(extra_metadata or {}),
        }
        checkpoint = save_checkpoint(decoder, output_dir, metadata)
        metadata = read_json(Path(checkpoint).parent / METADATA_FILE)  # with weights_sha256
        run.log_artifacts(output_dir, "checkpoint")
    return TrainResult(checkpoint=Path(checkpoint), metadata=metadata, run_id=run.run_id,
                       history=list(getattr(decoder, "history_", []) or []), decoder=decoder)


def _mean_cosine(pred: np.ndarray, true: np.ndarray) -> float:
    num = (pred * true).sum(1)
    den = np.linalg.norm(pred, axis=1) * np.linalg.norm(true, axis=1) + 1e-12
    return float(np.mean(num / den))
