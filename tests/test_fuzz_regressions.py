"""Minimal examples of the crashes the fuzz suite found (issue 25), kept as regression tests.

Each one ended in a Python traceback (exit 1) before its reader was fixed; now each gives exit 2 and
one line naming the file, or (for caches the command rebuilds anyway) a normal run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _fuzz import check_cli
from _imagery_release import build_release
from _nsd_fixtures import write_hand_tables
from _world import build_tiny

from fmri2img.core.errors import CorruptFileError
from fmri2img.core.files import sha256_file
from fmri2img.data import nsd_constants
from fmri2img.data.nsd_imagery_release import read_release

SUBJ = "subj01"
TRIALS_NAME = f"nsdimagery_trials_{SUBJ}.tsv"  # the hand-written override table (write_hand_tables)
EXPDESIGN_REL = "nsddata/experiments/nsd/nsd_expdesign.mat"
RESPONSES_REL = f"nsddata/ppdata/{SUBJ}/behav/responses.tsv"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_regressions")
    return {**build_tiny(root / "w"), "store": f"sqlite:///{root / 'mlflow.db'}"}


def _index(world, tmp: Path, names: tuple[str, ...], data: Path | None = None, expect_exit: int = 2,
           extra: tuple[str, ...] = ()):
    out = tmp / "out" / f"{SUBJ}.parquet"
    args = ["index", "--subject", SUBJ, "--data-root", str(data or world["data"]), "--cache-root",
            str(tmp / "cache"), "--output", str(out), "--manifest-dir", str(tmp / "manifests"), "--no-progress",
            *extra]
    outcome = check_cli(args, names=names, workdir=tmp, store=world["store"], outputs=[out] if expect_exit else [])
    assert outcome.exit_code == expect_exit, outcome.stderr
    return outcome


def _data_copy(world, tmp: Path) -> Path:
    shutil.copytree(world["data"], tmp / "data")
    return tmp / "data"


def test_non_utf8_config(world, tmp_path):
    """UnicodeDecodeError from pathlib.read_text (the crash issue 25 reports)."""
    config = tmp_path / "ablation.yaml"
    config.write_bytes(b"subjects: [subj01]\n\x80\n")
    outcome = check_cli(["ablate", "--config", str(config), "--output-dir", str(tmp_path / "out")],
                        names=("ablation.yaml",), workdir=tmp_path, store=world["store"])
    assert outcome.exit_code == 2 and "not UTF-8 text" in outcome.stderr and "offset 19" in outcome.stderr


def test_non_utf8_split_manifest_is_rewritten(world, tmp_path):
    """An existing split manifest that is not UTF-8 crashed the byte comparison; now it is rewritten."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / f"{SUBJ}_splits.json").write_bytes(b"\xff{}")
    _index(world, tmp_path, (), expect_exit=0)
    assert json.loads((tmp_path / "manifests" / f"{SUBJ}_splits.json").read_text())["subject"] == SUBJ


def test_checksum_memo_not_an_object(world, tmp_path):
    """A checksum memo holding JSON ``null`` crashed with AttributeError; it is only a cache: re-hash."""
    memo = tmp_path / "cache" / "checksums" / f"{SUBJ}.json"
    memo.parent.mkdir(parents=True)
    memo.write_text("null")
    _index(world, tmp_path, (), expect_exit=0)


def test_imagery_trial_number_beyond_int32(world, tmp_path):
    """A run number of 2**31 in the hand-written trial table (``--imagery-trials``) crashed with a pandas
    TypeError (int64 -> Int32) in the index frame."""
    data = _data_copy(world, tmp_path)
    write_hand_tables(data, SUBJ)
    trials = data / nsd_constants.IMAGERY_TRIALS.format(subject=SUBJ)
    lines = trials.read_text().splitlines()
    header, first = lines[0].split("\t"), lines[1].split("\t")
    first[header.index("run")] = "2147483648"
    trials.write_text("\n".join([lines[0], "\t".join(first), *lines[2:]]) + "\n")
    outcome = _index(world, tmp_path, (TRIALS_NAME,), data, extra=("--imagery-trials", str(trials)))
    assert "'run'" in outcome.stderr and "2147483648" in outcome.stderr


def test_truncated_expdesign(world, tmp_path):
    """A truncated nsd_expdesign.mat raised scipy's MatReadError (not a ValueError)."""
    data = _data_copy(world, tmp_path)
    raw = (data / EXPDESIGN_REL).read_bytes()
    (data / EXPDESIGN_REL).write_bytes(raw[:200])
    _index(world, tmp_path, ("nsd_expdesign.mat",), data)


def test_responses_text_in_a_number_column(world, tmp_path):
    """A non-number in responses.tsv's SESSION column crashed in ``to_numpy(np.int64)``."""
    data = _data_copy(world, tmp_path)
    lines = (data / RESPONSES_REL).read_text().splitlines()
    header, first = lines[0].split("\t"), lines[1].split("\t")
    first[header.index("SESSION")] = "x"
    (data / RESPONSES_REL).write_text("\n".join([lines[0], "\t".join(first), *lines[2:]]) + "\n")
    outcome = _index(world, tmp_path, ("responses.tsv",), data)
    assert "'SESSION'" in outcome.stderr


def _train(world, tmp: Path, cache: Path, names: tuple[str, ...]):
    out = tmp / "ckpt"
    args = ["train", "--index", str(cache / "indices" / f"{SUBJ}.parquet"), "--model", "ridge", "--output-dir",
            str(out), "--cache-root", str(cache)]
    outcome = check_cli(args, names=names, workdir=tmp, store=world["store"], outputs=[out / "best.pt"])
    assert outcome.exit_code == 2, outcome.stderr
    return outcome


def test_index_sidecar_only_whitespace(world, tmp_path):
    """A sidecar holding only a newline crashed with IndexError (``"".split()[0]``)."""
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    (cache / "indices" / f"{SUBJ}.parquet.sha256").write_text("\n")
    _train(world, tmp_path, cache, (f"{SUBJ}.parquet",))


def test_index_parquet_metadata_not_utf8(world, tmp_path):
    """Parquet key-value metadata that is not UTF-8 crashed in ``bytes.decode``."""
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    index = cache / "indices" / f"{SUBJ}.parquet"
    table = pq.read_table(index)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"fmri2img.note": b"\xff"}), index)
    index.with_name(index.name + ".sha256").write_text(f"{sha256_file(index)}  {index.name}\n")
    outcome = _train(world, tmp_path, cache, (f"{SUBJ}.parquet",))
    assert "not UTF-8" in outcome.stderr


@pytest.mark.parametrize(("file", "content"), [("meta.json", "null"), ("ids.json", "[]")])
def test_embedding_set_file_not_an_object(world, tmp_path, file, content):
    """A set's meta.json / ids.json that is not a JSON object was blamed on the other file."""
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    (cache / "clip" / "synthetic-truth" / file).write_text(content)
    _train(world, tmp_path, cache, (file,))


def test_pair_list_bad_element_type(tmp_path):
    """A flipped high bit in a MATLAB element's type tag raised scipy's UnboundLocalError in loadmat."""
    fx = build_release(tmp_path / "release")
    path = fx.path("pair_list", stim_set="C")
    raw = bytearray(path.read_bytes())
    tag = b"\t\x00\x00\x00\x08\x00\x00\x00"  # miDOUBLE, 8 bytes: the pair list's numeric ids
    at = [i for i in range(len(raw)) if raw.startswith(tag, i)][2]
    raw[at + 3] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="C_pair_list.mat"):
        read_release(fx.root, fx.subject, progress=False)


def test_pair_list_unknown_element_type_no_segfault(tmp_path):
    """A MAT v5 element type of 25 (miDOUBLE's 9 with bit 4 flipped) crashed scipy.io.loadmat with a
    segmentation fault (slow fuzz run); now refused before scipy sees it. Run in a child process, so a
    regression fails this test instead of killing the test run."""
    fx = build_release(tmp_path / "release")
    path = fx.path("pair_list", stim_set="C")
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\t\x00\x00\x00\x08\x00\x00\x00")] = 25  # the first miDOUBLE tag
    path.write_bytes(bytes(raw))
    code = ("import sys; from fmri2img.data.nsd_imagery_mat import read_pair_list\n"
            "try:\n    read_pair_list(sys.argv[1], 'C')\nexcept Exception as exc:\n    print(type(exc).__name__, exc)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.returncode  # -11: segmentation fault
    assert proc.stdout.startswith("CorruptFileError") and "data type 25" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("edit", "raw_error"), [
    (lambda raw: raw[:1016] + b"\xff\xfe" + raw[1016:], RuntimeError),  # "bad symbol table node signature"
    (lambda raw: raw[:962] + bytes([raw[962] ^ 0x20]) + raw[963:], KeyError),  # "message not aligned"
], ids=["inserted_bytes", "bit_flip"])
def test_stimuli_hdf5_damage_h5py_reports_as_key_or_runtime_error(tmp_path, edit, raw_error):
    """h5py raises KeyError / RuntimeError (not OSError) on these damaged nsd_stimuli.hdf5 (slow fuzz run)."""
    import h5py

    fx = build_release(tmp_path / "release")
    path = fx.path("stimuli")
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(raw_error):  # the library's own behaviour: what the reader must translate
        with h5py.File(path, "r") as fh:
            _ = "imgBrick" in fh and fh["imgBrick"].shape
    with pytest.raises(CorruptFileError, match="nsd_stimuli.hdf5"):
        read_release(fx.root, fx.subject, progress=False)


def test_compressed_mat_still_reads(tmp_path):
    """The element walk follows miCOMPRESSED elements (MATLAB's default since v7)."""
    import numpy as np
    import scipy.io

    from fmri2img.data.matfile import loadmat_v5

    scipy.io.savemat(tmp_path / "c.mat", {"x": np.arange(6.0).reshape(2, 3), "c": np.array(["ab", "cd"])},
                     do_compression=True)
    assert loadmat_v5(tmp_path / "c.mat", ("x",))["x"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_checkpoint_params_not_a_mapping(world, tmp_path):
    """Checkpoint metadata whose params is a list crashed in ``dict(meta['params'])``."""
    from fmri2img.stages.train import TrainConfig, train_decoder

    ckpt = Path(train_decoder(world[SUBJ], tmp_path / "ckpt", TrainConfig(model="ridge"), cache_root=world["cache"],
                              tracking_uri=world["store"], progress=False).checkpoint)
    meta = json.loads((ckpt.parent / "metadata.json").read_text())
    meta["params"] = [1, "x"]
    (ckpt.parent / "metadata.json").write_text(json.dumps(meta))
    out = tmp_path / "eval"
    args = ["eval", "--index", str(world[SUBJ]), "--checkpoint", str(ckpt), "--output-dir", str(out),
            "--cache-root", str(world["cache"]), "--n-boot", "20", "--n-perm", "20"]
    outcome = check_cli(args, names=("metadata.json",), workdir=tmp_path, store=world["store"],
                        outputs=[out / "metrics.json"])
    assert outcome.exit_code == 2 and "params" in outcome.stderr
