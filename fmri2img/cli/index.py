"""``fmri2img index``: the per-subject trial index (Parquet), split manifests and beta cache."""

from __future__ import annotations

from pathlib import Path

import typer

from fmri2img.cli._common import TrackingUriOption, choices, echo, handle_errors
from fmri2img.core.constants import DEFAULT_CACHE_ROOT, DEFAULT_DATA_ROOT, DEFAULT_MANIFEST_DIR, DEFAULT_SUBJECTS
from fmri2img.core.vocab import DATASETS, READ_BETA_FORMATS
from fmri2img.data.nsd_constants import IMAGERY_GLM_VARIANTS
from fmri2img.data.splits import DEFAULT_FOLDS

Dataset = choices("Dataset", DATASETS)
BetaFormat = choices("BetaFormat", READ_BETA_FORMATS)
ImageryBetas = choices("ImageryBetas", IMAGERY_GLM_VARIANTS)


@handle_errors
def command(
    subject: list[str] = typer.Option(
        list(DEFAULT_SUBJECTS), "--subject",
        help="Subject subj01..subj08 (repeatable); default: subj01 subj02 subj05 subj07.",
    ),
    data_root: Path = typer.Option(Path(DEFAULT_DATA_ROOT), "--data-root", help="NSD download or synthetic world."),
    cache_root: Path = typer.Option(Path(DEFAULT_CACHE_ROOT), "--cache-root", help="Beta cache and default index folder."),
    dataset: Dataset = typer.Option(Dataset("both"), "--dataset", help="Trials to index: NSD, NSD-Imagery or both."),
    output: Path = typer.Option(
        None, "--output", dir_okay=False, help="Index path (one subject only); default <cache-root>/indices/imagery/<subject>.parquet."
    ),
    manifest_dir: Path = typer.Option(Path(DEFAULT_MANIFEST_DIR), "--manifest-dir", help="Where split manifests go."),
    folds: int = typer.Option(DEFAULT_FOLDS, "--folds", min=2, help="NSD-Imagery stimulus folds K (balanced over sets A/B/C)."),
    beta_format: BetaFormat = typer.Option(
        BetaFormat("auto"), "--beta-format", help="Beta files to read (NSD, NSD-Imagery)."
    ),
    imagery_betas: ImageryBetas = typer.Option(
        ImageryBetas(IMAGERY_GLM_VARIANTS[0]), "--imagery-betas",
        help="NSD-Imagery GLM variant (nsdimagerybetas_<variant>).",
    ),
    imagery_trials: Path = typer.Option(
        None, "--imagery-trials", dir_okay=False,
        help="Hand-written NSD-Imagery trial table under --data-root (docs/nsd_data.md, 3), not the release's files.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the NSD-Imagery beta mapping; write nothing."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Sessions read in parallel (memory grows with jobs)."),
    verify: bool = typer.Option(False, "--verify", help="Re-check an existing index and cache; rebuild nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar over sessions on stderr."),
    tracking_uri: str = TrackingUriOption,
) -> None:
    """Build (or --verify) the trial index, split manifests and beta cache of each subject."""
    from fmri2img.stages.index import preview_imagery, run_index

    if dry_run:
        preview_imagery(subject, data_root, beta_format=beta_format.value, imagery_betas=imagery_betas.value,
                        progress=progress, echo=echo)
        return
    run_index(subject, data_root, cache_root, output=output, manifest_dir=manifest_dir, dataset=dataset.value,
              folds=folds, beta_format=beta_format.value, jobs=jobs, verify=verify, progress=progress,
              tracking_uri=tracking_uri, imagery_betas=imagery_betas.value, imagery_trials=imagery_trials,
              echo=echo)
