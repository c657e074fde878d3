"""The synthetic NSD world: files re-read with the libraries a real user would use (nibabel,
h5py, scipy.io, pandas, PIL), planted truth recoverable, determinism, atomicity, the CLI and
its MLflow run, and the calibration regime of the defaults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io as sio
import typer
from PIL import Image
from typer.testing import CliRunner

from fmri2img.cli import synth as synth_cli
from fmri2img.core.constants import DEFAULT_WORLD_SEED
from fmri2img.core.errors import InputError, OutputError
from fmri2img.data import nsd_constants, nsd_imagery_release
from fmri2img.sim import model as sim_model
from fmri2img.sim import world
from fmri2img.sim.shape import SYNTH_IMAGE_SIZE

#: A tiny world: 2 design sessions (500 images per subject, 50 shared), 300 ROI voxels.
TINY = world.WorldShape(grid=(12, 14, 12), n_mask_voxels=300, n_sessions=2, n_shared=50, image_size=16)
SUBJECTS = ("subj01", "subj05")


def _sha_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


IMAGERY_BETAS = nsd_constants.IMAGERY_BETAS_IN.replace("{variant}", nsd_constants.IMAGERY_GLM_VARIANTS[0]).replace(
    "{ext}", "nii.gz")


def _imagery_table(root: Path, subject: str) -> pd.DataFrame:
    """The release mapping of the world's 720 imagery betas (the reader is tested on its own fixture)."""
    return nsd_imagery_release.read_release(root, subject, progress=False).table


def _load(root: Path, template: str, **kw) -> np.ndarray:
    return np.asarray(nib.load(root / template.format(**kw)).dataobj)


def _truth(root: Path) -> tuple[np.ndarray, dict[str, int]]:
    latents = np.load(root / "truth" / "latents.npy", allow_pickle=False)
    ids = json.loads((root / "truth" / "stimulus_ids.json").read_text())
    return latents, {s: i for i, s in enumerate(ids)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "world"
    world.write_world(root, subjects=SUBJECTS, scale=TINY, beta_format="both", progress=False)
    return root


# ---------------------------------------------------------------------------- release files


def test_expdesign_and_stim_info_are_one_based_and_consistent(tiny):
    mat = sio.loadmat(tiny / nsd_constants.EXPDESIGN)
    mo, sim, shx = mat["masterordering"], mat["subjectim"], mat["sharedix"]
    assert mo.shape == (1, TINY.n_trials) and sim.shape == (8, TINY.images_per_subject)
    assert shx.shape == (1, TINY.n_shared)
    mo, sim, shx = mo.ravel().astype(int), sim.astype(int), shx.ravel().astype(int)
    # 1-based: masterordering indexes subjectim columns, each column shown exactly 3 times
    assert np.array_equal(np.bincount(mo - 1), np.full(TINY.images_per_subject, 3))
    info = pd.read_csv(tiny / nsd_constants.STIM_INFO)
    n_images = len(info)
    assert np.array_equal(info["nsdId"], np.arange(n_images))
    assert sim.min() >= 1 and sim.max() <= n_images and shx.min() >= 1
    # shared images come first in subjectim, in sharedix order, for every subject
    assert np.all(sim[:, :TINY.n_shared] == shx[None, :]) and np.all(np.diff(shx) > 0)
    assert set(info.index[info["shared1000"]]) == set(shx - 1)
    for subject in SUBJECTS:
        row = nsd_constants.subject_number(subject) - 1
        assert len(set(sim[row])) == TINY.images_per_subject  # no image twice in a subject
        shown = sim[row, mo - 1] - 1  # 0-based nsd id of each trial
        reps = info[[f"subject{row + 1}_rep{k}" for k in range(3)]].to_numpy()
        for trial, nsd_id in enumerate(shown, start=1):
            assert trial in reps[nsd_id]
        assert info[f"subject{row + 1}"].sum() == TINY.images_per_subject
    # the generated subjects' unique images are disjoint
    uniq = [set(sim[nsd_constants.subject_number(s) - 1, TINY.n_shared:]) for s in SUBJECTS]
    assert not uniq[0] & uniq[1]


def test_masks(tiny):
    for subject in SUBJECTS:
        img = nib.load(tiny / nsd_constants.NSDGENERAL.format(subject=subject))
        roi, brain = np.asarray(img.dataobj), _load(tiny, nsd_constants.BRAINMASK, subject=subject)
        assert roi.dtype == np.int16 and roi.shape == TINY.grid
        assert set(np.unique(roi)) == {-1, 0, 1}
        assert int((roi == 1).sum()) == TINY.n_mask_voxels
        assert np.array_equal(roi == -1, brain == 0)  # -1 exactly outside the brain
        assert np.allclose(img.affine, np.diag([1.8, 1.8, 1.8, 1.0]))
        G = np.load(tiny / "truth" / f"G_{subject}.npy")
        assert G.shape == (TINY.n_mask_voxels, 512) and G.dtype == np.float32


def test_betas_nifti_and_hdf5_twins(tiny):
    subject = "subj01"
    roi = _load(tiny, nsd_constants.NSDGENERAL, subject=subject)
    for session in (1, 2):
        img = nib.load(tiny / nsd_constants.BETAS_NII.format(subject=subject, session=session))
        assert img.get_data_dtype() == np.int16
        vol = np.asarray(img.dataobj)
        assert vol.dtype == np.int16 and vol.shape == (*TINY.grid, nsd_constants.TRIALS_PER_SESSION)
        with h5py.File(tiny / nsd_constants.BETAS_HDF5.format(subject=subject, session=session), "r") as fh:
            h5 = fh["betas"][()]
        assert h5.dtype == np.int16 and h5.shape == (nsd_constants.TRIALS_PER_SESSION, *TINY.grid[::-1])
        assert np.array_equal(h5, vol.T)  # (trials, Z, Y, X) as h5py sees NSD's file
        assert not vol[roi == -1].any()  # zero outside the brain
        psc = vol[roi == 1].astype(float) / nsd_constants.BETA_SCALE
        # scale: int16 = psc * 300, single-trial sd dominated by the 4 psc noise
        assert 3.0 < psc.std(axis=1).mean() < 6.0


def test_responses_match_the_design(tiny):
    mat = sio.loadmat(tiny / nsd_constants.EXPDESIGN)
    mo, sim = mat["masterordering"].ravel().astype(int), mat["subjectim"].astype(int)
    resp = pd.read_csv(tiny / nsd_constants.RESPONSES.format(subject="subj05"), sep="\t")
    assert {"SUBJECT", "SESSION", "RUN", "TRIAL", "73KID", "10KID", "ISOLD", "ISCORRECT", "RT"} <= set(resp)
    assert len(resp) == TINY.n_trials and (resp["SUBJECT"] == 5).all()
    assert np.array_equal(resp["10KID"], mo)
    assert np.array_equal(resp["73KID"], sim[4, mo - 1])
    per_run = resp.groupby(["SESSION", "RUN"]).size()
    assert len(per_run) == 2 * 12 and set(per_run) == {62, 63}
    first = ~resp["73KID"].duplicated()
    assert np.array_equal(resp["ISOLD"].to_numpy(), (~first).astype(int).to_numpy())


def test_stimuli_and_imagery_files(tiny):
    with h5py.File(tiny / nsd_constants.STIMULI_HDF5, "r") as fh:
        brick = fh["imgBrick"][()]
    latents, row = _truth(tiny)
    n_images = len(pd.read_csv(tiny / nsd_constants.STIM_INFO))
    assert brick.dtype == np.uint8 and brick.shape == (n_images, 16, 16, 3)
    shared = set(sio.loadmat(tiny / nsd_constants.EXPDESIGN)["sharedix"].ravel().astype(int) - 1)
    cells = sio.loadmat(tiny / nsd_constants.IMAGERY_DESIGN)["stimulus"]
    assert cells.shape == (1, nsd_constants.IMAGERY_RUNS)
    for name, cell in zip(nsd_constants.IMAGERY_RUN_NAMES, cells[0]):
        attention = name.startswith("att")
        assert cell.shape[0] == (480 if attention else 240) and np.count_nonzero(cell) == (96 if attention else 48)
    for stim_set in "ABC":
        pairs = sio.loadmat(tiny / nsd_constants.IMAGERY_PAIR_LIST.format(stim_set=stim_set))["pair_list"]
        assert pairs.shape == (6, 3)
        assert [str(np.ravel(c)[0]) for c in pairs[:, 2]] == list(nsd_constants.IMAGERY_CUES[stim_set])
        for target in (str(np.ravel(c)[0]) for c in pairs[:, 1]):
            if stim_set == "C":
                assert f"img-C-{target}" in row
                continue
            target_png = tiny / nsd_constants.IMAGERY_TARGET_IMAGE.format(stim_set=stim_set, name=target)
            pic = np.asarray(Image.open(target_png))
            assert pic.shape == (16, 16, 3) and pic.dtype == np.uint8
            if stim_set == "B":  # sharedSSSS_nsdNNNNN.png shows imgBrick[NNNNN - 1], a shared image
                nsd_id = int(target.split("_nsd")[1][:5]) - 1
                assert nsd_id in shared and np.array_equal(pic, brick[nsd_id])
            else:
                assert f"img-A-{Path(target).stem}" in row
    for subject in SUBJECTS:
        for run in nsd_constants.IMAGERY_RUN_NAMES:
            bdata = pd.read_csv(tiny / nsd_constants.IMAGERY_BDATA.format(subject=subject, run=run), sep="\t")
            assert bdata.shape == (48, 20) and {"CONDITION", "CUE", "BUTTON", "RT", "ISCORRECT"} <= set(bdata.columns)
        table = _imagery_table(tiny, subject)
        per_run = table.groupby("run_name", sort=False).size()
        assert per_run.index.tolist() == list(nsd_constants.IMAGERY_RUN_NAMES)
        assert per_run.tolist() == [96 if r.startswith("att") else 48 for r in per_run.index]
        counts = table.groupby(["stimulus", "task"]).size().unstack()
        assert (counts["vision"] == 8).all() and (counts["imagery"] == 16).all() and (counts["attention"] == 16).all()
        vol = _load(tiny, IMAGERY_BETAS, subject=subject)
        assert vol.dtype == np.int16 and vol.shape == (*TINY.grid, nsd_constants.IMAGERY_BETAS)


def test_images_follow_latents(tiny):
    """Similar latents give similar pictures: pixel correlation tracks latent cosine."""
    with h5py.File(tiny / nsd_constants.STIMULI_HDF5, "r") as fh:
        brick = fh["imgBrick"][:200].reshape(200, -1).astype(float)
    latents, row = _truth(tiny)
    lat = latents[[row[f"nsd-{i:05d}"] for i in range(200)]]
    iu = np.triu_indices(200, k=1)
    pix = np.corrcoef(brick - brick.mean(0))[iu]
    cos = (lat @ lat.T)[iu]
    assert np.corrcoef(pix, cos)[0, 1] > 0.45


def test_images_have_contrast_and_differ_between_categories():
    """Pictures span a plausible pixel range (NSD photographs: sd ~40-70 of 255) and two stimuli of different
    categories are structurally unlike (issue 24: at sd 1.8 / 255 every pair had SSIM ~0.99)."""
    from fmri2img.evaluation.image_metrics import ssim

    gp = sim_model.GeneratorParams()
    latents, cats = sim_model.make_latents(60, gp, 0, "contrast")
    images = sim_model.render_images(latents, SYNTH_IMAGE_SIZE, gp, 0)
    assert 40 < images.astype(float).std() < 70
    pairs = [(a, b) for a in range(60) for b in range(a + 1, 60)][::20]
    other = [ssim(images[a], images[b]) for a, b in pairs if cats[a] != cats[b]]
    same = [ssim(images[a], images[b]) for a, b in pairs if cats[a] == cats[b]]
    assert np.mean(other) < 0.6 and np.mean(same) > np.mean(other) + 0.2


def test_truth_files(tiny):
    latents, row = _truth(tiny)
    n_images = len(pd.read_csv(tiny / nsd_constants.STIM_INFO))
    assert latents.dtype == np.float32 and latents.shape == (n_images + 12, 512)
    assert len(row) == len(latents)
    assert np.allclose(np.linalg.norm(latents, axis=1), 1.0, atol=1e-5)
    iu = np.triu_indices(300, k=1)
    assert 0.35 < (latents[:300] @ latents[:300].T)[iu].mean() < 0.55  # CLIP-like anisotropy
    params = json.loads((tiny / "truth" / "params.json").read_text())
    assert params["seed"] == DEFAULT_WORLD_SEED and params["null"] is False
    assert params["params"]["imagery_strength"] == sim_model.DEFAULT_IMAGERY_STRENGTH
    strengths = [params["planted_effects"]["imagery"][x]["strength"] for x in "ABC"]
    assert strengths[0] == sim_model.DEFAULT_IMAGERY_STRENGTH and strengths[0] > strengths[1] > strengths[2]
    assert "G_subjXX.npy" in params["truth_files"] and params["generative_model"]


def test_least_squares_recovers_G(tmp_path):
    """With little noise, regressing the written betas on the true latents gives back a*G."""
    params = sim_model.GeneratorParams(noise_sd=0.02, session_gain_sd=0.0, session_offset_sd=0.0)
    root = tmp_path / "w"
    world.write_world(root, subjects=("subj02",), scale=TINY, params=params, progress=False)
    mat = sio.loadmat(root / nsd_constants.EXPDESIGN)
    mo, sim = mat["masterordering"].ravel().astype(int), mat["subjectim"].astype(int)
    roi = _load(root, nsd_constants.NSDGENERAL, subject="subj02") == 1
    X = np.concatenate([_load(root, nsd_constants.BETAS_NII, subject="subj02", session=k)[roi].T
                        for k in (1, 2)]) / nsd_constants.BETA_SCALE  # (1500, 300)
    latents, row = _truth(root)
    shown = sim[1, mo - 1] - 1
    E = latents[[row[f"nsd-{i:05d}"] for i in shown]].astype(float)
    coef = np.linalg.lstsq(E, X, rcond=None)[0].T  # (300, 512)
    G = np.load(root / "truth" / "G_subj02.npy")
    # > 0.9, not ~1: the latents share a strong category structure (weight_category 1.0 vs
    # weight_unique 0.4), so E is ill-conditioned along the unique directions
    assert np.corrcoef(coef.ravel(), params.amplitude * G.ravel())[0, 1] > 0.9
    # the rows of G follow the C order of nsdgeneral == 1: a shuffled order does not fit
    perm = np.random.default_rng(0).permutation(len(G))
    assert np.corrcoef(coef.ravel(), G[perm].ravel())[0, 1] < 0.1


# ---------------------------------------------------------------------------- behaviour


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(subjects=("subj01",), scale=TINY, sessions=1, beta_format="both", progress=False)
    world.write_world(tmp_path / "a", **kw)
    world.write_world(tmp_path / "b", **kw)
    world.write_world(tmp_path / "c", seed=DEFAULT_WORLD_SEED + 1, **kw)
    a, b, c = (_sha_tree(tmp_path / x) for x in "abc")
    assert a == b and len(a) > 20

    def layout(tree):  # set B target names carry the (seeded) NSD ids, as in the release
        return {k if "/setB/" not in k else f"setB/{len(k.rsplit('/', 1)[1])}" for k in tree}

    assert layout(a) == layout(c) and a.keys() != c.keys()
    for name in ("truth/latents.npy", nsd_constants.BETAS_HDF5.format(subject="subj01", session=1),
                 nsd_constants.BETAS_NII.format(subject="subj01", session=1), nsd_constants.EXPDESIGN):
        assert a[name] != c[name], name


def test_siblings_share_the_named_families_and_redraw_the_rest(tmp_path):
    """WorldSeeds: seeds all equal to ``seed`` give the very same world; a new subject seed keeps the
    stimuli (design, latents, images, imagery content) and redraws encodings and betas; a new stimulus
    seed keeps the latent geometry and renderer (latent_directions) and redraws the stimuli."""
    kw = dict(subjects=("subj01",), scale=TINY, sessions=1, progress=False)
    seed, new = DEFAULT_WORLD_SEED, DEFAULT_WORLD_SEED + 77
    world.write_world(tmp_path / "a", **kw)
    world.write_world(tmp_path / "same", stimulus_seed=seed, subject_seed=seed, **kw)
    world.write_world(tmp_path / "subj", subject_seed=new, **kw)
    world.write_world(tmp_path / "stim", stimulus_seed=new, subject_seed=new, **kw)
    world.write_world(tmp_path / "offset", offset_seed=new, **kw)
    a, same, subj, stim, offset = (_sha_tree(tmp_path / x) for x in ("a", "same", "subj", "stim", "offset"))
    assert a == same
    # a new offset direction alone: the imagery offset and imagery betas change, nothing else that is drawn
    changed = {name for name in a if offset[name] != a[name]}
    imagery_betas = nsd_constants.IMAGERY_BETAS_IN.replace("{variant}", nsd_constants.IMAGERY_GLM_VARIANTS[0]).replace(
        "{ext}", "nii.gz").format(subject="subj01")
    assert changed == {"truth/imagery_offsets.npy", imagery_betas, "truth/params.json"}
    # the offset direction belongs to the world family: new stimuli keep it
    assert subj["truth/imagery_offsets.npy"] == stim["truth/imagery_offsets.npy"] == a["truth/imagery_offsets.npy"]
    stimuli_files = ["truth/latents.npy", "truth/imagery_residuals.npy", nsd_constants.EXPDESIGN,
                     nsd_constants.STIMULI_HDF5]
    subject_files = ["truth/G_subj01.npy", nsd_constants.BETAS_NII.format(subject="subj01", session=1),
                     nsd_constants.RESPONSES.format(subject="subj01")]
    for name in stimuli_files:
        assert subj[name] == a[name] != stim[name], name
    for name in subject_files:
        assert subj[name] != a[name] and stim[name] != a[name], name
    params = json.loads((tmp_path / "stim" / "truth" / "params.json").read_text())
    assert params["seeds"] == {"world": seed, "stimuli": new, "subjects": new, "offset": None} and params["seed"] == seed
    # the new stimuli lie in the same latent geometry: their projection on the world's shared direction
    # and category directions is as large as the original stimuli's (a new geometry would make it ~0)
    shared, cat_dirs = sim_model.latent_directions(sim_model.GeneratorParams(), seed)
    for root in ("a", "stim"):
        latents = np.load(tmp_path / root / "truth" / "latents.npy")
        assert np.allclose(latents @ shared, latents[0] @ shared, atol=1e-5)
        assert np.abs(latents @ cat_dirs.T).max(axis=1).min() > 0.3


def test_null_world_imagery_is_perception_like(tmp_path, tiny):
    root = tmp_path / "null"
    world.write_world(root, subjects=("subj01",), scale=TINY, sessions=1, null=True, progress=False)
    params = json.loads((root / "truth" / "params.json").read_text())
    assert params["null"] is True
    for x in "ABC":
        eff = params["planted_effects"]["imagery"][x]
        assert (eff["gamma"], eff["rho"], eff["offset_norm"], eff["noise_sd"]) == (1.0, 1.0, 0.0, 4.0)
    assert not np.load(root / "truth" / "imagery_offsets.npy").any()

    def imagery_minus_vision(world):
        roi = _load(world, nsd_constants.NSDGENERAL, subject="subj01") == 1
        X = _load(world, IMAGERY_BETAS, subject="subj01")[roi].T / nsd_constants.BETA_SCALE
        task = _imagery_table(world, "subj01")["task"]
        return X[(task == "imagery").to_numpy()].mean(0) - X[(task == "vision").to_numpy()].mean(0)

    # the planted imagery offset pattern a*G c (same G and c direction in both worlds: same seed)
    G = np.load(tiny / "truth" / "G_subj01.npy")
    pattern = G @ np.load(tiny / "truth" / "imagery_offsets.npy")[0]
    assert np.corrcoef(imagery_minus_vision(tiny), pattern)[0, 1] > 0.25
    assert abs(np.corrcoef(imagery_minus_vision(root), pattern)[0, 1]) < 0.2


def test_refuses_existing_world_without_force_and_writes_atomically(tmp_path, monkeypatch):
    root = tmp_path / "w"
    kw = dict(subjects=("subj01",), scale=TINY, sessions=1, progress=False)
    world.write_world(root, **kw)
    before = _sha_tree(root)
    with pytest.raises(OutputError, match="--force"):
        world.write_world(root, **kw)
    (root / "stale.txt").write_text("old")
    world.write_world(root, force=True, **kw)
    assert _sha_tree(root) == before  # replaced as a whole: the stale file is gone

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(world, "write_hdf5", boom)
    with pytest.raises(RuntimeError):
        world.write_world(root, force=True, **kw)
    assert _sha_tree(root) == before  # a failed rewrite leaves the old world intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # and no temporary folder
    other = tmp_path / "not_a_world"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="not a synthetic world"):
        world.write_world(other, force=True, **kw)


@pytest.mark.parametrize("kwargs, match", [
    ({"subjects": ("subj09",)}, "Unknown subject"),
    ({"subjects": ("subj01", "subj01")}, "duplicates"),
    ({"scale": "huge"}, "Unknown scale"),
    ({"sessions": 5}, "out of range"),
    ({"beta_format": "mat"}, "Unknown beta format"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"subjects": ("subj01",), "scale": TINY, **kwargs}
    with pytest.raises(InputError, match=match):
        world.write_world(tmp_path / "w", progress=False, **args)
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------- CLI + calibration


def test_cli_sibling_seeds_reach_the_world_and_the_mlflow_run(tmp_path):
    app = typer.Typer()
    app.command()(synth_cli.command)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "world"), "--subject", "subj01", "--sessions", "1",
                                      "--subject-seed", "5", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "world" / "truth" / "params.json").read_text())
    assert params["seeds"] == {"world": DEFAULT_WORLD_SEED, "stimuli": DEFAULT_WORLD_SEED, "subjects": 5, "offset": None}
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])[0]
    assert run.data.params["seed.subjects"] == "5" and run.data.params["seed.stimuli"] == str(DEFAULT_WORLD_SEED)


@pytest.fixture(scope="module")
def demo_cli(tmp_path_factory):
    """``fmri2img synth`` at the default (demo) scale for one subject, tracked in a tmp store."""
    tmp = tmp_path_factory.mktemp("cli")
    app = typer.Typer()
    app.command()(synth_cli.command)
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = ["--out", str(tmp / "world"), "--subject", "subj01", "--tracking-uri", uri]
    result = CliRunner().invoke(app, args)
    return app, args, uri, tmp / "world", result


def test_cli_writes_world_and_logs_mlflow_run(demo_cli):
    from mlflow.tracking import MlflowClient

    app, args, uri, root, result = demo_cli
    assert result.exit_code == 0, result.output
    assert (root / nsd_constants.BETAS_NII.format(subject="subj01", session=4)).is_file()
    assert not (root / nsd_constants.BETAS_HDF5.format(subject="subj01", session=1)).exists()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fmri2img/imagery")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["scale"] == "demo" and run.data.params["seed.world"] == str(DEFAULT_WORLD_SEED)
    assert json.loads(run.data.params["subjects"]) == ["subj01"]
    assert run.data.metrics["n_files"] > 20
    assert [a.path for a in client.list_artifacts(run.info.run_id, "truth")] == ["truth/params.json"]
    # a rerun without --force: one line, exit 2, no new run
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert len(client.search_runs([exp.experiment_id])) == 1


def _calibration(root: Path, subject: str) -> dict[str, float]:
    """Plain ridge (latents from betas) trained on the non-shared trials, as in the docs."""
    latents, row = _truth(root)
    mat = sio.loadmat(root / nsd_constants.EXPDESIGN)
    mo, sim = mat["masterordering"].ravel().astype(int), mat["subjectim"].astype(int)
    n_shared = mat["sharedix"].size
    roi = _load(root, nsd_constants.NSDGENERAL, subject=subject) == 1
    X, sess = [], []
    for k in range(1, 5):
        X.append(_load(root, nsd_constants.BETAS_NII, subject=subject, session=k)[roi].T / nsd_constants.BETA_SCALE)
        sess += [k] * nsd_constants.TRIALS_PER_SESSION
    X, sess = np.concatenate(X).astype(np.float32), np.array(sess)
    col = mo[:len(X)]
    ids = sim[nsd_constants.subject_number(subject) - 1, col - 1] - 1
    train = col > n_shared
    for k in np.unique(sess):  # per-session z-scoring with training-trial statistics
        m = sess == k
        X[m] = (X[m] - X[m & train].mean(0)) / X[m & train].std(0)
    Y = latents[[row[f"nsd-{i:05d}"] for i in ids]]
    y_mean = Y[train].mean(0)  # the intercept
    Y = Y - y_mean
    # ridge path from one eigendecomposition; alpha picked on 10% held-out training images
    val = train & np.isin(ids, np.unique(ids[train])[::10])
    fit = train & ~val
    s, V = np.linalg.eigh(X[fit].T.astype(float) @ X[fit])
    proj = V.T @ (X[fit].T.astype(float) @ Y[fit])

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def top1(pred, gallery, truth):
        return float(np.mean((unit(pred + y_mean) @ unit(gallery).T).argmax(1) == truth))

    best = max((np.mean(np.sum(unit(X[val] @ W + y_mean) * (Y[val] + y_mean), 1)), a, W) for a in 10.0 ** np.arange(3, 8)
               for W in [V @ (proj / (s + a)[:, None])])
    W = best[2]
    test_ids = np.unique(ids[~train])
    X_test = np.stack([X[~train & (ids == i)].mean(0) for i in test_ids])  # repeats averaged
    out = {"perception_top1": top1(X_test @ W, latents[[row[f"nsd-{i:05d}"] for i in test_ids]],
                                   np.arange(len(test_ids))), "n_test": len(test_ids)}
    # NSD-Imagery: z-scored with attention-trial statistics, per trial among the 18 stimuli
    Xi = (_load(root, IMAGERY_BETAS, subject=subject)[roi].T / nsd_constants.BETA_SCALE).astype(np.float32)
    trials = nsd_imagery_release.index_frame(nsd_imagery_release.read_release(root, subject, progress=False))
    att = (trials["task"] == "attention").to_numpy()
    Xi = (Xi - Xi[att].mean(0)) / Xi[att].std(0)
    sids = sorted(set(trials["stimulus_id"]))
    gallery = latents[[row[s] for s in sids]]
    truth = trials["stimulus_id"].map({s: i for i, s in enumerate(sids)}).to_numpy()
    for task in ("vision", "imagery"):
        m = (trials["task"] == task).to_numpy()
        out[f"{task}_top1"] = top1(Xi[m] @ W, gallery, truth[m])
        for x in "ABC":
            mx = m & (trials["stim_set"] == x).to_numpy()
            out[f"{task}_top1_{x}"] = top1(Xi[mx] @ W, gallery, truth[mx])
    return out


def test_calibration_regime_of_the_defaults(demo_cli):
    """Demo defaults are informative: perception well above chance and below ceiling; imagery
    clearly below perception yet above chance (1/18). Numbers are reported in the docs."""
    *_, root, result = demo_cli
    assert result.exit_code == 0, result.output
    cal = _calibration(root, "subj01")
    print("calibration", json.dumps(cal))
    assert cal["n_test"] == world.SCALES["demo"].n_shared
    assert 0.2 < cal["perception_top1"] < 0.8  # chance 0.01
    assert cal["imagery_top1"] > 0.1  # chance 1/18 = 0.056; 288 trials
    assert cal["imagery_top1"] < cal["vision_top1"] - 0.15  # same trials' matched perception
    assert cal["imagery_top1_A"] > cal["imagery_top1_C"]  # the conceptual set is planted weakest


def test_defaults_are_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "synthetic_world.md").read_text()
    defaults = dataclasses.asdict(sim_model.GeneratorParams())
    for name in ("amplitude", "noise_sd", "session_offset_sd", "attention_gain"):
        assert f"`{name}` | {defaults[name]}" in text, name


def test_imagery_offset_lies_in_the_category_span_orthogonal_to_their_mean(tiny):
    """The planted offset is read out by a perception decoder (category span) and helps as many
    stimuli as it hurts: orthogonal to the mean category direction (and to the shared one), its
    projection on latents of uniformly drawn categories averages to 0."""
    params = json.loads((tiny / "truth" / "params.json").read_text())
    offsets = np.load(tiny / "truth" / "imagery_offsets.npy").astype(np.float64)
    gp = sim_model.GeneratorParams()
    shared, cat_dirs = sim_model.latent_directions(gp, params["seeds"]["world"])
    u = offsets[0] / np.linalg.norm(offsets[0])
    coef, *_ = np.linalg.lstsq(cat_dirs.T, u, rcond=None)
    assert np.linalg.norm(cat_dirs.T @ coef - u) < 1e-5
    assert abs(cat_dirs.mean(axis=0) @ u) < 1e-6 and abs(shared @ u) < 1e-6
    assert np.abs(cat_dirs @ u).max() > 0.1  # not orthogonal to the categories themselves
    assert np.linalg.norm(offsets[0]) == pytest.approx((1 - gp.set_strength("A")) * gp.imagery_offset_scale, rel=1e-5)
    lat, _ = sim_model.make_latents(4000, gp, 11, "held-out", params["seeds"]["world"])
    proj = lat @ u
    assert abs(proj.mean()) < 4 * proj.std() / np.sqrt(len(proj)) and proj.std() > 0.05


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_imagery_strength_outside_0_1_is_refused(bad):
    with pytest.raises(InputError, match="imagery_strength"):
        sim_model.GeneratorParams(imagery_strength=bad)


def test_strength_one_is_the_null_world():
    gp = sim_model.GeneratorParams(imagery_strength=1.0)
    for x in "ABC":
        assert gp.effect(x) == sim_model.ImageryEffect(gamma=1.0, rho=1.0, offset_norm=0.0, noise_sd=gp.noise_sd)
    assert sim_model.GeneratorParams().as_null() == gp
