"""The ``index`` stage: build (or verify) each subject's trial index, split manifest and beta cache
(:func:`fmri2img.data.index.build_index`) inside one MLflow run that records what was indexed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from fmri2img.core import tracking
from fmri2img.core.errors import ConfigError
from fmri2img.data import betas, nsd_imagery_release, splits
from fmri2img.data.index import build_index
from fmri2img.data.nsd import check_root
from fmri2img.data.schema import read_index


def _log_to_stderr() -> None:
    """Show the library's warnings (changed sources, dropped voxels) as plain lines on stderr."""
    logger = logging.getLogger("fmri2img.data")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def preview_imagery(subjects: Sequence[str], data_root: str | os.PathLike, *, beta_format: str = "auto",
                    imagery_betas: str = nsd_imagery_release.DEFAULT_VARIANT, progress: bool = True,
                    echo: Callable[[str], None] = print) -> list[dict]:
    """``index --dry-run``: read and verify each subject's NSD-Imagery release and print the mapping of its
    720 beta volumes (run, trial, task, epoch, stimulus, behaviour); writes nothing. Returns the metadata."""
    check_root(data_root)
    metadata = []
    for name in dict.fromkeys(subjects):
        release = nsd_imagery_release.read_release(data_root, name, imagery_betas, beta_format, progress=progress)
        meta = release.metadata
        echo(f"{name}: {meta['n_volumes']} beta volumes in {meta['beta_file']} (grid {meta['grid']}); set B ids "
             f"{meta['nsd_id_convention']} in the file names; within-run order {meta['within_run_order']}")
        for note in meta["notes"]:
            echo(f"note: {note}")
        echo(nsd_imagery_release.format_mapping(release.table))
        metadata.append(meta)
    return metadata


def run_index(subjects: Sequence[str], data_root: str | os.PathLike, cache_root: str | os.PathLike, *,
              output: str | os.PathLike | None, manifest_dir: str | os.PathLike, dataset: str, folds: int,
              beta_format: str, jobs: int, verify: bool, progress: bool, tracking_uri: str | None = None,
              imagery_betas: str = nsd_imagery_release.DEFAULT_VARIANT,
              imagery_trials: str | os.PathLike | None = None, echo: Callable[[str], None] = print) -> list[Path]:
    """:func:`~fmri2img.data.index.build_index` for each subject in one MLflow run ``index``
    (index, sidecars, manifests and source checksums as artifacts; trial counts as metrics)."""
    subjects = list(dict.fromkeys(subjects))
    if output is not None and len(subjects) != 1:
        raise ConfigError(f"--output names one file but {len(subjects)} subjects were given; pass one --subject.")
    if imagery_trials is not None and len(subjects) != 1:
        raise ConfigError(f"--imagery-trials names one subject's table but {len(subjects)} subjects were given; "
                          "pass one --subject.")
    check_root(data_root)  # bad input dies before a tracking run is opened
    _log_to_stderr()
    params = {
        "subjects": subjects, "data_root": str(data_root), "cache_root": str(cache_root),
        "dataset": dataset, "output": str(output) if output else None, "manifest_dir": str(manifest_dir),
        "folds": folds, "beta_format": beta_format, "jobs": jobs, "verify": verify,
        "val_fraction": splits.VAL_FRACTION, "imagery_betas": imagery_betas,
        "imagery_trials": str(imagery_trials) if imagery_trials else None,
    }
    paths = []
    with tracking.run("index", params, tracking_uri=tracking_uri) as run:
        for name in subjects:
            path = build_index(name, data_root, cache_root, dataset=dataset, output=output, manifest_dir=manifest_dir,
                               jobs=jobs, verify=verify, progress=progress, folds=folds, beta_format=beta_format,
                               imagery_betas=imagery_betas, imagery_trials=imagery_trials)
            frame = read_index(path)
            manifest = splits.manifest_path(manifest_dir, name)
            for artifact in (path, path.with_name(path.name + ".sha256"), manifest,
                             manifest.with_name(manifest.name + ".sha256")):
                run.log_artifact(artifact, f"index/{name}")
            run.log_dict(frame.attrs["sources"], f"index/{name}/sources_sha256.json")
            if frame.attrs["imagery"]:
                run.log_dict(frame.attrs["imagery"], f"index/{name}/nsdimagery_reader.json")
            run.log_params({name: {"index_sha256": frame.attrs["sha256"],
                                   "split_manifest_sha256": frame.attrs["split_manifest_sha256"]}})
            counts = frame.groupby(["dataset", "condition"]).size()
            run.log_metrics({f"{name}.n_trials.{d}.{c}": int(n) for (d, c), n in counts.items()})
            summary = ", ".join(f"{d}/{c} {n}" for (d, c), n in counts.items())
            echo(f"{'Verified' if verify else 'Indexed'} {name}: {len(frame)} trials ({summary}) -> {path}; "
                 f"beta cache {betas.index_cache_dir(cache_root, frame)}")
            paths.append(path)
    return paths
