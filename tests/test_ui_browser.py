"""The real MLflow UI, served by ``fmri2img ui`` over a toy study, driven in Debian's headless Chromium.

What a user sees is checked in the browser (the runs table, the compare view, a cell's figure); the
rest through MLflow's REST API. Skipped only where Chromium or its driver cannot be found (CI installs
both: scripts/ci/install-browser.sh). Set FMRI2IMG_UPDATE_SCREENSHOT=1 to refresh the README's
screenshot docs/img/mlflow_compare.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import _toy_study as toy
import pytest
from _procs import children

from fmri2img.core import tracking_layout as layout
from fmri2img.core import ui_server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Chromium flags for a closed network and a root user (no sandbox, no background connections).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900")
#: Seconds a page may take to show what is waited for (2 shared cores in CI).
PAGE_TIMEOUT_S = 30
START_TIMEOUT_S = 90
SCREENSHOT = ROOT / "docs" / "img" / "mlflow_compare.png"
#: The README's screenshot must stay small.
MAX_SCREENSHOT_BYTES = 300_000

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"Chromium or chromedriver not found ({CHROMIUM}, {CHROMEDRIVER}); "
           "install them with scripts/ci/install-browser.sh (Debian packages chromium, chromium-driver)",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = toy.log(uri, root / "files")
    return {"uri": uri, "root": root, **ids}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_line(path: Path, prefix: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        time.sleep(0.2)
    raise AssertionError(f"`fmri2img ui` printed no {prefix!r} line; rc={proc.poll()}")


@contextlib.contextmanager
def _ui(uri: str, experiment: str, root: Path):
    """``fmri2img ui --compare`` on a free port; stopped with SIGTERM, and no process of it may remain."""
    port = _free_port()
    out, err = root / "ui.out", root / "ui.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        cli = subprocess.Popen(
            [sys.executable, "-m", "fmri2img.cli.main", "ui", "--tracking-uri", uri, "--experiment",
             experiment, "--port", str(port), "--compare"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=root, stdout=stdout, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    pgid = None
    try:
        compare = _wait_for_line(out, "Compare:", cli, START_TIMEOUT_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ui_server.wait_until_up(f"{base}/health", cli, timeout=1) and time.monotonic() < deadline:
            pass
        servers = children(cli.pid)
        pgid = servers[0] if len(servers) == 1 else None
        yield {"base": base, "compare": compare}
    finally:
        cli.send_signal(signal.SIGTERM)
        try:
            cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cli.kill()
        if pgid is not None:
            left = ui_server.group_members(pgid)
            ui_server.stop_group(pgid, timeout=5)
            assert left == [], f"server processes left after SIGTERM: {left}"


@pytest.fixture(scope="module")
def server(study):
    with _ui(study["uri"], toy.EXPERIMENT, study["root"]) as info:
        yield info


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    yield driver
    driver.quit()


def _open(browser, url: str, *texts: str) -> str:
    """Load ``url`` and wait until the page's text contains all ``texts``; return the text."""
    browser.get("about:blank")  # a hash-only change would not reload the app
    browser.get(url)
    return _wait_for_texts(browser, url, *texts)


def _wait_for_texts(browser, url: str, *texts: str) -> str:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, PAGE_TIMEOUT_S).until(
            lambda d: all(text in d.find_element(By.TAG_NAME, "body").text for text in texts))
    except TimeoutException:
        body = browser.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{url} shows no {[t for t in texts if t not in body]}: {body!r}") from None
    return browser.find_element(By.TAG_NAME, "body").text


def _rest(base: str, endpoint: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local server
        return json.loads(response.read())


def test_experiment_opens_on_the_runs_table_listing_the_cells(study, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text = _open(browser, layout.runs_url(server["base"], study["experiment_id"]), "matching runs", "toy-ablation")
    assert "/runs" in browser.current_url and "Training runs" not in text  # not the GenAI pages
    assert "A toy study: cells compared." in text  # the experiment's description
    assert "toy-ablation" in text and f"{1 + len(study['cell_run_ids'])} matching runs" in text
    expand = browser.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
    assert len(expand) == 1  # the study run, its cells folded under it; nothing nested deeper
    expand[0].click()
    names = toy.cell_names()
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: all(name in d.find_element(By.TAG_NAME, "body").text for name in names))


def test_compare_view_groups_cells_by_configuration_and_decoder(study, server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    assert server["compare"] == layout.runs_url(server["base"], study["experiment_id"], layout.COMPARE_VIEW_KEY)
    _open(browser, server["compare"], "Group: configuration")
    for close in browser.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
        close.click()  # the assistant panel hides half the table
    # the cells only (not the study run), grouped, with the headline metrics, subject and cache key as columns
    _wait_for_texts(browser, server["compare"], f"{len(study['cell_run_ids'])} matching runs", *toy.HEADLINE,
                    "subject", layout.CACHE_KEY_TAG)
    groups = {e.get_attribute("textContent").strip() for e in browser.find_elements(By.XPATH, "//*[starts-with("
              "normalize-space(text()), 'Group: ')]")}
    expected = {f"Group: configuration: {c}, decoder: {d}" for c in toy.CONFIGURATIONS for d in toy.DECODERS}
    assert expected <= groups, groups
    shot = tmp_path / "compare.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < MAX_SCREENSHOT_BYTES
    if os.environ.get("FMRI2IMG_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_cell_page_shows_its_figure(study, server, browser):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_id = study["cell_run_ids"][0]
    figure = study["root"] / "files" / "cell0.png"
    with Image.open(figure) as image:
        size = list(image.size)
    _open(browser, layout.run_url(server["base"], study["experiment_id"], run_id, "figures/cell0.png"), "cell0.png")

    def figure_shown(driver):  # the UI fetches the artifact and shows it from a blob: URL
        return [img for img in driver.find_elements(By.TAG_NAME, "img")
                if driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == size]

    assert WebDriverWait(browser, PAGE_TIMEOUT_S).until(figure_shown)


def test_rest_api_shows_the_study_layout(study, server):
    base, exp = server["base"], study["experiment_id"]
    tags = {t["key"]: t["value"] for t in _rest(base, f"experiments/get?experiment_id={exp}")["experiment"]["tags"]}
    assert tags[layout.EXPERIMENT_KIND_TAG] == layout.EXPERIMENT_KIND_ML
    cells = _rest(base, "runs/search", {"experiment_ids": [exp], "max_results": 100,
                                        "filter": f"tags.`{layout.ROLE_TAG}` = 'cell'"})["runs"]
    assert {r["info"]["run_id"] for r in cells} == set(study["cell_run_ids"])
    for run in cells:
        run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run_tags[layout.PARENT_TAG] == study["study_run_id"]
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {f"{m}{s}" for m in toy.HEADLINE for s in ("", layout.CI_LOW_SUFFIX, layout.CI_HIGH_SUFFIX)} <= metrics
        assert {d["dataset"]["name"] for d in run["inputs"]["dataset_inputs"]} == {"trial_index", "split_manifest"}
        assert int(run["info"]["end_time"]) - int(run["info"]["start_time"]) == toy.CELL_SECONDS * 1000
    models = _rest(base, "logged-models/search", {"experiment_ids": [exp]})["models"]
    assert [(m["info"]["name"], m["info"]["source_run_id"], m["info"]["status"]) for m in models] == \
        [("decoder", study["cell_run_ids"][0], "LOGGED_MODEL_READY")]
    files = {f["path"] for f in _rest(base, f"artifacts/list?run_id={study['study_run_id']}")["files"]}
    assert {"report", "figures", "hypotheses.json"} <= files


# ----------------------------------------------------------------------------- a real (tiny) ablation
#: The tiny ablation: one subject, one decoder, three configurations (H1's, H2's and one of H3's).
ABLATION_CONFIGURATIONS = ("perception_only", "mixed", "adapter_linear")
ABLATION_EXPERIMENT = "test/ui-ablation"


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """``run_ablation`` on the tiny world, logged to its own store (what ``make demo`` logs, smaller)."""
    import torch
    from _world import build_tiny

    from fmri2img.evaluation.scoring import EvalOptions
    from fmri2img.stages.ablation.executor import run_ablation
    from fmri2img.stages.ablation.matrix import AblationConfig
    from fmri2img.stages.adapt import AdaptConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ui-ablation")
    world = build_tiny(root / "world")
    config = AblationConfig(
        subjects=("subj01",), decoders=("ridge",), configurations=ABLATION_CONFIGURATIONS,
        data_root=str(world["data"]), cache_root=str(world["cache"]), index_dir=str(world["cache"] / "indices"),
        manifest_dir=str(world["manifests"]), checkpoint_root=str(root / "checkpoints"),
        output_root=str(root / "out"), log_dir=str(root / "logs"), synthesize=False, figures=False,
        adapt=AdaptConfig(epochs=3, lr_steps=1), eval=EvalOptions(n_boot=50, n_perm=50))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_ablation(config, tracking_uri=uri, experiment=ABLATION_EXPERIMENT, progress=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(ABLATION_EXPERIMENT).experiment_id
    cells = client.search_runs([experiment_id], f"tags.`{layout.ROLE_TAG}` = '{layout.ROLE_CELL}'")
    return {"uri": uri, "root": root, "result": result, "experiment_id": experiment_id, "client": client,
            "cells": {r.info.run_name: r for r in cells}}


@pytest.fixture(scope="module")
def ablation_server(ablation):
    with _ui(ablation["uri"], ABLATION_EXPERIMENT, ablation["root"]) as info:
        yield info


def test_ablation_compare_view_lists_its_cells_grouped_by_configuration_and_decoder(ablation, ablation_server,
                                                                                   browser):
    from selenium.webdriver.common.by import By

    from fmri2img.stages.ablation.study_log import HEADLINE_METRICS

    _open(browser, ablation_server["compare"], "Group: configuration")
    for close in browser.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
        close.click()
    text = _wait_for_texts(browser, ablation_server["compare"], f"{len(ABLATION_CONFIGURATIONS)} matching runs",
                           *HEADLINE_METRICS[:2], "subject")
    groups = {e.get_attribute("textContent").strip() for e in browser.find_elements(By.XPATH, "//*[starts-with("
              "normalize-space(text()), 'Group: ')]")}
    assert groups == {f"Group: configuration: {c}, decoder: ridge" for c in ABLATION_CONFIGURATIONS}, groups
    assert sorted(ablation["cells"]) == sorted(f"subj01/ridge/{c}" for c in ABLATION_CONFIGURATIONS)
    assert all(name in text for name in ablation["cells"])  # groups are expanded: each cell is listed


def test_ablation_cell_page_shows_its_figure(ablation, ablation_server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = ablation["cells"]["subj01/ridge/adapter_linear"]
    local = ablation["client"].download_artifacts(run.info.run_id, "figures/cell.png", str(tmp_path))
    with Image.open(local) as image:
        size = list(image.size)
    url = layout.run_url(ablation_server["base"], ablation["experiment_id"], run.info.run_id, "figures/cell.png")
    _open(browser, url, "cell.png")

    def figure_shown(driver):
        return [img for img in driver.find_elements(By.TAG_NAME, "img")
                if driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == size]

    assert WebDriverWait(browser, PAGE_TIMEOUT_S).until(figure_shown)


def test_rest_api_shows_the_ablation_layout(ablation, ablation_server):
    base, exp, result = ablation_server["base"], ablation["experiment_id"], ablation["result"]
    runs = _rest(base, "runs/search", {"experiment_ids": [exp], "max_results": 1000})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    children = {rid for rid, t in tags.items() if layout.PARENT_TAG in t}
    assert {tags[rid][layout.PARENT_TAG] for rid in children} == {result.run_id}  # nothing nested deeper
    study = tags[result.run_id]
    assert study[layout.ROLE_TAG] == layout.ROLE_STUDY
    h1 = result.hypotheses["decoders"]["ridge"]["H1"]
    assert study[f"{layout.VERDICT_TAG_PREFIX}ridge.H1"] == (
        f"direction: {h1['direction']}; roadmap magnitude: {h1['magnitude']}")
    files = {f["path"] for f in _rest(base, f"artifacts/list?run_id={result.run_id}")["files"]}
    assert {"report", "hypotheses.json"} <= files
    records = {f"subj01/ridge/{r['cell']['configuration']}": r for r in result.records}
    for name, run in ablation["cells"].items():
        full = _rest(base, f"runs/get?run_id={run.info.run_id}")["run"]
        params = {p["key"]: p["value"] for p in full["data"]["params"]}
        assert params["configuration"] == records[name]["cell"]["configuration"] and "decoder.alphas" in params
        assert not [k for k in params if k.startswith(("versions.", "seed.", "key"))]
        run_tags = {t["key"]: t["value"] for t in full["data"]["tags"]}
        assert run_tags[layout.CACHE_KEY_TAG] == records[name]["key"] and layout.VERSIONS_TAG in run_tags
        metrics = {m["key"]: m["value"] for m in full["data"]["metrics"]}
        assert metrics["imagery/cosine_ci_low"] <= metrics["imagery/cosine"] <= metrics["imagery/cosine_ci_high"]
        assert {d["dataset"]["name"] for d in full["inputs"]["dataset_inputs"]} == {"trial_index", "split_manifest"}
        # the run lasts the cell's whole work (training, adaptation, evaluation): the seconds it recorded
        duration = int(full["info"]["end_time"]) - int(full["info"]["start_time"])
        assert abs(duration - records[name]["seconds"] * 1000) < 50, (duration, records[name]["seconds"])
    models = _rest(base, "logged-models/search", {"experiment_ids": [exp], "max_results": 100})["models"]
    sources = {}
    for model in models:
        assert model["info"]["status"] == "LOGGED_MODEL_READY"
        sources.setdefault(model["info"]["source_run_id"], []).append(model["info"]["name"])
    cell_ids = {r.info.run_id: name for name, r in ablation["cells"].items()}
    named = {cell_ids[rid]: sorted(names) for rid, names in sources.items()}
    assert named["subj01/ridge/perception_only"] == ["decoder"]
    assert named["subj01/ridge/mixed"] == [f"decoder_fold{k}" for k in range(3)]
    assert named["subj01/ridge/adapter_linear"] == [f"adapted_fold{k}" for k in range(3)]
    curves = _rest(base, f"metrics/get-history?run_id={ablation['cells']['subj01/ridge/adapter_linear'].info.run_id}"
                         "&metric_key=fold0/val_cosine")["metrics"]
    assert len(curves) >= 1 and sorted(m["step"] for m in curves) == list(range(len(curves)))
