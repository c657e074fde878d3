"""Beta cache: contents vs. a trusted reference, both formats, z-scoring rules, no-op reruns."""

from __future__ import annotations

import numpy as np
import pytest
from _nsd_fixtures import make_release, masked

from fmri2img.core.errors import InputError
from fmri2img.core.memo import Memo
from fmri2img.data import betas, nsd_constants
from fmri2img.data.index import build_index
from fmri2img.data.schema import read_index
from fmri2img.data.trials import average_by_stimulus


def _build(tmp_path, name="data", jobs=1, **kwargs):
    rel = make_release(tmp_path / name, **kwargs)
    path = build_index("subj01", rel.root, tmp_path / "cache", manifest_dir=tmp_path / "man", progress=False,
                       jobs=jobs)
    return rel, read_index(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("betas")
    return (*_build(tmp, zero_voxel=True), tmp / "cache")


def _reference(rel, index, valid):
    """Unnormalised betas of every index row, straight from the arrays the fixture wrote."""
    mask = rel.mask["subj01"]
    out = np.empty((len(index), int(valid.sum())), dtype=np.float32)
    for i, row in enumerate(index.itertuples()):
        data = rel.betas["subj01"][row.session] if row.dataset == "nsd" else rel.imagery["subj01"]
        out[i] = masked(data[..., row.beta_volume:row.beta_volume + 1], mask)[0, valid]
    return out


def test_cache_matches_reference_and_drops_zero_voxel_everywhere(built):
    rel, index, cache_root = built
    folder = betas.cache_dir(cache_root, "subj01")
    valid = np.load(folder / "valid.npy")
    voxels = np.load(folder / "voxels.npy")
    assert voxels.dtype == np.int16 and voxels.tolist() == np.argwhere(rel.mask["subj01"] == 1).tolist()
    # the fixture zeroed the first mask voxel in session 1 only: dropped from every session
    assert valid.sum() == len(voxels) - 1 and not valid[0]
    X = betas.load_betas(index, cache_root, zscore=False)
    assert X.dtype == np.float32 and X.shape == (len(index), valid.sum())
    np.testing.assert_array_equal(X, _reference(rel, index, valid))


def test_hdf5_and_nifti_caches_agree(tmp_path, built):
    rel_n, index_n, cache_n = built
    rel_h, index_h = _build(tmp_path, beta_format="hdf5", zero_voxel=True, jobs=2)
    assert index_h.loc[index_h.dataset == "nsd", "beta_file"].str.endswith(".hdf5").all()
    X_h = betas.load_betas(index_h, tmp_path / "cache", zscore=False)
    X_n = betas.load_betas(index_n, cache_n, zscore=False)
    np.testing.assert_array_equal(X_h, X_n)  # same seed -> same values, read through both formats


def test_zscore_uses_train_rows_of_each_session_only(built):
    rel, index, cache_root = built
    raw = betas.load_betas(index, cache_root, zscore=False)
    Z = betas.load_betas(index, cache_root)
    for rel_file in index["beta_file"].unique():
        in_file = (index["beta_file"] == rel_file).to_numpy()
        ref_rows = in_file & (index["split"] == "train").to_numpy()
        if not ref_rows.any():
            ref_rows = in_file & (index["condition"] == "attention").to_numpy()
            assert rel_file.endswith("betas_nsdimagery.nii.gz")
        mean = raw[ref_rows].astype(np.float64).mean(0)
        std = raw[ref_rows].astype(np.float64).std(0)
        np.testing.assert_allclose(Z[in_file], (raw[in_file] - mean) / std, rtol=1e-4, atol=1e-4)
        # test rows differ from train rows: their own mean is not forced to zero
        test_rows = in_file & (index["split"] != "train").to_numpy() & (index["dataset"] == "nsd").to_numpy()
        if test_rows.any():
            assert not np.allclose(Z[test_rows].mean(0), 0, atol=1e-6)


def test_zscore_statistics_are_memoised_on_their_exact_inputs(built):
    """With a memo, repeated loads reuse each session's statistics (same values as computing them
    afresh); another set of reference rows is a new entry, not a stale hit."""
    rel, index, cache_root = built
    memo = Memo()
    first = betas.load_betas(index, cache_root, memo=memo)
    np.testing.assert_array_equal(betas.load_betas(index, cache_root), first)
    n_entries = memo.count("session_stats")
    assert n_entries == index["beta_file"].nunique()
    np.testing.assert_array_equal(betas.load_betas(index, cache_root, memo=memo), first)
    assert memo.count("session_stats") == n_entries
    fewer = index.copy()
    fewer.loc[fewer.index[(fewer["split"] == "train").to_numpy()][:5], "split"] = "val"  # other reference rows
    changed = betas.load_betas(fewer, cache_root, memo=memo)
    assert memo.count("session_stats") > n_entries and not np.array_equal(changed, first)
    np.testing.assert_array_equal(betas.load_betas(fewer, cache_root), changed)


def test_rows_selection_and_filtered_index(built):
    rel, index, cache_root = built
    rows = (index["split"] == "test").to_numpy() & (index["dataset"] == "nsd").to_numpy()
    full = betas.load_betas(index, cache_root)
    np.testing.assert_array_equal(betas.load_betas(index, cache_root, rows=rows), full[rows])
    np.testing.assert_array_equal(betas.load_betas(index, cache_root, rows=np.flatnonzero(rows)[::-1]),
                                  full[np.flatnonzero(rows)[::-1]])
    with pytest.raises(InputError, match="no 'train' or 'attention' rows"):
        betas.load_betas(index[rows], cache_root)


def test_rerun_is_noop_and_changed_session_is_rebuilt(tmp_path):
    rel, index = _build(tmp_path)
    folder = betas.cache_dir(tmp_path / "cache", "subj01")
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    beta_files = list(dict.fromkeys(index["beta_file"]))
    again = betas.build_beta_cache("subj01", rel.root, tmp_path / "cache", beta_files, index.attrs["sources"],
                                   progress=False)
    assert again.rebuilt == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    # change session 2 on disk: only it is rebuilt, with the new values
    import nibabel as nib

    path = rel.root / nsd_constants.BETAS_NII.format(subject="subj01", session=2)
    data = rel.betas["subj01"][2].copy()
    data[..., 0] += 7
    nib.save(nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0])), path)
    build_index("subj01", rel.root, tmp_path / "cache", manifest_dir=tmp_path / "man", progress=False)
    new_stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    changed = {name for name in stamps if new_stamps[name] != stamps[name]}
    assert changed == {betas.npy_name(nsd_constants.BETAS_NII.format(subject="subj01", session=2)), "meta.json"}
    cached = np.load(folder / betas.npy_name(nsd_constants.BETAS_NII.format(subject="subj01", session=2)))
    np.testing.assert_array_equal(cached[0], masked(data[..., :1], rel.mask["subj01"])[0])


def test_average_by_stimulus_of_betas_against_manual_means():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(7, 4)).astype(np.float32)
    ids = ["b", "a", "b", "c", "a", "b", "c"]
    X_mean, unique = average_by_stimulus(X, ids)
    assert unique.tolist() == ["b", "a", "c"]  # order of first appearance
    for k, sid in enumerate(unique):
        rows = [i for i, s in enumerate(ids) if s == sid]
        np.testing.assert_allclose(X_mean[k], X[rows].mean(0), rtol=1e-6)
    with pytest.raises(InputError, match="one per row"):
        average_by_stimulus(X, ids[:3])
