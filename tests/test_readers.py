"""NSD / NSD-Imagery readers against tiny release trees written independently (tests/_nsd_fixtures.py)."""

from __future__ import annotations

import gzip

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _nsd_fixtures import make_release, masked, write_hand_tables

from fmri2img.core.errors import CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.data import nsd, nsd_constants, nsd_imagery


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("rel") / "data", beta_format="both", n_sessions=1)


def _nifti(path, data):
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_expdesign_trials_follow_the_published_formula(release):
    design = nsd.read_expdesign(release.root / nsd_constants.EXPDESIGN)
    trials = nsd.nsd_trials(design, "subj01", nsd_constants.TRIALS_PER_SESSION)
    # contracts section 1: trial n shows subjectim[s-1, masterordering[n-1]-1] (1-based ids)
    n = 37
    expected = release.subjectim[0, release.masterordering[n - 1] - 1] - 1
    assert trials.loc[n - 1, "nsd_id"] == expected
    assert trials["session"].eq(1).all() and trials["beta_volume"].tolist() == list(range(nsd_constants.TRIALS_PER_SESSION))
    shared = trials["nsd_id"] < 20  # the fixture's shared images are ids 0..19
    assert (trials["is_shared1000"] == shared).all()
    with pytest.raises(MismatchError, match="orders only"):
        nsd.nsd_trials(design, "subj01", 10**6)
    with pytest.raises(InputError, match="Unknown subject"):
        nsd.nsd_trials(design, "subj99", 10)


def test_stim_info_must_agree_with_sharedix(release):
    design = nsd.read_expdesign(release.root / nsd_constants.EXPDESIGN)
    info = nsd.read_stim_info(release.root / nsd_constants.STIM_INFO)
    nsd.check_stim_info(info, design)
    info.loc[25, "shared1000"] = True
    with pytest.raises(MismatchError, match="shared1000"):
        nsd.check_stim_info(info, design)


def test_responses_number_trials_like_expdesign(release):
    design = nsd.read_expdesign(release.root / nsd_constants.EXPDESIGN)
    trials = nsd.nsd_trials(design, "subj01", nsd_constants.TRIALS_PER_SESSION)
    resp = nsd.read_responses(release.root / nsd_constants.RESPONSES.format(subject="subj01"))
    merged = trials.merge(resp, on="trial", suffixes=("", "_r"))
    assert len(merged) == nsd_constants.TRIALS_PER_SESSION
    assert (merged["nsd_id"] == merged["nsd_id_r"]).all()
    assert merged["run"].min() == 1 and merged["run"].max() == nsd_constants.RUNS_PER_SESSION


def test_mask_keeps_value_one_only_and_rejects_4d(release, tmp_path):
    mask = nsd.read_mask(release.root / nsd_constants.NSDGENERAL.format(subject="subj01"))
    assert mask.sum() == (release.mask["subj01"] == 1).sum()
    assert not mask[0, 0, 0]  # value -1 is outside
    with pytest.raises(InputError, match="Expected a 3D mask, got shape"):
        nsd.read_mask(_nifti(tmp_path / "m4.nii.gz", np.ones((3, 3, 3, 2), dtype=np.int16)))
    with pytest.raises(InputError, match="no voxel with value 1"):
        nsd.read_mask(_nifti(tmp_path / "m0.nii.gz", np.zeros((3, 3, 3), dtype=np.int16)))
    with pytest.raises(MissingInputError):
        nsd.read_mask(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("fmt", ["nifti", "hdf5"])
def test_masked_betas_match_reference_both_formats(release, fmt, monkeypatch):
    monkeypatch.setattr(nsd, "READ_CHUNK_BYTES", 4096)  # force many chunks
    template = nsd_constants.BETAS_NII if fmt == "nifti" else nsd_constants.BETAS_HDF5
    path = release.root / template.format(subject="subj01", session=1)
    mask = nsd.read_mask(release.root / nsd_constants.NSDGENERAL.format(subject="subj01"))
    X, invalid = nsd.read_masked_betas(path, nsd.mask_voxels(mask))
    ref = masked(release.betas["subj01"][1], release.mask["subj01"])
    assert X.dtype == np.float32 and X.shape == ref.shape
    np.testing.assert_array_equal(X, ref)
    assert not invalid.any()
    info = nsd.inspect_betas(path)
    assert info.grid == mask.shape and info.n_volumes == nsd_constants.TRIALS_PER_SESSION and info.kind == fmt


def test_float_betas_rules(tmp_path):
    vox = np.array([[0, 0, 0], [1, 1, 1], [2, 0, 1]], dtype=np.int16)
    data = np.random.default_rng(0).normal(0, 2, size=(3, 2, 2, 5)).astype(np.float32)
    X, invalid = nsd.read_masked_betas(_nifti(tmp_path / "ok.nii.gz", data), vox)
    np.testing.assert_allclose(X[:, 0], data[0, 0, 0], rtol=1e-6)
    assert not invalid.any()
    whole_nan = data.copy()
    whole_nan[1, 1, 1, :] = np.nan
    X, invalid = nsd.read_masked_betas(_nifti(tmp_path / "nan.nii.gz", whole_nan), vox)
    assert invalid.tolist() == [False, True, False] and np.isfinite(X).all()
    partial = data.copy()
    partial[1, 1, 1, 2] = np.nan
    with pytest.raises(InputError, match="NaN in some but not all"):
        nsd.read_masked_betas(_nifti(tmp_path / "pnan.nii.gz", partial), vox)
    inf = data.copy()
    inf[0, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="Inf"):
        nsd.read_masked_betas(_nifti(tmp_path / "inf.nii.gz", inf), vox)
    with pytest.raises(InputError, match="percent signal change within"):
        nsd.read_masked_betas(_nifti(tmp_path / "x300.nii.gz", data * 300), vox)
    with pytest.raises(InputError, match="holds uint8 betas; expected int16"):
        nsd.inspect_betas(_nifti(tmp_path / "u8.nii.gz", np.ones((3, 2, 2, 5), dtype=np.uint8)))


def test_corrupt_nifti_and_hdf5_raise_one_clear_error(release, tmp_path):
    src = (release.root / nsd_constants.BETAS_NII.format(subject="subj01", session=1)).read_bytes()
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(src[: len(src) // 2])
    vox = np.array([[1, 1, 1]])
    with pytest.raises(CorruptFileError, match="trunc.nii.gz"):
        nsd.read_masked_betas(truncated, vox)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti") [:20])
    with pytest.raises(CorruptFileError):
        nsd.inspect_betas(garbage)
    bad_h5 = tmp_path / "bad.hdf5"
    bad_h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(CorruptFileError, match="bad.hdf5"):
        nsd.inspect_betas(bad_h5)
    h5src = (release.root / nsd_constants.BETAS_HDF5.format(subject="subj01", session=1)).read_bytes()
    trunc_h5 = tmp_path / "trunc.hdf5"
    trunc_h5.write_bytes(h5src[: len(h5src) // 2])
    with pytest.raises(CorruptFileError, match="trunc.hdf5"):
        nsd.read_masked_betas(trunc_h5, vox)
    no_betas = tmp_path / "nob.hdf5"
    with h5py.File(no_betas, "w") as fh:
        fh.create_dataset("other", data=np.zeros(3))
    with pytest.raises(CorruptFileError, match="no dataset 'betas'"):
        nsd.inspect_betas(no_betas)


def test_grid_mismatch(release):
    info = nsd.inspect_betas(release.root / nsd_constants.BETAS_HDF5.format(subject="subj01", session=1))
    with pytest.raises(MismatchError, match=r"has grid .* but nsdgeneral.nii.gz has"):
        nsd.check_grid(info, np.ones((2, 2, 2), dtype=bool), "betas_session01.hdf5")


def test_imagery_tables(tmp_path):
    """The hand-written override tables (``index --imagery-trials``)."""
    hand = write_hand_tables(tmp_path / "hand")
    trials = nsd_imagery.read_trials(tmp_path / "hand" / nsd_constants.IMAGERY_TRIALS.format(subject="subj01"))
    stimuli = nsd_imagery.read_stimuli(tmp_path / "hand" / nsd_constants.IMAGERY_STIMULI_TABLE)
    assert trials["beta_index"].tolist() == list(range(1, len(trials) + 1))
    assert set(stimuli.loc[stimuli.stim_set == "B", "stimulus_id"]) == {f"nsd-{2 * k:05d}" for k in range(6)}
    assert "img-A-shape0" in set(stimuli["stimulus_id"]) and "img-C-word3" in set(stimuli["stimulus_id"])
    joined = nsd_imagery.join_trials(trials, stimuli)
    assert set(joined["condition"]) == {"perception", "imagery", "attention"}
    bad = hand.copy()
    bad.loc[0, "task"] = "dreaming"
    bad.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="task 'dreaming'"):
        nsd_imagery.read_trials(tmp_path / "t.tsv")
    bad.drop(columns=["cue"]).to_csv(tmp_path / "t2.tsv", sep="\t", index=False)
    with pytest.raises(CorruptFileError, match="no column 'cue'"):
        nsd_imagery.read_trials(tmp_path / "t2.tsv")
    unknown = trials.copy()
    unknown.loc[0, "stim_name"] = "nothing"
    with pytest.raises(InputError, match="'nothing' is not in stimuli.tsv"):
        nsd_imagery.join_trials(unknown, stimuli)
    pd.DataFrame({"stim_set": ["B"], "stim_name": ["x"], "cue": ["x"], "image": ["i.png"], "text": [""],
                  "nsd_id": [""]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    no_nsd = nsd_imagery.read_stimuli(tmp_path / "s.tsv")  # a set B target that is no NSD image (cue T)
    assert no_nsd["nsd_id"].isna().all() and no_nsd["stimulus_id"].tolist() == ["img-B-x"]
    pd.DataFrame({"stim_set": ["B"], "stim_name": ["x"], "cue": ["x"], "image": ["i.png"], "text": [""],
                  "nsd_id": ["x12"]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="set B stimulus 'x'"):
        nsd_imagery.read_stimuli(tmp_path / "s.tsv")
