"""Typed experiment configs loaded from YAML and validated on load.

A config is a (possibly nested) frozen dataclass. :func:`from_dict` builds one from plain
data and refuses unknown keys, naming the key and the allowed ones; :func:`load_config`
does the same from a YAML file; :func:`override` applies CLI options on top (``None``
means "not given"). Configs live under ``projects/imagery/configs/``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fmri2img.core.errors import ConfigError, Fmri2imgError, MissingInputError
from fmri2img.core.files import plain_data, read_text, write_text

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}.")
    if origin is typing.Literal:
        check_choice(where, value, args)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}.")
        return from_dict(tp, value, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}.")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}.")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}.")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {allowed}.")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except Fmri2imgError as exc:  # name where the bad value came from
            raise type(exc)(f"{where}: {exc}") from None
    return obj


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Load and validate a YAML config file into dataclass ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Config file not found: {path}; expected a YAML file.")
    text = read_text(path, "a YAML config (UTF-8 text)")
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"Cannot parse {path} as YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    return from_dict(cls, data, where=str(path))


def override(config: T, **options: Any) -> T:
    """Return ``config`` with every option that is not ``None`` replaced (CLI overrides)."""
    given = {k: v for k, v in options.items() if v is not None}
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(f"Unknown option {unknown[0]!r}; allowed: {', '.join(sorted(names))}.")
    merged = dataclasses.replace(config, **given)  # type: ignore[type-var]
    validate = getattr(merged, "validate", None)
    if callable(validate):
        validate()
    return merged


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML that :func:`load_config` reads back to an equal config
    (atomically; tuples become lists, which loading coerces back). Returns the path."""
    text = yaml.safe_dump(plain_data(to_dict(config)), sort_keys=False, default_flow_style=None)
    return write_text(path, text)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (for logging and hashing)."""
    return dataclasses.asdict(config)


def check_positive(name: str, value: float | int, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` > 0 (or >= 0 with ``allow_zero``)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"Invalid {name}={value!r}; expected a value {bound}.")


def check_choice(name: str, value: Any, allowed: typing.Iterable[Any], *,
                 error: type[Fmri2imgError] = ConfigError) -> None:
    """Raise ``error`` (a :class:`ConfigError` unless told) unless ``value`` is one of ``allowed``,
    naming the value and every allowed one."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise error(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}.")


def check_fraction(name: str, value: float) -> None:
    """Raise :class:`ConfigError` unless 0 < ``value`` <= 1."""
    if not (0.0 < value <= 1.0):
        raise ConfigError(f"Invalid {name}={value!r}; expected a fraction in (0, 1].")
