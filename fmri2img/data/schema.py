"""The trial index schema (docs/contracts.md, section 2), checked on write and on read.

The index is one Parquet file per subject. Its columns and types are fixed by :data:`SCHEMA`
(version :data:`SCHEMA_VERSION`); its key-value metadata records the schema version, the
package version, the SHA-256 of every source file, the split manifest's SHA-256 and the data root.
A sidecar ``<index>.sha256`` (``sha256sum`` format) is written after the Parquet file, and
:func:`read_index` refuses an index whose bytes changed since.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fmri2img import __version__
from fmri2img.core.errors import ChecksumError, CorruptFileError, MissingInputError, SchemaError
from fmri2img.core.files import atomic_path, read_text, sha256_file, write_text

#: 2 (issue 19): NSD-Imagery rows carry ``run_trial``, ``epoch``, ``cue``, ``button``, ``rt``, ``is_correct``.
SCHEMA_VERSION = 2

#: Column name -> (arrow type, nullable). Order is the on-disk column order.
COLUMNS: dict[str, tuple[pa.DataType, bool]] = {
    "subject": (pa.string(), False),
    "dataset": (pa.string(), False),
    "condition": (pa.string(), False),
    "session": (pa.int32(), True),
    "run": (pa.int32(), True),
    "trial": (pa.int32(), False),
    "beta_file": (pa.string(), False),
    "beta_volume": (pa.int32(), False),
    "stimulus_id": (pa.string(), False),
    "nsd_id": (pa.int32(), True),
    "stimulus_type": (pa.string(), False),
    "stimulus_name": (pa.string(), True),
    "image_ref": (pa.string(), True),
    "text": (pa.string(), True),
    "repeat": (pa.int16(), False),
    "split": (pa.string(), False),
    "fold": (pa.int8(), True),
    "is_shared1000": (pa.bool_(), False),
    # NSD-Imagery behaviour and trial structure (null on NSD rows), from nsdimagery_subjXX_<run>.tsv
    "run_trial": (pa.int16(), True),
    "epoch": (pa.string(), True),
    "cue": (pa.string(), True),
    "button": (pa.float64(), True),
    "rt": (pa.float64(), True),
    "is_correct": (pa.float64(), True),
}

SCHEMA = pa.schema([pa.field(name, tp, nullable=nullable) for name, (tp, nullable) in COLUMNS.items()])

#: Allowed values of the categorical string columns.
DOMAINS: dict[str, tuple[str, ...]] = {
    "dataset": ("nsd", "nsdimagery"),
    "condition": ("perception", "imagery", "attention"),
    "stimulus_type": ("natural", "simple", "complex", "conceptual"),
    "split": ("train", "val", "test"),
    "epoch": ("cue", "detection"),
}

#: Parquet key-value metadata keys.
META_SCHEMA_VERSION = "fmri2img.schema_version"
META_VERSION = "fmri2img.version"
META_SOURCES = "fmri2img.sources"
META_SPLIT_MANIFEST = "fmri2img.split_manifest_sha256"
META_DATA_ROOT = "fmri2img.data_root"
META_KEYS = (META_SCHEMA_VERSION, META_VERSION, META_SOURCES, META_SPLIT_MANIFEST, META_DATA_ROOT)
#: Optional key: what the NSD-Imagery reader settled (GLM variant, set B id convention, set C text source).
META_IMAGERY = "fmri2img.imagery"

#: Pandas dtypes used by :func:`read_index` for the integer columns (nullable, exact width).
_PANDAS_INTS = {pa.int32(): pd.Int32Dtype(), pa.int16(): pd.Int16Dtype(), pa.int8(): pd.Int8Dtype()}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def validate_table(table: pa.Table, where: str = "index") -> None:
    """Raise :class:`SchemaError` unless ``table`` has exactly the columns, types and values of
    the schema version (nulls only in nullable columns, categorical values in :data:`DOMAINS`)."""
    names = table.schema.names
    if names != SCHEMA.names:
        missing = [c for c in SCHEMA.names if c not in names]
        extra = [c for c in names if c not in SCHEMA.names]
        detail = f"missing {missing}" if missing else f"unexpected {extra}" if extra else "wrong order"
        raise SchemaError(f"{where}: columns do not match schema version {SCHEMA_VERSION} ({detail}).")
    for field in SCHEMA:
        column = table.column(field.name)
        if column.type != field.type:
            raise SchemaError(
                f"{where}: column {field.name!r} has type {column.type}, expected {field.type}."
            )
        if not field.nullable and column.null_count:
            raise SchemaError(f"{where}: column {field.name!r} has {column.null_count} nulls; expected none.")
    for name, allowed in DOMAINS.items():
        values = set(table.column(name).drop_null().unique().to_pylist())
        bad = sorted(values - set(allowed))
        if bad:
            raise SchemaError(f"{where}: column {name!r} has value {bad[0]!r}; allowed: {', '.join(allowed)}.")


def to_table(frame: pd.DataFrame, metadata: dict[str, str], where: str = "index") -> pa.Table:
    """Convert ``frame`` to an Arrow table of :data:`SCHEMA` carrying exactly ``metadata``.

    No pandas metadata is stored (it holds library versions and would make the file depend on
    more than its inputs).
    """
    missing = [c for c in SCHEMA.names if c not in frame.columns]
    if missing:
        raise SchemaError(f"{where}: missing column {missing[0]!r}; expected the columns of schema version "
                          f"{SCHEMA_VERSION}.")
    try:
        table = pa.Table.from_pandas(frame[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: cannot convert to schema version {SCHEMA_VERSION}: {exc}".splitlines()[0]) from None
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in sorted(metadata.items())})
    validate_table(table, where)
    return table


def make_metadata(sources: dict[str, str], split_manifest_sha256: str, data_root: str | os.PathLike,
                  imagery: dict | None = None) -> dict[str, str]:
    """The Parquet key-value metadata of an index (no timestamps: same inputs, same bytes)."""
    extra = {META_IMAGERY: json.dumps(imagery, sort_keys=True)} if imagery else {}
    return {
        **extra,
        META_SCHEMA_VERSION: str(SCHEMA_VERSION),
        META_VERSION: __version__,
        META_SOURCES: json.dumps(dict(sorted(sources.items())), sort_keys=True),
        META_SPLIT_MANIFEST: split_manifest_sha256,
        META_DATA_ROOT: os.fspath(data_root),
    }


def write_index(frame: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Validate ``frame`` and write it atomically as Parquet, then the ``<path>.sha256`` sidecar.

    Parameters
    ----------
    frame : DataFrame of shape (n_trials, 24)
        One row per trial with the columns of :data:`SCHEMA` (rows in their final order).
    metadata : dict
        Key-value metadata; see :func:`make_metadata`.
    """
    path = Path(path)
    table = to_table(frame, metadata, where=str(path))
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, table.num_rows))
    digest = sha256_file(path)
    write_text(_sidecar(path), f"{digest}  {path.name}\n")
    return path


def read_index(path: str | os.PathLike, *, check_checksum: bool = True) -> pd.DataFrame:
    """Read and check an index written by :func:`write_index`.

    Returns
    -------
    DataFrame of shape (n_trials, 24)
        Integer columns use pandas nullable dtypes (``Int32``, ``Int16``, ``Int8``). ``df.attrs``
        holds ``schema_version``, ``version``, ``sources`` (dict), ``split_manifest_sha256``,
        ``data_root``, ``path`` and ``sha256`` (of the file).

    Raises
    ------
    MissingInputError
        The file or its ``.sha256`` sidecar is missing.
    ChecksumError
        The file's bytes changed since the sidecar was written.
    SchemaError, CorruptFileError
        Wrong schema version, columns or types; unreadable Parquet.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Index not found: {path}; build it with `fmri2img index`.")
    sidecar = _sidecar(path)
    digest = sha256_file(path)
    if check_checksum:
        if not sidecar.is_file():
            raise MissingInputError(f"Checksum sidecar not found: {sidecar}; expected it next to the index.")
        words = read_text(sidecar, "a SHA-256 sidecar ('<hex digest>  <file name>')").split()
        recorded = words[0] if words else ""
        if recorded != digest:
            raise ChecksumError(
                f"Index {path} changed since it was written: SHA-256 {digest[:12]}..., "
                f"recorded {recorded[:12]}... in {sidecar.name}; rebuild it with `fmri2img index`."
            )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorruptFileError(f"Cannot read {path} as Parquet: {exc}".splitlines()[0]) from None
    try:
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: Parquet metadata is not UTF-8 ({exc.reason}); rebuild the index.") from None
    version = meta.get(META_SCHEMA_VERSION)
    if version != str(SCHEMA_VERSION):
        raise SchemaError(f"{path}: schema version {version!r}, expected {SCHEMA_VERSION!r}; rebuild the index.")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise SchemaError(f"{path}: metadata key {missing[0]!r} is missing; expected {', '.join(META_KEYS)}.")
    validate_table(table, str(path))
    frame = table.to_pandas(types_mapper=_PANDAS_INTS.get)
    try:
        sources = json.loads(meta[META_SOURCES])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SchemaError(f"{path}: metadata {META_SOURCES} is not JSON: {exc}.") from None
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise SchemaError(f"{path}: metadata {META_SOURCES} is not a mapping of file -> SHA-256; rebuild the index.")
    frame.attrs.update(
        schema_version=int(version),
        version=meta[META_VERSION],
        sources=sources,
        split_manifest_sha256=meta[META_SPLIT_MANIFEST],
        data_root=meta[META_DATA_ROOT],
        imagery=json.loads(meta[META_IMAGERY]) if META_IMAGERY in meta else {},
        path=str(path),
        sha256=digest,
    )
    return frame
