"""Regions of interest of the synthetic world (issue 23): NSD's prf-visualrois / streams label volumes and
tables inside nsdgeneral, the planted ncsnr, the per-voxel signal gain and the region-dependent imagery gain,
each re-read from the written files (nibabel, scipy.io, text) and checked against truth/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io as sio
import yaml

from fmri2img.core.errors import InputError
from fmri2img.data import nsd_constants, nsd_imagery_release
from fmri2img.sim import anatomy, world
from fmri2img.sim import model as sim_model
from fmri2img.sim.imagery_effects import STREAM_IMAGERY_EXPONENTS, UNLABELLED_IMAGERY_EXPONENT

#: The smallest shape the other tests use (tests/_world.py TINY), with small images.
TINY = world.WorldShape(grid=(10, 12, 10), n_mask_voxels=300, n_sessions=1, n_shared=30, image_size=16)
SUBJECT = "subj01"
#: Little noise and no session drift: the planted gains show in the betas of a tiny world.
QUIET = sim_model.GeneratorParams(noise_sd=0.5, session_gain_sd=0.0, session_offset_sd=0.0)
LABELS = {"prf-visualrois": (nsd_constants.PRF_VISUALROIS, nsd_constants.PRF_VISUALROIS_CTAB,
                             nsd_constants.PRF_VISUALROIS_CODES),
          "streams": (nsd_constants.STREAMS, nsd_constants.STREAMS_CTAB, nsd_constants.STREAMS_CODES)}
IMAGERY_BETAS = nsd_constants.IMAGERY_BETAS_IN.format(
    subject="{subject}", variant=nsd_constants.IMAGERY_GLM_VARIANTS[0], ext="nii.gz")


def _load(root: Path, template: str, **kw) -> np.ndarray:
    return np.asarray(nib.load(root / template.format(subject=SUBJECT, **kw)).dataobj)


def _params(root: Path) -> dict:
    return json.loads((root / "truth" / "params.json").read_text())


def _streams(root: Path) -> np.ndarray:
    """streams codes of the nsdgeneral voxels, C order (rows of G)."""
    return _load(root, nsd_constants.STREAMS)[_load(root, nsd_constants.NSDGENERAL) == 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regions") / "world"
    world.write_world(root, subjects=(SUBJECT,), scale=TINY, progress=False)
    return root


@pytest.fixture(scope="module")
def quiet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quiet") / "world"
    world.write_world(root, subjects=(SUBJECT,), scale=TINY, params=QUIET, progress=False)
    return root


def test_label_codes_are_all_present_and_only_inside_nsdgeneral(tiny):
    roi = _load(tiny, nsd_constants.NSDGENERAL)
    for name, (volume, _, codes) in LABELS.items():
        img = nib.load(tiny / volume.format(subject=SUBJECT))
        labels = np.asarray(img.dataobj)
        assert labels.dtype == np.int16 and labels.shape == TINY.grid, name
        assert np.allclose(img.affine, nib.load(tiny / nsd_constants.NSDGENERAL.format(subject=SUBJECT)).affine)
        assert set(np.unique(labels)) == {-1, 0, *codes}, name
        assert np.array_equal(labels == -1, roi == -1), name  # -1 exactly outside the brain
        assert (roi[labels > 0] == 1).all(), name  # every label inside nsdgeneral
    unlabelled = (_streams(tiny) == 0).mean()
    assert 0 < unlabelled < 0.1  # a few percent of nsdgeneral in no stream


def test_anatomy_early_posterior_ventral_inferior(tiny):
    roi = _load(tiny, nsd_constants.NSDGENERAL) == 1
    _, y, z = np.nonzero(roi)
    streams, visual = _streams(tiny), _load(tiny, nsd_constants.PRF_VISUALROIS)[roi]
    s = {n: streams == c for c, n in nsd_constants.STREAMS_CODES.items()}
    v = {n: visual == c for c, n in nsd_constants.PRF_VISUALROIS_CODES.items()}
    assert y[s["early"]].mean() < y[s["midventral"]].mean() < y[s["ventral"]].mean()  # posterior -> anterior
    assert y[v["V1v"] | v["V1d"]].mean() < y[v["V2v"] | v["V2d"]].mean() < y[v["V3v"] | v["V3d"]].mean()
    for area in ("V1", "V2", "V3"):
        assert z[v[area + "v"]].mean() < z[v[area + "d"]].mean()  # ventral = inferior
    assert z[s["ventral"]].mean() < z[s["lateral"]].mean() < z[s["parietal"]].mean()
    early_areas = np.isin(visual, [1, 2, 3, 4, 5, 6])
    assert np.array_equal(early_areas, s["early"])  # V1-V3 = the early stream
    assert s["midventral"][v["hV4"]].all() and y[v["hV4"]].mean() < y[s["midventral"] & ~v["hV4"]].mean()


def test_label_tables_parse_to_the_codes(tiny):
    for name, (_, ctab, codes) in LABELS.items():
        lines = (tiny / ctab.format(subject=SUBJECT)).read_text().splitlines()
        parsed = {int(code): label for code, label in (line.split() for line in lines)}
        assert lines[0] == "0 Unknown" and parsed == {0: "Unknown", **codes}, name


def test_ncsnr_file_is_the_planted_reliability(tiny):
    img = nib.load(tiny / nsd_constants.NCSNR.format(subject=SUBJECT))
    ncsnr, roi = np.asarray(img.dataobj), _load(tiny, nsd_constants.NSDGENERAL) == 1
    assert ncsnr.dtype == np.float32 and ncsnr.shape == TINY.grid
    assert not ncsnr[~roi].any() and (ncsnr[roi] > 0).all()
    # recompute: sd over the subject's images of a (G e)_v / noise_sd, from truth/ and nsd_expdesign.mat
    images = sio.loadmat(tiny / nsd_constants.EXPDESIGN)["subjectim"][0].astype(int) - 1
    ids = {s: i for i, s in enumerate(json.loads((tiny / "truth" / "stimulus_ids.json").read_text()))}
    latents = np.load(tiny / "truth" / "latents.npy")[[ids[f"nsd-{i:05d}"] for i in images]].astype(np.float64)
    G = np.load(tiny / "truth" / f"G_{SUBJECT}.npy").astype(np.float64)
    gp = sim_model.GeneratorParams()
    planted = (gp.amplitude * latents @ G.T).std(axis=0) / gp.noise_sd
    np.testing.assert_allclose(ncsnr[roi], planted, rtol=1e-4)
    summary = _params(tiny)["planted_effects"]["perception_reliability"][SUBJECT]
    assert summary["median_ncsnr"] == pytest.approx(np.median(planted), rel=1e-4)


def test_voxel_gain_is_log_normal_with_unit_mean_square(tiny):
    roi = _load(tiny, nsd_constants.NSDGENERAL) == 1
    gp = sim_model.GeneratorParams()
    G = np.load(tiny / "truth" / f"G_{SUBJECT}.npy").astype(np.float64)
    G0 = sim_model.make_encoding(roi, gp, _params(tiny)["seed"], SUBJECT).astype(np.float64)
    q = (G * G0).sum(axis=1) / (G0 * G0).sum(axis=1)  # G = q G0 row by row
    np.testing.assert_allclose(G, q[:, None] * G0, rtol=1e-5, atol=1e-6)
    assert np.mean(q**2) == pytest.approx(1.0, rel=1e-5)
    assert np.log(q).std() == pytest.approx(gp.voxel_gain_sd, rel=1e-4)
    ncsnr = _load(tiny, nsd_constants.NCSNR)[roi]
    assert np.quantile(ncsnr, 0.9) > 2 * np.quantile(ncsnr, 0.1)  # voxels differ in reliability
    same = anatomy.voxel_gain(TINY.grid, roi, 0.0, np.random.default_rng(0))
    assert np.array_equal(same, np.ones(roi.sum(), dtype=np.float32))  # voxel_gain_sd 0: all equal


def test_thresholding_ncsnr_selects_reliable_voxels(quiet):
    """Voxels of high written ncsnr repeat their response to an image better (split-half over repeats)."""
    roi = _load(quiet, nsd_constants.NSDGENERAL) == 1
    X = _load(quiet, nsd_constants.BETAS_NII, session=1)[roi].T.astype(float)  # (750, n_roi)
    shown = sio.loadmat(quiet / nsd_constants.EXPDESIGN)["masterordering"].ravel()[:len(X)]
    order = np.argsort(shown, kind="stable")  # each image's 3 repeats next to each other
    reps = X[order].reshape(-1, nsd_constants.MAX_REPEATS, X.shape[1])
    a, b = reps[:, 0] - reps[:, 0].mean(0), reps[:, 1] - reps[:, 1].mean(0)
    reliability = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    ncsnr = _load(quiet, nsd_constants.NCSNR)[roi]
    top = ncsnr >= np.median(ncsnr)
    assert reliability[top].mean() > reliability[~top].mean() + 0.1
    assert np.corrcoef(ncsnr, reliability)[0, 1] > 0.5


def test_imagery_gain_per_stream_and_its_truth(tiny):
    w = np.load(tiny / "truth" / f"imagery_gain_{SUBJECT}.npy")
    streams = _streams(tiny)
    assert w.dtype == np.float32 and w.shape == (TINY.n_mask_voxels,)
    assert np.mean(w.astype(float) ** 2) == pytest.approx(1.0, rel=1e-5)
    s = sim_model.GeneratorParams().imagery_strength
    names = {c: n for c, n in nsd_constants.STREAMS_CODES.items()}
    k = np.array([STREAM_IMAGERY_EXPONENTS[names[c]] if c else UNLABELLED_IMAGERY_EXPONENT for c in streams])
    np.testing.assert_allclose(w, s**k / np.sqrt(np.mean(s ** (2 * k))), rtol=1e-6)
    per_stream = {n: w[streams == c].mean() for c, n in names.items()}
    assert per_stream["early"] < per_stream["midventral"] < per_stream["ventral"]
    regions = _params(tiny)["regions"]
    for name, gain in per_stream.items():
        assert regions["imagery_gain_per_stream"][name] == pytest.approx(float(gain), rel=1e-6)
    assert regions["stream_imagery_exponents"]["early"] == STREAM_IMAGERY_EXPONENTS["early"]
    assert regions["voxel_gain_sd"] == sim_model.GeneratorParams().voxel_gain_sd
    counts = regions["label_counts"][SUBJECT]["streams"]
    assert counts == {n: int((streams == c).sum()) for c, n in names.items()}
    assert "ventral/lateral/parietal > mid > early" in _params(tiny)["planted_effects"]["regions"]


def test_null_world_has_no_region_effect(tmp_path):
    root = tmp_path / "null"
    world.write_world(root, subjects=(SUBJECT,), scale=TINY, null=True, progress=False)
    assert np.array_equal(np.load(root / "truth" / f"imagery_gain_{SUBJECT}.npy"), np.ones(TINY.n_mask_voxels))
    assert set(_params(root)["regions"]["imagery_gain_per_stream"].values()) == {1.0}
    streams = np.repeat(np.arange(8), 5).astype(np.int16)
    assert np.array_equal(anatomy.imagery_gain(streams, 1.0), np.ones(len(streams)))  # strength 1 == null


def _slope(X: np.ndarray, P: np.ndarray) -> float:
    """Pooled least-squares slope of betas on planted signal, each voxel centred (removes session offsets)."""
    X, P = X - X.mean(0), P - P.mean(0)
    return float((X * P).sum() / (P * P).sum())


def test_imagery_betas_carry_the_region_gain(quiet):
    """Per stream, imagery betas regressed on the planted (ungained) imagery signal give w, vision betas 1."""
    roi = _load(quiet, nsd_constants.NSDGENERAL) == 1
    X = _load(quiet, IMAGERY_BETAS)[roi].T / nsd_constants.BETA_SCALE  # (720, n_roi)
    trials = nsd_imagery_release.index_frame(nsd_imagery_release.read_release(quiet, SUBJECT, progress=False))
    truth = _params(quiet)
    ids = {s: i for i, s in enumerate(json.loads((quiet / "truth" / "stimulus_ids.json").read_text()))}
    stim_ids = [s["stimulus_id"] for s in truth["imagery_stimuli"]]
    lat = np.load(quiet / "truth" / "latents.npy")[[ids[s] for s in stim_ids]].astype(float)
    resid = np.load(quiet / "truth" / "imagery_residuals.npy").astype(float)
    offsets = dict(zip("ABC", np.load(quiet / "truth" / "imagery_offsets.npy").astype(float)))
    imagined = []
    for i, stim in enumerate(truth["imagery_stimuli"]):
        eff = truth["planted_effects"]["imagery"][stim["stim_set"]]
        g, r = eff["gamma"], eff["rho"]
        imagined.append(g * (r * lat[i] + np.sqrt(1 - r**2) * resid[i]) + offsets[stim["stim_set"]])
    row = trials["stimulus_id"].map({s: i for i, s in enumerate(stim_ids)}).to_numpy()
    G = np.load(quiet / "truth" / f"G_{SUBJECT}.npy").astype(float)
    w, streams = np.load(quiet / "truth" / f"imagery_gain_{SUBJECT}.npy"), _streams(quiet)
    ratio = {}
    for task, content in (("imagery", np.array(imagined)), ("vision", lat)):
        m = (trials["task"] == task).to_numpy()
        P = QUIET.amplitude * content[row[m]] @ G.T
        for code, name in nsd_constants.STREAMS_CODES.items():
            ratio.setdefault(name, {})[task] = _slope(X[m][:, streams == code], P[:, streams == code])
    for code, name in nsd_constants.STREAMS_CODES.items():
        assert ratio[name]["vision"] == pytest.approx(1.0, abs=0.05), name
        assert ratio[name]["imagery"] == pytest.approx(float(w[streams == code][0]), abs=0.1), name
    assert ratio["early"]["imagery"] < ratio["midventral"]["imagery"] < ratio["ventral"]["imagery"]


def _calibrate_shape() -> world.WorldShape:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "projects/imagery/configs/calibrate.yaml").read_text())
    return world.WorldShape(grid=tuple(cfg["grid"]), n_mask_voxels=cfg["n_mask_voxels"], n_sessions=2, n_shared=50)


@pytest.mark.parametrize("shape", [
    world.SCALES["demo"], _calibrate_shape(), TINY,
    world.WorldShape(grid=(8, 9, 7), n_mask_voxels=120, n_sessions=2, n_shared=12),  # tests/test_index.py
], ids=["demo", "calibrate", "tiny", "index-test"])
def test_every_label_for_the_shapes_in_use(shape):
    for subject in ("subj01", "subj08"):
        nsdgeneral, _ = sim_model.make_masks(shape.grid_of(subject), shape.n_mask_voxels, 0, subject)
        anat = anatomy.make_anatomy(nsdgeneral, sim_model.GeneratorParams(), np.random.default_rng(0))
        assert set(np.unique(anat.streams)) >= set(nsd_constants.STREAMS_CODES)
        assert set(np.unique(anat.visualrois)) >= set(nsd_constants.PRF_VISUALROIS_CODES)


def test_a_grid_too_small_for_every_label_is_refused(tmp_path):
    shape = dataclasses.replace(TINY, n_mask_voxels=10)
    with pytest.raises(InputError, match=r"n_mask_voxels=10 is too small .*hV4.*expected n_mask_voxels >= \d+") as err:
        world.write_world(tmp_path / "w", subjects=(SUBJECT,), scale=shape, progress=False)
    assert not (tmp_path / "w").exists()
    enough = int(str(err.value).rsplit(">= ", 1)[1].rstrip("."))  # the size the message asks for is enough
    with pytest.raises(InputError, match="too small"):
        anatomy.check_label_room(enough - 1)
    nsdgeneral, _ = sim_model.make_masks(TINY.grid, enough, 0, SUBJECT)
    anat = anatomy.make_anatomy(nsdgeneral, sim_model.GeneratorParams(), np.random.default_rng(0))
    assert set(np.unique(anat.streams)) >= set(nsd_constants.STREAMS_CODES)
    assert set(np.unique(anat.visualrois)) >= set(nsd_constants.PRF_VISUALROIS_CODES)
