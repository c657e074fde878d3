"""What an ablation cell shows in MLflow (``docs/mlflow_ui_notes.md``): one direct child run of the
ablation run, logged with :func:`fmri2img.core.tracking_layout.log_cell` once the cell's work is done.

Its params are those that differ between cells (subject, decoder, configuration, embedding set, the
decoder's and the adapter's hyperparameters), its versions one tag, its cache key a tag; its metrics
carry ``_ci_low`` / ``_ci_high`` bounds; per-fold training curves, a small figure, the models it
decodes with (MLflow logged models) and its inputs (trial index, split manifest: MLflow datasets).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core import tracking, tracking_layout
from fmri2img.core.files import read_json
from fmri2img.core.provenance import package_versions
from fmri2img.core.vocab import ADAPTER_CONFIGURATIONS
from fmri2img.data import splits
from fmri2img.reporting.cell_figure import plot_cell
from fmri2img.stages.ablation.matrix import AblationConfig, Cell
from fmri2img.stages.evaluate import flat_metrics
from fmri2img.stages.report import save_figure

#: Decoder params that say how a fit ran, not what was fitted (left out of a cell's params).
RUN_ONLY_PARAMS = ("progress", "device", "verbose")
#: Adapter options that the configuration's name already says, or that are the same for every cell.
ADAPTER_NAMED_PARAMS = ("adapter", "condition", "device", "folds")
#: Rows of the trial index logged as the input example of a cell's models.
EXAMPLE_ROWS = 2


@dataclasses.dataclass
class CellWork:
    """What a cell did besides evaluating: its curves (name -> per-epoch values), models (name ->
    (module, input example of shape (n, features))), numeric extras and files (folder -> paths)."""

    curves: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    models: dict[str, tuple[Any, np.ndarray]] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, list[Path]] = dataclasses.field(default_factory=dict)


def history_curves(history: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, list[float]]:
    """A per-epoch history (one dict per epoch) as ``{prefix + key: values}`` (numeric keys, ``epoch`` left out)."""
    keys = sorted({k for rec in history for k, v in rec.items() if k != "epoch" and isinstance(v, (int, float))})
    return {f"{prefix}{k}": [float(rec[k]) if isinstance(rec.get(k), (int, float)) else math.nan for rec in history]
            for k in keys}


def cell_params(config: AblationConfig, cell: Cell, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The params of a cell's run: what differs between cells (``None``: does not apply, left out)."""
    params: dict[str, Any] = {"subject": cell.subject, "decoder": cell.decoder, "configuration": cell.configuration,
                              "region": cell.region, "voxel_selection": cell.voxel_selection,
                              "embedding_set": meta.get("embedding_set"), "n_voxels": meta.get("n_voxels"),
                              "imagery_weight": config.imagery_weight if cell.configuration == "mixed" else None}
    params.update({f"decoder.{k}": v for k, v in sorted(meta.get("params", {}).items()) if k not in RUN_ONLY_PARAMS})
    if cell.configuration in ADAPTER_CONFIGURATIONS:
        adapt = dataclasses.asdict(config.adapt)
        params.update({f"adapter.{k}": v for k, v in sorted(adapt.items()) if k not in ADAPTER_NAMED_PARAMS})
    return params


def table_intervals(table: pd.DataFrame, configuration: str) -> dict[str, tuple[float, float]]:
    """``{metric name (as in flat_metrics): (ci_low, ci_high)}`` for every row with a finite interval."""
    out = {}
    for rec in table[table["configuration"] == configuration].to_dict("records"):
        low, high, value = rec.get("ci_low"), rec.get("ci_high"), rec.get("value")
        if any(v is None or pd.isna(v) for v in (low, high, value)):
            continue
        key = f"{rec['test_set']}/{rec['metric']}" if rec["stimulus_type"] == "all" else \
            f"{rec['test_set']}/{rec['stimulus_type']}/{rec['metric']}"
        out[key] = (float(low), float(high))
    return out


def cell_datasets(index: pd.DataFrame, index_file: Path, manifest_dir: str | Path) -> list[tracking_layout.DatasetLog]:
    """The trial index and the split manifest (as a ``group``/``item`` table) as MLflow datasets."""
    subject = str(index["subject"].iloc[0])
    manifest = splits.manifest_path(manifest_dir, subject)
    groups = tracking_layout.groups_frame(splits.manifest_groups(read_json(manifest)))
    return [tracking_layout.DatasetLog(index_file, "trial_index", "index", frame=pd.DataFrame(index)),
            tracking_layout.DatasetLog(manifest, "split_manifest", "train/test", frame=groups)]


def log_cell_run(config: AblationConfig, cell: Cell, *, parent_run_id: str, tracking_uri: str, key: str,
                 meta: Mapping[str, Any], result, work: CellWork, index: pd.DataFrame, index_file: Path,
                 eval_dir: Path, start_time: float, end_time: float) -> str:
    """Log a finished cell as a direct child of the ablation run; return its run id. With
    ``config.cell_logging == "metrics"`` the run holds its params, metrics and curves only (no figure,
    files, datasets or models)."""
    parent = tracking.attach(parent_run_id, tracking_uri)
    metrics = flat_metrics(result.table, cell.configuration)
    metrics.update({k: float(v) for k, v in work.extra.items() if isinstance(v, (int, float))})
    intervals = {k: v for k, v in table_intervals(result.table, cell.configuration).items() if k in metrics}
    name = f"{cell.subject}/{cell.decoder}/{cell.configuration}" + (f"/{cell.tag}" if cell.tag else "")
    full = config.cell_logging == "full"
    with tempfile.TemporaryDirectory() as tmp:
        # cell_logging: metrics leaves these four out (vocab.CELL_LOGGING)
        files = dict(figures=save_figure(plot_cell(result.table, cell.configuration, work.curves, name),
                                         Path(tmp) / "cell", formats=("png",)),
                     artifacts={"eval": sorted(p for p in eval_dir.iterdir() if p.is_file()), **work.artifacts},
                     datasets=cell_datasets(index, index_file, config.manifest_dir),
                     models=work.models) if full else {}
        log = tracking_layout.CellLog(
            name=name, params=cell_params(config, cell, meta), metrics=metrics, intervals=intervals,
            curves=work.curves, cache_key=key, versions=package_versions(), start_time=start_time,
            end_time=end_time, tags={"region": cell.region, "voxel_selection": cell.voxel_selection},
            description=(f"Cell **{name}**: decoder `{cell.decoder}` in configuration `{cell.configuration}` "
                         f"for {cell.subject}, region `{cell.region}` ({cell.voxel_selection} voxels). "
                         "Metrics are on the held-out test sets with 95% bootstrap "
                         "intervals (`*_ci_low`, `*_ci_high`); curves `<model>/<metric>` per epoch."
                         + ("" if full else " Logged with `cell_logging: metrics`: no figure, files, "
                                            "datasets or models.")), **files)
        return tracking_layout.log_cell(parent.client, parent.experiment_id, parent_run_id, log)
