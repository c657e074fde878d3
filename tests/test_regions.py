"""Regions of interest and voxel selection (fmri2img.data.regions, the beta cache's voxel union).

The ROI files here are written by hand on the tiny world's grid, with some labelled voxels outside
nsdgeneral (as in the real release, where the streams reach beyond it), so the cache's voxel union,
the label codes, the label tables, unions, selection by ncsnr and the reuse of the cache are checked
against values computed directly from the files.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _world import TINY
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.errors import ConfigError, InputError, MismatchError, MissingInputError
from fmri2img.data import betas, nsd, nsd_constants, regions
from fmri2img.data.index import build_index
from fmri2img.data.schema import read_index
from fmri2img.embeddings.cache import synthetic_truth_set
from fmri2img.evaluation.scoring import EvalOptions
from fmri2img.sim.formats import write_nifti
from fmri2img.sim.world import WorldShape, write_world
from fmri2img.stages.ablation.executor import run_ablation
from fmri2img.stages.ablation.matrix import AblationConfig

SUBJ = "subj01"
runner = CliRunner()


def _labels(nsdgeneral: np.ndarray, brain: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """prf-visualrois, streams and ncsnr volumes: the nsdgeneral voxels split by y into early (V1,
    V2, V3 split by z into v/d) and ventral, plus a slab of brain voxels outside nsdgeneral labelled
    'parietal'; ncsnr random (seeded) inside nsdgeneral, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    inside = nsdgeneral == 1
    y = np.indices(inside.shape)[1]
    z = np.indices(inside.shape)[2]
    y_cut = np.quantile(y[inside], [0.15, 0.3, 0.45])
    visual = np.where(brain > 0, 0, -1).astype(np.int16)
    streams = visual.copy()
    early = inside & (y <= y_cut[2])
    streams[early] = 1
    streams[inside & ~early] = 5
    ventral_half = z < np.median(z[inside])
    for k, (lo, hi) in enumerate(((-1, y_cut[0]), (y_cut[0], y_cut[1]), (y_cut[1], y_cut[2]))):
        band = inside & (y > lo) & (y <= hi)
        visual[band & ventral_half] = 2 * k + 1
        visual[band & ~ventral_half] = 2 * k + 2
    outside = (brain > 0) & ~inside & (y >= np.quantile(y[brain > 0], 0.9))
    streams[outside] = 7
    ncsnr = np.zeros(inside.shape, dtype=np.float32)
    ncsnr[inside] = rng.uniform(0.05, 1.2, int(inside.sum())).astype(np.float32)
    return visual, streams, ncsnr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    data, cache = root / "data", root / "cache"
    write_world(data, subjects=(SUBJ,), scale=WorldShape(**TINY), seed=0, progress=False)
    mask = np.asarray(nib.load(data / nsd_constants.NSDGENERAL.format(subject=SUBJ)).dataobj)
    brain = np.asarray(nib.load(data / nsd_constants.BRAINMASK.format(subject=SUBJ)).dataobj)
    visual, streams, ncsnr = _labels(mask, brain)
    write_nifti(data / nsd_constants.PRF_VISUALROIS.format(subject=SUBJ), visual)
    write_nifti(data / nsd_constants.STREAMS.format(subject=SUBJ), streams)
    write_nifti(data / nsd_constants.NCSNR.format(subject=SUBJ), ncsnr)
    index = build_index(SUBJ, data, cache, output=cache / "indices" / f"{SUBJ}.parquet",
                        manifest_dir=root / "manifests", progress=False)
    synthetic_truth_set(data, cache)
    return {"root": root, "data": data, "cache": cache, "index": index, "mask": mask == 1,
            "visual": visual, "streams": streams, "ncsnr": ncsnr}


# ----------------------------------------------------------------------------- names and selections


def test_region_names_unions_and_errors():
    assert regions.parse_region("V3+V1") == "V1+V3" == regions.parse_region("V1+V3+V1")
    assert regions.parse_region(" ventral ") == "ventral"
    with pytest.raises(ConfigError, match=r"Unknown region 'V9'.*nsdgeneral, V1, V2"):
        regions.parse_region("V1+V9")
    assert regions.tag("nsdgeneral", "all") == ""
    assert regions.tag("V3+V1", "top-50") == "V1+V3__top-50"
    assert regions.tag("ventral", "ncsnr >= 0.2") == "ventral__ncsnrge0.2"


@pytest.mark.parametrize("text, expected", [("all", ("all", None)), ("ncsnr>=0.25", ("threshold", 0.25)),
                                            ("ncsnr >= 1", ("threshold", 1.0)), ("top-300", ("top", 300))])
def test_selection_grammar(text, expected):
    spec = regions.parse_selection(text)
    assert (spec.method, spec.value) == expected


@pytest.mark.parametrize("text", ["top-0", "top--3", "ncsnr>0.2", "best", "ncsnr>=-1", ""])
def test_bad_selection_names_the_grammar(text):
    with pytest.raises(ConfigError, match="expected 'all', 'ncsnr>=T'"):
        regions.parse_selection(text)


def test_label_table_reads_codes_names_and_ignores_colours(tmp_path):
    path = tmp_path / "streams.mgz.ctab"
    path.write_text("# NSD streams\n0 Unknown 0 0 0 0\n1 early 255 0 0 0\n\n5  ventral\n")
    assert regions.read_label_table(path) == {1: "early", 5: "ventral"}
    path.write_text("x early\n")
    with pytest.raises(InputError, match="line 1: 'x' is not a label code"):
        regions.read_label_table(path)


def test_noise_ceiling_formula():
    # NC(n) = 100 ncsnr^2 / (ncsnr^2 + 1/n) [Allen et al. 2022]: ncsnr 1 -> 50% (1 trial), 75% (3 trials)
    np.testing.assert_allclose(regions.noise_ceiling(np.array([0.0, 1.0]), 1), [0.0, 50.0])
    np.testing.assert_allclose(regions.noise_ceiling(np.array([1.0, 2.0]), 3), [75.0, 100 * 4 / (4 + 1 / 3)])
    with pytest.raises(InputError):
        regions.noise_ceiling(np.ones(2), 0)


# ----------------------------------------------------------------------------- the cache's voxels


def _direct(world, rel: str, voxel_mask: np.ndarray) -> np.ndarray:
    """Betas of ``voxel_mask``'s voxels (C order) read straight from the NIfTI file, in psc."""
    vol = np.asarray(nib.load(world["data"] / rel).dataobj)
    return (vol[voxel_mask].T / nsd_constants.BETA_SCALE).astype(np.float32)


def test_cache_holds_the_union_and_each_voxels_labels(world):
    index = read_index(world["index"])
    folder = betas.index_cache_dir(world["cache"], index)
    union = world["mask"] | (world["visual"] > 0) | (world["streams"] > 0)
    assert (union & ~world["mask"]).sum() > 0  # the parietal slab lies outside nsdgeneral
    voxels = np.load(folder / "voxels.npy")
    np.testing.assert_array_equal(voxels, np.argwhere(union))
    table = betas.voxel_table(folder)
    ijk = tuple(voxels.T.astype(int))
    np.testing.assert_array_equal(table.labels[:, 1], world["visual"][ijk])
    np.testing.assert_array_equal(table.labels[:, 2], world["streams"][ijk])
    np.testing.assert_array_equal(table.ncsnr, world["ncsnr"][ijk])
    assert table.names["prf-visualrois"] == nsd_constants.PRF_VISUALROIS_CODES  # no ctab: the published codes


@pytest.mark.parametrize("region, codes", [("V1", {"visual": (1, 2)}), ("V1+V3", {"visual": (1, 2, 5, 6)}),
                                           ("early", {"streams": (1,)}), ("parietal", {"streams": (7,)}),
                                           ("nsdgeneral", {}), ("V2+ventral", {"visual": (3, 4), "streams": (5,)})])
def test_region_columns_are_the_labelled_voxels(world, region, codes):
    index = read_index(world["index"])
    view = regions.restrict(index, region)
    wanted = world["mask"].copy() if region == "nsdgeneral" else np.zeros_like(world["mask"])
    for key, values in codes.items():
        wanted |= np.isin(world[key], values)
    session = index["beta_file"].iloc[0]
    rows = np.flatnonzero((index["beta_file"] == session).to_numpy())[:20]
    X = betas.load_betas(view, world["cache"], rows=rows, zscore=False)
    volumes = index["beta_volume"].to_numpy()[rows]
    np.testing.assert_allclose(X, _direct(world, session, wanted)[volumes], rtol=0, atol=1e-6)
    Xz = betas.load_betas(view, world["cache"], rows=rows)  # z-scored: a column subset of all voxels' z-scores
    full = betas.load_betas(regions.restrict(index, "nsdgeneral+V1+V2+V3+early+ventral+parietal"), world["cache"],
                            rows=rows)
    union = world["mask"] | (world["visual"] > 0) | (world["streams"] > 0)
    np.testing.assert_array_equal(Xz, full[:, wanted[union]])


def test_selection_by_ncsnr(world):
    index = read_index(world["index"])
    folder = betas.index_cache_dir(world["cache"], index)
    table = betas.voxel_table(folder)
    early = table.labels[:, 2] == 1
    top = betas.region_columns(regions.restrict(index, "early", "top-10"), folder)
    assert len(top) == 10 and early[top].all()
    assert table.ncsnr[top].min() >= np.sort(table.ncsnr[early])[-10]
    above = betas.region_columns(regions.restrict(index, "early", "ncsnr>=0.6"), folder)
    np.testing.assert_array_equal(above, np.flatnonzero(early & (table.ncsnr >= 0.6)))
    info = betas.region_info(regions.restrict(index, "early", "top-10"), world["cache"])
    assert info["n_voxels"] == 10 and info["median_ncsnr"] == pytest.approx(float(np.median(table.ncsnr[top])))
    nc3 = 100 * table.ncsnr[top] ** 2 / (table.ncsnr[top] ** 2 + 1 / 3)
    assert info["median_noise_ceiling_3trial_pct"] == pytest.approx(float(np.median(nc3)), rel=1e-6)
    with pytest.raises(InputError, match="asks for 100000 voxels but region 'early' has"):
        betas.region_columns(regions.restrict(index, "early", "top-100000"), folder)
    with pytest.raises(InputError, match="keeps no voxel of region 'early'"):
        betas.region_columns(regions.restrict(index, "early", "ncsnr>=50"), folder)


def test_a_region_without_voxels_is_one_clear_error(world):
    index = read_index(world["index"])
    with pytest.raises(InputError, match=r"Region 'hV4' has no voxels for subj01"):
        betas.load_betas(regions.restrict(index, "hV4"), world["cache"], rows=np.arange(3))


def test_adding_a_region_reads_no_session_again(world, tmp_path):
    """A new region (and a new selection) is a column subset of the cache: with every beta file of the
    release moved away, training on it still works, and rebuilding the index rebuilds nothing."""
    from fmri2img.stages.train import TrainConfig, train_decoder

    again = build_index(SUBJ, world["data"], world["cache"], output=world["index"],
                        manifest_dir=world["root"] / "manifests", progress=False)
    assert again == world["index"]
    betas_dir = world["data"] / nsd_constants.BETAS_DIR.format(subject=SUBJ)
    imagery_dir = world["data"] / f"nsddata_betas/ppdata/{SUBJ}/func1pt8mm/nsdimagerybetas_fithrf_GLMdenoise_RR"
    hidden = tmp_path / "hidden"
    moved = []
    try:
        for folder in (betas_dir, imagery_dir):
            for path in sorted(folder.glob("betas_*")):
                target = hidden / path.relative_to(world["data"])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
                moved.append((target, path))
        assert moved
        result = train_decoder(world["index"], tmp_path / "ckpt", TrainConfig(region="V2+V1", voxel_selection="top-20"),
                               cache_root=world["cache"], progress=False, track=False)
    finally:
        for target, path in moved:
            shutil.move(target, path)
    meta = result.metadata
    assert (meta["region"], meta["voxel_selection"], meta["n_voxels"]) == ("V1+V2", "top-20", 20)
    assert meta["region_info"]["n_voxels"] == 20


def test_rebuilding_with_unchanged_inputs_rebuilds_nothing(world):
    index = read_index(world["index"])
    cache = betas.build_beta_cache(SUBJ, world["data"], world["cache"], list(dict.fromkeys(index["beta_file"])),
                                   index.attrs["sources"], progress=False)
    assert cache.rebuilt == [] and cache.path == betas.index_cache_dir(world["cache"], index)


def test_roi_file_on_another_grid_fails_at_index_time(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    write_nifti(data / nsd_constants.NCSNR.format(subject=SUBJ), np.zeros((4, 5, 6), dtype=np.float32))
    with pytest.raises(MismatchError, match=r"ncsnr.nii.gz has grid \(4, 5, 6\); expected \(10, 12, 10\)"):
        build_index(SUBJ, data, tmp_path / "cache", output=tmp_path / "i.parquet", manifest_dir=tmp_path / "m",
                    progress=False)


def test_missing_atlas_is_named(tmp_path):
    table = regions.VoxelTable(labels=np.array([[1, regions.ABSENT_LABEL, regions.ABSENT_LABEL]], dtype=np.int16),
                               ncsnr=None, names={}, source="cache/x")
    with pytest.raises(MissingInputError, match="Region 'V1' needs .*prf-visualrois.nii.gz"):
        regions.select_voxels(table, "V1", "all", SUBJ)
    with pytest.raises(MissingInputError, match="needs .*ncsnr.nii.gz"):
        regions.select_voxels(table, "nsdgeneral", "top-1", SUBJ)


def test_cli_rejects_an_unknown_region_in_one_line(world, tmp_path):
    result = runner.invoke(app, ["train", "--index", str(world["index"]), "--region", "V7",
                                 "--cache-root", str(world["cache"]), "--output-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and "Unknown region 'V7'" in lines[0] and "ventral" in lines[0]
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- the ablation's region axis


def test_ablation_region_axis_and_adding_a_region(world, tmp_path, tracking_uri, monkeypatch):
    """Cells per region with their own folders, keys, MLflow tags and table rows; the report compares
    the regions and the figure shows them; adding a region reruns only its cells and reads no beta file."""
    cfg = AblationConfig(
        subjects=(SUBJ,), decoders=("ridge",), configurations=("perception_only",), regions=("nsdgeneral",),
        data_root=str(world["data"]), cache_root=str(world["cache"]), index_dir=str(tmp_path / "indices"),
        manifest_dir=str(world["root"] / "manifests"), checkpoint_root=str(tmp_path / "ckpt"),
        output_root=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"), synthesize=False,
        eval=EvalOptions(n_boot=50, n_perm=50), figures=False)
    first = run_ablation(cfg, jobs=1, tracking_uri=tracking_uri, progress=False)
    assert [r["skipped"] for r in first.records] == [False]

    def no_reading(*args, **kwargs):
        raise AssertionError("a beta file was read again")

    monkeypatch.setattr(nsd, "read_masked_betas", no_reading)
    wider = dataclasses.replace(cfg, regions=("V3+V2+V1", "ventral", "nsdgeneral"), figures=True)
    result = run_ablation(wider, jobs=1, tracking_uri=tracking_uri, progress=False)
    by_region = {r["cell"]["region"]: r for r in result.records}
    assert sorted(by_region) == ["V1+V2+V3", "nsdgeneral", "ventral"]
    assert by_region["nsdgeneral"]["skipped"] and not by_region["ventral"]["skipped"]
    assert not by_region["V1+V2+V3"]["skipped"]
    sdir = tmp_path / "out" / SUBJ
    assert (sdir / "eval" / "ridge__perception_only__ventral" / "metrics.json").is_file()
    assert (tmp_path / "ckpt" / "ridge" / SUBJ / "region-V1+V2+V3" / "best.pt").is_file()
    counts = {r: by_region[r]["region_info"]["n_voxels"] for r in by_region}
    assert counts["V1+V2+V3"] == int(np.isin(world["visual"], range(1, 7)).sum())
    assert counts["ventral"] == int((world["streams"] == 5).sum())
    table = pd.read_csv(sdir / "results_table.csv", keep_default_na=False)
    assert set(table.loc[~table["configuration"].str.startswith("baseline_"), "region"]) == set(by_region)
    hyp = json.loads((tmp_path / "out" / "summary" / "hypotheses.json").read_text())
    assert hyp["region"]["name"] == "nsdgeneral"
    comparison = hyp["regions"]["decoders"]["ridge"]
    assert set(comparison["h1_ratio"]) == set(by_region) and comparison["largest"] in by_region
    est = {r: comparison["h1_ratio"][r]["population"]["estimate"] for r in by_region}
    assert comparison["largest"] == max(est, key=est.get)
    report = (tmp_path / "out" / "summary" / "report.md").read_text()
    assert "## Regions: where does imagery transfer?" in report and "imagery transfer is largest in" in report
    assert (tmp_path / "out" / "summary" / "figures" / "h1_ratio_by_region.png").is_file()
    client = MlflowClient(tracking_uri)
    run = client.get_run(by_region["ventral"]["mlflow_run_id"])
    assert run.data.tags["region"] == "ventral" and run.data.params["region"] == "ventral"


def test_figures_of_a_study_with_regions_name_the_region_they_show(tmp_path):
    from fmri2img.stages.report import make_figures

    rows = []
    for region, value in (("nsdgeneral", 0.5), ("ventral", 0.7)):
        for test_set in ("shared1000", "imagery"):
            rows.append({"subject": SUBJ, "decoder": "ridge", "configuration": "perception_only", "region": region,
                         "voxel_selection": "all", "test_set": test_set, "stimulus_type": "all", "metric": "cosine",
                         "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "chance": "", "n": 10,
                         "p_value": "", "p_holm": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "results_table.csv", index=False)
    make_figures(tmp_path, tmp_path / "figures", formats=("png",), main_metric="cosine")
    captions = (tmp_path / "figures" / "captions.md").read_text()
    assert "show region nsdgeneral (2 regions in the study" in captions
    assert "| 0.70" not in (tmp_path / "figures" / "table_formatted.md").read_text()  # only the primary region
