"""The field's battery on a predictions folder: what ``fmri2img eval --predictions`` runs.

Scores the reconstructions and embeddings of a predictions folder (:mod:`fmri2img.data.predictions`;
written by ``fmri2img reconstruct`` or by any other model) with the protocol of the MindEye papers and the
NSD-Imagery benchmark (:mod:`fmri2img.evaluation.field_metrics`, ``docs/comparing.md``):

* per test set, the image battery (PixCorr, SSIM, AlexNet(2/5), InceptionV3, CLIP two-way,
  EfficientNet-B1 and SwAV distances) on the stimuli with a ground-truth image (NSD-Imagery sets A and
  B: group ``all``); the conceptual set C is a separate group (``conceptual``), each metric reported as
  not computed when its stimuli have no ground-truth image;
* on ``shared1000``, MindEye2's 300-way image and brain retrieval (30 random draws) from the predicted
  embeddings against the embedding set of their model.

Every metric carries its bootstrap CI over stimuli and its chance level; a metric whose network weights
are absent is a row saying why. Files: ``field_table.csv``, ``field_table.md``, ``field_metrics.json``,
``reconstruction_grid.png``; MLflow run ``eval`` with metrics ``field/<test_set>/<group>/<metric>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from fmri2img.core import tracking
from fmri2img.core.config import check_choice
from fmri2img.core.constants import DEFAULT_CACHE_ROOT, DEFAULT_EMBED_BATCH_SIZE, DEFAULT_EXPERIMENT
from fmri2img.core.errors import ConfigError, MismatchError, MissingInputError
from fmri2img.core.files import ensure_dir, read_json, write_json, write_text
from fmri2img.core.vocab import DEVICES, IMAGE_TYPES
from fmri2img.data.predictions import PredictionSet, check_ids, load_images, read_predictions
from fmri2img.data.schema import read_index
from fmri2img.data.trials import test_set_rows
from fmri2img.embeddings.cache import load_embedding_set
from fmri2img.embeddings.features import FeatureWeights, battery_features_sets
from fmri2img.evaluation import field_metrics, resampling
from fmri2img.evaluation.metrics import TWO_WAY_CHANCE
from fmri2img.reporting.field_report import battery_frame, battery_rows, format_battery_markdown
from fmri2img.stages.evaluate import RETRIEVAL_TEST_SET, image_loader
from fmri2img.stages.reconstruct import grid_figure
from fmri2img.stages.report import save_figure

#: Stimulus groups of the battery: those with an image ground truth (NSD and NSD-Imagery sets A, B) and
#: the conceptual set C, reported separately (the NSD-Imagery benchmark scores its 12 image stimuli).
GROUPS = {"all": IMAGE_TYPES, "conceptual": ("conceptual",)}



@dataclass(frozen=True)
class BatteryOptions:
    """Options of the battery (YAML keys of ``fmri2img eval --battery-config``).

    Attributes
    ----------
    image_size : int
        Side of PixCorr / SSIM (the field: 425; the NSD-Imagery benchmark code 512).
    n_way, n_draws : int
        MindEye2's retrieval: gallery size and random draws (300, 30).
    n_boot, n_perm, seed : int
        Bootstrap resamples, permutations, seed (as ``fmri2img eval``).
    chance_pairs : int
        Mismatched pairs of the PixCorr / SSIM chance baseline.
    device : {"cpu", "cuda"}
        Where the feature networks run.
    batch_size : int
        Images per forward pass.
    """

    image_size: int = field_metrics.FIELD_IMAGE_SIZE
    n_way: int = field_metrics.N_WAY
    n_draws: int = field_metrics.N_WAY_DRAWS
    n_boot: int = resampling.DEFAULT_N_BOOT
    n_perm: int = resampling.DEFAULT_N_PERM
    seed: int = resampling.DEFAULT_SEED
    chance_pairs: int = field_metrics.CHANCE_PAIRS
    device: str = "cpu"
    batch_size: int = DEFAULT_EMBED_BATCH_SIZE

    def validate(self) -> None:
        """Refuse values outside their range (ConfigError naming the key)."""
        for name in ("image_size", "n_way", "n_draws", "n_boot", "n_perm", "chance_pairs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_way" else 1):
                raise ConfigError(f"Invalid {name}={value!r}; expected an integer >= {2 if name == 'n_way' else 1}.")
        check_choice("device", self.device, DEVICES)


def load_feature_weights(path: str | Path | None) -> FeatureWeights:
    """FeatureWeights from a YAML file of weight file paths (keys of :class:`FeatureWeights`); None: none
    configured, every feature metric then reported as not computed. Relative paths are taken from the
    YAML file's folder."""
    if path is None:
        return FeatureWeights()
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Feature weights file not found: {path}; expected a YAML mapping such as "
                                "'alexnet: weights/alexnet-owt-7be5be79.pth' (docs/comparing.md).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Cannot parse {path} as YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of network -> weights file, got {type(data).__name__}.")
    resolved = {k: str(path.parent / v) if isinstance(v, str) and k != "clip_model" and not Path(v).is_absolute()
                else v for k, v in data.items()}
    return FeatureWeights.from_mapping(resolved)


def _groups(index: pd.DataFrame, test_set: str) -> dict[str, list[str]]:
    """Stimulus ids of each group of a test set (index order); empty groups left out."""
    rows = index.loc[test_set_rows(index, test_set, None)].drop_duplicates("stimulus_id")
    out = {}
    for group, types in GROUPS.items():
        ids = rows.loc[rows["stimulus_type"].isin(types), "stimulus_id"].astype(str).tolist()
        if ids:
            out[group] = ids
    return out


def _group_images(index: pd.DataFrame, load_truth, files: Mapping[str, Path], ids: list[str]):
    """(reconstructions, ground truths, stimuli scored) of one group, or the reason it cannot be scored."""
    have = [s for s in ids if s in files]
    refs = index.drop_duplicates("stimulus_id").set_index("stimulus_id")["image_ref"]
    if not have:
        return "no reconstruction of these stimuli in the predictions"
    if load_truth is None or not all(isinstance(refs.get(s), str) for s in have):
        return "these stimuli have no ground-truth image (conceptual set C is cued by a word)"
    return load_images([files[s] for s in have]), load_truth(have), have


def _not_computed(metric: str, reason: str) -> dict[str, Any]:
    """The not-computed record of a battery metric, with its direction and (two-way) chance."""
    kind = field_metrics.FEATURE_METRICS.get(metric, ("pixel", ""))[0]
    return field_metrics.not_computed(reason, higher_is_better=kind != "distance",
                                      chance=TWO_WAY_CHANCE if kind == "two_way" else None)


def _score_groups(jobs: list[tuple[str, str, Any, int]], weights: FeatureWeights, opts: BatteryOptions,
                  source: str) -> list[dict[str, Any]]:
    """Battery rows of each (test set, group, images or reason, n stimuli); networks loaded once for all."""
    names = [*field_metrics.PIXEL_METRICS, *field_metrics.FEATURE_METRICS]
    scorable = [job for job in jobs if not isinstance(job[2], str)]
    features = battery_features_sets([(recons, truths) for _, _, (recons, truths, _), _ in scorable], weights,
                                     device=opts.device, batch_size=opts.batch_size, progress=True)
    feats = {(t, g): f for (t, g, _, _), f in zip(scorable, features)}
    rows = []
    for test_set, group, images, n_ids in tqdm(jobs, desc="battery", unit="group", leave=False):
        if isinstance(images, str):
            records = {m: _not_computed(m, images) for m in names}
        else:
            recons, truths, have = images
            records = field_metrics.score_battery(recons, truths, feats[test_set, group], size=opts.image_size,
                                                  n_boot=opts.n_boot, n_perm=opts.n_perm, seed=opts.seed,
                                                  chance_pairs=opts.chance_pairs, progress=True)
            if len(have) < n_ids:
                partial = f"{len(have)} of {n_ids} stimuli reconstructed"
                for rec in records.values():
                    rec["note"] = "; ".join(filter(None, [rec["note"], partial]))
        rows += battery_rows(records, source=source, test_set=test_set, stimulus_group=group)
    return rows


def _retrieval(preds: PredictionSet, cache_root: str | Path, embedding_set: str | None,
               opts: BatteryOptions) -> dict[str, dict[str, Any]]:
    """MindEye2's n-way retrieval on shared1000 from the predicted embeddings (or why not)."""
    names = [f"retrieval_image_{opts.n_way}", f"retrieval_brain_{opts.n_way}"]
    chance = 1.0 / opts.n_way
    if RETRIEVAL_TEST_SET not in preds.embeddings:
        return {n: field_metrics.not_computed(f"no {RETRIEVAL_TEST_SET} embeddings in the predictions",
                                              chance=chance) for n in names}
    if embedding_set is None:
        return {n: field_metrics.not_computed("no --embedding-set naming the ground-truth embeddings",
                                              chance=chance) for n in names}
    truth = load_embedding_set(cache_root, embedding_set)
    ids, pred = preds.embeddings[RETRIEVAL_TEST_SET]
    if pred.shape[1] != truth.dim:
        raise MismatchError(f"Predicted {RETRIEVAL_TEST_SET} embeddings have {pred.shape[1]} dimensions but "
                            f"embedding set {embedding_set!r} has {truth.dim}; expected embeddings of the same model.")
    true = truth.vectors[truth.rows(ids)]
    return field_metrics.n_way_retrieval(pred, true, n_way=opts.n_way, n_draws=opts.n_draws, seed=opts.seed,
                                         n_boot=opts.n_boot)


def score_prediction_set(index: pd.DataFrame, preds: PredictionSet, weights: FeatureWeights, opts: BatteryOptions, *,
                         source: str, cache_root: str | Path = DEFAULT_CACHE_ROOT,
                         embedding_set: str | None = None) -> pd.DataFrame:
    """The battery rows (:data:`~fmri2img.reporting.field_report.FIELD_COLUMNS`) of a predictions folder."""
    data_root = index.attrs.get("data_root")
    load_truth = image_loader(index, data_root) if data_root and Path(data_root).is_dir() else None
    jobs, retrieval = [], []
    for test_set in preds.test_sets:
        groups = _groups(index, test_set)
        known = [s for ids in groups.values() for s in ids]
        for given in (preds.images.get(test_set, {}), preds.embeddings.get(test_set, ([], None))[0]):
            check_ids(list(given), known, test_set, preds.root)
        files = preds.images.get(test_set)
        if files:
            jobs += [(test_set, group, _group_images(index, load_truth, files, ids), len(ids))
                     for group, ids in groups.items()]
        if test_set == RETRIEVAL_TEST_SET:
            retrieval = battery_rows(_retrieval(preds, cache_root, embedding_set, opts), source=source,
                                     test_set=test_set, stimulus_group="all")
    rows = _score_groups(jobs, weights, opts, source) + retrieval
    return battery_frame(rows)


def flat_field_metrics(table: pd.DataFrame) -> dict[str, float]:
    """MLflow metric names ``field/<test_set>/<group>/<metric>`` (and ``.../ci_low``, ``.../chance``)."""
    out = {}
    for rec in table.to_dict("records"):
        key = f"field/{rec['test_set']}/{rec['stimulus_group']}/{rec['metric']}"
        for suffix, column in (("", "value"), ("/ci_low", "ci_low"), ("/ci_high", "ci_high"), ("/chance", "chance")):
            if rec[column] is not None and not pd.isna(rec[column]):
                out[key + suffix] = float(rec[column])
    return out


def _grid_figure(index: pd.DataFrame, preds: PredictionSet):
    images = {name: {s: image for s, image in zip(files, load_images(list(files.values())))}
              for name, files in preds.images.items()}
    return grid_figure(index, images)


def score_predictions(index_path: str | Path, predictions: str | Path, output_dir: str | Path, *,
                      feature_weights: str | Path | None = None, options: BatteryOptions = BatteryOptions(),
                      embedding_set: str | None = None, source: str | None = None,
                      cache_root: str | Path = DEFAULT_CACHE_ROOT, tracking_uri: str | None = None,
                      experiment: str = DEFAULT_EXPERIMENT, track: bool = True) -> pd.DataFrame:
    """Score a predictions folder with the field's battery; write the tables and the grid; log to MLflow.

    Parameters
    ----------
    index_path : path
        Trial index: the test sets, stimulus groups and ground-truth images (its data root).
    predictions : path
        A predictions folder (``embeddings.npz`` and / or ``images/<test_set>/<id>.png``).
    output_dir : path
    feature_weights : path, optional
        YAML of the networks' local weight files (:func:`load_feature_weights`).
    options : BatteryOptions
    embedding_set : str, optional
        Cache tag of the ground-truth embeddings of the 300-way retrieval (default: the one named in the
        folder's ``reconstruct.json``).
    source : str, optional
        Name of the model in the tables (default: the folder's name).

    Returns
    -------
    DataFrame of ``field_table.csv``.
    """
    options.validate()
    weights = load_feature_weights(feature_weights)
    index = read_index(index_path)
    preds = read_predictions(predictions)
    provenance = read_json(preds.root / "reconstruct.json") if (preds.root / "reconstruct.json").is_file() else {}
    embedding_set = embedding_set or provenance.get("embedding_set")
    source = source or preds.root.resolve().name
    subject = str(index["subject"].iloc[0])
    params = {"stage": "eval", "index": str(index_path), "predictions": str(predictions), "source": source,
              "embedding_set": embedding_set, "options": dataclasses.asdict(options),
              "feature_weights": {k: v for k, v in dataclasses.asdict(weights).items()}}
    opened = tracking.run("eval", params, tracking_uri=tracking_uri, experiment=experiment,
                          run_name=f"eval-battery-{source}-{subject}", tags={"subject": subject, "source": source}
                          ) if track else contextlib.nullcontext(tracking.NULL_RUN)
    with opened as run:
        table = score_prediction_set(index, preds, weights, options, source=source, cache_root=cache_root,
                                     embedding_set=embedding_set)
        out = ensure_dir(output_dir)
        write_text(out / "field_table.csv", table.to_csv(index=False))
        write_text(out / "field_table.md", format_battery_markdown(table))
        write_json(out / "field_metrics.json", {"source": source, "subject": subject, "predictions": str(predictions),
                                                "provenance": provenance, "rows": table.to_dict("records")})
        if preds.images:
            save_figure(_grid_figure(index, preds), out / "reconstruction_grid", ("png",))
        run.log_metrics(flat_field_metrics(table))
        run.log_artifacts(out, "eval")
    return table


__all__ = ["BatteryOptions", "GROUPS", "flat_field_metrics", "load_feature_weights", "score_prediction_set",
           "score_predictions"]
