"""Scoring decoded embeddings: within- vs cross-domain scores, baselines and statistics (pure:
no files, no MLflow; the ``eval`` stage, :mod:`fmri2img.stages.evaluate`, does those).

Vocabulary (docs/contracts.md section 6):

* test sets: ``shared1000`` (NSD perception, the field's standard test), ``imagery_vision``
  (NSD-Imagery vision trials of the 18 stimuli: the *matched* within-domain reference) and
  ``imagery`` (the same stimuli imagined: cross-domain);
* the unit of inference is the **stimulus**: a stimulus' prediction is the mean of its trials'
  predictions ("per stimulus"); ``cosine_per_trial`` is also reported (mean over trials), and on
  imagery / imagery_vision ``cosine_matched``: the mean cosine of chunks of as many trials as
  imagery_vision has per stimulus (trial counts matched: what H1-H3 compare);
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
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.constants import INIT_SEED, RETRIEVAL_KS
from fmri2img.core.errors import InputError
from fmri2img.core.memo import Memo, digest
from fmri2img.core.vocab import IMAGE_TYPES, MATCHED_TEST_SETS, RESULTS_COLUMNS
from fmri2img.data.trials import average_by_chunk, average_by_stimulus, nsd_split_rows
from fmri2img.evaluation.field_metrics import N_WAY, N_WAY_DRAWS
from fmri2img.evaluation.image_metrics import retrieve_images, score_image_pairs
from fmri2img.evaluation.metrics import TWO_WAY_CHANCE, cosine_similarity, random_unit_embeddings, score_predictions
from fmri2img.evaluation.resampling import (
    bootstrap_mean_cis,
    bootstrap_ratio_ci,
    permutation_test_retrieval_ks,
    permutation_test_two_way,
)
from fmri2img.evaluation.stats import holm, paired_comparison

#: Bootstrap resamples and permutations per statistic. 2,000 keeps a p-value resolution of
#: 5e-4 and CI end points stable to ~0.005 at a fraction of 10,000's cost.
DEFAULT_N_BOOT = 2_000
DEFAULT_N_PERM = 2_000

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
    n_way: int = N_WAY  # shared1000: MindEye2's n-way retrieval (n random stimuli, n_way_draws draws)
    n_way_draws: int = N_WAY_DRAWS

    def validate(self) -> None:
        if any(k <= 0 for k in self.ks):
            raise InputError(f"Invalid retrieval K in {list(self.ks)}; expected K > 0.")
        if min(self.n_boot, self.n_perm, self.n_way_draws) <= 0 or self.n_way < 2:
            raise InputError(f"Invalid n_boot={self.n_boot} / n_perm={self.n_perm} / n_way={self.n_way} / n_way_draws="
                             f"{self.n_way_draws}; expected n_way >= 2 and the others > 0.")
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


class _CIBatch:
    """The bootstrap CIs of a results table, requested row by row and computed together.

    :meth:`add` registers a record (a :func:`_row` dict) and its per-item values of shape (n,);
    :meth:`compute` fills ``ci_low``/``ci_high`` of every record with n >= 2 (values of one length
    are bootstrapped as one (m, n) block by :func:`~fmri2img.evaluation.resampling.bootstrap_mean_cis`,
    row i exactly the interval of row i alone); with a ``memo``, once per value vector.
    """

    def __init__(self, opts: EvalOptions, memo: Memo | None) -> None:
        self.opts = opts
        self.memo = memo if memo is not None else Memo()
        self.pending: list[tuple[dict[str, Any], np.ndarray]] = []

    def add(self, record: dict[str, Any], values: np.ndarray | None) -> dict[str, Any]:
        if values is not None and len(values) >= 2:
            self.pending.append((record, np.ascontiguousarray(values, dtype=np.float64)))
        return record

    def compute(self) -> None:
        keyed, values_of = [], {}
        for record, values in self.pending:
            key = (self.opts.n_boot, self.opts.seed, values.size,
                   hashlib.blake2b(values.tobytes(), digest_size=16).digest())
            keyed.append((record, key))
            values_of.setdefault(key, values)
        found = {k: self.memo["bootstrap_ci", k] for k in values_of if ("bootstrap_ci", k) in self.memo}
        by_size: dict[int, list[tuple]] = {}  # (a full memo may evict entries as others go in: use `found`)
        for key in (k for k in values_of if k not in found):
            by_size.setdefault(key[2], []).append(key)
        for keys in by_size.values():
            cis = bootstrap_mean_cis(np.stack([values_of[k] for k in keys]), n_boot=self.opts.n_boot,
                                     seed=self.opts.seed)
            for key, (low, high) in zip(keys, cis):
                found[key] = (float(low), float(high))
                self.memo.put("bootstrap_ci", key, found[key])
        for record, key in keyed:
            record["ci_low"], record["ci_high"] = found[key]
        self.pending = []


def _score_group(pred, true, gallery, target, opts: EvalOptions, with_tests: bool) -> dict[str, Any]:
    scored = score_predictions(pred, true, gallery, target, opts.ks)
    tested = [metric for metric, values in scored["per_item"].items()
              if with_tests and metric in TESTED_METRICS and len(values) > 1]
    ks = [int(metric.rsplit("_", 1)[1]) for metric in tested if metric != "two_way"]
    # every tested K at once: one similarity ranking, the same permutations and p-values
    retrieval_p = permutation_test_retrieval_ks(pred, gallery, target, ks, n_perm=opts.n_perm,
                                                seed=opts.seed) if ks else {}
    result = {}
    for metric, values in scored["per_item"].items():
        p = None
        if metric in tested:
            if metric == "two_way":
                p = permutation_test_two_way(pred, true, n_perm=opts.n_perm, seed=opts.seed)
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
                     load_images: Callable[[], np.ndarray] | None, memo: Memo | None) -> dict[str, Any]:
    """Every metric of one candidate on one group (plus image metrics when ``load_images``)."""
    res = _score_group(pred, true, gallery, target, opts, with_tests)
    if load_images is not None:
        res.update(_image_scores(pred, true, load_images()))
    return res


def _score_baseline(pred, true, gallery, target, opts: EvalOptions, with_tests: bool,
                    load_images: Callable[[], np.ndarray] | None, memo: Memo | None) -> dict[str, Any]:
    """:func:`_score_candidate` for a baseline; with a ``memo``, once per exact input (the baselines
    of a subject are the same in every cell, and their statistics were most of a cell's scoring)."""
    if memo is None:
        return _score_candidate(pred, true, gallery, target, opts, with_tests, load_images, memo)
    key = digest(dataclasses.asdict(opts), with_tests, load_images is not None, *(
        np.asarray(a) for a in (pred, true, gallery, target)))
    scored = memo.get("baseline_scores", key, lambda: _score_candidate(
        pred, true, gallery, target, opts, with_tests, load_images, memo))
    return {metric: dict(entry) for metric, entry in scored.items()}


def _image_scores(pred: np.ndarray, gallery: np.ndarray, true_images: np.ndarray) -> dict:
    """Reconstruction by retrieval among the group's own images, scored per stimulus."""
    images = np.asarray(true_images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] != len(gallery):
        raise InputError(f"Expected true images as uint8 (n, H, W, 3) with n = {len(gallery)} stimuli, "
                         f"got {images.dtype} {images.shape}.")
    # the image retrieved for each stimulus (the gallery image nearest its prediction) against its own
    retrieved = retrieve_images(pred, gallery)
    scored = score_image_pairs(images, retrieved, np.arange(len(retrieved)))
    return {name: {"value": float(np.nanmean(v)), "chance": None, "n": len(v), "p": None,
                   "per_item": np.asarray(v, dtype=np.float64)} for name, v in scored.items()}


class _Scores:
    """What :func:`score` accumulates: result records (with their CIs pending) and, per
    (test_set, configuration, metric), each stimulus' value; ``stim_type_of`` maps stimulus ids to
    their type."""

    def __init__(self, subject: str, opts: EvalOptions, memo: Memo | None) -> None:
        self.subject, self.opts, self.memo = subject, opts, memo
        self.records: list[dict[str, Any]] = []
        self.cis = _CIBatch(opts, memo)
        self.per_stim: dict[tuple[str, str, str], dict[str, float]] = {}
        self.stim_type_of: dict[str, str] = {}

    def add(self, values: np.ndarray | None, *row: Any, **fields: Any) -> None:
        self.records.append(self.cis.add(_row(self.subject, *row, **fields), values))

    def candidate(self, test_set: str, group: str, group_ids: list[str], cfg: str, decoder: str,
                  res: dict[str, Any]) -> None:
        """Rows of one candidate's metrics on one group ("all" also broken down by stimulus type)."""
        types = sorted({self.stim_type_of[s] for s in group_ids})
        for metric, r in res.items():
            self.add(r["per_item"], decoder, cfg, test_set, group, metric, r["value"], chance=r["chance"], n=r["n"],
                     p=r["p"])
            if r["per_item"] is None:
                continue
            self.per_stim.setdefault((test_set, cfg, metric), {}).update(zip(group_ids, r["per_item"]))
            if group == "all" and len(types) > 1:  # break "all" down by stimulus type
                for stype in types:
                    sub = np.array([self.stim_type_of[s] == stype for s in group_ids])
                    vals = r["per_item"][sub]
                    self.add(vals, decoder, cfg, test_set, stype, metric, float(vals.mean()), chance=r["chance"],
                             n=int(sub.sum()))

    def per_trial_cosine(self, test_set: str, group: str, group_ids: list[str], cfg: str, decoder: str,
                         ids: np.ndarray, row_types: np.ndarray, trial_cos: np.ndarray) -> None:
        """``cosine_per_trial`` rows of the model on one group (and its stimulus types)."""
        types = sorted({self.stim_type_of[s] for s in group_ids})
        groups_t = [(group, np.isin(ids, group_ids))]
        if group == "all" and len(types) > 1:
            groups_t += [(t, row_types == t) for t in types]
        for name, mask in groups_t:
            tc = trial_cos[mask]
            self.add(tc, decoder, cfg, test_set, name, "cosine_per_trial", float(tc.mean()), n=int(mask.sum()))


def _candidates(configuration: str, pred_g, true_g, train_mean, opts: EvalOptions, baselines: bool) -> dict:
    """The model's predictions and (``baselines``) the reference predictions, in report order."""
    candidates = {configuration: pred_g}
    if baselines:
        candidates["baseline_ground_truth"] = true_g
        candidates["baseline_mean_embedding"] = np.repeat(np.asarray(train_mean)[None, :], len(true_g), 0)
        candidates["baseline_random"] = random_unit_embeddings(len(true_g), true_g.shape[1], opts.seed)
    return candidates


def _score_test_set(scores: _Scores, p: Predictions, embeddings, train_mean, *, decoder: str, configuration: str,
                    baselines: bool, distractors, images, matched_chunk: int | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of one test set into ``scores``; returns its per-trial and per-stimulus frames."""
    opts, test_set = scores.opts, p.test_set
    # plain arrays of the index rows (pandas operations on the index are slow per cell)
    ids = p.rows["stimulus_id"].to_numpy()
    row_types = p.rows["stimulus_type"].to_numpy()
    types_here = _stimulus_types(ids, row_types)
    scores.stim_type_of.update(types_here)
    trial_cos = cosine_similarity(p.pred, embeddings.lookup(list(ids)))
    avg_pred, uniq = average_by_stimulus(p.pred, ids)
    pos = {s: i for i, s in enumerate(uniq)}
    if matched_chunk and test_set in MATCHED_TEST_SETS:
        chunk_pred, chunk_ids = average_by_chunk(p.pred, ids, matched_chunk)
        chunk_cos, chunk_uniq = average_by_stimulus(
            cosine_similarity(chunk_pred, embeddings.lookup(list(chunk_ids))), chunk_ids)
        scores.per_stim[(test_set, configuration, "cosine_matched")] = dict(zip(chunk_uniq.tolist(), chunk_cos))
    for group, group_ids in _modality_groups(types_here):
        true_g = embeddings.lookup(group_ids)
        gallery = true_g
        if distractors is not None and group == "all":
            d_ids, d_vecs = distractors
            keep = ~np.isin(np.asarray(d_ids), group_ids)  # never a stimulus of this gallery
            gallery = np.concatenate([true_g, d_vecs[keep]])
        target = np.arange(len(group_ids))
        pred_g = avg_pred[[pos[s] for s in group_ids]]
        for cfg, cand in _candidates(configuration, pred_g, true_g, train_mean, opts, baselines).items():
            is_model = cfg == configuration
            with_images = images is not None and group == "all" and opts.image_metrics
            score_fn = _score_candidate if is_model else _score_baseline
            res = score_fn(cand, true_g, gallery, target, opts, is_model or cfg == "baseline_random",
                           (lambda ids=group_ids: images(ids)) if with_images else None, scores.memo)
            scores.candidate(test_set, group, group_ids, cfg, decoder if is_model else "none", res)
            if is_model:
                scores.per_trial_cosine(test_set, group, group_ids, cfg, decoder, ids, row_types, trial_cos)
    per_trial = pd.DataFrame({
        "test_set": test_set, "configuration": configuration, "stimulus_id": ids,
        "stimulus_type": row_types, "condition": p.rows["condition"].to_numpy(),
        "trial": p.rows["trial"].to_numpy(), "cosine": trial_cos})
    return per_trial, _per_stimulus_frame(test_set, configuration, uniq, ids, scores.stim_type_of, scores.per_stim)


def score(
    predictions: Mapping[str, Predictions],
    embeddings,
    train_mean: np.ndarray,
    *,
    subject: str,
    decoder: str,
    configuration: str,
    options: EvalOptions = EvalOptions(),
    baselines: bool = True,
    distractors: tuple[Sequence[str], np.ndarray] | None = None,
    images: Callable[[Sequence[str]], np.ndarray] | None = None,
    memo: Memo | None = None,
) -> EvalResult:
    """Score decoded embeddings of each test set; see the module docstring for the rules.

    Parameters
    ----------
    predictions : mapping test_set -> :class:`Predictions`
    embeddings : EmbeddingSet with ``lookup(stimulus_ids) -> (n, d)``
    train_mean : array of shape (d,)
        Mean training embedding (the constant-guess baseline).
    distractors : (ids, array of shape (m, d)), optional
        Extra image-gallery candidates; those that are stimuli of the gallery itself are dropped.
    images : callable, optional
        ``images(stimulus_ids) -> uint8 array (n, H, W, 3)``. When given, image stimuli are
        reconstructed by retrieval (the gallery image nearest each prediction, the honest
        baseline every generative decoder must beat) and scored against the true image with
        SSIM, PixCorr and pixel MSE (:mod:`fmri2img.evaluation.image_metrics`).
    memo : Memo, optional
        Keeps the baselines' scores and bootstrap intervals for later calls on the same inputs.
    """
    options.validate()
    scores = _Scores(subject, options, memo)
    per_trial_frames, per_stim_frames = [], []
    vision = predictions.get(MATCHED_TEST_SETS[1])  # chunk size: its fewest trials of a stimulus
    matched_chunk = int(vision.rows["stimulus_id"].value_counts().min()) if vision and len(vision.rows) else None
    for p in predictions.values():
        per_trial, per_stimulus = _score_test_set(scores, p, embeddings, train_mean, decoder=decoder,
                                                  configuration=configuration, baselines=baselines,
                                                  distractors=distractors, images=images, matched_chunk=matched_chunk)
        per_trial_frames.append(per_trial)
        per_stim_frames.append(per_stimulus)
    scores.cis.compute()
    table = pd.DataFrame.from_records(scores.records, columns=list(RESULTS_COLUMNS))
    comparisons = _comparisons(scores.per_stim, scores.stim_type_of, configuration, options)
    _apply_holm(table, comparisons, configuration)
    per_trial = pd.concat(per_trial_frames, ignore_index=True) if per_trial_frames else pd.DataFrame()
    per_stimulus = pd.concat(per_stim_frames, ignore_index=True) if per_stim_frames else pd.DataFrame()
    info = {"subject": subject, "decoder": decoder, "configuration": configuration,
            "options": dataclasses.asdict(options), "test_sets": list(predictions),
            "n_trials": {k: int(len(v.rows)) for k, v in predictions.items()},
            "gallery": "test-set stimuli of the same modality" + (
                f" + up to {len(distractors[0])} distractors ({options.distractors})"
                if distractors is not None else "")}
    return EvalResult(table=table, per_trial=per_trial, per_stimulus=per_stimulus, comparisons=comparisons, info=info)


def _per_stimulus_frame(test_set: str, configuration: str, uniq: np.ndarray, ids: np.ndarray,
                        stim_type_of: Mapping[Any, str], per_stim: dict) -> pd.DataFrame:
    """One row per stimulus of a test set (``uniq``, shape (n_stimuli,); ``ids``: each trial's stimulus): type,
    trial count, the per-stimulus metrics (sorted by name, NaN: not applicable), the mean-embedding baseline's cosine."""
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
                                 "paired_test": paired_comparison(v, i)}
        raw = bootstrap_ratio_ci(i, v, n_boot=opts.n_boot, seed=opts.seed)
        entry["ratio_imagery_over_perception"] = {"value": raw.ratio, "ci_low": raw.ci_low, "ci_high": raw.ci_high}
        b = np.array([base.get(s, np.nan) for s in common])
        if np.isfinite(b).all() and (v - b).mean() > 0:
            adj = bootstrap_ratio_ci(i - b, v - b, n_boot=opts.n_boot, seed=opts.seed)
            entry["ratio_above_mean_embedding_baseline"] = {
                "value": adj.ratio, "ci_low": adj.ci_low, "ci_high": adj.ci_high,
                "definition": "mean(imagery - baseline) / mean(perception - baseline), paired bootstrap"}
        if all(s in tw_v and s in tw_i for s in common):
            a = np.array([tw_i[s] for s in common]) - TWO_WAY_CHANCE
            c = np.array([tw_v[s] for s in common]) - TWO_WAY_CHANCE
            if c.mean() > 0:
                r = bootstrap_ratio_ci(a, c, n_boot=opts.n_boot, seed=opts.seed)
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
    adjusted = holm(allp)
    table.loc[mask, "p_holm"] = adjusted[: len(pvals)]
    for key, p in zip(comp_keys, adjusted[len(pvals):]):
        comparisons[key]["paired_test"]["p_holm"] = float(p)
    table["p_holm"] = table["p_holm"].astype(float)


def train_mean_embedding(index: pd.DataFrame, embeddings) -> np.ndarray:
    """Mean target embedding (shape (d,)) over the NSD training trials: the constant-guess baseline."""
    rows = index.loc[nsd_split_rows(index, "train")]
    return np.asarray(embeddings.lookup(rows["stimulus_id"].tolist()), dtype=np.float64).mean(0)


def shared1000_distractors(index: pd.DataFrame, embeddings) -> tuple[list[str], np.ndarray]:
    """(ids, embeddings) of the shared1000 stimuli: extra retrieval candidates. :func:`score`
    drops, per gallery, the ones that are stimuli of that gallery."""
    ids = sorted(set(index.loc[nsd_split_rows(index, "test"), "stimulus_id"]))
    return ids, np.asarray(embeddings.lookup(ids), dtype=np.float32)
