"""Mutations and the one property of the fuzz suite (issue 25), shared by tests/test_fuzz_*.py.

A *mutation* turns the bytes of a valid file into broken ones: truncation at a random offset, bit
flips, non-UTF-8 bytes, an empty file, a duplicated or dropped line, a token replaced by NaN / Inf /
an extreme or wrongly typed value; structured files (JSON, YAML) also lose keys or get values of the
wrong type. Gzipped files are mutated inside the compression (so the parser behind gzip sees them).

The *property*, checked after every run of a real command on a mutated input: exit code 0 or 2 (a
mutation may leave a file valid); on 2 at most :data:`MAX_STDERR_LINES` lines on stderr, starting
``Error:`` and naming the file (or one of the names given); never a traceback; no temporary file
left anywhere; the command's final output absent; every MLflow run it started FAILED with the
error text in the ``fmri2img.error`` tag (FINISHED on exit 0).

Runs are deterministic: each target has a fixed Hypothesis seed (:func:`run_fuzz`), no example
database, and a bounded example count; :data:`SCALES` gives each fuzz test a default run and a
``slow`` run with :data:`SLOW_FACTOR` times the examples.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fmri2img.cli.main import app
from fmri2img.core.files import TMP_PREFIX
from fmri2img.core.tracking import TAG_ERROR

#: The slow run has this many times the default examples (issue 25: ">= 10x").
SLOW_FACTOR = 10
#: Each fuzz test runs twice: the default (CI) run and the ``slow`` one.
SCALES = [pytest.param(1, id="default"), pytest.param(SLOW_FACTOR, id="slow", marks=pytest.mark.slow)]
#: Set to 1 to skip shrinking (a first failure is reported as found: quicker while hunting crashes).
NO_SHRINK_ENV = "FMRI2IMG_FUZZ_NO_SHRINK"
#: "At most a few lines on stderr" (issue 25); the CLI wrapper prints exactly one for its own errors.
MAX_STDERR_LINES = 3

#: Values a token is replaced with: NaN/Inf, extremes, wrong types, empty.
SPECIAL_TOKENS = (b"nan", b"NaN", b"inf", b"-inf", b"1e308", b"-1", b"0", b"2147483648", b"99999999999999999999999",
                  b"1.5", b"", b"x", b"\xff\xfe", b"null", b"true", b"[]", b"{}", b"-0")
#: Bytes that are not UTF-8 (lone continuation, invalid lead, overlong NUL, BOM of UTF-16).
NON_UTF8 = (b"\xff", b"\x80", b"\xc3\x28", b"\xc0\x80", b"\xff\xfe", b"\x00\xe9\x00")
#: Python values a structured (JSON/YAML) entry is replaced with.
SPECIAL_VALUES = (None, "", "x", -1, 0, 2**63, 1e308, math.nan, math.inf, -math.inf, True, [], {}, [1, "x"],
                  {"a": 1}, "\u00e9\u00e8", "../../etc/passwd")

_TOKEN = re.compile(rb"[^\s,\t:\[\]{}\"']+")

runner = CliRunner()


# --- mutations -------------------------------------------------------------------------------------


def _flip(raw: bytes, offsets: Sequence[int], bits: Sequence[int]) -> bytes:
    data = bytearray(raw)
    for offset, bit in zip(offsets, bits):
        data[offset % len(data)] ^= 1 << bit
    return bytes(data)


@st.composite
def byte_mutation(draw, raw: bytes, *, text: bool = False, head: int | None = None) -> tuple[str, bytes]:
    """One mutation of ``raw`` as ``(kind, new bytes)``; ``text`` adds line/token mutations, ``head``
    biases bit flips into the first ``head`` bytes (a header)."""
    kinds = ["truncate", "bitflip", "non_utf8", "empty", "append_junk"]
    if text:
        kinds += ["dup_line", "drop_line", "token", "token", "swap_lines"]
    kind = draw(st.sampled_from(kinds))
    n = len(raw)
    if kind == "empty" or n == 0:
        return "empty", b""
    if kind == "truncate":
        return kind, raw[: draw(st.integers(0, n - 1))]
    if kind == "bitflip":
        span = min(n, head) if head and draw(st.booleans()) else n
        count = draw(st.integers(1, 8))
        offsets = draw(st.lists(st.integers(0, span - 1), min_size=count, max_size=count))
        bits = draw(st.lists(st.integers(0, 7), min_size=count, max_size=count))
        return kind, _flip(raw, offsets, bits)
    if kind == "non_utf8":
        at = draw(st.integers(0, n))
        return kind, raw[:at] + draw(st.sampled_from(NON_UTF8)) + raw[at:]
    if kind == "append_junk":
        return kind, raw + draw(st.binary(min_size=1, max_size=64))
    lines = raw.splitlines(keepends=True)
    if kind in ("dup_line", "drop_line", "swap_lines") and lines:
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "dup_line":
            times = draw(st.sampled_from((1, 2, 50)))
            return kind, b"".join(lines[: i + 1] + [lines[i]] * times + lines[i + 1:])
        if kind == "drop_line":
            return kind, b"".join(lines[:i] + lines[i + 1:])
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return kind, b"".join(lines)
    tokens = list(_TOKEN.finditer(raw))
    if not tokens:
        return "empty", b""
    match = tokens[draw(st.integers(0, len(tokens) - 1))]
    return "token", raw[: match.start()] + draw(st.sampled_from(SPECIAL_TOKENS)) + raw[match.end():]


@st.composite
def gzip_mutation(draw, raw: bytes, *, head: int | None = None) -> tuple[str, bytes]:
    """Mutate a gzipped file: mostly inside the compression (the parser sees it), else the gzip bytes."""
    if draw(st.integers(0, 3)) == 0:
        kind, data = draw(byte_mutation(raw))
        return f"gz:{kind}", data
    kind, data = draw(byte_mutation(gzip.decompress(raw), head=head))
    return f"inner:{kind}", gzip.compress(data, compresslevel=1, mtime=0)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:20]):
            found += _paths(value, (*prefix, i))
    return found


@st.composite
def structured_mutation(draw, obj: Any) -> tuple[str, Any]:
    """Delete an entry of nested dicts/lists or give it a value of another type (NaN, huge, wrong type)."""
    paths = _paths(obj)
    if not paths or draw(st.integers(0, 9)) == 0:
        return "replace_top", draw(st.sampled_from(SPECIAL_VALUES))
    path = draw(st.sampled_from(paths))
    new = json.loads(json.dumps(obj))
    parent = new
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        del parent[path[-1]]
        return f"delete {path}", new
    parent[path[-1]] = draw(st.sampled_from(SPECIAL_VALUES))
    return f"retype {path}", new


@st.composite
def json_mutation(draw, raw: bytes) -> tuple[str, bytes]:
    """A JSON file mutated as bytes/text, or parsed, changed and written back (NaN as ``NaN``)."""
    if draw(st.booleans()):
        return draw(byte_mutation(raw, text=True))
    kind, obj = draw(structured_mutation(json.loads(raw)))
    return kind, json.dumps(obj).encode()


@st.composite
def yaml_mutation(draw, raw: bytes) -> tuple[str, bytes]:
    """A YAML file mutated as bytes/text, or parsed, changed and dumped back."""
    if draw(st.booleans()):
        return draw(byte_mutation(raw, text=True))
    kind, obj = draw(structured_mutation(yaml.safe_load(raw)))
    return kind, yaml.safe_dump(obj, allow_unicode=True).encode()


# --- the property ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one fuzzed run produced (for the assertion messages)."""

    exit_code: int
    stderr: str
    runs: list[Any]


@functools.lru_cache(maxsize=4)
def _client(store: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store)  # opening a SQLite store costs a schema check: once per store


def runs_since(store: str, start_ms: int) -> list[Any]:
    """MLflow runs of every experiment in ``store`` started at or after ``start_ms``."""
    client = _client(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"attributes.start_time >= {start_ms}") if ids else []


def check_cli(args: list[str], *, names: Sequence[str], workdir: Path, store: str,
              outputs: Sequence[Path] = (), label: str = "", store_usable: bool = True) -> Outcome:
    """Run ``fmri2img <args>`` in-process and assert the fuzz property (module docstring);
    ``store_usable=False``: the tracking store itself is the broken input (no runs to check)."""
    start_ms = int(time.time() * 1000) - 1
    for name in ("fmri2img", "fmri2img.data"):  # a handler left on an earlier command's (closed) stderr
        logging.getLogger(name).handlers.clear()  # would print a logging traceback: one process per run in use
    result = runner.invoke(app, [*args, "--tracking-uri", store])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{label}: crash {type(result.exception).__name__}") from result.exception
    where = f"{label}: exit {result.exit_code}, stderr={result.stderr[-600:]!r}"
    assert result.exit_code in (0, 2), where
    assert "Traceback" not in result.output, where
    leftovers = sorted(str(p) for p in workdir.rglob(f"{TMP_PREFIX}*"))
    assert not leftovers, f"{where}; temporary files left: {leftovers}"
    runs = runs_since(store, start_ms) if store_usable else []
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert 1 <= len(lines) <= MAX_STDERR_LINES and lines[-1].startswith("Error: "), where
        assert any(name in lines[-1] for name in names), f"{where}; expected one of {list(names)} named"
        present = [str(p) for p in outputs if p.exists()]
        assert not present, f"{where}; output written by a failed run: {present}"
        for found in runs:
            assert found.info.status == "FAILED", f"{where}; run {found.info.run_id} is {found.info.status}"
            tag = found.data.tags.get(TAG_ERROR, "")
            message = " ".join(tag.split(": ", 1)[-1].split())  # the CLI prints it on one line
            assert tag and message[:40] in lines[-1], f"{where}; error tag {tag!r}"
    else:
        for found in runs:
            assert found.info.status == "FINISHED", f"{where}; run {found.info.run_id} is {found.info.status}"
    return Outcome(result.exit_code, result.stderr, runs)


def run_fuzz(name: str, strategy: st.SearchStrategy, check: Callable[[Any], None], examples: int) -> None:
    """Run ``check`` on ``examples`` draws of ``strategy`` with a seed fixed by ``name``
    (deterministic: no example database, no deadline, same draws on every machine)."""

    phases = [p for p in Phase if p not in (Phase.shrink, Phase.explain)] if os.environ.get(NO_SHRINK_ENV) else list(Phase)

    @seed(zlib.crc32(name.encode()))
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=phases)
    @given(strategy)
    def fuzz(case):
        check(case)

    fuzz()
