"""The reports of an ablation: per-subject tables (results_table.csv/.md, metrics_all.json,
timings.json, commands.txt) and the cross-subject summary with the hypotheses' verdicts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.files import ensure_dir, load_npy, read_json, write_json, write_text
from fmri2img.core.vocab import CONFIGURATIONS, DECODERS
from fmri2img.data.betas import index_cache_dir, region_columns, voxel_table
from fmri2img.data.nsd_constants import NSDGENERAL_INSIDE
from fmri2img.data.regions import DEFAULT_REGION, parse_region, restrict
from fmri2img.data.schema import read_index
from fmri2img.evaluation.group import FOLD_COLUMN, SCORE_COLUMNS
from fmri2img.reporting.hypotheses import decide_hypotheses
from fmri2img.reporting.region_report import region_comparison
from fmri2img.reporting.verdicts import render_markdown
from fmri2img.sim.truth_tables import truth_table_for
from fmri2img.stages.ablation.field import collect_field_tables
from fmri2img.stages.ablation.matrix import AblationConfig, Cell, cell_dir, index_path, subject_dir


def collect_subject(config: AblationConfig, subject: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Write the subject's results_table.csv/.md, metrics_all.json and commands.txt."""
    sdir = subject_dir(config, subject)
    frames, metrics_all, timings, commands = [], {}, {}, []
    regions_order = [parse_region(r) for r in config.regions]
    for rec in sorted(records, key=lambda r: (regions_order.index(r["cell"].get("region", DEFAULT_REGION)),
                                              DECODERS.index(r["cell"]["decoder"]),
                                              CONFIGURATIONS.index(r["cell"]["configuration"]))):
        cell = Cell(**rec["cell"])
        cdir = cell_dir(config, cell)
        table = pd.read_csv(cdir / "results_table.csv")
        table.insert(list(table.columns).index("configuration") + 1, "region", cell.region)
        table.insert(list(table.columns).index("region") + 1, "voxel_selection", cell.voxel_selection)
        frames.append(table)
        metrics_all[cell.name] = read_json(cdir / "metrics.json")
        timings[cell.name] = {"cell_seconds": rec.get("seconds"), "train_seconds_total": rec.get("train_seconds_total"),
                              "n_trainable_parameters": rec.get("n_trainable_parameters"),
                              "n_base_parameters": rec.get("n_base_parameters"),
                              "parameter_overhead": rec.get("parameter_overhead")}
        commands.append(f"# {subject} {cell.name}")
        commands.extend(rec["commands"])
        commands.append("")
    table = pd.concat(frames, ignore_index=True)
    is_base = table["configuration"].str.startswith("baseline_")
    # baselines do not read the brain: one copy, under no region
    baselines = table[is_base].drop_duplicates(["test_set", "configuration", "stimulus_type", "metric"])
    baselines = baselines.assign(region="", voxel_selection="")
    table = pd.concat([table[~is_base], baselines], ignore_index=True)
    write_text(sdir / "results_table.csv", table.to_csv(index=False))
    write_text(sdir / "results_table.md", markdown_table(table))
    write_json(sdir / "metrics_all.json", metrics_all)
    write_json(sdir / "timings.json", timings)
    write_text(sdir / "commands.txt", "\n".join(commands) + "\n")
    return table


#: Metrics of the compact markdown tables.
MARKDOWN_METRICS = ("cosine", "retrieval_at_1", "retrieval_at_5", "two_way")


def markdown_table(table: pd.DataFrame, metrics=MARKDOWN_METRICS) -> str:
    """Compact markdown: one row per (decoder, configuration, test set), stimulus type ``all``;
    each metric cell is the first matching row's value (CI, chance), ``n/a`` where none has a value."""
    key_columns = ["subject", "decoder", "configuration", "test_set"]
    sub = table[(table["stimulus_type"] == "all") & table["metric"].isin(metrics)]
    lines = ["| subject | decoder | configuration | test set | " + " | ".join(metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    # one pass over the rows, not a boolean filter per table cell (quadratic)
    first = sub.drop_duplicates([*key_columns, "metric"], keep="first")
    found = dict(zip(first[[*key_columns, "metric"]].itertuples(index=False, name=None),
                     first[["value", "ci_low", "ci_high", "chance"]].itertuples(index=False, name=None)))
    for key in sub[key_columns].drop_duplicates().itertuples(index=False, name=None):
        cells = []
        for metric in metrics:
            value, ci_low, ci_high, chance = found.get((*key, metric), (math.nan,) * 4)
            if pd.isna(value) or any(pd.isna(k) for k in key):  # a missing key never matches (NaN != NaN)
                cells.append("n/a")
                continue
            text = f"{value:.3f}"
            if not pd.isna(ci_low):
                text += f" [{ci_low:.3f}, {ci_high:.3f}]"
            if not pd.isna(chance):
                text += f" (chance {chance:.3f})"
            cells.append(text)
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(config: AblationConfig, tables: list[pd.DataFrame], records: list[dict[str, Any]]
                  ) -> tuple[Path, dict[str, Any]]:
    """Write the cross-subject summary (results_table.csv/.md, hypotheses.json, report.md)."""
    summary_dir = ensure_dir(Path(config.output_root) / "summary")
    summary = pd.concat(tables, ignore_index=True)
    write_text(summary_dir / "results_table.csv", summary.to_csv(index=False))
    write_text(summary_dir / "results_table.md", markdown_table(summary))
    truth_path = Path(config.data_root) / "truth" / "params.json"
    truth = read_json(truth_path) if truth_path.is_file() else None
    truth_table = read_json(Path(config.truth_table)) if truth is not None and config.truth_table else None
    scores, primary = per_stimulus_scores(config, records), primary_region(config)
    in_primary = [r for r in records if r["cell"].get("region", DEFAULT_REGION) == primary]
    report = decide_hypotheses(scores[scores["region"] == primary], in_primary, subjects=list(config.subjects),
                               decoders=list(config.decoders), truth=truth,
                               truth_table=truth_table_for(truth, truth_table))
    report["region"] = {"name": primary, "voxel_selection": config.voxel_selection}
    if len(config.regions) > 1:
        names = [parse_region(r) for r in config.regions]
        report["regions"] = region_comparison(scores, list(config.decoders), names, region_infos(records),
                                              planted_region_gains(config, names))
    field = collect_field_tables(config, records, summary_dir)
    if len(field):
        report["field_battery"] = {"table": "field_table.csv", "rows": field.to_dict("records")}
    write_json(summary_dir / "hypotheses.json", report)
    write_text(summary_dir / "report.md", render_markdown(report))
    return summary_dir, report


def per_stimulus_scores(config: AblationConfig, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Every cell's per_stimulus.csv in one table (:data:`~fmri2img.evaluation.group.SCORE_COLUMNS`, the
    region and each NSD-Imagery stimulus' fold); on imagery and matched perception ``cosine`` is the
    trial-count-matched ``cosine_matched``."""
    frames, folds = [], {}
    for subject in config.subjects:
        index = read_index(index_path(config, subject))
        imagery = index[index["dataset"] == "nsdimagery"].drop_duplicates("stimulus_id")
        folds[subject] = dict(zip(imagery["stimulus_id"], imagery["fold"]))
    for rec in records:
        cell = Cell(**rec["cell"])
        frame = pd.read_csv(cell_dir(config, cell) / "per_stimulus.csv")
        if "cosine_matched" in frame.columns:
            frame["cosine"] = frame["cosine_matched"].where(frame["cosine_matched"].notna(), frame["cosine"])
        frames.append(frame.assign(subject=cell.subject, decoder=cell.decoder, region=cell.region,
                                   fold=frame["stimulus_id"].map(folds[cell.subject]).astype("float64")))
    return pd.concat(frames, ignore_index=True)[[*SCORE_COLUMNS, "region", FOLD_COLUMN]] if frames else pd.DataFrame()


def primary_region(config: AblationConfig) -> str:
    """The region H1-H3 are decided on: nsdgeneral when the study has it, else its first region."""
    names = [parse_region(r) for r in config.regions]
    return DEFAULT_REGION if DEFAULT_REGION in names else names[0]


def region_infos(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{region: {subject: region_info}}`` from the cells' records (voxel counts, ncsnr, noise ceilings)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec.get("region_info"):
            out.setdefault(rec["cell"].get("region", DEFAULT_REGION), {})[rec["cell"]["subject"]] = rec["region_info"]
    return out


def planted_region_gains(config: AblationConfig, names: list[str]) -> dict[str, float] | None:
    """Synthetic world: each region's planted imagery gain (mean over its selected voxels and the
    subjects of ``truth/imagery_gain_<subject>.npy``, rows = nsdgeneral voxels); None elsewhere."""
    truth = Path(config.data_root) / "truth"
    files = {s: truth / f"imagery_gain_{s}.npy" for s in config.subjects}
    if not all(f.is_file() for f in files.values()):
        return None
    gains: dict[str, list[float]] = {name: [] for name in names}
    for subject, path in files.items():
        index = read_index(index_path(config, subject))
        folder = index_cache_dir(config.cache_root, index)
        table, valid = voxel_table(folder), load_npy(folder / "valid.npy")
        nsdgeneral = table.labels[:, 0] == NSDGENERAL_INSIDE
        per_voxel = np.full(len(table.labels), np.nan)
        per_voxel[nsdgeneral] = load_npy(path)
        for name in names:
            columns = region_columns(restrict(index, name, config.voxel_selection), folder, valid)
            gains[name].append(float(np.nanmean(per_voxel[columns])))
    return {name: float(np.mean(values)) for name, values in gains.items()}
