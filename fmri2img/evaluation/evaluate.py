"""The ``eval`` stage: within- vs cross-domain scores, baselines and statistics.

Vocabulary (docs/contracts.md section 6):

* test sets: ``shared1000`` (NSD perception, the field's standard test), ``imagery_vision``
  (NSD-Imagery vision trials of the 18 stimuli: the *matched* within-domain reference) and
  ``imagery`` (the same stimuli imagined: cross-domain);
* the unit of inference is the **stimulus**: a stimulus' prediction is the mean of its trials'
  predictions ("per stimulus"); ``cosine_per_trial`` is also reported (mean over trials);
* groups: ``all`` = stimuli with an image ground truth (natural / simple / complex), then each
  stimulus type on its own; ``conceptual`` stimuli (no image) are scored against their text
  embedding and reported only on their own, never inside ``all``;
* galleries: retrieval ranks a prediction among the test set's stimuli of the same modality
  (image stimuli among image stimuli, conceptual among conceptual), optionally plus
  distractor embeddings; chance = K / gallery size is stored beside every value;
* baselines on the same stimuli: ``baseline_ground_truth`` (upper bound), ``baseline_random``
  (random unit vectors: lower bound) and ``baseline_mean_embedding`` (the mean training
  embedding for every stimulus: CLIP embeddings share a common direction, so a constant guess
  already scores a high cosine; compare every cosine with it);
* statistics: bootstrap 95% CIs over stimuli, permutation tests against chance for retrieval
  and two-way identification, a paired comparison imagery vs imagery_vision on the same
  stimuli (t-test, Wilcoxon, Cohen's d / Hedges' g) and H1's ratio with a paired bootstrap CI;
  Holm's correction over all p-values of one evaluation (``p_holm``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.constants import DEFAULT_CACHE_ROOT, DEFAULT_EXPERIMENT, INIT_SEED, RETRIEVAL_KS
from fmri2img.data import selection
from fmri2img.errors import InputError
from fmri2img.evaluation import metrics as M
from fmri2img.evaluation import stats as S

#: Bootstrap resamples and permutations per statistic. 2,000 keeps a p-value resolution of
#: 5e-4 and CI end points stable to ~0.005 while a whole ablation stays within the 2-minute demo budget.
DEFAULT_N_BOOT = 2_000
DEFAULT_N_PERM = 2_000

#: Stimulus types with an image ground truth (reported together as ``all``).
IMAGE_TYPES = ("natural", "simple", "complex")

TABLE_COLUMNS = ["subject", "decoder", "configuration", "test_set", "stimulus_type", "metric", "value",
                 "ci_low", "ci_high", "chance", "n", "p_value", "p_holm"]

#: Metrics with a permutation test against chance.
TESTED_METRICS = ("retrieval_at_1", "retrieval_at_5", "retrieval_at_10", "retrieval_at_50", "two_way")


@dataclass
class Predictions:
    """Decoded embeddings of one test set.

    pred : float32 array of shape (n_trials, n_dims)
    rows : DataFrame of the n_trials index rows, same order
    """

    test_set: str
    pred: np.ndarray
    rows: pd.DataFrame


@dataclass(frozen=True)
class EvalOptions:
    ks: tuple[int, ...] = RETRIEVAL_KS
    n_boot: int = DEFAULT_N_BOOT
    n_perm: int = DEFAULT_N_PERM
    seed: int = INIT_SEED
    distractors: str | None = None  # "shared1000": add shared1000 embeddings to image galleries
    image_metrics: bool = True  # SSIM / PixCorr / pixel MSE of reconstruction by retrieval

    def validate(self) -> None:
        if any(k <= 0 for k in self.ks):
            raise InputError(f"Invalid retrieval K in {list(self.ks)}; expected K > 0.")
        if self.n_boot <= 0 or self.n_perm <= 0:
            raise InputError(f"Invalid n_boot={self.n_boot} / n_perm={self.n_perm}; expected values > 0.")
        if self.distractors not in (None, "shared1000"):
            raise InputError(f"Unknown distractor set {self.distractors!r}; choose 'shared1000' or none.")


@dataclass
class EvalResult:
    """Everything one evaluation produced (see :func:`write_outputs` for the files)."""

    table: pd.DataFrame
    per_trial: pd.DataFrame
    per_stimulus: pd.DataFrame
    comparisons: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def metrics_json(self) -> dict[str, Any]:
        """Nested view: test_set -> configuration -> stimulus_type -> metric -> fields."""
        out: dict[str, Any] = {}
        for rec in self.table.to_dict("records"):
            slot = out.setdefault(rec["test_set"], {}).setdefault(rec["configuration"], {})
            slot = slot.setdefault(rec["stimulus_type"], {})
            slot[rec["metric"]] = {k: rec[k] for k in ("value", "ci_low", "ci_high", "chance", "n",
                                                       "p_value", "p_holm")}
        return {"info": self.info, "results": out, "comparisons": self.comparisons,
                "notes": _NOTES}


_NOTES = {
    "unit": "stimulus (trial predictions averaged per stimulus); cosine_per_trial is the mean over trials",
    "all": "stimuli with an image ground truth; conceptual stimuli are scored against text embeddings, separately",
    "ci": "95% percentile bootstrap over stimuli",
    "p_value": "permutation test against chance (shuffled stimulus labels) for retrieval and two-way",
    "p_holm": "Holm correction over every p-value of this evaluation",
    "chance": "retrieval@K: K / gallery size; two-way: 0.5",
}


# ----------------------------------------------------------------------------- predict

def predict_test_sets(
    index: pd.DataFrame,
    predictor: Callable[[np.ndarray, pd.DataFrame], np.ndarray],
    test_sets: Sequence[str],
    cache_root: str | Path,
    *,
    folds: Sequence[int] | None = None,
    zscore: bool = True,
) -> dict[str, Predictions]:
    """Decode the trials of each test set with ``predictor(X, rows) -> (n, d)``
    (a :class:`fmri2img.models.predictors.Predictor`)."""
    from fmri2img.data.betas import load_betas

    out = {}
    for test_set in test_sets:
        mask = selection.test_set_rows(index, test_set, folds if test_set != "shared1000" else None)
        X = load_betas(index, cache_root, rows=np.flatnonzero(mask), zscore=zscore)
        rows = index.loc[mask]
        out[test_set] = Predictions(test_set, np.asarray(predictor(X, rows), np.float32), rows)
    return out


# ----------------------------------------------------------------------------- score

def _stimulus_types(stimulus_ids: np.ndarray, stimulus_types: np.ndarray) -> dict[Any, str]:
    """Stimulus id -> type of its first row, in order of first appearance (arrays of shape (n_rows,))."""
    out: dict[Any, str] = {}
    for sid, stype in zip(stimulus_ids.tolist(), stimulus_types.tolist()):
        out.setdefault(sid, stype)
    return out


def _modality_groups(rows: pd.DataFrame | Mapping[Any, str]) -> list[tuple[str, list[str]]]:
    """(``all``, sorted image stimulus ids) and (``conceptual``, sorted text stimulus ids), from
    index rows or from a stimulus id -> type mapping (:func:`_stimulus_types`)."""
    if isinstance(rows, pd.DataFrame):
        rows = _stimulus_types(rows["stimulus_id"].to_numpy(), rows["stimulus_type"].to_numpy())
    image_ids = sorted(s for s, t in rows.items() if t in IMAGE_TYPES)
    text_ids = sorted(s for s, t in rows.items() if t == "conceptual")
    return [(name, ids) for name, ids in (("all", image_ids), ("conceptual", text_ids)) if ids]


def _row(subject, decoder, configuration, test_set, stype, metric, value, ci=(None, None), chance=None,
         n=None, p=None) -> dict[str, Any]:
    return {"subject": subject, "decoder": decoder, "configuration": configuration, "test_set": test_set,
            "stimulus_type": stype, "metric": metric, "value": value, "ci_low": ci[0], "ci_high": ci[1],
            "chance": chance, "n": n, "p_value": p, "p_holm": None}


def _ci(values: np.ndarray, opts: EvalOptions) -> tuple[float | None, float | None]:
    if values is None or len(values) < 2:
        return (None, None)
    ci = S.bootstrap_ci(values, n_boot=opts.n_boot, seed=opts.seed)
    return (float(ci[0]), float(ci[1]))


#: Bootstrap CIs computed in this process, by (n_boot, seed, content hash of the values): the
#: baselines' per-stimulus scores are the same in every cell of a subject, so are their CIs.
_CI_CACHE: dict[tuple[int, Any, int, bytes], tuple[float, float]] = {}
CI_CACHE_SIZE = 8192


class _CIBatch:
    """The bootstrap CIs of a results table, requested row by row and computed together.

    :meth:`add` registers a record (a :func:`_row` dict) and its per-item values of shape (n,);
    :meth:`compute` fills ``ci_low``/``ci_high`` of every record with n >= 2 with exactly what
    :func:`_ci` gives (the same resamples for one n, so values of one length are bootstrapped
    as one (m, n) block by :func:`fmri2img.evaluation.stats.bootstrap_mean_cis`).
    """

    def __init__(self, opts: EvalOptions) -> None:
        self.opts = opts
        self.pending: list[tuple[dict[str, Any], np.ndarray]] = []

    def add(self, record: dict[str, Any], values: np.ndarray | None) -> dict[str, Any]:
        if values is not None and len(values) >= 2:
            self.pending.append((record, np.ascontiguousarray(values, dtype=np.float64)))
        return record

    def compute(self) -> None:
        import hashlib

        todo: dict[tuple[int, Any, int, bytes], np.ndarray] = {}
        keyed = []
        for record, values in self.pending:
            key = (self.opts.n_boot, self.opts.seed, values.size,
                   hashlib.blake2b(values.tobytes(), digest_size=16).digest())
            keyed.append((record, key))
            if key not in _CI_CACHE:
                todo.setdefault(key, values)
        by_size: dict[int, list[tuple[int, Any, int, bytes]]] = {}
        for key in todo:
            by_size.setdefault(key[2], []).append(key)
        for keys in by_size.values():
            cis = S.bootstrap_mean_cis(np.stack([todo[k] for k in keys]), n_boot=self.opts.n_boot,
                                       seed=self.opts.seed)
            for key, (low, high) in zip(keys, cis):
                if len(_CI_CACHE) >= CI_CACHE_SIZE:
                    _CI_CACHE.pop(next(iter(_CI_CACHE)))
                _CI_CACHE[key] = (float(low), float(high))
        for record, key in keyed:
            record["ci_low"], record["ci_high"] = _CI_CACHE[key]
        self.pending = []


def _score_group(pred, true, gallery, target, opts: EvalOptions, with_tests: bool) -> dict[str, Any]:
    scored = M.score_predictions(pred, true, gallery, target, opts.ks)
    tested = [metric for metric, values in scored["per_item"].items()
              if with_tests and metric in TESTED_METRICS and len(values) > 1]
    ks = [int(metric.rsplit("_", 1)[1]) for metric in tested if metric != "two_way"]
    # every tested K at once: one similarity ranking, the same permutations and p-values
    retrieval_p = S.permutation_test_retrieval_ks(pred, gallery, target, ks, n_perm=opts.n_perm,
                                                  seed=opts.seed) if ks else {}
    result = {}
    for metric, values in scored["per_item"].items():
        p = None
        if metric in tested:
            if metric == "two_way":
                p = S.permutation_test_two_way(pred, true, n_perm=opts.n_perm, seed=opts.seed)
            else:
                p = retrieval_p[int(metric.rsplit("_", 1)[1])]
        result[metric] = {"value": scored[metric], "chance": scored["chance"].get(metric),
                          "n": scored["n"], "p": p, "per_item": np.asarray(values, dtype=np.float64)}
    for k in opts.ks:  # K larger than the gallery: kept as a row that says "not applicable"
        name = f"retrieval_at_{k}"
        if name not in result:
            result[name] = {"value": None, "chance": None, "n": scored["n"], "p": None, "per_item": None}
    return result


def _score_candidate(pred, true, gallery, target, opts: EvalOptions, with_tests: bool,
                     load_images: Callable[[], np.ndarray] | None) -> dict[str, Any]:
    """Every metric of one candidate on one group (plus image metrics when ``load_images``)."""
    res = _score_group(pred, true, gallery, target, opts, with_tests)
    if load_images is not None:
        res.update(_image_scores(pred, true, load_images()))
    return res


#: Baseline scores computed in this process, by content hash of their inputs. The baselines of
#: a subject are the same in every cell (same test stimuli, gallery and training mean), and
#: their bootstrap CIs, permutation tests and image metrics were most of each cell's
#: evaluation time; a bounded cache computes them once per worker process instead.
_BASELINE_CACHE: dict[str, dict[str, Any]] = {}
BASELINE_CACHE_SIZE = 64


def _score_baseline_cached(pred, true, gallery, target, opts: EvalOptions, with_tests: bool,
                           load_images: Callable[[], np.ndarray] | None) -> dict[str, Any]:
    """:func:`_score_candidate` for a baseline, memoised on the exact input bytes (same result)."""
    import dataclasses
    import hashlib

    digest = hashlib.sha256(repr((dataclasses.asdict(opts), with_tests, load_images is not None)).encode())
    for arr in (pred, true, gallery, target):
        a = np.ascontiguousarray(arr)
        digest.update(repr((a.dtype.str, a.shape)).encode())
        digest.update(a.tobytes())
    key = digest.hexdigest()
    if key not in _BASELINE_CACHE:
        if len(_BASELINE_CACHE) >= BASELINE_CACHE_SIZE:
            _BASELINE_CACHE.pop(next(iter(_BASELINE_CACHE)))
        _BASELINE_CACHE[key] = _score_candidate(pred, true, gallery, target, opts, with_tests, load_images)
    return {metric: dict(entry) for metric, entry in _BASELINE_CACHE[key].items()}


def _image_scores(pred: np.ndarray, gallery: np.ndarray, true_images: np.ndarray) -> dict[str, Any]:
    """Reconstruction by retrieval among the group's own images, scored per stimulus."""
    from fmri2img.evaluation.image_metrics import retrieve_images, score_image_pairs

    images = np.asarray(true_images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] != len(gallery):
        raise InputError(f"Expected true images as uint8 (n, H, W, 3) with n = {len(gallery)} stimuli, "
                         f"got {images.dtype} {images.shape}.")
    # the image retrieved for each stimulus (RetrievalGenerator's choice) against its own image
    retrieved = retrieve_images(pred, gallery)
    scored = score_image_pairs(images, retrieved, np.arange(len(retrieved)))
    return {name: {"value": float(np.nanmean(v)), "chance": None, "n": len(v), "p": None,
                   "per_item": np.asarray(v, dtype=np.float64)} for name, v in scored.items()}


#: Stimulus images read in this process: (data root, stimulus id, image_ref, (mtime_ns, size) of
#: the file holding the image) -> uint8 (H, W, 3). Every cell of a subject reads the same test
#: images; the file signature makes a rewritten file read afresh. Bounded by bytes.
_IMAGE_CACHE: dict[tuple[Any, ...], np.ndarray] = {}
_IMAGE_CACHE_USED = [0]  # bytes held by _IMAGE_CACHE
IMAGE_CACHE_BYTES = 256 * 2**20


def _image_file(image_ref: str) -> str:
    """The file (relative to the data root) holding an image: the HDF5 of ``<file>.hdf5#<row>``, or the PNG."""
    from fmri2img.embeddings.stimuli import HDF5_REF_SEPARATOR, StimulusReader

    return image_ref.split(HDF5_REF_SEPARATOR)[0] if StimulusReader._is_hdf5(image_ref) else image_ref


def _file_signature(data_root: str | Path, relative: str) -> tuple[str, int, int] | None:
    """(path, mtime_ns, size) of a file under the data root; None when it cannot be read."""
    from fmri2img.io import resolve_under

    try:
        path = resolve_under(data_root, relative)
        st = path.stat()
    except (OSError, InputError, ValueError):
        return None
    return str(path), st.st_mtime_ns, st.st_size


def _cache_image(key: tuple[Any, ...], image: np.ndarray) -> None:
    if image.nbytes > IMAGE_CACHE_BYTES:
        return
    while _IMAGE_CACHE and _IMAGE_CACHE_USED[0] + image.nbytes > IMAGE_CACHE_BYTES:
        _IMAGE_CACHE_USED[0] -= _IMAGE_CACHE.pop(next(iter(_IMAGE_CACHE))).nbytes
    image.setflags(write=False)
    _IMAGE_CACHE[key] = image
    _IMAGE_CACHE_USED[0] += image.nbytes


def image_loader(index: pd.DataFrame, data_root: str | Path) -> Callable[[Sequence[str]], np.ndarray]:
    """``load(stimulus_ids) -> uint8 (n, H, W, 3)`` reading each stimulus image once (cached per
    process while its file is unchanged)."""
    from fmri2img.embeddings.stimuli import Stimulus, StimulusReader

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
            if signature is not None and key in _IMAGE_CACHE:
                cache[sid] = _IMAGE_CACHE[key]
            else:
                unread.append((sid, key if signature is not None else None))
        if unread:
            with StimulusReader(data_root) as reader:
                for sid, key in unread:
                    cache[sid] = np.asarray(reader.image(Stimulus(sid, "image", image_ref=refs[sid])), np.uint8)
                    if key is not None:
                        _cache_image(key, cache[sid])
        return np.stack([cache[s] for s in ids])

    return load


def score(
    predictions: Mapping[str, Predictions],
    embedding_set,
    train_mean: np.ndarray,
    *,
    subject: str,
    decoder: str,
    configuration: str,
    options: EvalOptions = EvalOptions(),
    baselines: bool = True,
    distractor_embeddings: tuple[Sequence[str], np.ndarray] | None = None,
    images: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> EvalResult:
    """Score decoded embeddings of each test set; see the module docstring for the rules.

    Parameters
    ----------
    predictions : mapping test_set -> :class:`Predictions`
    embedding_set : EmbeddingSet with ``lookup(stimulus_ids) -> (n, d)``
    train_mean : array of shape (d,)
        Mean training embedding (the constant-guess baseline).
    distractor_embeddings : (ids, array of shape (m, d)), optional
        Extra image-gallery candidates; those that are stimuli of the gallery itself are dropped.
    images : callable, optional
        ``images(stimulus_ids) -> uint8 array (n, H, W, 3)``. When given, image stimuli are
        reconstructed by retrieval (the gallery image nearest each prediction, the honest
        baseline every generative decoder must beat) and scored against the true image with
        SSIM, PixCorr and pixel MSE (:mod:`fmri2img.evaluation.image_metrics`).
    """
    options.validate()
    records: list[dict[str, Any]] = []
    cis = _CIBatch(options)
    per_trial_frames, per_stim_frames = [], []
    #: (test_set, configuration, metric) -> {stimulus_id: per-stimulus value}
    per_stim: dict[tuple[str, str, str], dict[str, float]] = {}
    stim_type_of: dict[str, str] = {}
    for test_set, p in predictions.items():
        # plain arrays of the index rows (pandas operations on the index, attrs included, were
        # a good part of each cell's time)
        ids = p.rows["stimulus_id"].to_numpy()
        row_types = p.rows["stimulus_type"].to_numpy()
        types_here = _stimulus_types(ids, row_types)
        stim_type_of.update(types_here)
        trial_cos = M.cosine_similarity(p.pred, embedding_set.lookup(list(ids)))
        per_trial_frames.append(pd.DataFrame({
            "test_set": test_set, "configuration": configuration, "stimulus_id": ids,
            "stimulus_type": row_types, "condition": p.rows["condition"].to_numpy(),
            "trial": p.rows["trial"].to_numpy(), "cosine": trial_cos}))
        avg_pred, uniq = M.average_by_stimulus(p.pred, ids)
        pos = {s: i for i, s in enumerate(uniq)}
        for group, group_ids in _modality_groups(types_here):
            pred_g = avg_pred[[pos[s] for s in group_ids]]
            true_g = embedding_set.lookup(group_ids)
            gallery = true_g
            if distractor_embeddings is not None and group == "all":
                d_ids, d_vecs = distractor_embeddings
                keep = ~np.isin(np.asarray(d_ids), group_ids)  # never a stimulus of this gallery
                gallery = np.concatenate([true_g, d_vecs[keep]])
            target = np.arange(len(group_ids))
            candidates = {configuration: pred_g}
            if baselines:
                candidates["baseline_ground_truth"] = true_g
                candidates["baseline_mean_embedding"] = np.repeat(np.asarray(train_mean)[None, :], len(group_ids), 0)
                candidates["baseline_random"] = M.random_unit_embeddings(len(group_ids), true_g.shape[1], options.seed)
            types = sorted({stim_type_of[s] for s in group_ids})
            for cfg, cand in candidates.items():
                is_model = cfg == configuration
                dec = decoder if is_model else "none"
                with_images = images is not None and group == "all" and options.image_metrics
                score_fn = _score_candidate if is_model else _score_baseline_cached
                res = score_fn(cand, true_g, gallery, target, options, is_model or cfg == "baseline_random",
                               (lambda ids=group_ids: images(ids)) if with_images else None)
                for metric, r in res.items():
                    records.append(cis.add(_row(subject, dec, cfg, test_set, group, metric, r["value"],
                                                chance=r["chance"], n=r["n"], p=r["p"]), r["per_item"]))
                    if r["per_item"] is None:
                        continue
                    per_stim.setdefault((test_set, cfg, metric), {}).update(zip(group_ids, r["per_item"]))
                    if group == "all" and len(types) > 1:  # break "all" down by stimulus type
                        for stype in types:
                            sub = np.array([stim_type_of[s] == stype for s in group_ids])
                            vals = r["per_item"][sub]
                            records.append(cis.add(_row(subject, dec, cfg, test_set, stype, metric,
                                                        float(vals.mean()), chance=r["chance"],
                                                        n=int(sub.sum())), vals))
                if is_model:
                    in_group = np.isin(ids, group_ids)
                    groups_t = [(group, in_group)]
                    if group == "all" and len(types) > 1:
                        groups_t += [(t, row_types == t) for t in types]
                    for name, mask in groups_t:
                        tc = trial_cos[mask]
                        records.append(cis.add(_row(subject, dec, cfg, test_set, name, "cosine_per_trial",
                                                    float(tc.mean()), n=int(mask.sum())), tc))
        per_stim_frames.append(_per_stimulus_frame(test_set, configuration, uniq, ids, stim_type_of, per_stim))

    cis.compute()
    table = pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)
    comparisons = _comparisons(per_stim, stim_type_of, configuration, options)
    _apply_holm(table, comparisons, configuration)
    per_trial = pd.concat(per_trial_frames, ignore_index=True) if per_trial_frames else pd.DataFrame()
    per_stimulus = pd.concat(per_stim_frames, ignore_index=True) if per_stim_frames else pd.DataFrame()
    info = {"subject": subject, "decoder": decoder, "configuration": configuration,
            "options": dataclasses.asdict(options), "test_sets": list(predictions),
            "n_trials": {k: int(len(v.rows)) for k, v in predictions.items()},
            "gallery": "test-set stimuli of the same modality" + (
                f" + up to {len(distractor_embeddings[0])} distractors ({options.distractors})"
                if distractor_embeddings is not None else "")}
    return EvalResult(table=table, per_trial=per_trial, per_stimulus=per_stimulus, comparisons=comparisons,
                      info=info)


def _per_stimulus_frame(test_set: str, configuration: str, uniq: np.ndarray, ids: np.ndarray,
                        stim_type_of: Mapping[Any, str], per_stim: dict) -> pd.DataFrame:
    """One row per stimulus of a test set (``uniq``, shape (n_stimuli,); ``ids``: the stimulus of
    each trial): type, trial count, the configuration's per-stimulus metrics (columns sorted by
    name, NaN where a metric does not apply) and the mean-embedding baseline's cosine."""
    from collections import Counter

    keys = uniq.tolist()
    counts = Counter(ids.tolist())
    columns: dict[str, Any] = {"test_set": test_set, "configuration": configuration, "stimulus_id": uniq,
                               "stimulus_type": [stim_type_of[s] for s in keys],
                               "n_trials": np.array([counts[s] for s in keys], dtype=np.int64)}

    def column(values: Mapping[Any, float]) -> np.ndarray:
        return np.array([values.get(s, np.nan) for s in keys], dtype=np.float64)

    for (ts, cfg, metric), values in sorted(per_stim.items()):
        if ts == test_set and cfg == configuration:
            columns[metric] = column(values)
    columns["cosine_mean_embedding_baseline"] = column(
        per_stim.get((test_set, "baseline_mean_embedding", "cosine"), {}))
    return pd.DataFrame(columns)


def _comparisons(per_stim: dict, stim_type_of: dict[str, str], configuration: str,
                 opts: EvalOptions) -> dict[str, Any]:
    """Matched perception (imagery_vision) vs imagery on the same stimuli: tests and H1 ratio."""
    out: dict[str, Any] = {}
    vis = per_stim.get(("imagery_vision", configuration, "cosine"))
    ima = per_stim.get(("imagery", configuration, "cosine"))
    if not vis or not ima:
        return out
    base = per_stim.get(("imagery_vision", "baseline_mean_embedding", "cosine"), {})
    tw_v = per_stim.get(("imagery_vision", configuration, "two_way"), {})
    tw_i = per_stim.get(("imagery", configuration, "two_way"), {})
    common_all = sorted(set(vis) & set(ima))
    groups = {"all": [s for s in common_all if stim_type_of[s] in IMAGE_TYPES]}
    for stype in ("simple", "complex", "conceptual"):
        groups[stype] = [s for s in common_all if stim_type_of[s] == stype]
    for name, common in groups.items():
        if len(common) < 2:
            continue
        v = np.array([vis[s] for s in common])
        i = np.array([ima[s] for s in common])
        entry: dict[str, Any] = {"n_stimuli": len(common), "metric": "cosine (per stimulus)",
                                 "a": "imagery_vision", "b": "imagery",
                                 "paired_test": S.paired_comparison(v, i)}
        raw = S.bootstrap_ratio_ci(i, v, n_boot=opts.n_boot, seed=opts.seed)
        entry["ratio_imagery_over_perception"] = {"value": raw.ratio, "ci_low": raw.ci_low, "ci_high": raw.ci_high}
        b = np.array([base.get(s, np.nan) for s in common])
        if np.isfinite(b).all() and (v - b).mean() > 0:
            adj = S.bootstrap_ratio_ci(i - b, v - b, n_boot=opts.n_boot, seed=opts.seed)
            entry["ratio_above_mean_embedding_baseline"] = {
                "value": adj.ratio, "ci_low": adj.ci_low, "ci_high": adj.ci_high,
                "definition": "mean(imagery - baseline) / mean(perception - baseline), paired bootstrap"}
        if all(s in tw_v and s in tw_i for s in common):
            a = np.array([tw_i[s] for s in common]) - M.TWO_WAY_CHANCE
            c = np.array([tw_v[s] for s in common]) - M.TWO_WAY_CHANCE
            if c.mean() > 0:
                r = S.bootstrap_ratio_ci(a, c, n_boot=opts.n_boot, seed=opts.seed)
                entry["ratio_two_way_above_chance"] = {"value": r.ratio, "ci_low": r.ci_low, "ci_high": r.ci_high}
        out[name] = entry
    return out


def _apply_holm(table: pd.DataFrame, comparisons: dict[str, Any], configuration: str) -> None:
    mask = (table["configuration"] == configuration) & table["p_value"].notna()
    pvals = table.loc[mask, "p_value"].astype(float).to_numpy()
    comp_keys = [k for k, v in comparisons.items() if np.isfinite(v["paired_test"]["p_value"])]
    comp_p = np.array([comparisons[k]["paired_test"]["p_value"] for k in comp_keys])
    allp = np.concatenate([pvals, comp_p])
    if allp.size == 0:
        return
    adjusted = S.holm(allp)
    table.loc[mask, "p_holm"] = adjusted[: len(pvals)]
    for key, p in zip(comp_keys, adjusted[len(pvals):]):
        comparisons[key]["paired_test"]["p_holm"] = float(p)
    table["p_holm"] = table["p_holm"].astype(float)


# ----------------------------------------------------------------------------- files

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


def write_outputs(result: EvalResult, output_dir: str | Path) -> list[Path]:
    """Write metrics.json, per_trial.csv, per_stimulus.csv, results_table.csv and the roadmap's
    reports (perception_baseline_results.json, cross_domain_transfer_results.json,
    comparison_table.csv). Deterministic bytes for the same inputs."""
    from fmri2img.io import ensure_dir, write_json, write_text

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


# ----------------------------------------------------------------------------- stage

def train_mean_embedding(index: pd.DataFrame, embedding_set) -> np.ndarray:
    """Mean target embedding over the NSD training trials: the constant-guess baseline.

    Returns an array of shape (d,).
    """
    rows = index.loc[selection.nsd_split_rows(index, "train")]
    return np.asarray(embedding_set.lookup(rows["stimulus_id"].tolist()), dtype=np.float64).mean(0)


def distractor_embeddings(index: pd.DataFrame, embedding_set) -> tuple[list[str], np.ndarray]:
    """(ids, embeddings) of the shared1000 stimuli: extra retrieval candidates. :func:`score`
    drops, per gallery, the ones that are stimuli of that gallery."""
    ids = sorted(set(index.loc[selection.nsd_split_rows(index, "test"), "stimulus_id"]))
    return ids, np.asarray(embedding_set.lookup(ids), dtype=np.float32)


def configuration_name(train_on: str, adapter_meta: Mapping[str, Any] | None) -> str:
    """The results-table name of a configuration (docs/contracts.md section 6)."""
    if adapter_meta is not None:
        return "finetune" if adapter_meta["adapter"] == "finetune" else f"adapter_{adapter_meta['name']}"
    return "mixed" if train_on == "mixed" else "perception_only"


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
    from fmri2img import tracking
    from fmri2img.data.index import read_index
    from fmri2img.embeddings.cache import load_embedding_set
    from fmri2img.models.adapt import adapter_predictor
    from fmri2img.models.checkpoint import load_checkpoint
    from fmri2img.models.predictors import Predictor, decoder_fn

    if mode not in selection.MODE_TEST_SETS:
        raise InputError(f"Unknown mode {mode!r}. Choose one of 'perception', 'imagery', 'both'.")
    if split != "test":
        raise InputError(f"Unknown split {split!r}; only 'test' is evaluated (train/val are for training).")
    options.validate()
    index = read_index(index_path)
    subject = str(index["subject"].iloc[0])
    decoder, meta = load_checkpoint(checkpoint, expected_decoder=model_type)
    embedding_set = load_embedding_set(cache_root, meta["embedding_set"])
    adapter_meta = None
    folds = None
    if adapter_checkpoint is not None:
        predictor, adapter_meta = adapter_predictor(decoder, adapter_checkpoint, checkpoint, adapter_type)
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
            index, predictor, embedding_set, output_dir, decoder=meta["decoder"], configuration=configuration,
            n_voxels=meta["n_voxels"], mode=mode, folds=folds, zscore=meta.get("zscore", True),
            options=options, cache_root=cache_root, run=run,
            info={"checkpoint": str(checkpoint), "index": str(index_path), "embedding_set": meta["embedding_set"]})
    return result


def evaluate_predictor(
    index: pd.DataFrame,
    predictor,
    embedding_set,
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
) -> EvalResult:
    """Decode the test sets of ``mode`` with ``predictor``, score them, write the files and
    (if ``run`` is given) log metrics and files to that MLflow run."""
    subject = str(index["subject"].iloc[0])
    test_sets = selection.MODE_TEST_SETS[mode]
    predictions = predict_test_sets(index, _checked(predictor, n_voxels, decoder), test_sets, cache_root,
                                    folds=folds, zscore=zscore)
    distractors = None
    if options.distractors == "shared1000":
        distractors = distractor_embeddings(index, embedding_set)
    images = None
    data_root = index.attrs.get("data_root")
    if options.image_metrics and data_root and Path(data_root).is_dir():
        images = image_loader(index, data_root)
    result = score(predictions, embedding_set, train_mean_embedding(index, embedding_set), subject=subject,
                   decoder=decoder, configuration=configuration, options=options,
                   distractor_embeddings=distractors, images=images)
    result.info.update(dict(info or {}))
    result.info["folds"] = list(folds) if folds is not None else None
    write_outputs(result, output_dir)
    if run is not None:
        run.log_metrics(flat_metrics(result.table, configuration))
        run.log_artifacts(output_dir, "eval")
    return result


def _checked(predictor, n_voxels: int, decoder: str) -> Callable:
    """Wrap ``predictor`` to refuse betas whose voxel count differs from the checkpoint's."""
    from fmri2img.errors import MismatchError

    def predict(X, rows):
        if X.shape[1] != n_voxels:
            raise MismatchError(f"The {decoder} checkpoint was trained on {n_voxels} voxels; "
                                f"this index's betas have {X.shape[1]}.")
        return predictor(X, rows)

    return predict
