"""Atomic writes, deterministic JSON, safe loading, checksums."""

from __future__ import annotations

import numpy as np
import pytest

from fmri2img.core import files
from fmri2img.core.errors import ChecksumError, CorruptFileError, MissingInputError, OutputError


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    files.write_text(target, "one")
    files.write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_json_is_deterministic_and_handles_numpy(tmp_path):
    obj = {"b": np.float32(1.5), "a": np.arange(3), "nan": float("nan")}
    text = files.dumps_json(obj)
    assert text == files.dumps_json(dict(reversed(list(obj.items()))))
    assert '"nan": null' in text and text.index('"a"') < text.index('"b"')
    files.write_json(tmp_path / "x.json", obj)
    assert files.read_json(tmp_path / "x.json")["a"] == [0, 1, 2]


def test_read_json_errors(tmp_path):
    with pytest.raises(MissingInputError, match="missing.json"):
        files.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="bad.json"):
        files.read_json(tmp_path / "bad.json")


def test_npy_roundtrip_without_pickle(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    files.save_npy(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(files.load_npy(tmp_path / "a.npy"), arr)
    assert isinstance(files.load_npy(tmp_path / "a.npy", mmap=True), np.memmap)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptFileError, match="obj.npy"):
        files.load_npy(tmp_path / "obj.npy")


def test_sha256_and_verify(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    digest = files.sha256_file(path)
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    files.verify_sha256(path, digest)
    path.write_bytes(b"abd")
    with pytest.raises(ChecksumError, match="changed"):
        files.verify_sha256(path, digest)


def test_resolve_under_refuses_escape(tmp_path):
    assert files.resolve_under(tmp_path, "a/b.txt") == (tmp_path / "a" / "b.txt").resolve()
    with pytest.raises(CorruptFileError, match="escapes"):
        files.resolve_under(tmp_path, "../etc/passwd")
    with pytest.raises(CorruptFileError, match="escapes"):
        files.resolve_under(tmp_path, "/etc/passwd")


def test_ensure_dir_unwritable(tmp_path):
    # Permissions do not stop root (CI runs as root), so use a path whose parent is a file.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a-file"):
        files.ensure_dir(blocker / "sub")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        assert files.current_umask() == umask
        files.write_text(tmp_path / "a.txt", "x")
        files.save_npy(tmp_path / "b.npy", np.zeros(2))
        with open(tmp_path / "plain.txt", "w") as f:  # what a plain open() gives, for comparison
            f.write("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.txt", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
