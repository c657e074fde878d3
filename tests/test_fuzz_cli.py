"""Fuzz every file the CLI reads (issue 25): mutate one input of a tiny synthetic world and run the
real command (``index``, ``train``, ``eval``, ``ablate``) on it in-process; the property is
checked by :func:`_fuzz.check_cli` (exit 0 or 2, one line naming the file, no traceback, nothing
half-written, MLflow runs FAILED with the error tag).

The world, its index, embeddings and a ridge checkpoint are built once per module; each example
mutates a copy in its own temporary folder. ``-m slow`` runs every target with 10x the examples.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from _fuzz import SCALES, byte_mutation, check_cli, gzip_mutation, json_mutation, run_fuzz, yaml_mutation
from _world import build_tiny
from hypothesis import strategies as st

from fmri2img.core.config import save_config
from fmri2img.core.files import sha256_file

SUBJ = "subj01"
DATA_FILES = {  # release-relative paths of the files `fmri2img index` reads
    "responses": f"nsddata/ppdata/{SUBJ}/behav/responses.tsv",
    "stim_info": "nsddata/experiments/nsd/nsd_stim_info_merged.csv",
    "expdesign": "nsddata/experiments/nsd/nsd_expdesign.mat",
    "imagery_behaviour": f"nsddata/bdata/nsdimagery/nsdimagery_{SUBJ}_visA.tsv",
    "imagery_design": "nsddata/experiments/nsdimagery/designmatrixGLMsingle.mat",
    "imagery_betas_nifti": f"nsddata_betas/ppdata/{SUBJ}/func1pt8mm/nsdimagerybetas_fithrf_GLMdenoise_RR/"
                           "betas_nsdimagery.nii.gz",
    "mask": f"nsddata/ppdata/{SUBJ}/func1pt8mm/roi/nsdgeneral.nii.gz",
    "betas_nifti": f"nsddata_betas/ppdata/{SUBJ}/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.nii.gz",
    "betas_hdf5": f"nsddata_betas/ppdata/{SUBJ}/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.hdf5",
    "stimuli_hdf5": "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5",
}
#: NIfTI-1 header size (the NIfTI-1 standard: 348 bytes + 4 extension bytes): bit flips aim there half the time.
NIFTI_HEADER_BYTES = 352
#: HDF5 superblock and root object headers sit in the first 2 KiB of a small h5py file.
HDF5_HEADER_BYTES = 2048
#: Examples per target in the default run (the slow run has 10x); sized so the suite stays well under 2 min.
EXAMPLES_CONFIG, EXAMPLES_INDEX, EXAMPLES_TRAIN, EXAMPLES_EVAL = 15, 4, 4, 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny world + index + embeddings (+ HDF5 session betas, a ridge checkpoint, a store)."""
    from fmri2img.stages.train import TrainConfig, train_decoder

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz_world")
    store = f"sqlite:///{root / 'mlflow.db'}"
    paths = build_tiny(root / "w")
    img = nib.load(paths["data"] / DATA_FILES["betas_nifti"])
    with h5py.File(paths["data"] / DATA_FILES["betas_hdf5"], "w") as fh:  # NSD's layout: (trials, Z, Y, X)
        fh.create_dataset("betas", data=np.asarray(img.dataobj).transpose(3, 2, 1, 0), chunks=True)
    imagery = nib.load(paths["data"] / DATA_FILES["imagery_betas_nifti"])  # --beta-format covers NSD-Imagery too
    with h5py.File((paths["data"] / DATA_FILES["imagery_betas_nifti"]).with_suffix("").with_suffix(".hdf5"),
                   "w") as fh:
        fh.create_dataset("betas", data=np.asarray(imagery.dataobj).transpose(3, 2, 1, 0), chunks=True)
    ckpt = train_decoder(paths[SUBJ], root / "ckpt", TrainConfig(model="ridge"), cache_root=paths["cache"],
                         tracking_uri=store, progress=False).checkpoint
    configs = root / "configs"
    save_config(TrainConfig(model="ridge"), configs / "train.yaml")
    from fmri2img.evaluation.scoring import EvalOptions

    save_config(EvalOptions(n_boot=20, n_perm=20), configs / "eval.yaml")
    shutil.copy(Path(__file__).parents[1] / "projects/imagery/configs/ablation.yaml", configs / "ablation.yaml")
    return {**paths, "ckpt": Path(ckpt).parent, "store": store, "configs": configs, "root": root}


@dataclass(frozen=True)
class Target:
    """One input file: where it lives in the copy, how it is mutated, and which command reads it."""

    name: str
    rel: str                     # path relative to the copied tree
    tree: str                    # which tree is copied: 'data', 'cache', 'ckpt'
    mutate: Callable[[bytes], st.SearchStrategy]
    command: str                 # 'index', 'train' or 'eval'
    extra: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # names the error may use besides the file's own


def _text(raw: bytes) -> st.SearchStrategy:
    return byte_mutation(raw, text=True)


def _nifti(raw: bytes) -> st.SearchStrategy:
    return gzip_mutation(raw, head=NIFTI_HEADER_BYTES)


def _hdf5(raw: bytes) -> st.SearchStrategy:
    return byte_mutation(raw, head=HDF5_HEADER_BYTES)


def _binary(raw: bytes) -> st.SearchStrategy:
    return byte_mutation(raw, head=256)


INDEX_TARGETS = [
    Target("responses", DATA_FILES["responses"], "data", _text, "index"),
    Target("stim_info", DATA_FILES["stim_info"], "data", _text, "index"),
    Target("expdesign", DATA_FILES["expdesign"], "data", _binary, "index"),
    Target("imagery_behaviour", DATA_FILES["imagery_behaviour"], "data", _text, "index"),
    Target("imagery_design", DATA_FILES["imagery_design"], "data", _binary, "index"),
    Target("mask", DATA_FILES["mask"], "data", _nifti, "index"),
    Target("betas_nifti", DATA_FILES["betas_nifti"], "data", _nifti, "index", ("--beta-format", "nifti")),
    Target("betas_hdf5", DATA_FILES["betas_hdf5"], "data", _hdf5, "index", ("--beta-format", "hdf5")),
    Target("stimuli_hdf5", DATA_FILES["stimuli_hdf5"], "data", _hdf5, "index"),
    Target("split_manifest", f"manifests/{SUBJ}_splits.json", "data", json_mutation, "index"),
    Target("checksum_memo", f"cache/checksums/{SUBJ}.json", "data", json_mutation, "index"),
]
TRAIN_TARGETS = [
    Target("index_parquet", f"indices/{SUBJ}.parquet", "cache", _binary, "train"),
    Target("index_sidecar", f"indices/{SUBJ}.parquet.sha256", "cache", _text, "train"),
    # an id changed inside ids.json shows as a stimulus missing from the set, named by its tag (folder name)
    Target("embedding_ids", "clip/synthetic-truth/ids.json", "cache", json_mutation, "train",
           names=("'synthetic-truth'",)),
    Target("embedding_npy", "clip/synthetic-truth/embeddings.npy", "cache", _binary, "train"),
    Target("embedding_meta", "clip/synthetic-truth/meta.json", "cache", json_mutation, "train"),
]
EVAL_TARGETS = [
    Target("checkpoint_metadata", "metadata.json", "ckpt", json_mutation, "eval"),
    Target("checkpoint_weights", "best.pt", "ckpt", _binary, "eval"),
]


def _prepare(world, target: Target, tmp: Path, data: bytes, reseal: bool) -> tuple[list[str], list[Path]]:
    """Copy the tree ``target`` lives in, write the mutated file; return (command args, outputs)."""
    out = tmp / "out"
    if target.command == "index":
        data_root, cache = tmp / "data", tmp / "cache"
        shutil.copytree(world["data"], data_root)
        (tmp / "manifests").mkdir()
        shutil.copy(world["manifests"] / f"{SUBJ}_splits.json", tmp / "manifests")
        shutil.copytree(world["cache"] / "checksums", cache / "checksums")
        (tmp / target.rel).parent.mkdir(parents=True, exist_ok=True)
        path = tmp / target.rel if not target.rel.startswith("nsddata") else data_root / target.rel
        path.write_bytes(data)
        args = ["index", "--subject", SUBJ, "--data-root", str(data_root), "--cache-root", str(cache),
                "--output", str(out / f"{SUBJ}.parquet"), "--manifest-dir", str(tmp / "manifests"),
                "--no-progress", *target.extra]
        return args, [out / f"{SUBJ}.parquet"]
    if target.command == "train":
        cache = tmp / "cache"
        shutil.copytree(world["cache"], cache)
        (cache / target.rel).write_bytes(data)
        index = cache / "indices" / f"{SUBJ}.parquet"
        if reseal and target.name == "index_parquet":  # a consistent file, so the Parquet reader sees it
            index.with_name(index.name + ".sha256").write_text(f"{sha256_file(index)}  {index.name}\n")
        args = ["train", "--index", str(index), "--model", "ridge", "--output-dir", str(out),
                "--cache-root", str(cache), "--experiment", "fuzz"]
        return args, [out / "best.pt", out / "metadata.json"]
    ckpt = tmp / "ckpt"
    shutil.copytree(world["ckpt"], ckpt)
    (ckpt / target.rel).write_bytes(data)
    if reseal and target.name == "checkpoint_weights":  # metadata records the new bytes: torch.load sees them
        meta = json.loads((ckpt / "metadata.json").read_text())
        meta["weights_sha256"] = sha256_file(ckpt / "best.pt")
        (ckpt / "metadata.json").write_text(json.dumps(meta))
    cache = tmp / "cache"
    shutil.copytree(world["cache"], cache)
    args = ["eval", "--index", str(cache / "indices" / f"{SUBJ}.parquet"), "--checkpoint", str(ckpt / "best.pt"),
            "--output-dir", str(out), "--cache-root", str(cache), "--n-boot", "20", "--n-perm", "20",
            "--experiment", "fuzz"]
    return args, [out / "metrics.json"]


def _source(world, target: Target) -> Path:
    if target.tree == "data":
        if target.rel.startswith("manifests/"):
            return world["manifests"] / Path(target.rel).name
        if target.rel.startswith("cache/"):
            return world["cache"] / target.rel.removeprefix("cache/")
        return world["data"] / target.rel
    return (world["cache"] if target.tree == "cache" else world["ckpt"]) / target.rel


def _fuzz_target(world, target: Target, examples: int) -> None:
    raw = _source(world, target).read_bytes()
    strategy = st.tuples(target.mutate(raw), st.booleans())

    def check(case):
        (kind, data), reseal = case
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            args, outputs = _prepare(world, target, Path(tmp), data, reseal)
            check_cli(args, names=(Path(target.rel).name, *target.names), workdir=Path(tmp), store=world["store"],
                      outputs=outputs, label=f"{target.name}/{kind}")

    run_fuzz(f"cli/{target.name}", strategy, check, examples)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("target", INDEX_TARGETS, ids=lambda t: t.name)
def test_fuzz_index_inputs(world, target, scale, monkeypatch):
    monkeypatch.chdir(world["root"])
    _fuzz_target(world, target, EXAMPLES_INDEX * scale)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("target", TRAIN_TARGETS, ids=lambda t: t.name)
def test_fuzz_train_inputs(world, target, scale, monkeypatch):
    monkeypatch.chdir(world["root"])
    _fuzz_target(world, target, EXAMPLES_TRAIN * scale)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("target", EVAL_TARGETS, ids=lambda t: t.name)
def test_fuzz_eval_inputs(world, target, scale, monkeypatch):
    monkeypatch.chdir(world["root"])
    _fuzz_target(world, target, EXAMPLES_EVAL * scale)


# --- YAML configs: parsed and validated before any work --------------------------------------------

CONFIG_COMMANDS = {  # command -> (config file, args after the config; a valid config ends at their error)
    "ablate": ("ablation.yaml", lambda tmp: ["--output-dir", str(tmp / "a_file" / "out"), "--no-figures"],
               "a_file"),
    "train": ("train.yaml", lambda tmp: ["--index", str(tmp / "nope.parquet")], "nope.parquet"),
    "eval": ("eval.yaml", lambda tmp: ["--index", str(tmp / "nope.parquet"), "--checkpoint", str(tmp / "c.pt"),
                                       "--output-dir", str(tmp / "eval")], "nope.parquet"),
}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_fuzz_config(world, command, scale, monkeypatch):
    monkeypatch.chdir(world["root"])
    filename, tail, valid_error = CONFIG_COMMANDS[command]
    raw = (world["configs"] / filename).read_bytes()

    def check(case):
        kind, data = case
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            tmp = Path(tmp)
            (tmp / "a_file").write_text("a file where a folder is expected\n")
            (tmp / filename).write_bytes(data)
            args = [command, "--config", str(tmp / filename), *tail(tmp)]
            outcome = check_cli(args, names=(filename, valid_error), workdir=tmp, store=world["store"],
                                label=f"{command} config/{kind}")
            assert outcome.exit_code == 2  # a valid config still stops at the planted error

    run_fuzz(f"config/{command}", yaml_mutation(raw), check, EXAMPLES_CONFIG * scale)


def test_mutations_reach_the_parsers(world):
    """The mutated inside of a gzip is what the reader sees (not only a gzip CRC error)."""
    raw = (world["data"] / DATA_FILES["mask"]).read_bytes()
    inner = gzip.decompress(raw)
    assert inner[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")  # sizeof_hdr 348: a NIfTI-1 header


# --- permissions: unreadable input, unwritable output folder or tracking store ----------------------


def _denied(path: Path, mode: int, probe: Callable[[], object]) -> None:
    """chmod ``path`` to ``mode``; skip when the OS still allows ``probe`` (root ignores permissions)."""
    path.chmod(mode)
    try:
        probe()
    except PermissionError:
        return
    path.chmod(0o755 if path.is_dir() else 0o644)
    pytest.skip(f"chmod {mode:o} does not deny access here (running as root?): cannot test a permission error")


def test_unreadable_config(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "train.yaml"
    shutil.copy(world["configs"] / "train.yaml", config)
    _denied(config, 0o000, config.read_bytes)
    outcome = check_cli(["train", "--config", str(config), "--index", str(world[SUBJ])], names=("train.yaml",),
                        workdir=tmp_path, store=world["store"])
    assert outcome.exit_code == 2


def test_unwritable_output_folder(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = tmp_path / "locked"
    parent.mkdir()
    _denied(parent, 0o555, lambda: (parent / "probe").write_text("x"))
    outcome = check_cli(["train", "--index", str(world[SUBJ]), "--model", "ridge", "--output-dir",
                         str(parent / "ckpt"), "--cache-root", str(world["cache"])], names=("locked",),
                        workdir=tmp_path, store=world["store"], outputs=[parent / "ckpt"])
    assert outcome.exit_code == 2


def test_unwritable_tracking_store(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "store"
    folder.mkdir()
    _denied(folder, 0o555, lambda: (folder / "probe").write_text("x"))
    outcome = check_cli(["index", "--subject", SUBJ, "--data-root", str(world["data"]), "--cache-root",
                         str(tmp_path / "cache"), "--output", str(tmp_path / "out" / "i.parquet"), "--manifest-dir",
                         str(tmp_path / "m"), "--no-progress"], names=("store",), workdir=tmp_path,
                        store=f"sqlite:///{folder / 'mlflow.db'}", outputs=[tmp_path / "out" / "i.parquet"],
                        store_usable=False)
    assert outcome.exit_code == 2


@pytest.mark.parametrize("where", ["output", "store"])
def test_output_or_store_under_a_regular_file(world, tmp_path, monkeypatch, where):
    """The unwritable locations that also fail as root: a regular file where a folder is needed."""
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    out = blocker / "eval" if where == "output" else tmp_path / "eval"
    store = f"sqlite:///{blocker / 'mlflow.db'}" if where == "store" else world["store"]
    args = ["eval", "--index", str(world[SUBJ]), "--checkpoint", str(world["ckpt"] / "best.pt"), "--output-dir",
            str(out), "--cache-root", str(world["cache"]), "--n-boot", "20", "--n-perm", "20"]
    outcome = check_cli(args, names=("a_file",), workdir=tmp_path, store=store, outputs=[out / "metrics.json"],
                        store_usable=where == "output")
    assert outcome.exit_code == 2
