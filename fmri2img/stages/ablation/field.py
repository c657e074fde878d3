"""The field's reconstruction battery inside an ablation (``field_battery:`` in ablation.yaml): each
perception-only cell's test stimuli reconstructed and scored like ``fmri2img reconstruct`` + ``fmri2img
eval --predictions`` (logged into the cell's run, not runs of their own), and one summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fmri2img.core.files import write_text
from fmri2img.reporting.field_report import format_battery_markdown
from fmri2img.stages.ablation.matrix import AblationConfig, Cell, cell_dir, index_path
from fmri2img.stages.battery import BatteryOptions, score_predictions
from fmri2img.stages.reconstruct import reconstruct

#: Folders of a cell's battery: its reconstructions (a predictions folder) and their scores.
RECONSTRUCTIONS_DIR = "reconstructions"
FIELD_DIR = "field"
FIELD_TABLE = "field_table.csv"


def runs_battery(config: AblationConfig, cell: Cell) -> bool:
    return config.field_battery.enabled and cell.configuration == "perception_only"


def run_field_battery(config: AblationConfig, cell: Cell, checkpoint: Path, out: Path) -> list[Path]:
    """Reconstruct the cell's test stimuli from ``checkpoint`` and score them; returns the files to log."""
    battery = config.field_battery
    recon, scores = out / RECONSTRUCTIONS_DIR, out / FIELD_DIR
    reconstruct(index_path(config, cell.subject), recon, checkpoint=checkpoint, backend=battery.backend,
                backend_params=battery.backend_params, mode=config.mode, cache_root=config.cache_root,
                track=False, model_type=cell.decoder)
    options = BatteryOptions(n_way=battery.n_way, n_boot=config.eval.n_boot, n_perm=config.eval.n_perm,
                             seed=config.eval.seed, device=config.device)
    score_predictions(index_path(config, cell.subject), recon, scores, feature_weights=battery.feature_weights,
                      options=options, source=cell.name, cache_root=config.cache_root, track=False)
    return sorted(p for p in scores.iterdir() if p.is_file())


def collect_field_tables(config: AblationConfig, records: list[dict[str, Any]], summary_dir: Path) -> pd.DataFrame:
    """Every perception-only cell's ``field_table.csv`` with subject, decoder and region columns, written to
    the summary as ``field_table.csv`` / ``.md``; empty when the battery is off."""
    frames = []
    for rec in records:
        cell = Cell(**rec["cell"])
        path = cell_dir(config, cell) / FIELD_DIR / FIELD_TABLE
        if runs_battery(config, cell) and path.is_file():
            frames.append(pd.read_csv(path).assign(subject=cell.subject, decoder=cell.decoder, region=cell.region))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    write_text(summary_dir / FIELD_TABLE, table.to_csv(index=False))
    write_text(summary_dir / "field_table.md", format_battery_markdown(table))
    return table
