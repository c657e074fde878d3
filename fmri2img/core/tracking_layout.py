"""Lay out a study in MLflow so that MLflow 3's UI shows it well.

A *study* is one parent run (report, summary figures, ``hypotheses.json``, verdict tags); its
*cells* are the parent's direct children and nothing is nested deeper. A cell run carries only
the params that differ between cells, its versions in one tag, its cache key in a tag, every
headline metric with ``<name>_ci_low`` / ``<name>_ci_high`` companions, its own figures, its
training curves as stepped metrics, its models as MLflow *logged models*, its inputs as MLflow
*datasets*, and start/end times that cover its whole work. A saved view (an experiment tag the
UI reads) opens the cells grouped by chosen params with the headline metrics as columns.

Plain functions over :class:`mlflow.tracking.MlflowClient` and MLflow's public modules; every
tag name and URL format used here is documented, with the MLflow source it was read from, in
``docs/mlflow_ui_notes.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import mlflow.data
import numpy as np
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature

from fmri2img.core.errors import InputError, MissingInputError
from fmri2img.core.files import dumps_json, sha256_file
from fmri2img.core.tracking import TAG_HOST, TAG_PID

#: Experiment tag that tells the UI which kind of experiment this is (MLflow 3 ``ExperimentKind``;
#: ``custom_model_development`` is shown as "Machine learning"). Source: the UI bundle
#: (``mlflow/server/js/build``, ``ExperimentKind`` enum) and ``mlflow/demo/generators/traces.py``.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_ML = "custom_model_development"
#: Experiment or run tag whose markdown the UI shows as the description (``mlflow/utils/mlflow_tags.py``).
NOTE_TAG = "mlflow.note.content"
#: Run tags MLflow itself reads (``mlflow/utils/mlflow_tags.py``).
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
#: Input tag naming a dataset's role in a run (``mlflow/utils/mlflow_tags.py``, MLFLOW_DATASET_CONTEXT).
DATASET_CONTEXT_TAG = "mlflow.data.context"

#: Saved views: experiment tag ``mlflow.sharedViewState.<key>`` holding ``{name, createdAt, updatedAt,
#: state}``; the runs page loads it for ``?viewStateShareKey=<key>`` (UI bundle, "save and share view").
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SHARE_KEY_PARAM = "viewStateShareKey"
#: MLflow 3.17's UI picks GenAI vs classic-ML pages from this URL parameter (else a browser-local
#: setting that defaults to GenAI), not from the experiment tag; ``machine_learning`` opens the runs.
WORKFLOW_TYPE_PARAM = "workflowType"
WORKFLOW_TYPE_ML = "machine_learning"
#: The UI refuses to save views longer than this; the server refuses experiment tags longer than this
#: (``mlflow/utils/validation.py``, MAX_EXPERIMENT_TAG_VAL_LENGTH).
MAX_VIEW_CHARS = 20000
#: MLflow stores a dataset digest in 36 characters (``mlflow/utils/validation.py``, MAX_DATASET_DIGEST_SIZE).
DATASET_DIGEST_CHARS = 36
#: MLflow accepts at most 1000 metrics per ``log_batch`` (``mlflow/utils/validation.py``).
MAX_METRICS_PER_BATCH = 1000

#: This project's own tags.
ROLE_TAG = "fmri2img.role"
ROLE_STUDY = "study"
ROLE_CELL = "cell"
CACHE_KEY_TAG = "fmri2img.cache_key"
VERSIONS_TAG = "fmri2img.versions"
VERDICT_TAG_PREFIX = "fmri2img.verdict."
CI_LOW_SUFFIX = "_ci_low"
CI_HIGH_SUFFIX = "_ci_high"

#: Pixels of the runs table's name column in the compare view: fits "Group: configuration: <name>, decoder: <name>".
RUN_NAME_WIDTH = 380

#: Key of the study's compare view (stable, so the URL printed by ``fmri2img ui --compare`` is too).
COMPARE_VIEW_KEY = "fmri2img-compare"


@dataclass(frozen=True)
class CellLog:
    """Everything one cell run shows. Plain values and paths only.

    ``intervals`` maps a metric name to its ``(low, high)`` bounds; ``curves`` maps a metric name to
    its values per step (epoch); ``figures`` and ``artifacts`` are files (``artifacts`` maps an artifact
    folder to its files); ``datasets`` are :class:`DatasetLog`; ``models`` maps a model name to
    ``(torch.nn.Module, input example array of shape (n_samples, n_features))``; ``start_time`` /
    ``end_time`` are seconds since the epoch and should cover the cell's whole work; ``description``
    (markdown) is shown on the run's page.
    """

    name: str
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    curves: Mapping[str, Sequence[float]] = field(default_factory=dict)
    figures: Sequence[str | os.PathLike] = ()
    artifacts: Mapping[str, Sequence[str | os.PathLike]] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    cache_key: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    datasets: Sequence[DatasetLog] = ()
    models: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    status: str = "FINISHED"
    description: str | None = None


@dataclass(frozen=True)
class DatasetLog:
    """One input of a run: a table (``frame``, a pandas DataFrame) read from ``source`` (a file whose
    SHA-256 becomes the digest), its ``name`` and its ``context`` (``train``, ``test``, ``index``...)."""

    source: str | os.PathLike
    name: str
    context: str
    frame: Any = None


def setup_experiment(client, name: str, description: str) -> str:
    """Get or create experiment ``name``, mark it a classic-ML experiment and set its description.

    Returns
    -------
    experiment_id : str
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name)
        except Exception:  # created concurrently by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_ML)
    client.set_experiment_tag(experiment_id, NOTE_TAG, description)
    return experiment_id


def column_key(kind: str, name: str) -> str:
    """The runs table's column id: ``params.`decoder```, ``metrics.`x```, ``tags.`y```."""
    if kind not in ("params", "metrics", "tags", "attributes"):
        raise InputError(f"Unknown column kind {kind!r}; expected 'params', 'metrics', 'tags' or 'attributes'.")
    return f"{kind}.`{name}`"


def compare_view_state(
    *,
    group_by: Sequence[str],
    metrics: Sequence[str],
    params: Sequence[str] = (),
    tags: Sequence[str] = (),
    search_filter: str = "",
    order_by: str | None = None,
    order_ascending: bool = False,
    aggregate: str = "average",
    run_name_width: int = RUN_NAME_WIDTH,
) -> dict[str, Any]:
    """The runs page state of a compare view (search facets + UI state, the keys the UI persists).

    ``group_by`` are param names, or ``tag:<name>`` for a tag; ``metrics`` / ``params`` / ``tags`` become
    columns in that order; ``aggregate`` (``average``, ``min``, ``max``) summarises a group's metrics.
    """
    if aggregate not in ("average", "min", "max"):
        raise InputError(f"Unknown aggregate {aggregate!r}; expected 'average', 'min' or 'max'.")
    keys = [{"mode": "tag", "groupByData": g[4:]} if g.startswith("tag:") else {"mode": "param", "groupByData": g}
            for g in group_by]
    run_name = column_key("attributes", "Run Name")
    columns = ([column_key("attributes", "Duration")] + [column_key("metrics", m) for m in metrics]
               + [column_key("params", p) for p in params] + [column_key("tags", t) for t in tags])
    return {
        "searchFilter": search_filter,
        "orderByKey": column_key("metrics", order_by) if order_by else "attributes.start_time",
        "orderByAsc": order_ascending,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": columns,
        # a width is applied only to columns named in columnOrder (UI bundle, runs table column state)
        "columnOrder": [run_name],
        "columnWidths": {run_name: run_name_width},
        "groupBy": {"aggregateFunction": aggregate, "groupByKeys": keys} if keys else None,
        "groupsExpanded": {},
        "runsHiddenMode": "SHOW_ALL",
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
    }


def save_view(client, experiment_id: str, state: Mapping[str, Any], *, key: str = COMPARE_VIEW_KEY,
              name: str = "Compare cells") -> str:
    """Store ``state`` as the experiment's saved view ``key`` (what the UI's "Save view" writes); return ``key``."""
    now = int(time.time() * 1000)
    envelope = json.dumps({"name": name, "createdAt": now, "updatedAt": now,
                           "state": json.dumps(dict(state), separators=(",", ":"))}, separators=(",", ":"))
    if len(envelope) > MAX_VIEW_CHARS:
        raise InputError(f"View {name!r} is {len(envelope)} characters; MLflow stores at most {MAX_VIEW_CHARS}.")
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + key, envelope)
    return key


def runs_url(base_url: str, experiment_id: str, view_key: str | None = None) -> str:
    """URL of the experiment's runs table (with saved view ``view_key`` if given) in MLflow 3's UI."""
    query = {SHARE_KEY_PARAM: view_key} if view_key else {}
    query[WORKFLOW_TYPE_PARAM] = WORKFLOW_TYPE_ML
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_url(base_url: str, experiment_id: str, run_id: str, artifact_path: str | None = None) -> str:
    """URL of a run's page, or of one of its artifacts."""
    tail = f"/artifacts/{artifact_path}" if artifact_path else ""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{tail}"
            f"?{urlencode({WORKFLOW_TYPE_PARAM: WORKFLOW_TYPE_ML})}")


def with_intervals(metrics: Mapping[str, float], intervals: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """``metrics`` plus ``<name>_ci_low`` / ``<name>_ci_high`` for every interval (non-finite values dropped)."""
    out = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    for name, (low, high) in intervals.items():
        if name not in metrics:
            raise InputError(f"Interval for {name!r} has no metric {name!r}; metrics are {sorted(metrics)}.")
        if low > high:
            raise InputError(f"Interval for {name!r} is ({low}, {high}); expected low <= high.")
        out.update({f"{name}{CI_LOW_SUFFIX}": float(low), f"{name}{CI_HIGH_SUFFIX}": float(high)})
    return out


def _ms(seconds: float | None) -> int:
    return int(round((time.time() if seconds is None else seconds) * 1000))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else dumps_json(value).strip()


def _params(params: Mapping[str, Any]) -> list:
    """MLflow params from a flat mapping; ``None`` (a param that does not apply to this run) is left out."""

    return [Param(k, _text(v)) for k, v in dict(params).items() if v is not None]


def log_metrics(client, run_id: str, metrics: Mapping[str, float], *, curves: Mapping[str, Sequence[float]] = (),
                timestamp: float | None = None) -> None:
    """Log final ``metrics`` (step 0) and ``curves`` (one value per step) in as few batches as possible."""

    when = _ms(timestamp)
    batch = [Metric(k, float(v), when, 0) for k, v in metrics.items()]
    batch += [Metric(k, float(v), when, step) for k, values in dict(curves).items()
              for step, v in enumerate(values) if v is not None and math.isfinite(float(v))]
    for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch[start:start + MAX_METRICS_PER_BATCH])


def log_files(client, run_id: str, files: Sequence[str | os.PathLike], artifact_path: str) -> None:
    """Log ``files`` under ``artifact_path``; a missing file is a :class:`MissingInputError` naming it."""
    for path in files:
        if not Path(path).is_file():
            raise MissingInputError(f"Artifact file not found: {path}.")
        client.log_artifact(run_id, os.fspath(path), artifact_path)


def log_json(client, run_id: str, obj: Any, artifact_file: str) -> None:
    """Log ``obj`` as a deterministic JSON artifact ``artifact_file``."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / Path(artifact_file).name
        target.write_text(dumps_json(obj), encoding="utf-8")
        parent = str(Path(artifact_file).parent)
        client.log_artifact(run_id, str(target), None if parent == "." else parent)


def groups_frame(groups: Mapping[str, Sequence[str]]):
    """A split manifest's groups (``{"nsd/train": ids, ...}``) as a long table with columns
    ``group`` and ``item`` (one row per id), to log as a dataset."""

    rows = [(name, str(item)) for name, items in groups.items() for item in items]
    return pd.DataFrame(rows, columns=["group", "item"])


def log_datasets(client, run_id: str, datasets: Sequence[DatasetLog]) -> None:
    """Log each dataset as an MLflow dataset input (name, SHA-256 digest, source, schema, row count)."""

    inputs = []
    for spec in datasets:
        source = Path(spec.source).resolve()
        frame = spec.frame if spec.frame is not None else _read_table(source)
        with warnings.catch_warnings():  # "source ... can be interpreted in multiple ways", integer-column hint
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(pd.DataFrame(frame), source=str(source), name=spec.name,
                                              digest=sha256_file(source)[:DATASET_DIGEST_CHARS])
            entity = Dataset(**dataset.to_dict())
        inputs.append(DatasetInput(entity, tags=[InputTag(DATASET_CONTEXT_TAG, spec.context)]))
    if inputs:
        try:
            client.log_inputs(run_id, datasets=inputs)
        except MlflowException as exc:  # a worker beside this one inserted the same dataset first (SQLite)
            if "UNIQUE constraint failed" not in str(exc):
                raise
            client.log_inputs(run_id, datasets=inputs)  # now it exists and is linked, not inserted


def _read_table(path: Path):

    if not path.is_file():
        raise MissingInputError(f"Dataset file not found: {path}.")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise InputError(f"Cannot read {path} as a table; expected .parquet or .csv, or pass DatasetLog(frame=...).")


def _save_torch_model(model, path: str, info, example: np.ndarray, output: np.ndarray) -> None:
    """``mlflow.pytorch.save_model`` as ``pt2`` (loads without this package), else as ``pickle``: a module
    with data-dependent checks in its forward (a condition adapter validating its condition ids) cannot
    be traced by ``torch.export``, which raises (its error types are internal to torch)."""

    import mlflow.pytorch

    kwargs = {"mlflow_model": info, "input_example": example, "signature": infer_signature(example, output),
              "pip_requirements": [f"torch=={metadata.version('torch')}"]}
    try:
        if not getattr(model, "export_traceable", True):  # the module says torch.export cannot trace it
            raise TypeError(f"{type(model).__name__} is not traceable by torch.export")
        mlflow.pytorch.save_model(model, path, serialization_format="pt2", **kwargs)
    except Exception as exc:  # noqa: BLE001 - torch.export's errors have no public base class
        logging.getLogger(__name__).debug("torch.export cannot trace %s (%s); saving it as pickle",
                                          type(model).__name__, str(exc).splitlines()[0][:120])
        shutil.rmtree(path, ignore_errors=True)
        # MLflow logs "pickle ... requires exercising caution" (a warning meant for untrusted models): ours
        flavor_log = logging.getLogger("mlflow.pytorch")
        level = flavor_log.level
        flavor_log.setLevel(logging.ERROR)
        try:
            mlflow.pytorch.save_model(model, path, serialization_format="pickle", **kwargs)
        finally:
            flavor_log.setLevel(level)


def log_torch_model(client, run_id: str, model, input_example, *, name: str = "model",
                    metrics: Mapping[str, float] | None = None) -> str:
    """Log a ``torch.nn.Module`` as an MLflow logged model of ``run_id`` with a signature inferred from
    ``input_example`` (array of shape (n_samples, n_features)); return its model id.

    Saved as ``pt2`` (``torch.export``, MLflow 3's default), so it loads back without this package
    (``pickle`` where ``torch.export`` cannot trace it):
    ``mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")``. ``metrics`` (the run's final values) are
    linked to the model, so the "Models" tab shows them. This is what ``mlflow.pytorch.log_model(...,
    run_id=...)`` does (``mlflow/models/model.py``, ``Model.log``), through this client instead of the
    global tracking URI; ``log_model`` without an active fluent run would also put the model in the
    default experiment instead of the run's (``mlflow/tracking/fluent.py``, ``_create_logged_model``).
    """

    import torch

    example = np.asarray(input_example, dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    logged = client.create_logged_model(client.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id)
    try:
        info = Model(artifact_path=logged.artifact_location, run_id=run_id, model_uuid=logged.model_id,
                     model_id=logged.model_id)
        with tempfile.TemporaryDirectory() as tmp:
            _save_torch_model(model, os.path.join(tmp, name), info, example, output)
            client.log_model_artifacts(logged.model_id, os.path.join(tmp, name))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        now = _ms(None)
        linked = [Metric(k, float(v), now, 0, model_id=logged.model_id, run_id=run_id)
                  for k, v in (metrics or {}).items()]
        for start in range(0, len(linked), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=linked[start:start + MAX_METRICS_PER_BATCH])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id

def start_study(client, experiment_id: str, name: str, *, params: Mapping[str, Any] = (),
                tags: Mapping[str, str] = (), versions: Mapping[str, str] = (), start_time: float | None = None,
                description: str | None = None) -> str:
    """Open the study's parent run (status RUNNING); return its run id."""
    all_tags = {ROLE_TAG: ROLE_STUDY, RUN_NAME_TAG: name, **dict(tags)}
    if description:
        all_tags[NOTE_TAG] = description
    if versions:
        all_tags[VERSIONS_TAG] = _text(dict(versions))
    run = client.create_run(experiment_id, start_time=_ms(start_time), tags=all_tags, run_name=name)
    if params:
        client.log_batch(run.info.run_id, params=_params(params))
    return run.info.run_id


def log_cell(client, experiment_id: str, parent_run_id: str, cell: CellLog) -> str:
    """Log ``cell`` as a finished direct child of ``parent_run_id``; return its run id."""
    # pid and host: a process killed while logging leaves the run RUNNING; the next ablate marks it KILLED
    tags = {ROLE_TAG: ROLE_CELL, PARENT_TAG: parent_run_id, RUN_NAME_TAG: cell.name, TAG_PID: str(os.getpid()),
            TAG_HOST: socket.gethostname(), **dict(cell.tags)}
    if cell.cache_key:
        tags[CACHE_KEY_TAG] = cell.cache_key
    if cell.versions:
        tags[VERSIONS_TAG] = _text(dict(cell.versions))
    if cell.description:
        tags[NOTE_TAG] = cell.description
    metrics = with_intervals(cell.metrics, cell.intervals)  # checked before anything is written
    run = client.create_run(experiment_id, start_time=_ms(cell.start_time), tags=tags, run_name=cell.name)
    run_id = run.info.run_id
    try:
        if cell.params:
            client.log_batch(run_id, params=_params(cell.params))
        log_metrics(client, run_id, metrics, curves=cell.curves, timestamp=cell.end_time)
        log_files(client, run_id, cell.figures, "figures")
        for folder, files in cell.artifacts.items():
            log_files(client, run_id, files, folder)
        log_datasets(client, run_id, cell.datasets)
        for model_name, (model, example) in cell.models.items():
            log_torch_model(client, run_id, model, example, name=model_name, metrics=metrics)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status=cell.status, end_time=_ms(cell.end_time))
    return run_id


def finish_study(client, run_id: str, *, report: str | os.PathLike | None = None,
                 figures: Sequence[str | os.PathLike] = (), hypotheses: Mapping[str, Any] | None = None,
                 verdicts: Mapping[str, str] = (), datasets: Sequence[DatasetLog] = (), status: str = "FINISHED",
                 end_time: float | None = None, close: bool = True) -> None:
    """Attach the study's report, summary figures, ``hypotheses.json``, verdict tags and inputs; close it
    (``status``, ``end_time``) unless ``close`` is False (its owner closes it)."""
    if report is not None:
        log_files(client, run_id, [report], "report")
    log_files(client, run_id, figures, "figures")
    if hypotheses is not None:
        log_json(client, run_id, hypotheses, "hypotheses.json")
    for name, verdict in dict(verdicts).items():
        client.set_tag(run_id, VERDICT_TAG_PREFIX + name, str(verdict))
    log_datasets(client, run_id, datasets)
    if close:
        client.set_terminated(run_id, status=status, end_time=_ms(end_time))


@dataclass(frozen=True)
class StudyLog:
    """The parent run: its name, params, tags, versions, report/figure files, hypotheses (JSON-able),
    verdicts (hypothesis -> verdict), inputs, times (seconds since the epoch) and run description."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    report: str | os.PathLike | None = None
    figures: Sequence[str | os.PathLike] = ()
    hypotheses: Mapping[str, Any] | None = None
    verdicts: Mapping[str, str] = field(default_factory=dict)
    datasets: Sequence[DatasetLog] = ()
    start_time: float | None = None
    end_time: float | None = None
    description: str | None = None


def log_study(client, experiment: str, description: str, study: StudyLog, cells: Sequence[CellLog],
              view: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Log a whole study: experiment kind + description, parent run, one child run per cell, and the
    compare view ``view`` (from :func:`compare_view_state`) under :data:`COMPARE_VIEW_KEY`.

    Returns
    -------
    dict
        ``experiment_id``, ``study_run_id``, ``cell_run_ids`` (in the order of ``cells``) and ``view_key``.
    """
    experiment_id = setup_experiment(client, experiment, description)
    parent = start_study(client, experiment_id, study.name, params=study.params, tags=study.tags,
                         versions=study.versions, start_time=study.start_time, description=study.description)
    cell_ids = []
    try:
        for cell in cells:
            cell_ids.append(log_cell(client, experiment_id, parent, cell))
        finish_study(client, parent, report=study.report, figures=study.figures, hypotheses=study.hypotheses,
                     verdicts=study.verdicts, datasets=study.datasets, end_time=study.end_time)
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    key = save_view(client, experiment_id, view) if view is not None else None
    return {"experiment_id": experiment_id, "study_run_id": parent, "cell_run_ids": cell_ids, "view_key": key}
