"""The ``eval`` stage: decode the test sets of a checkpoint (optionally with adapters), score them
(:func:`fmri2img.evaluation.scoring.score`), write the files and log them to MLflow.

Files (deterministic bytes for the same inputs): metrics.json, per_trial.csv, per_stimulus.csv,
results_table.csv and the roadmap's reports (perception_baseline_results.json,
cross_domain_transfer_results.json, comparison_table.csv).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core import tracking
from fmri2img.core.constants import DEFAULT_CACHE_ROOT, DEFAULT_EXPERIMENT
from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError, MismatchError
from fmri2img.core.files import ensure_dir, resolve_under, write_json, write_text
from fmri2img.core.memo import Memo
from fmri2img.core.vocab import MODE_TEST_SETS
from fmri2img.data import regions
from fmri2img.data.betas import load_betas
from fmri2img.data.schema import read_index
from fmri2img.data.stimuli import HDF5_REF_SEPARATOR, Stimulus, StimulusReader, is_hdf5_ref
from fmri2img.data.trials import average_by_stimulus, test_set_rows
from fmri2img.embeddings.cache import load_embedding_set
from fmri2img.evaluation import field_metrics
from fmri2img.evaluation.scoring import (
    EvalOptions,
    EvalResult,
    Predictions,
    score,
    shared1000_distractors,
    train_mean_embedding,
)
from fmri2img.models.checkpoint import load_adapters, load_checkpoint
from fmri2img.models.predictors import Predictor, adapter_predictor, decoder_fn


def predict_test_sets(
    index: pd.DataFrame,
    predictor: Callable[[np.ndarray, pd.DataFrame], np.ndarray],
    test_sets: Sequence[str],
    cache_root: str | Path,
    *,
    folds: Sequence[int] | None = None,
    zscore: bool = True,
    memo: Memo | None = None,
) -> dict[str, Predictions]:
    """Decode the trials of each test set with ``predictor(X, rows) -> (n, d)``
    (a :class:`fmri2img.models.predictors.Predictor`)."""
    out = {}
    for test_set in test_sets:
        mask = test_set_rows(index, test_set, folds if test_set != "shared1000" else None)
        X = load_betas(index, cache_root, rows=np.flatnonzero(mask), zscore=zscore, memo=memo)
        rows = index.loc[mask]
        out[test_set] = Predictions(test_set, np.asarray(predictor(X, rows), np.float32), rows)
    return out


#: The test set of MindEye2's n-way retrieval (NSD's shared images).
RETRIEVAL_TEST_SET = "shared1000"

#: Stimulus images a memo keeps (about 280 MB at NSD's 425 px; the demo's four subjects need ~450).
IMAGE_MEMO_SIZE = 512


def _image_file(image_ref: str) -> str:
    """The file (relative to the data root) holding an image: the HDF5 of ``<file>.hdf5#<row>``, or the PNG."""
    return image_ref.split(HDF5_REF_SEPARATOR)[0] if is_hdf5_ref(image_ref) else image_ref


def _file_signature(data_root: str | Path, relative: str) -> tuple[str, int, int] | None:
    """(path, mtime_ns, size) of a file under the data root; None when it cannot be read."""
    try:
        path = resolve_under(data_root, relative)
        st = path.stat()
    except (OSError, InputError, ValueError):
        return None
    return str(path), st.st_mtime_ns, st.st_size


def image_loader(index: pd.DataFrame, data_root: str | Path,
                 memo: Memo | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """``load(stimulus_ids) -> uint8 (n, H, W, 3)`` reading each stimulus image once (kept in
    ``memo`` while its file is unchanged: every cell of a subject reads the same test images)."""
    memo = memo if memo is not None else Memo()
    refs = index.drop_duplicates("stimulus_id").set_index("stimulus_id")["image_ref"].to_dict()
    root = str(Path(data_root).resolve())
    cache: dict[str, np.ndarray] = {}

    def load(ids: Sequence[str]) -> np.ndarray:
        missing = [s for s in ids if s not in cache]
        unread = []
        signatures: dict[str, tuple[str, int, int] | None] = {}  # one stat per file and call
        for sid in missing:
            file = _image_file(refs[sid])
            if file not in signatures:
                signatures[file] = _file_signature(data_root, file)
            signature = signatures[file]
            key = (root, sid, refs[sid], signature)
            if signature is not None and ("stimulus_images", key) in memo:
                cache[sid] = memo["stimulus_images", key]
            else:
                unread.append((sid, key if signature is not None else None))
        if unread:
            with StimulusReader(data_root) as reader:
                for sid, key in unread:
                    cache[sid] = np.asarray(reader.image(Stimulus(sid, "image", image_ref=refs[sid])), np.uint8)
                    if key is not None:
                        cache[sid].setflags(write=False)
                        memo.get("stimulus_images", key, lambda image=cache[sid]: image, limit=IMAGE_MEMO_SIZE)
        return np.stack([cache[s] for s in ids])

    return load


def flat_metrics(table: pd.DataFrame, configuration: str) -> dict[str, float]:
    """MLflow metric names: ``<test_set>/<metric>`` for ``all``, ``<test_set>/<type>/<metric>`` else."""
    out = {}
    for rec in table[table["configuration"] == configuration].to_dict("records"):
        if rec["value"] is None or pd.isna(rec["value"]):
            continue
        key = f"{rec['test_set']}/{rec['metric']}" if rec["stimulus_type"] == "all" else \
            f"{rec['test_set']}/{rec['stimulus_type']}/{rec['metric']}"
        out[key] = float(rec["value"])
    return out


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """Side-by-side view: one row per (configuration, metric), one column per test set (group ``all``)."""
    sub = table[table["stimulus_type"] == "all"]
    wide = sub.pivot_table(index=["configuration", "metric"], columns="test_set", values="value",
                           aggfunc="first", dropna=False)
    return wide.reset_index()


def configuration_name(train_on: str, adapter_meta: Mapping[str, Any] | None) -> str:
    """The results-table name of a configuration (docs/contracts.md section 6)."""
    if adapter_meta is not None:
        return "finetune" if adapter_meta["adapter"] == "finetune" else f"adapter_{adapter_meta['name']}"
    return "mixed" if train_on == "mixed" else "perception_only"


def write_outputs(result: EvalResult, output_dir: str | Path) -> list[Path]:
    """Write metrics.json, per_trial.csv, per_stimulus.csv, results_table.csv and the roadmap's
    reports (perception_baseline_results.json, cross_domain_transfer_results.json,
    comparison_table.csv). Deterministic bytes for the same inputs."""
    out = ensure_dir(output_dir)
    metrics = result.metrics_json()
    written = [write_json(out / "metrics.json", metrics)]
    written.append(write_text(out / "per_trial.csv", result.per_trial.to_csv(index=False)))
    written.append(write_text(out / "per_stimulus.csv", result.per_stimulus.to_csv(index=False)))
    written.append(write_text(out / "results_table.csv", result.table.to_csv(index=False)))
    nested = metrics["results"]
    perception = {k: v for k, v in nested.items() if k in ("shared1000", "imagery_vision")}
    if perception:
        written.append(write_json(out / "perception_baseline_results.json",
                                  {"info": result.info, "results": perception}))
    if "imagery" in nested:
        written.append(write_json(out / "cross_domain_transfer_results.json",
                                  {"info": result.info, "results": {"imagery": nested["imagery"]},
                                   "comparisons": result.comparisons}))
    written.append(write_text(out / "comparison_table.csv", comparison_table(result.table).to_csv(index=False)))
    return written


def evaluate_checkpoint(
    index_path: str | Path,
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    mode: str = "both",
    split: str = "test",
    model_type: str | None = None,
    adapter_checkpoint: str | Path | None = None,
    adapter_type: str | None = None,
    options: EvalOptions = EvalOptions(),
    cache_root: str | Path = DEFAULT_CACHE_ROOT,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run=None,
) -> EvalResult:
    """Evaluate a checkpoint (optionally with adapters) on the test sets of ``mode``.

    A mixed checkpoint (trained with a hold-out fold) is scored on that fold's imagery
    stimuli only; adapters carry one model per fold and are scored on every fold.
    """
    check_choice("mode", mode, MODE_TEST_SETS, error=InputError)
    if split != "test":
        raise InputError(f"Unknown split {split!r}; only 'test' is evaluated (train/val are for training).")
    options.validate()
    index = read_index(index_path)
    subject = str(index["subject"].iloc[0])
    decoder, meta = load_checkpoint(checkpoint, expected_decoder=model_type)
    index = regions.for_checkpoint(index, meta)
    embeddings = load_embedding_set(cache_root, meta["embedding_set"])
    adapter_meta = None
    folds = None
    if adapter_checkpoint is not None:
        states, adapter_meta = load_adapters(adapter_checkpoint, checkpoint, adapter_type)
        predictor = adapter_predictor(decoder, states, adapter_meta)
    elif meta.get("train_on") == "mixed":
        predictor = Predictor(fold_models={int(meta["holdout_fold"]): decoder_fn(decoder)})
        folds = [int(meta["holdout_fold"])]
    else:
        predictor = Predictor(single=decoder_fn(decoder))
    configuration = configuration_name(meta.get("train_on", "perception"), adapter_meta)
    params = {"stage": "eval", "index": str(index_path), "checkpoint": str(checkpoint), "mode": mode,
              "adapter_checkpoint": str(adapter_checkpoint) if adapter_checkpoint else None,
              "configuration": configuration, "options": dataclasses.asdict(options)}
    tags = {"subject": subject, "decoder": meta["decoder"], "configuration": configuration, "test_domain": mode}
    with tracking.run("eval", params, tracking_uri=tracking_uri, experiment=experiment,
                      run_name=f"eval-{configuration}-{meta['decoder']}-{subject}", tags=tags,
                      parent=parent_run) as run:
        result = evaluate_predictor(
            index, predictor, embeddings, output_dir, decoder=meta["decoder"], configuration=configuration,
            n_voxels=meta["n_voxels"], mode=mode, folds=folds, zscore=meta.get("zscore", True),
            options=options, cache_root=cache_root, run=run,
            info={"checkpoint": str(checkpoint), "index": str(index_path), "embedding_set": meta["embedding_set"]})
    return result


def evaluate_predictor(
    index: pd.DataFrame,
    predictor,
    embeddings,
    output_dir: str | Path,
    *,
    decoder: str,
    configuration: str,
    n_voxels: int,
    mode: str = "both",
    folds: Sequence[int] | None = None,
    zscore: bool = True,
    options: EvalOptions = EvalOptions(),
    cache_root: str | Path = DEFAULT_CACHE_ROOT,
    run=None,
    info: Mapping[str, Any] | None = None,
    memo: Memo | None = None,
) -> EvalResult:
    """Decode the test sets of ``mode`` with ``predictor``, score them, write the files and
    (if ``run`` is given) log metrics and files to that MLflow run. ``memo`` keeps what later
    evaluations of the same subject reuse (sessions' statistics, test images, baselines' scores)."""
    subject = str(index["subject"].iloc[0])
    test_sets = MODE_TEST_SETS[mode]
    predictions = predict_test_sets(index, _checked(predictor, n_voxels, decoder), test_sets, cache_root,
                                    folds=folds, zscore=zscore, memo=memo)
    distractors = None
    if options.distractors == "shared1000":
        distractors = shared1000_distractors(index, embeddings)
    images = None
    data_root = index.attrs.get("data_root")
    if options.image_metrics and data_root and Path(data_root).is_dir():
        images = image_loader(index, data_root, memo)
    result = score(predictions, embeddings, train_mean_embedding(index, embeddings), subject=subject,
                   decoder=decoder, configuration=configuration, options=options,
                   distractors=distractors, images=images, memo=memo)
    n_way, note = n_way_rows(predictions, embeddings, subject, decoder, configuration, options)
    result.table = pd.concat([result.table, n_way], ignore_index=True) if len(n_way) else result.table
    result.info.update(dict(info or {}))
    if note:
        result.info["n_way_retrieval"] = note
    result.info["folds"] = list(folds) if folds is not None else None
    write_outputs(result, output_dir)
    if run is not None:
        run.log_metrics(flat_metrics(result.table, configuration))
        run.log_artifacts(output_dir, "eval")
    return result


def n_way_rows(predictions: Mapping[str, Predictions], embeddings, subject: str, decoder: str, configuration: str,
               options: EvalOptions) -> tuple[pd.DataFrame, str | None]:
    """MindEye2's n-way retrieval (image and brain, ``options.n_way`` stimuli per draw) of the
    shared1000 predictions, one mean per stimulus, as results-table rows; with fewer stimuli than
    ``n_way``, no rows and the reason (``metrics.json`` ``info.n_way_retrieval``)."""
    pred = predictions.get(RETRIEVAL_TEST_SET)
    if pred is None or not len(pred.rows):
        return pd.DataFrame(), None
    means, ids = average_by_stimulus(pred.pred, pred.rows["stimulus_id"].astype(str).to_numpy())
    records = field_metrics.n_way_retrieval(means, embeddings.lookup(list(ids)), n_way=options.n_way,
                                            n_draws=options.n_way_draws, seed=options.seed, n_boot=options.n_boot)
    notes = [r["note"] for r in records.values() if r.get("note")]
    if notes:
        return pd.DataFrame(), notes[0]
    rows = [{"subject": subject, "decoder": decoder, "configuration": configuration, "test_set": RETRIEVAL_TEST_SET,
             "stimulus_type": "all", "metric": name, **{k: rec.get(k) for k in ("value", "ci_low", "ci_high",
                                                                                  "chance", "n")},
             "p_value": np.nan, "p_holm": np.nan} for name, rec in records.items()]
    return pd.DataFrame(rows), None


def _checked(predictor, n_voxels: int, decoder: str) -> Callable:
    """Wrap ``predictor`` to refuse betas whose voxel count differs from the checkpoint's."""
    def predict(X, rows):
        if X.shape[1] != n_voxels:
            raise MismatchError(f"The {decoder} checkpoint was trained on {n_voxels} voxels; "
                                f"this index's betas have {X.shape[1]}.")
        return predictor(X, rows)

    return predict
