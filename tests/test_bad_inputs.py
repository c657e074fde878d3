"""Bad input catalogue (issue 10): every user mistake gives one clear line, exit 2, no leftovers.

Each case corrupts a *copy* of a tiny synthetic world (or passes a bad option) and runs the
real CLI. It asserts that the command

* exits with code 2,
* prints exactly one non-empty line on stderr, naming the offending file or value and what
  was expected (the ``expect`` fragments), with no traceback,
* leaves no new file in its output locations and no ``.fmri2img-tmp-*`` file anywhere.

A few cases go through the installed console script in a subprocess, as a user would.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.io
import torch
from PIL import Image
from _world import TINY, build_tiny
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.files import TMP_PREFIX

runner = CliRunner()

SUBJ = "subj01"
BETAS_REL = f"nsddata_betas/ppdata/{SUBJ}/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.nii.gz"
BETAS_H5_REL = BETAS_REL.replace(".nii.gz", ".hdf5")
IMAGERY_BETAS_REL = (f"nsddata_betas/ppdata/{SUBJ}/func1pt8mm/nsdimagerybetas_fithrf_GLMdenoise_RR/"
                     "betas_nsdimagery.nii.gz")
MASK_REL = f"nsddata/ppdata/{SUBJ}/func1pt8mm/roi/nsdgeneral.nii.gz"
STIMULI_H5_REL = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
PNG_REL = "nsddata/experiments/nsdimagery/rawtargetimages/setA/bar_000.0deg_450L_43W.png"
DESIGN_REL = "nsddata/experiments/nsdimagery/designmatrixGLMsingle.mat"
SETB_DIR = "nsddata/experiments/nsdimagery/rawtargetimages/setB"


def _bdata(run: str) -> str:
    return f"nsddata/bdata/nsdimagery/nsdimagery_{SUBJ}_{run}.tsv"

#: A port nothing listens on (discard): connection refused at once.
DEAD_TRACKING_URI = "http://127.0.0.1:9"
#: Failing fast means well below MLflow's own multi-minute HTTP retry budget.
FAIL_FAST_S = 15.0
#: Warning categories Python's default filters hide from users (see the `warnings` docs).
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


# --- shared, read-only world (built once per module) ------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, store):
    """Tiny world + index + embeddings, two ridge checkpoints, an adapter, and a ridge
    checkpoint trained on a world with a different voxel count."""
    from fmri2img.stages.adapt import AdaptConfig, train_adapters
    from fmri2img.stages.train import TrainConfig, train_decoder

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad_world")
    paths = build_tiny(root / "w1")
    cache = paths["cache"]
    ridge = train_decoder(paths[SUBJ], root / "ckpt" / "ridge", TrainConfig(model="ridge"), cache_root=cache,
                          tracking_uri=store, progress=False).checkpoint
    other = train_decoder(paths[SUBJ], root / "ckpt" / "ridge_other",
                          TrainConfig(model="ridge", decoder_params={"alphas": [10.0, 100.0]}), cache_root=cache,
                          tracking_uri=store, progress=False).checkpoint
    adapter = train_adapters(paths[SUBJ], ridge, root / "adapter", AdaptConfig(epochs=1, patience=1, folds=(0,)),
                             cache_root=cache, tracking_uri=store).checkpoint
    # a second world whose nsdgeneral mask holds fewer voxels
    paths2 = _world_other_voxels(root / "w2")
    ridge2 = train_decoder(paths2[SUBJ], root / "ckpt" / "ridge_w2", TrainConfig(model="ridge"),
                           cache_root=paths2["cache"], tracking_uri=store, progress=False).checkpoint
    return {**paths, "ridge": Path(ridge), "ridge_other": Path(other), "adapter": Path(adapter),
            "ridge_w2": Path(ridge2)}


def _world_other_voxels(root: Path) -> dict[str, Path]:
    from fmri2img.data.index import build_index
    from fmri2img.embeddings.cache import synthetic_truth_set
    from fmri2img.sim.world import WorldShape, write_world

    data, cache = root / "data", root / "cache"
    shape = WorldShape(**{**TINY, "n_mask_voxels": TINY["n_mask_voxels"] - 60})
    write_world(data, subjects=(SUBJ,), scale=shape, seed=1, progress=False)
    index = build_index(SUBJ, data, cache, output=cache / "indices" / f"{SUBJ}.parquet",
                        manifest_dir=root / "manifests", progress=False)
    synthetic_truth_set(data, cache)
    return {"data": data, "cache": cache, SUBJ: index}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the whole module (a fresh store per case costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('bad_mlflow') / 'mlflow.db'}"


# --- helpers ----------------------------------------------------------------------------


@dataclass
class Case:
    """What to run and what the single stderr line must contain."""

    args: list[str]
    expect: tuple[str, ...]
    watch: list[Path] = field(default_factory=list)  # output locations that must gain no file
    env: dict[str, str] = field(default_factory=dict)


def _files(paths: list[Path]) -> set[Path]:
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file())
    return found


def _copy_data(world, tmp: Path) -> Path:
    data = tmp / "data"
    shutil.copytree(world["data"], data)
    return data


def _copy_index(world, tmp: Path) -> Path:
    """Copy the index and its checksum sidecar; the beta cache stays shared (read-only)."""
    dst = tmp / "index" / f"{SUBJ}.parquet"
    dst.parent.mkdir(parents=True)
    shutil.copy2(world[SUBJ], dst)
    shutil.copy2(world[SUBJ].with_name(world[SUBJ].name + ".sha256"), dst.with_name(dst.name + ".sha256"))
    return dst


def _reseal(path: Path) -> None:
    """Record ``path``'s current SHA-256 in its sidecar (as `fmri2img index` would)."""
    from fmri2img.core.files import sha256_file

    path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


def _index_case(data: Path, tmp: Path, *expect: str, subject: str = SUBJ) -> Case:
    out = tmp / "out"
    return Case(["index", "--subject", subject, "--data-root", str(data), "--cache-root", str(tmp / "cache"),
                 "--output", str(out / f"{subject}.parquet"), "--manifest-dir", str(out / "manifests"),
                 "--no-progress"], expect, [out])


def _rewrite_nifti(path: Path, data: np.ndarray) -> None:
    img = nib.load(path)
    new = nib.Nifti1Image(data, img.affine)
    new.header.set_data_dtype(data.dtype)
    nib.save(new, path)


def _session_psc(path: Path) -> np.ndarray:
    """Session betas as float32 percent signal change (int16 / 300)."""
    return (np.asarray(nib.load(path).dataobj, dtype=np.float32) / 300.0).astype(np.float32)


def _inside_voxel(data: Path) -> tuple[int, int, int]:
    mask = np.asarray(nib.load(data / MASK_REL).dataobj)
    return tuple(int(i) for i in np.argwhere(mask == 1)[0])


def _train_case(world, tmp: Path, index: Path, *expect: str, extra: tuple[str, ...] = ()) -> Case:
    out = tmp / "ckpt"
    return Case(["train", "--index", str(index), "--model", "ridge", "--output-dir", str(out),
                 "--cache-root", str(world["cache"]), *extra], expect, [out])


def _eval_case(world, tmp: Path, checkpoint: Path, *expect: str, extra: tuple[str, ...] = (),
               index: Path | None = None) -> Case:
    out = tmp / "eval"
    return Case(["eval", "--index", str(index or world[SUBJ]), "--checkpoint", str(checkpoint), "--output-dir",
                 str(out), "--cache-root", str(world["cache"]), "--n-boot", "20", "--n-perm", "20", *extra],
                expect, [out])


def _adapt_case(world, tmp: Path, *expect: str, extra: tuple[str, ...] = ()) -> Case:
    out = tmp / "adapt"
    return Case(["adapt", "--index", str(world[SUBJ]), "--checkpoint", str(world["ridge"]), "--output-dir", str(out),
                 "--cache-root", str(world["cache"]), "--epochs", "1", *extra], expect, [out])


# --- the catalogue: one function per case -----------------------------------------------
# Each takes (world, tmp_path) and returns a Case.


def c_missing_data_root(world, tmp):
    return _index_case(tmp / "no_such_root", tmp, "no_such_root", "Data root not found")


def c_missing_session_file(world, tmp):
    data = _copy_data(world, tmp)
    (data / BETAS_REL).unlink()
    return _index_case(data, tmp, "betas_fithrf_GLMdenoise_RR", "betas_session01")


def c_missing_imagery_betas(world, tmp):
    data = _copy_data(world, tmp)
    (data / IMAGERY_BETAS_REL).unlink()
    return _index_case(data, tmp, "betas_nsdimagery.nii.gz", "expected")


def c_truncated_nifti(world, tmp):
    data = _copy_data(world, tmp)
    path = data / BETAS_REL
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return _index_case(data, tmp, "betas_session01.nii.gz", "truncated or corrupt")


def c_corrupt_hdf5_betas(world, tmp):
    data = _copy_data(world, tmp)  # `auto` prefers HDF5 session betas where present
    (data / BETAS_H5_REL).write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(0).bytes(4096))
    return _index_case(data, tmp, "betas_session01.hdf5", "HDF5")


def c_corrupt_hdf5_stimuli(world, tmp):
    data = _copy_data(world, tmp)
    path = data / STIMULI_H5_REL
    path.write_bytes(path.read_bytes()[:1000])
    return _index_case(data, tmp, "nsd_stimuli.hdf5", "HDF5")


def c_mask_grid_mismatch(world, tmp):
    data = _copy_data(world, tmp)
    mask = np.asarray(nib.load(data / MASK_REL).dataobj)
    _rewrite_nifti(data / MASK_REL, np.ascontiguousarray(mask[:, :, :-1]))
    return _index_case(data, tmp, "nsdgeneral.nii.gz", "expected the same func1pt8mm grid")


def c_mask_4d(world, tmp):
    data = _copy_data(world, tmp)
    mask = np.asarray(nib.load(data / MASK_REL).dataobj)
    _rewrite_nifti(data / MASK_REL, np.stack([mask, mask], axis=-1))
    return _index_case(data, tmp, "nsdgeneral.nii.gz", "Expected a 3D mask")


def c_betas_nan(world, tmp):
    data = _copy_data(world, tmp)
    psc = _session_psc(data / BETAS_REL)
    psc[(*_inside_voxel(data), 7)] = np.nan  # NaN in one volume only: not a droppable voxel
    _rewrite_nifti(data / BETAS_REL, psc)
    return _index_case(data, tmp, "betas_session01.nii.gz", "NaN", "expected finite betas")


def c_betas_inf(world, tmp):
    data = _copy_data(world, tmp)
    psc = _session_psc(data / BETAS_REL)
    psc[(*_inside_voxel(data), 3)] = np.inf
    _rewrite_nifti(data / BETAS_REL, psc)
    return _index_case(data, tmp, "betas_session01.nii.gz", "Inf", "expected finite")


def c_betas_wrong_dtype(world, tmp):
    data = _copy_data(world, tmp)
    raw = np.asarray(nib.load(data / BETAS_REL).dataobj).astype(np.int32)
    _rewrite_nifti(data / BETAS_REL, raw)
    return _index_case(data, tmp, "betas_session01.nii.gz", "int32", "expected int16")


def c_betas_wrong_scale(world, tmp):
    data = _copy_data(world, tmp)  # int16 x 300 values stored as float: not percent signal change
    raw = np.asarray(nib.load(data / BETAS_REL).dataobj).astype(np.float32)
    _rewrite_nifti(data / BETAS_REL, raw)
    return _index_case(data, tmp, "betas_session01.nii.gz", "expected percent signal change")


def c_stimulus_without_image(world, tmp):
    data = _copy_data(world, tmp)
    (data / PNG_REL).unlink()
    return _index_case(data, tmp, "File not found", "bar_000.0deg_450L_43W.png", "set A target image of cue H")


# --- NSD-Imagery as published (issue 19) ---


def c_imagery_missing_run_file(world, tmp):
    data = _copy_data(world, tmp)
    (data / _bdata("imgB_2")).unlink()
    return _index_case(data, tmp, "nsdimagery_subj01_imgB_2.tsv", "behaviour of run imgB_2")


def c_imagery_run_with_47_rows(world, tmp):
    data = _copy_data(world, tmp)
    path = data / _bdata("visB")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    return _index_case(data, tmp, "nsdimagery_subj01_visB.tsv", "47 trial rows", "expected 48")


def c_imagery_unknown_cue_letter(world, tmp):
    data = _copy_data(world, tmp)
    path = data / _bdata("imgC_1")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    table.loc[3, "CONDITION"] = "Q"
    table.to_csv(path, sep="\t", index=False)
    return _index_case(data, tmp, "nsdimagery_subj01_imgC_1.tsv", "CONDITION 'Q'", "expected one of S Z M Y N F")


def c_imagery_order_mismatch(world, tmp):
    data = _copy_data(world, tmp)  # two trials of different cues swapped: onset order != behavioural order
    path = data / _bdata("visA")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    other = int(np.flatnonzero(table["CONDITION"] != table.loc[0, "CONDITION"])[0])
    table.loc[[0, other], "CONDITION"] = table.loc[[other, 0], "CONDITION"].to_numpy()
    table.to_csv(path, sep="\t", index=False)
    return _index_case(data, tmp, "designmatrixGLMsingle.mat", "maps to CONDITION", "expected one")


def c_imagery_design_onset_count(world, tmp):
    data = _copy_data(world, tmp)
    cells = scipy.io.loadmat(data / DESIGN_REL)["stimulus"]
    cell = cells[0, 3]
    row, col = np.argwhere(cell != 0)[-1]
    cell[row, col] = 0.0
    scipy.io.savemat(data / DESIGN_REL, {"stimulus": cells})
    return _index_case(data, tmp, "designmatrixGLMsingle.mat", "cell 4 (visB) has 47 onsets", "expected 48")


def c_imagery_truncated_betas(world, tmp):
    data = _copy_data(world, tmp)
    path = data / IMAGERY_BETAS_REL
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return _index_case(data, tmp, "betas_nsdimagery.nii.gz")


def c_imagery_betas_wrong_count(world, tmp):
    data = _copy_data(world, tmp)
    path = data / IMAGERY_BETAS_REL
    _rewrite_nifti(path, np.asarray(nib.load(path).dataobj)[..., :719])
    return _index_case(data, tmp, "betas_nsdimagery.nii.gz", "719", "720")


def c_imagery_set_b_wrong_image(world, tmp):
    data = _copy_data(world, tmp)
    png = sorted((data / SETB_DIR).glob("*.png"))[0]
    pixels = np.asarray(Image.open(png))
    Image.fromarray(np.ascontiguousarray(pixels[:, ::-1].transpose(1, 0, 2))).save(png)  # another picture
    return _index_case(data, tmp, png.name, "imgBrick", "expected r >=")


def c_imagery_trials_override_missing(world, tmp):
    case = _index_case(world["data"], tmp, "nsdimagery_trials_subj01.tsv", "not found")
    case.args += ["--imagery-trials",
                  str(world["data"] / "nsddata/experiments/nsdimagery/nsdimagery_trials_subj01.tsv")]
    return case


def c_unknown_subject(world, tmp):
    return _index_case(world["data"], tmp, "'subj09'", "choose one of", subject="subj09")


def c_subject_not_in_release(world, tmp):
    return _index_case(world["data"], tmp, "subj02", "nsdgeneral.nii.gz", "File not found", subject="subj02")


def c_index_unwritable_output(world, tmp):
    blocker = tmp / "a_file"
    blocker.write_text("not a folder\n")
    case = _index_case(world["data"], tmp, "a_file", "is not a folder")
    case.args[case.args.index("--output") + 1] = str(blocker / "idx" / f"{SUBJ}.parquet")
    case.args[case.args.index("--cache-root") + 1] = str(tmp / "cache")
    case.watch += [tmp / "cache"]
    return case


def c_train_unwritable_output(world, tmp):
    blocker = tmp / "a_file"
    blocker.write_text("not a folder\n")
    case = _train_case(world, tmp, world[SUBJ], "a_file", "expected a writable")
    case.args[case.args.index("--output-dir") + 1] = str(blocker / "ckpt")
    return case


def c_empty_split(world, tmp):
    from fmri2img.data.schema import make_metadata, read_index, write_index

    index = _copy_index(world, tmp)
    frame = read_index(index)
    attrs = dict(frame.attrs)
    frame.loc[frame["split"] == "train", "split"] = "val"  # no training trials left
    write_index(frame, index, make_metadata(attrs["sources"], attrs["split_manifest_sha256"], attrs["data_root"]))
    return _train_case(world, tmp, index, "'train'", "empty split")


def c_index_old_schema(world, tmp):
    index = _copy_index(world, tmp)
    table = pq.read_table(index)
    meta = dict(table.schema.metadata)
    meta[b"fmri2img.schema_version"] = b"0"
    pq.write_table(table.replace_schema_metadata(meta), index)
    _reseal(index)  # a consistent file of an older version, not a torn one
    return _train_case(world, tmp, index, f"{SUBJ}.parquet", "schema version '0'", "expected 2")


def c_index_edited_after_checksum(world, tmp):
    index = _copy_index(world, tmp)
    table = pq.read_table(index)
    pq.write_table(table.slice(0, table.num_rows - 1), index)  # sidecar left as recorded
    return _train_case(world, tmp, index, f"{SUBJ}.parquet", "changed since it was written")


def c_index_missing(world, tmp):
    return _train_case(world, tmp, tmp / "nope.parquet", "nope.parquet", "Index not found")


def c_train_unknown_config_key(world, tmp):
    cfg = tmp / "train.yaml"
    cfg.write_text("model: ridge\nalphass: [1.0]\n")
    return _train_case(world, tmp, world[SUBJ], "train.yaml", "'alphass'", "allowed keys", extra=("--config", str(cfg)))


def c_train_negative_epochs(world, tmp):
    case = _train_case(world, tmp, world[SUBJ], "epochs=-1", "> 0", extra=("--epochs", "-1"))
    case.args[case.args.index("--model") + 1] = "mlp"
    return case


def _cache_without(world, tmp: Path, prefix: str) -> tuple[Path, str]:
    """A copy of the cache whose embedding set lacks the first stimulus id starting with ``prefix``."""
    from fmri2img.data.schema import read_index
    from fmri2img.embeddings.cache import load_embedding_set, save_embedding_set

    cache = tmp / "cache"
    shutil.copytree(world["cache"], cache)
    emb = load_embedding_set(cache, "synthetic-truth")
    index = read_index(world[SUBJ])
    used = set(index.loc[index["split"] == "train", "stimulus_id"]) if prefix == "nsd-" else set(index["stimulus_id"])
    dropped = next(i for i in emb.ids if i.startswith(prefix) and i in used)
    save_embedding_set(cache, emb.subset([i for i in emb.ids if i != dropped]))
    return cache, dropped


def c_embedding_missing_train_stimulus(world, tmp):
    cache, dropped = _cache_without(world, tmp, "nsd-")
    case = _train_case(world, tmp, world[SUBJ], repr(dropped))
    case.args[case.args.index("--cache-root") + 1] = str(cache)
    return case


def c_embedding_missing_imagery_stimulus(world, tmp):
    cache, dropped = _cache_without(world, tmp, "img-A-")
    case = _eval_case(world, tmp, world["ridge"], repr(dropped))
    case.args[case.args.index("--cache-root") + 1] = str(cache)
    return case


def c_embedding_set_missing(world, tmp):
    return _train_case(world, tmp, world[SUBJ], "'no-such-set'", "not found", extra=("--embeddings", "no-such-set"))


def c_checkpoint_other_voxel_count(world, tmp):
    return _eval_case(world, tmp, world["ridge_w2"], "voxels")


def c_checkpoint_other_model_type(world, tmp):
    return _eval_case(world, tmp, world["ridge"], "'mlp'", "'ridge'", extra=("--model-type", "mlp"))


def c_adapter_wrong_base(world, tmp):
    return _eval_case(world, tmp, world["ridge_other"], "another base checkpoint",
                      extra=("--adapter-checkpoint", str(world["adapter"])))


def _fake_checkpoint(world, tmp: Path, payload: Callable[[Path], None], reseal: bool = True) -> Path:
    """A copy of the ridge checkpoint whose best.pt is replaced by ``payload``; with ``reseal`` its
    metadata records the new file's SHA-256 (a self-consistent but wrong checkpoint)."""
    from fmri2img.core.files import sha256_file

    folder = tmp / "fake_ckpt"
    shutil.copytree(world["ridge"].parent, folder)
    payload(folder / "best.pt")
    if reseal:
        meta = json.loads((folder / "metadata.json").read_text())
        meta["weights_sha256"] = sha256_file(folder / "best.pt")
        (folder / "metadata.json").write_text(json.dumps(meta))
    return folder / "best.pt"


def c_checkpoint_weights_changed(world, tmp):
    ckpt = _fake_checkpoint(world, tmp, lambda p: p.write_bytes(p.read_bytes() + b"\0"), reseal=False)
    return _eval_case(world, tmp, ckpt, "best.pt", "changed since it was recorded")


def c_pt_pickled_object(world, tmp):
    from argparse import Namespace

    ckpt = _fake_checkpoint(world, tmp, lambda p: torch.save(Namespace(weights=[1, 2, 3]), p))
    return _eval_case(world, tmp, ckpt, "best.pt", "pickled Python objects", "expected a flat dict of tensors")


def c_pt_not_tensors(world, tmp):
    ckpt = _fake_checkpoint(world, tmp, lambda p: torch.save({"coef_": [1.0, 2.0], "note": "hi"}, p))
    return _eval_case(world, tmp, ckpt, "best.pt", "tensors")


#: Bytes that are no torch file, chosen so torch.load fails in each of its ways (numpy seeds found by
#: trying): UnpicklingError, IndexError, KeyError, UnicodeDecodeError, and a pickle-protocol warning.
JUNK_PT = {
    "unpickling": lambda: np.random.default_rng(0).bytes(1024),
    "index_error": lambda: np.random.default_rng(17).bytes(1024),
    "key_error": lambda: np.random.default_rng(62).bytes(1024),
    "unicode_error": lambda: np.random.default_rng(54).bytes(1024),
    "protocol_warning": lambda: b"\x80\x26" + np.random.default_rng(0).bytes(1022),
}


def _junk_pt_case(kind: str):
    def case(world, tmp):
        ckpt = _fake_checkpoint(world, tmp, lambda p: p.write_bytes(JUNK_PT[kind]()))
        return _eval_case(world, tmp, ckpt, "best.pt", "expected a flat dict of tensors")

    return case


for _kind in JUNK_PT:
    globals()[f"c_pt_random_bytes_{_kind}"] = _junk_pt_case(_kind)


def c_adapter_pt_random_bytes(world, tmp):
    folder = tmp / "fake_adapter"
    shutil.copytree(world["adapter"].parent, folder)
    (folder / world["adapter"].name).write_bytes(gzip.compress(b"not a torch file"))
    return _eval_case(world, tmp, world["ridge"], world["adapter"].name, "state dict",
                      extra=("--adapter-checkpoint", str(folder / world["adapter"].name)))


def c_eval_k_zero(world, tmp):
    return _eval_case(world, tmp, world["ridge"], "K", "[0]", "expected K > 0", extra=("--k", "0"))


def c_eval_k_negative(world, tmp):
    return _eval_case(world, tmp, world["ridge"], "-3", "expected K > 0", extra=("--k", "1", "--k", "-3"))


def c_eval_checkpoint_missing(world, tmp):
    return _eval_case(world, tmp, tmp / "none" / "best.pt", "best.pt", "not found")


def c_adapt_fraction_zero(world, tmp):
    return _adapt_case(world, tmp, "imagery_fraction=0.0", "(0, 1]", extra=("--imagery-fraction", "0"))


def c_adapt_fraction_above_one(world, tmp):
    return _adapt_case(world, tmp, "imagery_fraction=1.5", "(0, 1]", extra=("--imagery-fraction", "1.5"))


def c_adapt_on_mlp_claim(world, tmp):
    return _adapt_case(world, tmp, "'mlp'", "'ridge'", extra=("--model-type", "mlp"))


def c_ablate_unknown_config_key(world, tmp):
    cfg = tmp / "ablation.yaml"
    cfg.write_text("subjects: [subj01]\ndecoderz: [ridge]\n")
    out = tmp / "abl"
    return Case(["ablate", "--config", str(cfg), "--output-dir", str(out)], ("ablation.yaml", "'decoderz'",
                                                                             "allowed keys"), [out])


def c_ablate_bad_nested_value(world, tmp):
    cfg = tmp / "ablation.yaml"
    cfg.write_text("subjects: [subj01]\nadapt: {imagery_fraction: 2.0}\n")
    out = tmp / "abl"
    return Case(["ablate", "--config", str(cfg), "--output-dir", str(out)], ("imagery_fraction=2.0", "(0, 1]"), [out])


def c_ablate_missing_truth_table(world, tmp):
    cfg = tmp / "ablation.yaml"
    cfg.write_text(f"subjects: [subj01]\ntruth_table: {tmp / 'truth' / 'nope.json'}\n")
    out = tmp / "abl"
    return Case(["ablate", "--config", str(cfg), "--output-dir", str(out)], ("truth_table", "nope.json",
                                                                             "calibrate --write-truth"), [out])


def c_embed_bad_clip_checkpoint(world, tmp):
    bad = tmp / "clip.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(1024))
    cache = tmp / "cache"
    return Case(["embed", "--index", str(world[SUBJ]), "--data-root", str(world["data"]), "--cache-root", str(cache),
                 "--checkpoint", str(bad), "--no-progress"], ("clip.pt", "refused by weights_only=True"), [cache])


def c_synth_unwritable_out(world, tmp):
    blocker = tmp / "a_file"
    blocker.write_text("not a folder\n")
    return Case(["synth", "--out", str(blocker / "world"), "--subject", SUBJ], ("a_file", "expected a writable"),
                [blocker])


def c_synth_unknown_subject(world, tmp):
    out = tmp / "world"
    return Case(["synth", "--out", str(out), "--subject", "subj9"], ("'subj9'", "choose one of"), [out])


def c_figures_missing_results(world, tmp):
    (tmp / "abl").mkdir()
    out = tmp / "figs"
    return Case(["figures", "--ablation-dir", str(tmp / "abl"), "--output-dir", str(out)],
                ("results_table.csv",), [out])


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_") and callable(fn)}


def _check(exit_code: int, stderr: str, output: str, case: Case, before: set[Path], tmp: Path) -> None:
    where = f"{case.args[0]}: stderr={stderr!r} output={output!r}"
    assert exit_code == 2, where
    assert "Traceback" not in output and "Traceback" not in stderr, where
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), where
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert _files(case.watch) == before, f"new files after a failed {case.args[0]}: {_files(case.watch) - before}"
    leftovers = [p for p in tmp.rglob(f"{TMP_PREFIX}*")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, world, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = CASES[name](world, tmp_path)
    before = _files(case.watch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, [*case.args, "--tracking-uri", store], env=case.env or None)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug, not a user error: show its traceback
    _check(result.exit_code, result.stderr, result.output, case, before, tmp_path)
    # a warning Python shows by default would be a second stderr line for a user
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)]
    assert not shown, [f"{w.category.__name__}: {w.message}" for w in shown]


# --- through the installed console script (fresh process, as a user runs it) ------------

SCRIPT = Path(sys.executable).with_name("fmri2img")


def _run_script(args: list[str], tmp: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    start = time.monotonic()
    proc = subprocess.run([str(SCRIPT), *args], cwd=tmp, env=full_env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed next to this interpreter")
def test_tracking_uri_unreachable_fails_fast(world, tmp_path):
    case = _train_case(world, tmp_path, world[SUBJ], DEAD_TRACKING_URI, "unreachable")
    before = _files(case.watch)
    proc, seconds = _run_script([*case.args, "--tracking-uri", DEAD_TRACKING_URI], tmp_path)
    _check(proc.returncode, proc.stderr, proc.stdout + proc.stderr, case, before, tmp_path)
    # the interpreter start (torch, mlflow imports) dominates; the probe itself is bounded at a few seconds
    assert seconds < FAIL_FAST_S + 30, seconds


def test_tracking_uri_unreachable_in_process(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = _index_case(world["data"], tmp_path, DEAD_TRACKING_URI, "unreachable")
    before = _files(case.watch)
    start = time.monotonic()
    result = runner.invoke(app, [*case.args, "--tracking-uri", DEAD_TRACKING_URI])
    assert time.monotonic() - start < FAIL_FAST_S
    _check(result.exit_code, result.stderr, result.output, case, before, tmp_path)


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed next to this interpreter")
def test_clip_hub_tag_offline(world, store, tmp_path):
    cache = tmp_path / "cache"
    case = Case(["embed", "--index", str(world[SUBJ]), "--data-root", str(world["data"]), "--cache-root", str(cache),
                 "--pretrained", "openai", "--no-progress"], ("ViT-B-32", "openai", "HF_HUB_OFFLINE"), [cache])
    before = _files(case.watch)
    hub_home = tmp_path / "empty_hf_home"  # no cached weights, whatever this machine holds
    proc, _ = _run_script([*case.args, "--tracking-uri", store], tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(hub_home), "XDG_CACHE_HOME": str(hub_home)})
    _check(proc.returncode, proc.stderr, proc.stdout + proc.stderr, case, before, tmp_path)


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed next to this interpreter")
def test_missing_data_root_console_script(tmp_path, store):
    case = _index_case(tmp_path / "absent", tmp_path, "absent", "Data root not found")
    before = _files(case.watch)
    proc, _ = _run_script([*case.args, "--tracking-uri", store], tmp_path)
    _check(proc.returncode, proc.stderr, proc.stdout + proc.stderr, case, before, tmp_path)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 25
