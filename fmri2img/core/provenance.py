"""What produced a result: package versions and the git commit (recorded in checkpoints and runs)."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from fmri2img import __version__

#: Packages whose versions are recorded in every run and checkpoint.
TRACKED_PACKAGES = (
    "numpy", "scipy", "pandas", "pyarrow", "h5py", "nibabel", "torch", "open_clip_torch",
    "scikit-learn", "pingouin", "mlflow", "matplotlib",
)


@functools.lru_cache(maxsize=4)
def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit of ``cwd`` (or the package's folder), or ``None``."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Versions of :data:`TRACKED_PACKAGES` that are installed, plus Python's."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version(), "fmri2img": __version__,
                # float results are bit-identical only for the same BLAS/OpenMP thread count
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return tuple(versions.items())
