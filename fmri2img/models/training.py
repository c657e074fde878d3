"""The ``train`` stage: fit a decoder on an index's trials and write a trusted checkpoint.

``train_decoder`` is the one library function behind ``fmri2img train``. It

1. reads the trial index (schema- and checksum-verified) and the cached masked betas
   (per-session z-scored with training statistics only);
2. selects the training trials (:mod:`fmri2img.data.selection`): NSD perception ``train``
   split, plus, for ``train_on="mixed"`` (H2), the NSD-Imagery *imagery* trials of every fold
   except ``holdout_fold``, weighted by ``imagery_weight`` (the perception trials alone set the
   decoder's feature space: ``stats_rows``); ``val`` split for early stopping (mixed: plus the
   mean trial of a held-out ``imagery_val_fraction`` of the training folds' imagery stimuli);
3. looks up the target embeddings of each trial's stimulus in an embedding set;
4. fits the decoder, logs its params and per-epoch curves to MLflow, and writes
   ``best.pt`` + ``metadata.json`` (docs/contracts.md section 5).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fmri2img.config import check_positive
from fmri2img.errors import ConfigError
from fmri2img.constants import (
    DEFAULT_CACHE_ROOT,
    DEFAULT_EXPERIMENT,
    INIT_SEED,
    SPLIT_SEED,
    SYNTHETIC_TRUTH_EMBEDDINGS,
)
from fmri2img.data import selection

#: Options that only torch decoders take (``--epochs`` etc. on ridge is an error, not ignored).
TORCH_ONLY_OPTIONS = ("epochs", "lr", "batch_size")


@dataclass(frozen=True)
class TrainConfig:
    """What to train. Stored in the checkpoint's metadata and logged as MLflow params."""

    model: Literal["ridge", "mlp", "two_stage"] = "ridge"
    train_on: Literal["perception", "mixed"] = "perception"
    imagery_weight: float = 1.0
    holdout_fold: int | None = None
    #: mixed training: share of the training folds' imagery stimuli held out (whole) for early
    #: stopping, so that the stopping epoch also reflects imagery of unseen stimuli
    imagery_val_fraction: float = 0.25
    embedding_set: str = SYNTHETIC_TRUTH_EMBEDDINGS
    zscore: bool = True
    device: str = "cpu"
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = INIT_SEED
    decoder_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_positive("imagery_weight", self.imagery_weight)
        if not 0.0 <= self.imagery_val_fraction < 1.0:
            raise ConfigError(f"Invalid imagery_val_fraction={self.imagery_val_fraction!r}; expected 0 <= value < 1.")
        for name in TORCH_ONLY_OPTIONS:
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)
                if self.model == "ridge":
                    raise ConfigError(f"--{name.replace('_', '-')} does not apply to decoder 'ridge'; "
                                      "it applies to 'mlp' and 'two_stage'.")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"Invalid device {self.device!r}; choose one of 'cpu', 'cuda'.")
        if self.train_on == "mixed" and self.holdout_fold is None:
            raise ConfigError("Mixed training needs --holdout-fold K: the imagery fold kept out for evaluation.")
        if self.train_on == "perception" and self.holdout_fold is not None:
            raise ConfigError("--holdout-fold applies to --train-on mixed only.")

    def decoder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the decoder: its params plus device/seed/epochs/lr/batch_size."""
        from fmri2img.models.registry import decoder_class

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


@dataclass
class Dataset:
    """Design matrices of one stage.

    X : float32 array of shape (n_trials, n_voxels)
    Y : float32 array of shape (n_trials, n_dims)
    rows : DataFrame of the n_trials index rows, in the order of X
    sample_weight : float32 array of shape (n_trials,) or None
    """

    X: np.ndarray
    Y: np.ndarray
    rows: pd.DataFrame
    sample_weight: np.ndarray | None = None


def index_fingerprint(index_path: str | Path) -> dict[str, str | None]:
    """SHA-256 of the index file and of its split manifest (from the Parquet metadata)."""
    import pyarrow.parquet as pq

    from fmri2img.io import sha256_file

    meta = pq.read_schema(index_path).metadata or {}
    manifest = meta.get(b"fmri2img.split_manifest_sha256")
    return {
        "index_sha256": sha256_file(index_path),
        "split_manifest_sha256": manifest.decode() if manifest else None,
    }


def load_rows(
    index: pd.DataFrame, mask: np.ndarray, cache_root: str | Path, embedding_set, zscore: bool = True
) -> Dataset:
    """Betas and target embeddings of the rows of ``index`` selected by ``mask``."""
    from fmri2img.data.betas import load_betas

    rows = index.loc[mask]
    X = load_betas(index, cache_root, rows=np.flatnonzero(mask), zscore=zscore)
    Y = embedding_set.lookup(rows["stimulus_id"].tolist())
    return Dataset(X=np.asarray(X, dtype=np.float32), Y=np.asarray(Y, dtype=np.float32), rows=rows)


def training_data(
    index: pd.DataFrame, cache_root: str | Path, embedding_set, config: TrainConfig
) -> tuple[Dataset, Dataset]:
    """(train, val) datasets for ``config`` (see the module docstring for the rules)."""
    train_mask = selection.nsd_split_rows(index, "train")
    val = load_rows(index, selection.nsd_split_rows(index, "val"), cache_root, embedding_set, config.zscore)
    train = load_rows(index, train_mask, cache_root, embedding_set, config.zscore)
    train.sample_weight = np.ones(len(train.X), dtype=np.float32)
    if config.train_on == "mixed":
        folds = selection.training_folds(index, config.holdout_fold)
        imagery_mask = selection.imagery_rows(index, "imagery", folds)
        val_mask = _imagery_val_rows(index, imagery_mask, config)
        imagery = load_rows(index, imagery_mask & ~val_mask, cache_root, embedding_set, config.zscore)
        if val_mask.any():
            # early stopping also scores imagery of stimuli the model does not train on: each
            # held-out stimulus' mean trial (as eval scores means), the imagery part weighted to
            # count as much as the perception validation trials together
            held = load_rows(index, val_mask, cache_root, embedding_set, config.zscore)
            Xm, Ym, _ = stimulus_means(held.X, held.Y, held.rows)
            n_perception = len(val.X)
            val = Dataset(
                X=np.concatenate([val.X, Xm]), Y=np.concatenate([val.Y, Ym]),
                rows=pd.concat([val.rows, held.rows.drop_duplicates("stimulus_id")]),
                sample_weight=np.concatenate([np.ones(n_perception, dtype=np.float32),
                                              np.full(len(Xm), n_perception / len(Xm), dtype=np.float32)]),
            )
        train = Dataset(
            X=np.concatenate([train.X, imagery.X]),
            Y=np.concatenate([train.Y, imagery.Y]),
            rows=pd.concat([train.rows, imagery.rows]),
            sample_weight=np.concatenate(
                [train.sample_weight, np.full(len(imagery.X), config.imagery_weight, dtype=np.float32)]
            ),
        )
    return train, val


def stimulus_means(X: np.ndarray, Y: np.ndarray, rows: pd.DataFrame,
                   condition: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ``X`` and ``Y`` over the trials of each stimulus (and condition), in order of
    first appearance.

    Early stopping scores these means wherever evaluation does (evaluation scores each
    stimulus' mean prediction): a per-trial validation loss also rewards shrinking noisy
    trials towards the mean embedding, which does not help, and mixed into averaged
    predictions hurts, the evaluated score. For an affine adapter the mean of the adapted
    outputs equals the adapted mean, so there it is exactly the evaluated quantity.

    Parameters
    ----------
    X : array of shape (n_trials, p); Y : array of shape (n_trials, d)
    rows : DataFrame with a ``stimulus_id`` column, one row per trial
    condition : int array of shape (n_trials,), optional
        Trials of one stimulus under different conditions are averaged separately.

    Returns
    -------
    X_mean float32 (n_groups, p), Y_mean float32 (n_groups, d), condition int64 (n_groups,)
    """
    from fmri2img.evaluation.metrics import average_by_stimulus

    cond = np.zeros(len(rows), dtype=np.int64) if condition is None else np.asarray(condition, dtype=np.int64)
    keys = [f"{stimulus}|{c}" for stimulus, c in zip(rows["stimulus_id"].to_numpy(), cond)]
    Xm, groups = average_by_stimulus(X, keys)
    Ym, _ = average_by_stimulus(Y, keys)
    cond_of = dict(zip(keys, cond.tolist()))
    return (Xm.astype(np.float32), Ym.astype(np.float32),
            np.array([cond_of[g] for g in groups], dtype=np.int64))


def _imagery_val_rows(index: pd.DataFrame, imagery_mask: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Rows of a seeded ``imagery_val_fraction`` of the imagery stimuli in ``imagery_mask``."""
    ids = index["stimulus_id"].to_numpy()
    stimuli = np.unique(ids[imagery_mask])
    n_val = int(round(config.imagery_val_fraction * len(stimuli)))
    if n_val == 0:
        return np.zeros(len(index), dtype=bool)
    if n_val >= len(stimuli):
        raise ConfigError(f"imagery_val_fraction={config.imagery_val_fraction} holds out all {len(stimuli)} "
                          "training-fold imagery stimuli; expected a value that leaves at least one to train on.")
    rng = np.random.default_rng([config.seed, int(config.holdout_fold)])
    chosen = rng.choice(stimuli, size=n_val, replace=False)
    return imagery_mask & np.isin(ids, chosen)


@dataclass
class TrainResult:
    checkpoint: Path
    metadata: dict[str, Any]
    run_id: str | None = None


def default_checkpoint_dir(config: TrainConfig, subject: str, root: str | Path = "checkpoints") -> Path:
    """``checkpoints/<model>/<subject>`` (the roadmap's layout); mixed models get a sub-folder
    per hold-out fold: ``checkpoints/<model>/<subject>/mixed/fold<k>``."""
    path = Path(root) / config.model / subject
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
) -> TrainResult:
    """Train ``config.model`` on the trials of ``index_path``; write ``output_dir/best.pt``.

    Returns the checkpoint path and its metadata. Runs inside one MLflow run (nested under
    ``parent_run`` when given).
    """
    from fmri2img import tracking
    from fmri2img.data.index import read_index
    from fmri2img.embeddings.cache import load_embedding_set
    from fmri2img.io import ensure_dir, plain_data
    from fmri2img.models.checkpoint import save_checkpoint
    from fmri2img.models.registry import make_decoder

    config.validate()
    index = read_index(index_path)
    subject = str(index["subject"].iloc[0])
    output_dir = ensure_dir(output_dir or default_checkpoint_dir(config, subject))
    embedding_set = load_embedding_set(cache_root, config.embedding_set)
    params = {"stage": "train", "index": str(index_path), "subject": subject, "output_dir": str(output_dir),
              "config": dataclasses.asdict(config)}
    tags = {"subject": subject, "decoder": config.model, "train_on": config.train_on}
    with tracking.run("train", params, tracking_uri=tracking_uri, experiment=experiment,
                      run_name=f"train-{config.model}-{subject}-{config.train_on}", tags=tags,
                      parent=parent_run) as run:
        train, val = training_data(index, cache_root, embedding_set, config)
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
            "dim": int(train.Y.shape[1]),
            "embedding_set": config.embedding_set,
            **index_fingerprint(index_path),
            "index_path": str(index_path),
            "subject": subject,
            "seeds": {"split": SPLIT_SEED, "init": config.seed},
            "train_seconds": seconds,
            "versions": tracking.package_versions(),
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
        from fmri2img.io import read_json

        metadata = read_json(Path(checkpoint).parent / "metadata.json")  # with weights_sha256
        run.log_artifacts(output_dir, "checkpoint")
    return TrainResult(checkpoint=Path(checkpoint), metadata=metadata, run_id=run.run_id)


def _mean_cosine(pred: np.ndarray, true: np.ndarray) -> float:
    num = (pred * true).sum(1)
    den = np.linalg.norm(pred, axis=1) * np.linalg.norm(true, axis=1) + 1e-12
    return float(np.mean(num / den))
