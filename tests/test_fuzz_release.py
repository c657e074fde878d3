"""Fuzz the NSD-Imagery release reader (issue 25): mutate one file of a small release in the published
layout (tests/_imagery_release.py) and read it with :func:`read_release`. The property: it returns,
or raises a :class:`~fmri2img.core.errors.Fmri2imgError` (the CLI's one-line exit 2) naming a file;
never another exception. ``fmri2img index`` calls this reader, so the CLI property follows.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from _fuzz import SCALES, byte_mutation, gzip_mutation, run_fuzz
from _imagery_release import TARGETS, build_release

from fmri2img.core.errors import Fmri2imgError
from fmri2img.data import nsd_constants as C
from fmri2img.data.nsd_imagery_release import read_release

#: Examples per file in the default run (the slow run has 10x).
EXAMPLES = 6
#: Files of the release, as (fixture.path arguments, mutation); header-biased bit flips for binary files.
FILES = {
    "design": (("design",), lambda raw: byte_mutation(raw, head=512)),
    "pair_list_A": (("pair_list",), lambda raw: byte_mutation(raw, head=512)),
    "pair_list_C": (("pair_list",), lambda raw: byte_mutation(raw, head=512)),
    "behaviour_visA": (("bdata",), lambda raw: byte_mutation(raw, text=True)),
    "behaviour_attB": (("bdata",), lambda raw: byte_mutation(raw, text=True)),
    "behaviour_imgC_2": (("bdata",), lambda raw: byte_mutation(raw, text=True)),
    "betas": (("betas",), lambda raw: gzip_mutation(raw, head=352)),
    "stimuli_hdf5": (("stimuli",), lambda raw: byte_mutation(raw, head=2048)),
    "target_png": (("target",), lambda raw: byte_mutation(raw, head=64)),
}


def _path(fx, name: str) -> Path:
    what = FILES[name][0][0]
    if what == "pair_list":
        return fx.path(what, stim_set=name[-1])
    if what == "bdata":
        return fx.path(what, run=name.removeprefix("behaviour_"))
    if what == "betas":
        return fx.path(what, ext="nii.gz")
    if what == "target":
        return fx.path(what, stim_set="B", name=TARGETS["B"][0])
    return fx.path(what)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return build_release(tmp_path_factory.mktemp("fuzz_release") / "release")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(FILES))
def test_fuzz_release_file(release, name, scale):
    source = _path(release, name)
    rel = source.relative_to(release.root)
    raw = source.read_bytes()

    def check(case):
        kind, data = case
        with tempfile.TemporaryDirectory(prefix="fuzz-release-") as tmp:
            root = Path(tmp) / "release"
            shutil.copytree(release.root, root)
            (root / rel).write_bytes(data)
            try:
                read_release(root, release.subject, progress=False)
            except Fmri2imgError as exc:
                message = str(exc)
                assert "\n" not in message.strip() or len(message.splitlines()) <= 3, (kind, message)
                assert str(root) in message or source.name in message or "nsd" in message.lower(), (kind, message)

    run_fuzz(f"release/{name}", FILES[name][1](raw), check, EXAMPLES * scale)


def test_release_files_are_the_published_names(release):
    """The fuzzed files are the ones the reader opens (a renamed fixture would fuzz nothing)."""
    assert _path(release, "design").name == Path(C.IMAGERY_DESIGN).name
    for name in FILES:
        assert _path(release, name).is_file(), name
