"""End to end: `ablate` + figures on a tiny world (the roadmap's tests/test_imagery_scaffold.py).

Checks the output tree, the nested MLflow runs (read back with the client), that a rerun
skips every cell, that every figure is a valid PDF/SVG/PNG, and that a parallel run gives
byte-identical results to a serial one.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest
import torch
from _world import build_tiny
from mlflow.tracking import MlflowClient
from PIL import Image

from fmri2img.core.vocab import CONFIGURATIONS
from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.stages.ablation.executor import run_ablation
from fmri2img.stages.ablation.matrix import AblationConfig
from fmri2img.stages.adapt import AdaptConfig


def _config(world, root, **over) -> AblationConfig:
    cfg = AblationConfig(
        subjects=("subj01",), decoders=("ridge",), data_root=str(world["data"]), cache_root=str(world["cache"]),
        index_dir=str(world["cache"] / "indices"), manifest_dir=str(world["manifests"]),
        checkpoint_root=str(root / "checkpoints"), output_root=str(root / "out"), log_dir=str(root / "logs"),
        synthesize=False, adapt=AdaptConfig(epochs=4), eval=EvalOptions(n_boot=50, n_perm=50))
    return dataclasses.replace(cfg, **over)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny(tmp_path_factory.mktemp("world"))


def test_ablation_tree_runs_resume_and_figures(world, tmp_path, tracking_uri):
    cfg = _config(world, tmp_path)
    result = run_ablation(cfg, tracking_uri=tracking_uri, progress=False)
    sdir = tmp_path / "out" / "subj01"
    for name in ("results_table.csv", "results_table.md", "metrics_all.json", "commands.txt", "timings.json"):
        assert (sdir / name).is_file(), name
    for conf in CONFIGURATIONS:
        assert (sdir / "eval" / f"ridge__{conf}" / "metrics.json").is_file(), conf
    assert (sdir / "adapters" / "ridge" / "adapter_linear" / "checkpoints" / "adapter_best.pt").is_file()
    summary = tmp_path / "out" / "summary"
    report = (summary / "report.md").read_text()
    assert "H1" in report and "Planted-truth check" in report
    hyp = json.loads((summary / "hypotheses.json").read_text())
    assert set(hyp["decoders"]["ridge"]) >= {"H1", "H2", "H3"}
    for rec in result.records:  # adapter and fine-tune cells count fold models left at their initial state
        if rec["cell"]["configuration"] in ("adapter_linear", "adapter_mlp", "adapter_mlp_condition", "finetune"):
            assert rec["n_fold_models"] == 3 and 0 <= rec["n_folds_kept_initial"] <= 3
    expected = {r["cell"]["configuration"]: [r["n_folds_kept_initial"], r["n_fold_models"]]
                for r in result.records if r.get("n_folds_kept_initial")}  # one subject: one cell each
    assert hyp["decoders"]["ridge"].get("kept_initial", {}) == expected
    commands = (sdir / "commands.txt").read_text()
    assert "fmri2img adapt" in commands and "--holdout-fold" in commands
    assert list((tmp_path / "logs").glob("ablate-*.log"))

    # figures: valid PDF, SVG and PNG files
    figs = sdir / "figures"
    for stem in ("bar_overall_metric", "bar_by_stimulus_type", "clip_similarity_by_condition",
                 "retrieval_curves", "subject_breakdown"):
        pdf = (figs / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-64:]
        assert ET.parse(figs / f"{stem}.svg").getroot().tag.endswith("svg")
        with Image.open(figs / f"{stem}.png") as img:
            img.verify()
    assert "\\toprule" in (figs / "table.tex").read_text()

    # MLflow: the study run; its cells are direct children and nothing is nested deeper
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["fmri2img.role"] == "study"
    h1 = hyp["decoders"]["ridge"]["H1"]
    assert parent.data.tags["fmri2img.verdict.ridge.H1"] == (
        f"direction: {h1['direction']}; roadmap magnitude: {h1['magnitude']}")
    assert {"hypotheses.json", "report"} <= {f.path for f in client.list_artifacts(result.run_id)}
    runs = client.search_runs([parent.info.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {result.run_id}
    cells = [r for r in children if r.data.tags.get("fmri2img.role") == "cell"]
    assert sorted(r.data.params["configuration"] for r in cells) == sorted(CONFIGURATIONS)
    keys = {f"subj01/ridge/{r['cell']['configuration']}": r["key"] for r in result.records}
    for run in cells:
        assert run.info.status == "FINISHED" and run.data.params["decoder"] == "ridge"
        assert not [k for k in run.data.params if k.startswith(("versions.", "seed."))]
        assert run.data.tags["fmri2img.cache_key"] == keys[run.info.run_name]
        m = run.data.metrics
        assert m["imagery/cosine_ci_low"] <= m["imagery/cosine"] <= m["imagery/cosine_ci_high"]
        assert "cell.png" in {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run.info.run_id, "figures")}
        assert run.inputs.dataset_inputs and len(run.outputs.model_outputs) >= 1

    # resume: nothing reruns and the results do not change
    before = (sdir / "metrics_all.json").read_bytes()
    again = run_ablation(cfg, tracking_uri=tracking_uri, progress=False)
    assert all(r["skipped"] for r in again.records)
    assert (sdir / "metrics_all.json").read_bytes() == before


@pytest.mark.slow
def test_parallel_equals_serial_and_seeds_matter(world, tmp_path, tracking_uri):
    serial = _config(world, tmp_path, output_root=str(tmp_path / "serial"), figures=False,
                     configurations=("perception_only", "mixed", "adapter_mlp"))
    parallel = dataclasses.replace(serial, output_root=str(tmp_path / "parallel"))
    run_ablation(serial, tracking_uri=tracking_uri, progress=False)
    run_ablation(parallel, jobs=2, tracking_uri=tracking_uri, progress=False, force=True)
    for name in ("metrics_all.json", "results_table.csv"):
        assert (tmp_path / "serial" / "subj01" / name).read_bytes() == \
            (tmp_path / "parallel" / "subj01" / name).read_bytes(), name


def test_synthesized_world_always_holds_the_default_subjects(tmp_path, monkeypatch):
    """A one-subject ablation writes the same world as the full demo (the design depends on
    the subject list), so its numbers are the demo's numbers for that subject."""
    from fmri2img.core.constants import DEFAULT_SUBJECTS
    from fmri2img.stages.ablation import cells

    seen = {}

    class Stop(Exception):
        pass

    def fake_write_world(root, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(cells, "write_world", fake_write_world)
    for subjects, expected in ((("subj02",), tuple(DEFAULT_SUBJECTS)),
                               (("subj03", "subj01"), (*DEFAULT_SUBJECTS, "subj03"))):
        with pytest.raises(Stop):
            cells.ensure_inputs(AblationConfig(subjects=subjects, data_root=str(tmp_path / "data")), progress=False)
        assert seen["subjects"] == expected


def test_commands_txt_reproduces_a_cell(world, tmp_path, tracking_uri):
    """Running a cell's lines of commands.txt (the CLI, one stage at a time) recreates its
    checkpoint, adapters and scores exactly, with non-default decoder, adapter and eval settings
    (they reach the commands through the stage configs written beside them)."""
    import shlex
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from fmri2img.cli.main import app

    cfg = _config(world, tmp_path, decoders=("mlp",), configurations=("perception_only", "adapter_linear"),
                  figures=False, seed=3,
                  decoder_params={"mlp": {"epochs": 2, "hidden_dim": 16, "batch_size": 64, "lr": 0.003}},
                  adapt=AdaptConfig(epochs=3, rank=4, seed=5), eval=EvalOptions(n_boot=40, n_perm=30, seed=9))
    run_ablation(cfg, tracking_uri=tracking_uri, progress=False)
    sdir = tmp_path / "out" / "subj01"
    expected = pd.read_csv(sdir / "eval" / "mlp__adapter_linear" / "results_table.csv")
    lines = (sdir / "commands.txt").read_text().split("# subj01 mlp__adapter_linear\n")[1].split("\n\n")[0]
    commands = [shlex.split(line) for line in lines.splitlines() if line.startswith("fmri2img ")]
    assert [c[1] for c in commands] == ["index", "train", "adapt", "eval"]
    for path in (tmp_path / "checkpoints", sdir / "adapters", sdir / "eval"):
        shutil.rmtree(path)
    runner = CliRunner()
    for argv in commands[1:]:  # the index exists (rebuilding it is tested in test_index)
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (argv, result.output)
    got = pd.read_csv(sdir / "eval" / "mlp__adapter_linear" / "results_table.csv")
    pd.testing.assert_frame_equal(got, expected)


def test_worker_log_records_reach_the_ablation_log(tmp_path):
    """A parallel ablation's workers log to the parent's stage log (a decoder's warning raised
    while a worker trains a cell must not be lost)."""
    import logging

    from fmri2img.core.logs import stage_log
    from fmri2img.stages.ablation.workers import local_executor

    with stage_log(tmp_path, "ablate") as log_path:
        logging.getLogger("fmri2img.ablate").info("parent line")
        with local_executor(2, log_path) as pool:
            list(pool.map(logging.getLogger("fmri2img.models.loop").warning, ["worker line"]))
    lines = log_path.read_text().splitlines()
    assert any(line.endswith("INFO fmri2img.ablate: parent line") for line in lines)
    assert any(line.endswith("WARNING fmri2img.models.loop: worker line") for line in lines), lines


def test_workers_see_the_parents_environment(monkeypatch):
    """Workers forked from a fork server started earlier still run with the parent's
    environment as it is when the pool starts (as spawned workers would)."""
    import multiprocessing
    import os

    from fmri2img.stages.ablation.workers import local_executor, mp_context, start_worker_server

    if "forkserver" in multiprocessing.get_all_start_methods():
        assert mp_context().get_start_method() == "forkserver"
    start_worker_server(2)
    monkeypatch.setenv("FMRI2IMG_TEST_WORKER_ENV", "set after the server started")
    with local_executor(2) as pool:
        seen = list(pool.map(os.getenv, ["FMRI2IMG_TEST_WORKER_ENV"] * 4))
    assert seen == ["set after the server started"] * 4


def test_cell_tasks_run_their_thread_pools_single_threaded(monkeypatch):
    """Serial or in a worker, a cell's BLAS/OpenMP pools run TASK_THREADS threads (results do
    not depend on the machine's cores or on --jobs)."""
    import numpy as np
    from threadpoolctl import threadpool_info

    import fmri2img.stages.ablation.workers as workers

    np.dot(np.ones((64, 64)), np.ones((64, 64)))  # numpy's BLAS is loaded
    monkeypatch.setattr(workers, "run_cell", lambda *args, **kwargs: [p["num_threads"] for p in threadpool_info()])
    inside = workers.run_cell_task(())
    assert inside and set(inside) == {workers.TASK_THREADS}


def _markdown_table_reference(table, metrics):
    """The first implementation of ``markdown_table`` (one boolean filter per table cell):
    the reference the one-pass version must reproduce character for character."""
    import pandas as pd

    sub = table[(table["stimulus_type"] == "all") & table["metric"].isin(metrics)]
    lines = ["| subject | decoder | configuration | test set | " + " | ".join(metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    for subject, decoder, configuration, test_set in sub[["subject", "decoder", "configuration", "test_set"]] \
            .drop_duplicates().to_records(index=False):
        cells = []
        for metric in metrics:
            row = sub[(sub["subject"] == subject) & (sub["decoder"] == decoder)
                      & (sub["configuration"] == configuration) & (sub["test_set"] == test_set)
                      & (sub["metric"] == metric)]
            if row.empty or pd.isna(row["value"].iloc[0]):
                cells.append("n/a")
                continue
            r = row.iloc[0]
            text = f"{r['value']:.3f}"
            if not pd.isna(r["ci_low"]):
                text += f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            if not pd.isna(r["chance"]):
                text += f" (chance {r['chance']:.3f})"
            cells.append(text)
        lines.append(f"| {subject} | {decoder} | {configuration} | {test_set} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_markdown_table_matches_the_reference():
    import numpy as np
    import pandas as pd

    from fmri2img.stages.ablation.summary import markdown_table

    rng = np.random.default_rng(0)
    metrics = ("cosine", "retrieval_at_1", "retrieval_at_5", "two_way")
    rows = [dict(subject=s, decoder=d, configuration=c, test_set=t, stimulus_type=st, metric=m,
                 value=rng.normal(), ci_low=rng.normal() - 1, ci_high=rng.normal() + 1,
                 chance=rng.choice([np.nan, 0.5]))
            for s in ("subj01", "subj02") for d in ("ridge", "mlp") for c in ("mixed", "finetune")
            for t in ("shared1000", "imagery") for st in ("all", "simple") for m in (*metrics, "pixcorr")]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=1, ignore_index=True)
    table = pd.concat([table, table.iloc[:30].assign(value=99.0)], ignore_index=True)  # duplicates: first row wins
    table.loc[table.index[:25], "value"] = np.nan  # missing values
    table.loc[table.index[40:45], "ci_low"] = np.nan
    table.loc[table.index[50:60], "decoder"] = None  # a missing key matches nothing
    table = table.drop(table.index[70:90])  # missing metrics
    expected = _markdown_table_reference(table, metrics)
    assert markdown_table(table, metrics) == expected
    assert "n/a" in expected and "99.000" not in expected


def test_ablate_without_jobs_uses_every_available_core(world, tmp_path, tracking_uri):
    """`fmri2img ablate` with no --jobs runs as many local workers as the process may use cores."""
    import os

    import yaml
    from typer.testing import CliRunner

    from fmri2img.cli.main import app

    cfg = _config(world, tmp_path, configurations=("perception_only",), figures=False)
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in dataclasses.asdict(cfg).items()
                                    if k in ("subjects", "decoders", "configurations", "data_root", "cache_root",
                                             "index_dir", "manifest_dir", "checkpoint_root", "output_root",
                                             "log_dir", "synthesize", "figures")}))
    result = CliRunner().invoke(app, ["ablate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    from fmri2img.core.constants import DEFAULT_EXPERIMENT

    cores = len(os.sched_getaffinity(0))
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id],
                               "tags.mlflow.runName = 'ablation'")
    assert run.data.params["jobs"] == str(cores)
    log = next((tmp_path / "logs").glob("ablate-*.log")).read_text()
    assert f"on {cores} local worker(s)" in log
