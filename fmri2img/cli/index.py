"""``fmri2img index``: the per-subject trial index (Parquet), split manifests and beta cache."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, echo, handle_errors
from fmri2img.constants import DEFAULT_CACHE_ROOT, DEFAULT_DATA_ROOT, DEFAULT_MANIFEST_DIR, DEFAULT_SUBJECTS
from fmri2img.data.splits import DEFAULT_FOLDS


class Dataset(str, Enum):
    both = "both"
    nsd = "nsd"
    imagery = "imagery"


class BetaFormat(str, Enum):
    auto = "auto"
    nifti = "nifti"
    hdf5 = "hdf5"


@handle_errors
def command(
    subject: list[str] = typer.Option(
        list(DEFAULT_SUBJECTS), "--subject", help="Subject (repeatable); default: subj01 subj02 subj05 subj07."
    ),
    data_root: Path = typer.Option(Path(DEFAULT_DATA_ROOT), "--data-root", help="NSD download or synthetic world."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Beta cache and default index folder."),
    dataset: Dataset = typer.Option(Dataset.both, "--dataset", help="Trials to index: NSD, NSD-Imagery or both."),
    output: Path = typer.Option(
        None, "--output", dir_okay=False, help="Index path (one subject only); default <cache-root>/indices/imagery/<subject>.parquet."
    ),
    manifest_dir: Path = typer.Option(Path(DEFAULT_MANIFEST_DIR), "--manifest-dir", help="Where split manifests go."),
    folds: int = typer.Option(DEFAULT_FOLDS, "--folds", min=2, help="NSD-Imagery stimulus folds K (balanced over sets A/B/C)."),
    beta_format: BetaFormat = typer.Option(BetaFormat.auto, "--beta-format", help="NSD session betas to read."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Sessions read in parallel (memory grows with jobs)."),
    verify: bool = typer.Option(False, "--verify", help="Re-check an existing index and cache; rebuild nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar over sessions on stderr."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Build (or --verify) the trial index, split manifests and beta cache of each subject."""
    from fmri2img.data import betas, splits
    from fmri2img.data.index import build_index, read_index
    from fmri2img.data.nsd import check_root
    from fmri2img.errors import ConfigError
    from fmri2img.tracking import run

    subjects = list(dict.fromkeys(subject))
    if output is not None and len(subjects) != 1:
        raise ConfigError(f"--output names one file but {len(subjects)} subjects were given; pass one --subject.")
    check_root(data_root)  # bad input dies before a tracking run is opened
    _log_to_stderr()
    params = {
        "subjects": subjects, "data_root": str(data_root), "cache_root": str(cache_root),
        "dataset": dataset.value, "output": str(output) if output else None, "manifest_dir": str(manifest_dir),
        "folds": folds, "beta_format": beta_format.value, "jobs": jobs, "verify": verify,
        "val_fraction": splits.VAL_FRACTION,
    }
    with run("index", params, tracking_uri=tracking_uri) as tracked:
        for name in subjects:
            path = build_index(
                name, data_root, cache_root, dataset=dataset.value, output=output, manifest_dir=manifest_dir,
                jobs=jobs, verify=verify, progress=progress, folds=folds, beta_format=beta_format.value,
            )
            frame = read_index(path)
            manifest = splits.manifest_path(manifest_dir, name)
            for artifact in (path, path.with_name(path.name + ".sha256"), manifest,
                             manifest.with_name(manifest.name + ".sha256")):
                tracked.log_artifact(artifact, f"index/{name}")
            tracked.log_dict(frame.attrs["sources"], f"index/{name}/sources_sha256.json")
            tracked.log_params({name: {"index_sha256": frame.attrs["sha256"],
                                       "split_manifest_sha256": frame.attrs["split_manifest_sha256"]}})
            cache_meta = betas.cache_dir(cache_root, name) / "meta.json"
            counts = frame.groupby(["dataset", "condition"]).size()
            tracked.log_metrics({f"{name}.n_trials.{d}.{c}": int(n) for (d, c), n in counts.items()})
            summary = ", ".join(f"{d}/{c} {n}" for (d, c), n in counts.items())
            echo(f"{'Verified' if verify else 'Indexed'} {name}: {len(frame)} trials ({summary}) -> {path}; "
                 f"beta cache {cache_meta.parent}")


def _log_to_stderr() -> None:
    """Show the library's warnings (changed sources, dropped voxels) as plain lines on stderr."""
    logger = logging.getLogger("fmri2img.data")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
