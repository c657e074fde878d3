"""A small study logged with :mod:`fmri2img.core.tracking_layout`: real files (PNG figures, a Parquet trial
index, a JSON split manifest, a Markdown report), a real torch model, a real SQLite MLflow store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from fmri2img.core import tracking_layout as layout

EXPERIMENT = "toy/study"
CONFIGURATIONS = ("perception_only", "with_adapter")
DECODERS = ("ridge", "mlp")
SUBJECTS = ("subj01", "subj02")
HEADLINE = ("clip_similarity", "top1_accuracy")
#: Epochs of each toy training curve.
EPOCHS = 5
#: Seconds each toy cell "works"; the run's Duration must cover all of it.
CELL_SECONDS = 90.0
T0 = 1_790_000_000.0  # a fixed start time (seconds since the epoch): same store, same numbers


def cell_names() -> list[str]:
    """Run names of the toy cells, in logging order."""
    return [f"{c}/{d}/{s}" for c, d, s in itertools.product(CONFIGURATIONS, DECODERS, SUBJECTS)]


def _figure(path: Path, values: np.ndarray, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=80)
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _inputs(root: Path) -> tuple[Path, Path]:
    import pandas as pd

    index = root / "trials.parquet"
    pd.DataFrame({"trial": np.arange(12), "subject": ["subj01"] * 6 + ["subj02"] * 6,
                  "stimulus": [f"nsd-{i:05d}" for i in range(12)]}).to_parquet(index)
    manifest = root / "splits.json"
    manifest.write_text(json.dumps({"nsd/train": [f"nsd-{i:05d}" for i in range(8)],
                                    "nsd/test": [f"nsd-{i:05d}" for i in range(8, 12)]}))
    return index, manifest


def build(root: Path, *, with_model: bool = True) -> tuple[layout.StudyLog, list[layout.CellLog], dict]:
    """The toy study's parent, its cells (the product of configuration x decoder x subject) and its view."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    index, manifest = _inputs(root)
    groups = json.loads(manifest.read_text())
    datasets = (layout.DatasetLog(index, "trial_index", "index"),
                layout.DatasetLog(manifest, "split_manifest", "train/test", frame=layout.groups_frame(groups)))
    versions = {"python": "3.11", "mlflow": "3", "torch": torch.__version__}
    rng = np.random.default_rng(0)
    cells = []
    for i, (config, decoder, subject) in enumerate(itertools.product(CONFIGURATIONS, DECODERS, SUBJECTS)):
        clip = 0.55 + 0.1 * (decoder == "mlp") + 0.05 * (config == "with_adapter") + 0.01 * rng.standard_normal()
        top1 = 0.2 + 0.1 * (decoder == "mlp") + 0.01 * rng.standard_normal()
        name = cell_names()[i]
        figure = _figure(root / f"cell{i}.png", np.array([clip, top1]), name)
        model = None
        if with_model and i == 0:
            torch.manual_seed(0)
            model = {"decoder": (torch.nn.Linear(6, 3), rng.standard_normal((2, 6)))}
        cells.append(layout.CellLog(
            name=name,
            params={"configuration": config, "decoder": decoder, "subject": subject, "region": "nsdgeneral",
                    "embedding_set": "clip-vit-b32", "alpha": 1000.0 if decoder == "ridge" else None,
                    "hidden": 64 if decoder == "mlp" else None},
            metrics={"clip_similarity": clip, "top1_accuracy": top1},
            intervals={"clip_similarity": (clip - 0.02, clip + 0.02), "top1_accuracy": (top1 - 0.03, top1 + 0.03)},
            curves={"fold0/train_loss": list(np.linspace(1.0, 0.2, EPOCHS)),
                    "fold0/val_loss": list(np.linspace(0.9, 0.44, EPOCHS))},
            figures=[figure], cache_key=f"{i:02d}" + "ab" * 7, versions=versions,
            tags={"fmri2img.stage": "cell"}, datasets=datasets, models=model or {},
            start_time=T0 + i * CELL_SECONDS, end_time=T0 + (i + 1) * CELL_SECONDS))
    report = root / "report.md"
    report.write_text("# Toy study\n\nH1 supported.\n")
    study = layout.StudyLog(
        name="toy-ablation", params={"cells": len(cells)}, versions=versions, report=report,
        figures=[_figure(root / "summary.png", np.arange(3.0), "summary")],
        hypotheses={"H1": {"verdict": "supported"}}, verdicts={"H1": "supported"}, datasets=datasets,
        start_time=T0, end_time=T0 + len(cells) * CELL_SECONDS)
    view = layout.compare_view_state(group_by=["configuration", "decoder"], metrics=HEADLINE,
                                     params=["subject"], tags=[layout.CACHE_KEY_TAG],
                                     search_filter=f"tags.`{layout.ROLE_TAG}` = 'cell'",
                                     order_by="clip_similarity")
    return study, cells, view


def log(tracking_uri: str, root: Path, **kwargs) -> dict:
    """Build the toy study under ``root`` and log it to ``tracking_uri``; return :func:`layout.log_study`'s ids."""
    from mlflow.tracking import MlflowClient

    study, cells, view = build(root, **kwargs)
    return layout.log_study(MlflowClient(tracking_uri), EXPERIMENT, "A **toy** study: cells compared.", study,
                            cells, view)
