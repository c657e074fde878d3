"""The trial index: schema, determinism, disjoint splits, checksums, bad inputs, the CLI."""

from __future__ import annotations

import json
import logging

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _imagery_release import TARGETS
from _nsd_fixtures import make_release, write_hand_tables
from typer.testing import CliRunner

from fmri2img.core.errors import (
    ChecksumError,
    ConfigError,
    CorruptFileError,
    InputError,
    MismatchError,
    MissingInputError,
    SchemaError,
)
from fmri2img.data import nsd_constants, schema, splits
from fmri2img.data.index import build_index, default_index_path, source_path
from fmri2img.data.schema import read_index


def _index(rel, tmp_path, **kwargs):
    kwargs.setdefault("manifest_dir", tmp_path / "man")
    return build_index("subj01", rel.root, tmp_path / "cache", progress=False, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    rel = make_release(tmp / "data")
    return rel, tmp, _index(rel, tmp)


def test_rows_and_schema(built):
    rel, tmp, path = built
    assert path == default_index_path(tmp / "cache", "subj01")
    df = read_index(path)
    assert df.columns.tolist() == schema.SCHEMA.names
    nsd_rows, img_rows = df[df.dataset == "nsd"], df[df.dataset == "nsdimagery"]
    assert len(nsd_rows) == 2 * nsd_constants.TRIALS_PER_SESSION and len(img_rows) == len(rel.imagery_trials["subj01"])
    assert nsd_rows["trial"].tolist() == list(range(1, 1501))
    assert str(df["session"].dtype) == "Int32" and str(df["fold"].dtype) == "Int8"
    assert nsd_rows["fold"].isna().all() and img_rows["session"].isna().all()
    assert (nsd_rows["split"] == "test").eq(nsd_rows["is_shared1000"]).all()
    assert (img_rows["split"] == "test").all() and img_rows["fold"].notna().all()
    row = nsd_rows.iloc[100]
    assert row["image_ref"] == f"{nsd_constants.STIMULI_HDF5}#{row['nsd_id']}" and row["stimulus_id"] == f"nsd-{row['nsd_id']:05d}"
    assert row["run"] == 100 * nsd_constants.RUNS_PER_SESSION // nsd_constants.TRIALS_PER_SESSION + 1  # from responses.tsv
    a = img_rows[img_rows.stimulus_type == "simple"].iloc[0]
    assert a["image_ref"].startswith(f"{nsd_constants.IMAGERY_EXP_DIR}/rawtargetimages/setA/")
    assert a["stimulus_id"] == f"img-A-{a['stimulus_name']}" and a["image_ref"].endswith(f"{a['stimulus_name']}.png")
    c = img_rows[img_rows.stimulus_type == "conceptual"].iloc[0]
    assert c["image_ref"] is None or c["image_ref"] != c["image_ref"]  # null
    assert c["text"] in TARGETS["C"] and c["stimulus_id"] == f"img-C-{c['text']}"
    b = img_rows[img_rows.stimulus_type == "complex"].drop_duplicates("stimulus_id").set_index("stimulus_name")
    # 1-based names settled by content; shared0000_nsd00000.png (cue T) is no NSD image
    assert b["nsd_id"].dropna().astype(int).to_dict() == {
        "shared0385_nsd28752": 28751, "shared0413_nsd30857": 30856, "shared0741_nsd53882": 53881,
        "shared0842_nsd61178": 61177, "shared0907_nsd65873": 65872}
    assert b.loc["shared0000_nsd00000", "stimulus_id"] == "img-B-shared0000_nsd00000"
    assert b.loc["shared0385_nsd28752", "image_ref"] == f"{nsd_constants.STIMULI_HDF5}#28751"
    # repeat counts 0.. within (dataset, condition, stimulus): 2 imagery runs x 8 per cue
    imagery = img_rows[img_rows.condition == "imagery"]
    assert sorted(imagery.groupby("stimulus_id")["repeat"].max().unique()) == [15]
    assert df.attrs["imagery"]["nsd_id_convention"] == "1-based"
    assert nsd_rows[["run_trial", "epoch", "cue", "button", "rt", "is_correct"]].isna().all().all()
    meta = pq.read_schema(path).metadata
    assert set(schema.META_KEYS) <= {k.decode() for k in meta}
    assert df.attrs["split_manifest_sha256"] == splits.manifest_sha256(
        json.loads(splits.manifest_path(tmp / "man", "subj01").read_text()))
    for rel_path in df.attrs["sources"]:
        assert source_path(rel.root, rel_path).is_file()
    with pytest.raises(InputError, match="escapes"):
        source_path(rel.root, "../outside.txt")


def test_imagery_rows_map_each_beta_volume(built):
    """Every one of the 720 beta volumes carries the task, epoch, cue and trial the fixture wrote."""
    rel, tmp, path = built
    img = read_index(path).query("dataset == 'nsdimagery'").sort_values("beta_volume").reset_index(drop=True)
    truth = rel.imagery_trials["subj01"].sort_values("beta_volume").reset_index(drop=True)
    condition = truth["task"].map({"vision": "perception", "imagery": "imagery", "attention": "attention"})
    assert img["beta_volume"].tolist() == list(range(nsd_constants.IMAGERY_BETAS))
    assert (img["condition"] == condition).all() and (img["cue"] == truth["cue"]).all()
    assert (img["run_trial"].astype(int) == truth["trial"]).all() and (img["run"].astype(int) == truth["run"]).all()
    assert img["epoch"].fillna("").tolist() == truth["epoch"].fillna("").tolist()
    # volume 48 is attA's first trial, cue epoch; 49 its detection epoch (two betas per attention trial)
    assert img.loc[48, ["condition", "epoch"]].tolist() == ["attention", "cue"]
    assert img.loc[49, ["condition", "epoch", "run_trial"]].tolist() == ["attention", "detection", 1]
    bdata = rel.root / nsd_constants.IMAGERY_BDATA.format(subject="subj01", run="attA")
    assert img.loc[49, "rt"] == pd.read_csv(bdata, sep="\t")["RT"].iloc[0]
    assert img.assign(epoch=img["epoch"].fillna("-")).groupby(["condition", "epoch"]).size().to_dict() == {
        ("attention", "cue"): 144, ("attention", "detection"): 144, ("imagery", "-"): 288, ("perception", "-"): 144}


def test_imagery_trials_override(tmp_path):
    """``--imagery-trials``: hand-written tables instead of the release's files, same betas."""
    rel = make_release(tmp_path / "data", n_sessions=1)
    hand = write_hand_tables(rel.root)
    table = rel.root / nsd_constants.IMAGERY_TRIALS.format(subject="subj01")
    df = read_index(_index(rel, tmp_path, dataset="imagery", imagery_trials=table))
    assert len(df) == len(hand) and set(df["stimulus_id"]) >= {"img-A-shape0", "img-C-word3", "nsd-00010"}
    assert df.attrs["imagery"]["trials_override"] == table.relative_to(rel.root).as_posix()
    assert df["epoch"].isna().all()
    with pytest.raises(InputError, match="outside the data root"):
        _index(rel, tmp_path, dataset="imagery", imagery_trials=tmp_path / "elsewhere.tsv")


def test_index_is_byte_identical_on_rebuild(built, tmp_path):
    rel, tmp, path = built
    again = build_index("subj01", rel.root, tmp_path / "cache2", manifest_dir=tmp_path / "man2", progress=False)
    assert again.read_bytes() == path.read_bytes()
    assert (tmp_path / "man2" / "subj01_splits.json").read_bytes() == (tmp / "man" / "subj01_splits.json").read_bytes()


@pytest.mark.parametrize("k", [2, 3, 6])
def test_every_split_is_stimulus_disjoint(built, tmp_path, k):
    rel, tmp, _ = built
    path = build_index("subj01", rel.root, tmp / "cache", output=tmp_path / f"k{k}.parquet",
                       manifest_dir=tmp_path, folds=k, progress=False)
    df = read_index(path)
    groups = {}
    nsd_rows = df[df.dataset == "nsd"]
    for name in ("train", "val", "test"):
        groups[f"nsd/{name}"] = set(nsd_rows.loc[nsd_rows.split == name, "stimulus_id"])
        assert groups[f"nsd/{name}"], name
    img = df[df.dataset == "nsdimagery"]
    folds = {f: set(img.loc[img.fold == f, "stimulus_id"]) for f in range(k)}
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not groups[a] & groups[b], (a, b)
    for f in range(k):
        assert folds[f]
        for g in range(f + 1, k):
            assert not folds[f] & folds[g]
        assert not folds[f] & (groups["nsd/train"] | groups["nsd/val"])  # never trained on
        # balanced over sets: each fold has 6/k (+-1) stimuli of each set
        per_set = img[img.fold == f].drop_duplicates("stimulus_id").stimulus_type.value_counts()
        assert all(abs(per_set.get(t, 0) - 6 / k) < 1 for t in ("simple", "complex", "conceptual"))
    assert set().union(*folds.values()) == set(img["stimulus_id"])
    manifest = json.loads(splits.manifest_path(tmp_path, "subj01").read_text())
    assert manifest["seed"] == 42 and manifest["nsdimagery"]["k"] == k
    for name, ids in splits.manifest_groups(manifest).items():
        family, part = name.split("/")
        expected = groups[name] if family == "nsd" else folds[int(part[4:])]
        assert set(ids) == expected
    val_fraction = len(groups["nsd/val"]) / (len(groups["nsd/val"]) + len(groups["nsd/train"]))
    assert abs(val_fraction - splits.VAL_FRACTION) < 0.02


def test_split_helpers_refuse_overlap_and_empty():
    with pytest.raises(InputError, match="empty"):
        splits.nsd_split(np.arange(5), np.arange(10))
    with pytest.raises(InputError, match="empty split"):
        splits.assign_imagery_folds(["a", "b"], ["A", "B"], k=3)
    with pytest.raises(ConfigError):
        splits.assign_imagery_folds(["a", "b"], ["A", "B"], k=1)
    bad = {"nsd": {"splits": {"train": ["nsd-00001"], "val": ["nsd-00001"], "test": []}}}
    with pytest.raises(InputError, match="both"):
        splits.check_disjoint(bad)


def test_read_index_refuses_changed_bytes_and_wrong_schema(built, tmp_path):
    _, _, path = built
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(MissingInputError, match="sidecar"):
        read_index(copy)
    (tmp_path / "copy.parquet.sha256").write_bytes((path.parent / (path.name + ".sha256")).read_bytes())
    read_index(copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="changed since it was written"):
        read_index(copy)
    df = read_index(path)
    meta = schema.make_metadata({}, "0" * 64, "/x")
    meta[schema.META_SCHEMA_VERSION] = "99"
    table = schema.to_table(df, meta)
    pq.write_table(table, tmp_path / "v99.parquet")
    with pytest.raises(SchemaError, match="schema version '99'"):
        read_index(tmp_path / "v99.parquet", check_checksum=False)
    with pytest.raises(SchemaError, match="'split' has value 'holdout'"):
        schema.to_table(df.assign(split="holdout"), meta)
    with pytest.raises(SchemaError, match="trial"):
        schema.to_table(df.assign(trial=None), meta)


def test_reindex_names_changed_file_and_verify_detects_it(tmp_path, caplog):
    rel = make_release(tmp_path / "data", imagery=False)
    path = _index(rel, tmp_path, dataset="nsd")
    assert build_index("subj01", rel.root, tmp_path / "cache", dataset="nsd", verify=True,
                       manifest_dir=tmp_path / "man") == path
    responses = rel.root / nsd_constants.RESPONSES.format(subject="subj01")
    responses.write_text(responses.read_text() + "\n")
    with pytest.raises(ChecksumError, match="responses.tsv changed since"):
        build_index("subj01", rel.root, tmp_path / "cache", dataset="nsd", verify=True, manifest_dir=tmp_path / "man")
    with caplog.at_level(logging.WARNING, logger="fmri2img.data"):
        _index(rel, tmp_path, dataset="nsd")
    assert any("responses.tsv changed since the last index" in r.getMessage() for r in caplog.records)
    build_index("subj01", rel.root, tmp_path / "cache", dataset="nsd", verify=True, manifest_dir=tmp_path / "man")


def test_no_responses_gives_null_runs(tmp_path):
    rel = make_release(tmp_path / "data", imagery=False, responses=False, n_sessions=1)
    df = read_index(_index(rel, tmp_path, dataset="nsd"))
    assert df["run"].isna().all() and (df["dataset"] == "nsd").all()


def _corrupt(kind, rel):
    root = rel.root
    if kind == "missing_root":
        return root / "nope"
    if kind == "missing_file":
        (root / nsd_constants.STIM_INFO).unlink()
    elif kind == "grid":
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)), root / nsd_constants.NSDGENERAL.format(subject="subj01"))
    elif kind == "mask4d":
        nib.save(nib.Nifti1Image(np.ones((6, 7, 5, 2), np.int16), np.eye(4)),
                 root / nsd_constants.NSDGENERAL.format(subject="subj01"))
    elif kind == "truncated":
        path = root / nsd_constants.BETAS_NII.format(subject="subj01", session=1)
        path.write_bytes(path.read_bytes()[:-2000])
    elif kind == "no_png":
        (root / nsd_constants.IMAGERY_TARGET_IMAGE.format(stim_set="A", name="bar_135.0deg_450L_43W.png")).unlink()
    elif kind == "imgbrick":
        with h5py.File(root / nsd_constants.STIMULI_HDF5, "w") as fh:
            fh.create_dataset("imgBrick", data=np.zeros((30, 2, 2, 3), np.uint8))
    elif kind == "dtype":
        path = root / nsd_constants.BETAS_NII.format(subject="subj01", session=1)
        nib.save(nib.Nifti1Image(np.ones((6, 7, 5, 750), np.int32), np.eye(4)), path)
    return root


@pytest.mark.parametrize("kind, error, match", [
    ("missing_root", MissingInputError, "Data root not found"),
    ("missing_file", MissingInputError, "nsd_stim_info_merged.csv"),
    ("grid", MismatchError, "has grid"),
    ("mask4d", InputError, "Expected a 3D mask"),
    ("truncated", CorruptFileError, "betas_session01.nii.gz"),
    ("no_png", MissingInputError, "bar_135.0deg_450L_43W.png; expected the set A target image of cue L"),
    ("imgbrick", InputError, "has no image: .*imgBrick holds 30"),
    ("dtype", InputError, "int32 betas; expected int16"),
])
def test_bad_inputs_fail_cleanly_and_write_nothing(tmp_path, kind, error, match):
    rel = make_release(tmp_path / "data", n_sessions=1)
    root = _corrupt(kind, rel)
    with pytest.raises(error, match=match):
        build_index("subj01", root, tmp_path / "cache", manifest_dir=tmp_path / "man", progress=False)
    assert not default_index_path(tmp_path / "cache", "subj01").exists()
    assert not (tmp_path / "man").exists()


def test_unknown_subject_and_empty_split(built, tmp_path):
    rel, tmp, _ = built
    with pytest.raises(InputError, match="Unknown subject 'subj99'"):
        build_index("subj99", rel.root, tmp_path)
    with pytest.raises(InputError, match="empty split"):
        build_index("subj01", rel.root, tmp / "cache", output=tmp_path / "x.parquet", manifest_dir=tmp_path,
                    folds=19, progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_cli_index_and_errors(built, tmp_path, tracking_uri, monkeypatch):
    from fmri2img.cli.main import app

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns

    rel, tmp, path = built
    runner = CliRunner()
    out = tmp_path / "cli.parquet"
    args = ["index", "--subject", "subj01", "--data-root", str(rel.root), "--cache-root", str(tmp / "cache"),
            "--output", str(out), "--manifest-dir", str(tmp_path / "man"), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == path.read_bytes()
    result = runner.invoke(app, ["index", "--subject", "subj01", "--data-root", str(tmp_path / "missing")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Data root not found" in lines[0]
    result = runner.invoke(app, ["index", "--subject", "subj01", "--subject", "subj02", "--output", str(out)])
    assert result.exit_code == 2 and "one --subject" in result.output
    result = runner.invoke(app, ["index", "--subject", "subj01", "--data-root", str(rel.root), "--dry-run",
                                 "--no-progress", "--imagery-betas", "fithrf_GLMdenoise_RR"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "720 beta volumes" in lines[0] and "1-based" in lines[0] and len(lines) == 2 + nsd_constants.IMAGERY_BETAS
    assert lines[2 + 49].split()[:6] == ["49", "2", "attA", "1", "attention", "detection"]
    result = runner.invoke(app, ["index", "--subject", "subj01", "--data-root", str(rel.root), "--dry-run",
                                 "--imagery-betas", "fithrf"])
    assert result.exit_code == 2 and "nsdimagerybetas_fithrf/" in result.output

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("fmri2img/imagery").experiment_id])
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert done
    names = {a.path for a in client.list_artifacts(done[-1].info.run_id, "index/subj01")}
    assert {"index/subj01/cli.parquet", "index/subj01/cli.parquet.sha256", "index/subj01/subj01_splits.json",
            "index/subj01/sources_sha256.json"} <= names


def test_synthetic_world_end_to_end(tmp_path):
    from fmri2img.data.betas import load_betas
    from fmri2img.sim.world import WorldShape, write_world

    # 120 voxels: with 60 the index's within-run order check of the imagery betas had almost no power (seed 0:
    # the true order scored 0.005, a wrong one 0.10 at p = 0.01, its alpha, once voxels differed in reliability)
    shape = WorldShape(grid=(8, 9, 7), n_mask_voxels=120, n_sessions=2, n_shared=12)
    write_world(tmp_path / "world", subjects=["subj01"], scale=shape, progress=False)
    path = build_index("subj01", tmp_path / "world", tmp_path / "cache", manifest_dir=tmp_path / "man",
                       progress=False)
    df = read_index(path)
    assert set(df["dataset"]) == {"nsd", "nsdimagery"} and set(df["split"]) == {"train", "val", "test"}
    X = load_betas(df, tmp_path / "cache")
    assert X.shape[0] == len(df) and np.isfinite(X).all()
    G = np.load(tmp_path / "world" / "truth" / "G_subj01.npy")
    assert G.shape[0] == np.load(next((tmp_path / "cache" / "betas" / "subj01").iterdir()) / "voxels.npy").shape[0]
