"""``fmri2img figures``: figures, captions and tables from a tidy results table."""

from __future__ import annotations

import csv
import gc
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.errors import MissingInputError, SchemaError
from fmri2img.core.vocab import RESULTS_COLUMNS
from fmri2img.reporting import style
from fmri2img.reporting.captions import figure_captions
from fmri2img.reporting.figures import FIGURE_NAMES, FIGURE_WIDTHS
from fmri2img.reporting.tables import (
    escape_latex,
    format_markdown,
    read_results_table,
    summary_rows,
)
from fmri2img.stages.report import _log_to_mlflow, make_figures, save_figure

runner = CliRunner()

#: Gallery sizes of the synthetic table (18 imagery stimuli: retrieval@50 not applicable).
GALLERY = {"shared1000": 100, "imagery": 18}
TYPES = {"shared1000": ["all", "natural"], "imagery": ["all", "simple", "complex", "conceptual"]}
CONFIGS = ["perception_only", "mixed", "finetune"]
DECODERS = ["ridge", "mlp"]


def _rows(subject: str, rng: np.random.Generator, decoders=DECODERS, configs=CONFIGS) -> list[dict]:
    rows = []

    def add(decoder, config, test_set, stype, metric, value, chance, p):
        half = 0.05
        rows.append(dict(
            subject=subject, decoder=decoder, configuration=config, test_set=test_set, stimulus_type=stype,
            metric=metric, value=value, ci_low=value - half, ci_high=value + half, chance=chance,
            n=GALLERY[test_set], p_value=p, p_holm=None if p is None else min(1.0, 3 * p),
        ))

    for test_set, types in TYPES.items():
        g = GALLERY[test_set]
        for stype in types:
            for decoder in list(decoders) + [""]:
                for config in configs if decoder else ["baseline_mean_embedding", "baseline_random"]:
                    if decoder == "ridge" and config == "finetune":
                        continue  # a configuration absent for a decoder
                    base = 0.7 if decoder else 0.3
                    add(decoder, config, test_set, stype, "cosine", float(rng.uniform(base - 0.2, base)), None,
                        float(rng.choice([0.001, 0.2])) if decoder else None)
                    for k in (1, 5, 10, 50):
                        value = min(1.0, float(rng.uniform(0.05, 0.3)) * k ** 0.5) if k <= g else None
                        if value is None:  # not applicable: empty cells
                            rows.append(dict(subject=subject, decoder=decoder, configuration=config,
                                             test_set=test_set, stimulus_type=stype, metric=f"retrieval_at_{k}",
                                             value=None, ci_low=None, ci_high=None, chance=None, n=g,
                                             p_value=None, p_holm=None))
                            continue
                        add(decoder, config, test_set, stype, f"retrieval_at_{k}", value, k / g,
                            float(rng.choice([0.001, 0.5])))
    return rows


def _write_table(path: Path, rows: list[dict], columns=RESULTS_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return path


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ablation")
    rng = np.random.default_rng(0)
    _write_table(folder / "results_table.csv", _rows("subj01", rng) + _rows("subj02", rng))
    return folder


@pytest.fixture(scope="module")
def made(ablation, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("figs")
    return out, make_figures(ablation, out)


def _check_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-"), path
    assert data.rstrip().endswith(b"%%EOF"), path
    assert b"/Type /Page" in data or b"/Type/Page" in data, path
    assert b"CreationDate" not in data


def test_every_file_exists_and_is_valid(made):
    out, written = made
    assert {p.name for p in written} == {f"{n}.{f}" for n in FIGURE_NAMES for f in ("pdf", "svg", "png")} | {
        "captions.md", "table.tex", "table_formatted.md"}
    for name in FIGURE_NAMES:
        _check_pdf(out / f"{name}.pdf")
        root = ET.parse(out / f"{name}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        with Image.open(out / f"{name}.png") as img:
            img.verify()
        with Image.open(out / f"{name}.png") as img:
            width, height = img.size
        assert width == round(FIGURE_WIDTHS[name] * style.PNG_DPI), name
        assert 0.5 * style.PNG_DPI < height < 12 * style.PNG_DPI, name


def test_tables_and_captions(made):
    out, _ = made
    tex = (out / "table.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1, rule
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
    assert "_" not in body.replace("\\_", "")  # every underscore escaped
    assert "Perception only" in tex and "Mean embedding" in tex
    # one row per (decoder, configuration): 2 decoders x 3 configs (ridge lacks finetune) + 2 shared baselines
    assert body.count("\\\\") == 2 * 3 - 1 + 2
    md = (out / "table_formatted.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 2 * 3 - 1 + 2
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    captions = (out / "captions.md").read_text()
    sections = {sec.split("\n", 1)[0]: sec for sec in captions.split("## ")[1:]}
    assert set(sections) == set(FIGURE_NAMES)
    # two subjects, no group rows: summary figures are subject means, without tests
    assert "no significance marks" in sections["clip_similarity_by_condition"]
    assert "t-intervals over subjects" in sections["bar_overall_metric"]
    # per-subject retrieval rows have chance levels: tested against chance
    assert "permutation test against chance" in sections["subject_breakdown"]


def test_table_values_come_from_the_csv(tmp_path):
    """One subject: the table shows the CSV's own numbers, an asterisk exactly where p_holm < 0.05."""
    rows = [
        dict(subject="subj01", decoder="ridge", configuration="mixed", test_set="imagery", stimulus_type="all",
             metric="retrieval_at_1", value=0.234, ci_low=0.111, ci_high=0.389, chance=1 / 18, n=18,
             p_value=0.001, p_holm=0.004),
        dict(subject="subj01", decoder="ridge", configuration="perception_only", test_set="imagery",
             stimulus_type="all", metric="retrieval_at_1", value=0.1, ci_low=0.0, ci_high=0.2, chance=1 / 18,
             n=18, p_value=0.04, p_holm=0.08),
    ]
    table = read_results_table(_write_table(tmp_path / "results_table.csv", rows))
    summary, note = summary_rows(table)
    md = format_markdown(summary, ["retrieval_at_1"], note)
    assert "| Ridge | Mixed | 0.23 [0.11, 0.39] * |" in md
    assert "| Ridge | Perception only | 0.10 [0.00, 0.20] |" in md
    assert "Subject subj01." in md


def test_mean_over_subjects_matches_t_interval(ablation):
    from scipy import stats

    table = read_results_table(ablation / "results_table.csv")
    summary, note = summary_rows(table)
    key = dict(decoder="mlp", configuration="mixed", test_set="imagery", stimulus_type="all", metric="cosine")
    mask = np.logical_and.reduce([table[k] == v for k, v in key.items()])
    values = table.loc[mask, "value"].to_numpy()
    got = summary[np.logical_and.reduce([summary[k] == v for k, v in key.items()])].iloc[0]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert got.value == pytest.approx(values.mean())
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high))
    assert "subj01, subj02" in note


def test_single_subject_captions_name_the_tests(tmp_path):
    rows = _rows("subj01", np.random.default_rng(1), decoders=["ridge"], configs=["mixed"])
    table = read_results_table(_write_table(tmp_path / "results_table.csv", rows))
    sections = {sec.split("\n", 1)[0]: sec for sec in figure_captions(table).split("## ")[1:]}
    cosine = sections["clip_similarity_by_condition"]
    assert "paired t-test on stimuli" in cosine and "permutation" not in cosine
    assert "permutation test against chance" in sections["retrieval_curves"]
    assert "paired" not in sections["retrieval_curves"]
    assert "Subject subj01." in sections["bar_overall_metric"]


@pytest.fixture(scope="module")
def single_subject(tmp_path_factory) -> Path:
    """A tiny one-subject ablation folder: one decoder, one configuration (+ the shared
    baselines), the imagery test set."""
    folder = tmp_path_factory.mktemp("single")
    rows = _rows("subj01", np.random.default_rng(1), decoders=["ridge"], configs=["mixed"])
    rows = [r for r in rows if r["test_set"] == "imagery"]
    _write_table(folder / "results_table.csv", rows)
    return folder


def test_cli_logs_to_the_ablation_run_and_reruns_are_byte_identical(single_subject, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("fmri2img.stages.report.log_artifacts_to_run", lambda *a: calls.append(a))
    run_file = single_subject / "mlflow_run.json"
    run_file.write_text(json.dumps({"run_id": "abc123", "tracking_uri": "sqlite:///x.db"}))
    try:
        out = tmp_path / "out"
        result = runner.invoke(app, ["figures", "--ablation-dir", str(single_subject), "--output-dir", str(out)])
        assert result.exit_code == 0, result.output
        assert calls == [("abc123", out, f"figures/{single_subject.name}", "sqlite:///x.db")]
        assert len(list(out.iterdir())) == 3 * len(FIGURE_NAMES) + 3
        # an explicit tracking URI wins over the file's
        _log_to_mlflow(single_subject, out, "sqlite:///y.db")
        assert calls[-1] == ("abc123", out, f"figures/{single_subject.name}", "sqlite:///y.db")
    finally:
        run_file.unlink()

    again = make_figures(single_subject, tmp_path / "again", formats=("pdf", "svg"))
    assert len(again) == 2 * len(FIGURE_NAMES) + 3
    for path in again:
        assert path.read_bytes() == (out / path.name).read_bytes(), path.name


@pytest.mark.slow
def test_figures_are_logged_to_a_real_mlflow_run(single_subject, tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    from fmri2img.core import tracking

    with tracking.run("ablate", tracking_uri=tracking_uri) as handle:
        run_id = handle.run_id
    folder = tmp_path / "abl"
    folder.mkdir()
    (folder / "results_table.csv").write_bytes((single_subject / "results_table.csv").read_bytes())
    (folder / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
    out = tmp_path / "out"
    make_figures(folder, out, formats=("png",))
    logged = {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id, "figures/abl")}
    assert logged == {f"figures/abl/{p.name}" for p in out.iterdir()}
    assert "figures/abl/bar_overall_metric.png" in logged and "figures/abl/captions.md" in logged


@pytest.mark.parametrize("case", ["missing_file", "missing_column", "non_numeric"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    folder = tmp_path / "abl"
    folder.mkdir()
    row = dict(subject="subj01", decoder="ridge", configuration="mixed", test_set="imagery", stimulus_type="all",
               metric="cosine", value=0.5, ci_low=0.4, ci_high=0.6, chance=None, n=18, p_value=0.1, p_holm=0.2)
    if case == "missing_column":
        _write_table(folder / "results_table.csv", [row], [c for c in RESULTS_COLUMNS if c != "ci_high"])
        error, needle = SchemaError, "ci_high"
    elif case == "non_numeric":
        _write_table(folder / "results_table.csv", [dict(row, value="high")])
        error, needle = SchemaError, "'high'"
    else:
        error, needle = MissingInputError, "results_table.csv"
    with pytest.raises(error, match=needle):
        make_figures(folder, tmp_path / "out")
    result = runner.invoke(app, ["figures", "--ablation-dir", str(folder), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0]
    if case != "non_numeric":
        assert "subject, decoder, configuration" in lines[0]  # names the expected columns


def test_latex_escaping():
    assert escape_latex("adapter_mlp & 50%") == "adapter\\_mlp \\& 50\\%"


def test_unknown_format_rejected(ablation, tmp_path):
    from fmri2img.core.errors import InputError

    with pytest.raises(InputError, match="eps"):
        make_figures(ablation, tmp_path, formats=("eps",))


def _pdf_fonts(data: bytes) -> set[bytes]:
    import re

    return set(re.findall(rb"/BaseFont\s*/([A-Za-z0-9+\-]+)", data))


def test_formats_keep_embedded_truetype_fonts_svg_paths_and_300_dpi(made):
    """The format guarantees: PDF fonts embedded as TrueType subsets (Type 42, journals reject
    Type 3), SVG text as glyph paths, PNG at PNG_DPI."""
    out, _ = made
    for name in FIGURE_NAMES:
        pdf = (out / f"{name}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/CIDFontType2" in pdf, name  # embedded TrueType
        assert b"/Type3" not in pdf and b"/FontType3" not in pdf, name
        assert _pdf_fonts(pdf) and all(b"+" in f for f in _pdf_fonts(pdf)), name  # subsets, embedded
        root = ET.parse(out / f"{name}.svg").getroot()
        assert not root.findall(".//{http://www.w3.org/2000/svg}text"), name  # glyphs as paths
        with Image.open(out / f"{name}.png") as img:
            assert img.mode in ("RGB", "RGBA")
            assert img.info["dpi"] == pytest.approx((style.PNG_DPI, style.PNG_DPI), abs=0.01)  # pHYs: px per metre


def test_layout_keeps_decorations_inside_the_figure_and_apart(ablation, tmp_path):
    """matplotlib's constrained layout puts every panel with its tick labels, axis labels and
    title inside the figure, below the legend, without overlaps."""
    from fmri2img.reporting import figures

    table = read_results_table(ablation / "results_table.csv")
    rows, _ = summary_rows(table)
    for plot, data in [(figures.plot_bar_overall_metric, rows), (figures.plot_bar_by_stimulus_type, rows),
                       (figures.plot_clip_similarity_by_condition, rows), (figures.plot_retrieval_curves, rows),
                       (figures.plot_subject_breakdown, table)]:
        fig = plot(data)
        save_figure(fig, tmp_path / plot.__name__, formats=("png",))
        renderer = fig.canvas.get_renderer()
        boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
        page = fig.bbox
        for box in boxes:
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, plot
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), plot
        legend = fig.legends[0].get_window_extent(renderer)
        assert all(box.y1 <= legend.y0 for box in boxes), plot


def test_figures_without_rows_are_written(tmp_path):
    """A figure with nothing to show is a message, written in every format like the others."""
    rows = [dict(subject="subj01", decoder="ridge", configuration="mixed", test_set="imagery", stimulus_type="all",
                 metric="cosine", value=0.5, ci_low=0.4, ci_high=0.6, chance=None, n=18, p_value=0.1, p_holm=0.2)]
    _write_table(tmp_path / "abl" / "results_table.csv", rows)
    written = make_figures(tmp_path / "abl", tmp_path / "out")
    assert {p.name for p in written} >= {f"retrieval_curves.{f}" for f in ("pdf", "svg", "png")}
    _check_pdf(tmp_path / "out" / "retrieval_curves.pdf")
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the garbage collector is left as it was


def test_significant_on_one_p_value_and_on_an_array():
    from fmri2img.reporting.tables import ALPHA, significant

    assert significant(ALPHA / 2) is True and significant(ALPHA) is False and significant(float("nan")) is False
    sig = significant(np.array([0.001, ALPHA, np.nan, 0.2, 0.049]))
    assert sig.dtype == bool and sig.tolist() == [True, False, False, False, True]


# ----------------------------------------------------------------------------- layout: nothing overlaps
def _drawn_texts(fig) -> list[tuple[str, np.ndarray]]:
    """Every text the renderer draws, as (text, corners of its rotated box in pixels)."""
    from unittest import mock

    from matplotlib.text import Text

    drawn, real = [], Text.draw

    def draw(self, renderer):
        real(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, renderer))

    with mock.patch.object(Text, "draw", draw):
        fig.canvas.draw()
    out = []
    for text, renderer in drawn:
        box = text.get_window_extent(renderer)
        width, height, _ = renderer.get_text_width_height_descent(text.get_text(), text.get_fontproperties(),
                                                                  ismath=False)
        if "\n" in text.get_text():  # several lines: the unrotated box is the extent itself
            width, height = (box.width, box.height) if text.get_rotation() % 180 == 0 else (box.height, box.width)
        angle = np.deg2rad(text.get_rotation())
        center = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
        u = np.array([np.cos(angle), np.sin(angle)]) * width / 2
        v = np.array([-np.sin(angle), np.cos(angle)]) * height / 2
        out.append((text.get_text(), np.array([center - u - v, center + u - v, center + u + v, center - u + v])))
    return out


def _boxes_overlap(p: np.ndarray, q: np.ndarray, tolerance: float = 0.5) -> bool:
    """Separating-axis test of two rotated rectangles (corners in order), allowing ``tolerance`` pixels."""
    for poly in (p, q):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            normal = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) + 1e-12)
            a, b = p @ normal, q @ normal
            if a.max() - tolerance <= b.min() or b.max() - tolerance <= a.min():
                return False
    return True


@pytest.fixture(scope="module")
def full_table(tmp_path_factory) -> Path:
    """The demo's size: 4 subjects x 3 decoders x 6 configurations, most cells significant."""
    from fmri2img.core.vocab import CONFIGURATIONS

    rng = np.random.default_rng(1)
    rows = [r for s in ("subj01", "subj02", "subj05", "subj07")
            for r in _rows(s, rng, decoders=("ridge", "mlp", "two_stage"), configs=list(CONFIGURATIONS))]
    return _write_table(tmp_path_factory.mktemp("full") / "results_table.csv", rows)


@pytest.mark.parametrize("subjects", [("subj01",), ("subj01", "subj02", "subj05", "subj07")])
def test_no_text_overlaps_and_all_text_inside_the_figure(full_table, subjects):
    from fmri2img.reporting.captions import figure_specs

    table = read_results_table(full_table)
    table = table[table["subject"].isin(subjects)]
    for spec in figure_specs(table, "retrieval_at_1"):
        fig = spec.plot()
        texts = _drawn_texts(fig)
        assert sum(t == "*" for t, _ in texts) > 0 or spec.name in ("retrieval_curves", "bar_overall_metric",
                                                                     "bar_by_stimulus_type",
                                                                     "clip_similarity_by_condition")
        clashes = [(a, b) for i, (a, p) in enumerate(texts) for b, q in texts[i + 1:] if _boxes_overlap(p, q)]
        assert not clashes, (spec.name, subjects, clashes[:5])
        width, height = fig.bbox.width, fig.bbox.height
        outside = [t for t, p in texts if p.min() < -1 or p[:, 0].max() > width + 1 or p[:, 1].max() > height + 1]
        assert not outside, (spec.name, outside)


def test_axes_show_the_compared_range_and_intervals_stay_in_bounds(full_table):
    from fmri2img.reporting.figures import plot_clip_similarity_by_condition, plot_retrieval_curves

    rows, _ = summary_rows(read_results_table(full_table))
    fig = plot_clip_similarity_by_condition(rows)
    cosine = rows[(rows["metric"] == "cosine") & (rows["stimulus_type"] == "all")
                  & ~rows["configuration"].str.startswith("baseline_")]
    for ax in fig.axes[:2]:
        low, high = ax.get_ylim()
        assert low > 0.0 and low <= cosine["value"].min()  # not from 0: the compared values fill the axis
    fig = plot_retrieval_curves(rows)
    ticks = {ax.get_title(loc="left"): [float(t) for t in ax.get_xticks()] for ax in fig.axes}
    assert ticks["Ridge · imagery"] == [1.0, 5.0, 10.0]  # 18-image gallery: no K = 50
    assert ticks["Ridge · shared1000"] == [1.0, 5.0, 10.0, 50.0]
    for ax in fig.axes:  # interval bars (vertical segments) within [0, 1]
        for collection in ax.collections:
            for segment in collection.get_segments():
                assert segment[:, 1].min() >= 0.0 and segment[:, 1].max() <= 1.0


def test_captions_name_the_interval_the_figures_draw(full_table):
    table = read_results_table(full_table)
    several = figure_captions(table)
    assert "t-intervals over subjects" in several and "bootstrap CIs over stimuli" not in several.split("## subject")[0]
    one = figure_captions(table[table["subject"] == "subj01"])
    assert "t-intervals" not in one and "bootstrap CIs over stimuli" in one
    assert "Filled markers: p_holm" in one


def test_cell_figure_draws_the_cells_own_rows_with_the_baseline_and_curves():
    import pandas as pd

    from fmri2img.reporting.cell_figure import plot_cell

    rng = np.random.default_rng(2)
    rows = [r for r in _rows("subj01", rng, decoders=("mlp",), configs=["mixed"]) if r["metric"] == "cosine"]
    table = pd.DataFrame(rows)
    curves = {"fold0/val_cosine": [0.5, 0.6, 0.65], "fold1/val_cosine": [0.55, 0.6], "fold0/train_loss": [1.0, 0.5]}
    fig = plot_cell(table, "mixed", curves, "subj01/mlp/mixed")
    left, right = fig.axes
    points = left.collections[1].get_offsets()  # vlines, then the scatter of the cell's values
    mine = table[(table["configuration"] == "mixed") & (table["stimulus_type"] == "all")]
    assert sorted(points[:, 1]) == sorted(mine["value"])  # not the baselines' rows
    assert sorted(line.get_label() for line in right.get_lines()) == ["fold0", "fold1"]  # val_cosine only
    texts = _drawn_texts(fig)
    assert not [(a, b) for i, (a, p) in enumerate(texts) for b, q in texts[i + 1:] if _boxes_overlap(p, q)]
