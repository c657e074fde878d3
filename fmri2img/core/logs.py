"""Timestamped stage logs (``outputs/logs/imagery/<stage>-<UTC time>.log``), also attached to runs.

Library modules log through ``logging.getLogger("fmri2img.<stage>")``; :func:`stage_log`
attaches a file handler for the duration of a command.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from fmri2img.core.files import ensure_dir

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGER = "fmri2img"


def get_logger(stage: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{stage}")


def log_to_file(path: str | Path) -> logging.Handler:
    """Append every ``fmri2img.*`` record (INFO and up) to ``path``; returns the handler.

    Worker processes of a parallel ablation call it with the parent's stage log, so warnings
    raised while training or scoring a cell (e.g. a decoder that never beat its untrained
    state) land in the same file; each record is one appended line."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger(LOGGER)
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


@contextlib.contextmanager
def stage_log(log_dir: str | Path, stage: str) -> Iterator[Path]:
    """Write every ``fmri2img.*`` log record to a new timestamped file under ``log_dir``."""
    folder = ensure_dir(log_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = folder / f"{stage}-{stamp}.log"
    root = logging.getLogger(LOGGER)
    previous = root.level
    handler = log_to_file(path)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
