"""Stimulus-disjoint splits and their JSON manifests.

* NSD perception: the shared1000 images are ``test`` (the field's standard test set); the subject's
  other images are shuffled with ``numpy.random.default_rng(seed)`` and the first
  ``round(VAL_FRACTION * n)`` become ``val``, the rest ``train``. A stimulus is never in two splits.
* NSD-Imagery: the stimuli are dealt into ``K`` folds by stimulus, balanced over sets A/B/C:
  within each set (in order A, B, C) stimuli are sorted by id, shuffled with the same seeded
  generator and dealt round-robin, the start fold rotating by the number dealt so far, so every
  fold gets ``n_set / K`` stimuli of each set (+-1) and fold sizes differ by at most one.

A manifest records the seed, the method in words and the stimulus ids of every split and fold;
it is written as deterministic JSON with a ``.sha256`` sidecar, and its SHA-256 goes into the index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fmri2img.core.constants import SPLIT_SEED
from fmri2img.core.errors import ConfigError, InputError
from fmri2img.core.files import dumps_json, sha256_bytes, write_text

#: Fraction of the non-shared NSD images of a subject held out for validation (early stopping).
VAL_FRACTION = 0.1

#: Default number of NSD-Imagery stimulus folds (18 stimuli -> 6 per fold, 2 of each set).
DEFAULT_FOLDS = 3

#: Set order used to deal the imagery folds.
SET_ORDER = ("A", "B", "C")

NSD_METHOD = (
    "shared1000 images -> test; the subject's other images sorted by id, permuted with "
    "numpy.random.default_rng(seed), first round(val_fraction * n) -> val, rest -> train"
)
IMAGERY_METHOD = (
    "per stimulus set (A, B, C): stimulus ids sorted, permuted with numpy.random.default_rng(seed), "
    "dealt round-robin to K folds starting at (stimuli dealt so far) mod K"
)


def nsd_split(
    nsd_ids: np.ndarray,
    shared_ids: np.ndarray,
    *,
    seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
    force_test: np.ndarray | None = None,
) -> dict[str, list[int]]:
    """Split a subject's NSD images into ``train`` / ``val`` / ``test`` by image.

    Parameters
    ----------
    nsd_ids : int array of shape (n_trials,)
        0-based 73k ids shown to the subject (repeats allowed).
    shared_ids : int array
        0-based 73k ids of shared1000.
    force_test : int array, optional
        Further ids that must not be trained on (e.g. NSD-Imagery set B images); they join ``test``.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``: sorted, pairwise disjoint 0-based ids.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"Invalid val_fraction={val_fraction!r}; expected a fraction in (0, 1).")
    unique = np.unique(np.asarray(nsd_ids, dtype=np.int64))
    held = set(np.asarray(shared_ids, dtype=np.int64).tolist()) | set(
        np.asarray(force_test if force_test is not None else [], dtype=np.int64).tolist())
    test = np.array([i for i in unique if i in held], dtype=np.int64)
    rest = np.array([i for i in unique if i not in held], dtype=np.int64)
    order = np.random.default_rng(seed).permutation(rest.size)
    n_val = int(round(val_fraction * rest.size))
    val, train = np.sort(rest[order[:n_val]]), np.sort(rest[order[n_val:]])
    splits = {"train": train.tolist(), "val": val.tolist(), "test": test.tolist()}
    for name, ids in splits.items():
        if not ids:
            raise InputError(
                f"NSD split {name!r} is empty ({unique.size} images, {test.size} shared1000); "
                "expected images in train, val and test (empty split)."
            )
    return splits


def assign_imagery_folds(
    stimulus_ids: list[str], stim_sets: list[str], *, k: int = DEFAULT_FOLDS, seed: int = SPLIT_SEED
) -> dict[str, int]:
    """Assign each NSD-Imagery stimulus to one of ``k`` folds, balanced over its set.

    Parameters
    ----------
    stimulus_ids : list of str of length n_stimuli
    stim_sets : list of str of length n_stimuli
        ``A`` / ``B`` / ``C`` of each stimulus.

    Returns
    -------
    dict
        stimulus id -> fold in ``0 .. k-1``; every fold is non-empty.
    """
    if len(stimulus_ids) != len(set(stimulus_ids)):
        raise InputError("NSD-Imagery stimulus ids are not unique; expected one row per stimulus.")
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"Invalid folds={k!r}; expected an integer >= 2.")
    if k > len(stimulus_ids):
        raise InputError(
            f"folds={k} but only {len(stimulus_ids)} NSD-Imagery stimuli; every fold needs one (empty split)."
        )
    rng = np.random.default_rng(seed)
    by_set = {s: sorted(i for i, t in zip(stimulus_ids, stim_sets) if t == s) for s in SET_ORDER}
    extra = sorted(set(stim_sets) - set(SET_ORDER))
    if extra:
        raise InputError(f"Unknown stimulus set {extra[0]!r}; expected one of {', '.join(SET_ORDER)}.")
    folds: dict[str, int] = {}
    dealt = 0
    for set_name in SET_ORDER:
        ids = by_set[set_name]
        for position, j in enumerate(rng.permutation(len(ids))):
            folds[ids[j]] = (dealt + position) % k
        dealt += len(ids)
    return dict(sorted(folds.items()))


def make_manifest(
    subject: str,
    *,
    nsd: dict[str, list[int]] | None,
    imagery: dict[str, int] | None,
    folds: int,
    seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
) -> dict[str, Any]:
    """The split manifest: seed, methods and the stimulus ids of every split and fold."""
    manifest: dict[str, Any] = {"subject": subject, "seed": seed, "stimulus_disjoint": True}
    if nsd is not None:
        manifest["nsd"] = {
            "method": NSD_METHOD,
            "val_fraction": val_fraction,
            "splits": {name: [f"nsd-{i:05d}" for i in ids] for name, ids in nsd.items()},
        }
    if imagery is not None:
        manifest["nsdimagery"] = {
            "method": IMAGERY_METHOD,
            "k": folds,
            "split": "test",
            "folds": {str(f): sorted(s for s, g in imagery.items() if g == f) for f in range(folds)},
        }
    check_disjoint(manifest)
    return manifest


def manifest_groups(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Every split and fold of a manifest as ``{"nsd/train": ids, ..., "nsdimagery/fold0": ids}``."""
    groups = {f"nsd/{k}": v for k, v in manifest.get("nsd", {}).get("splits", {}).items()}
    groups.update({f"nsdimagery/fold{k}": v for k, v in manifest.get("nsdimagery", {}).get("folds", {}).items()})
    return groups


def check_disjoint(manifest: dict[str, Any]) -> None:
    """Raise :class:`InputError` if a stimulus is in two NSD splits or two imagery folds, or if an
    imagery stimulus is in NSD ``train`` / ``val`` (it would be trained on)."""
    groups = manifest_groups(manifest)
    for family in ("nsd/", "nsdimagery/"):
        seen: dict[str, str] = {}
        for name, ids in groups.items():
            if not name.startswith(family):
                continue
            for sid in ids:
                if sid in seen:
                    raise InputError(f"Stimulus {sid} is in both {seen[sid]} and {name}; splits must be disjoint.")
                seen[sid] = name
    imagery_ids = {s for n, ids in groups.items() if n.startswith("nsdimagery/") for s in ids}
    for name in ("nsd/train", "nsd/val"):
        leak = sorted(imagery_ids & set(groups.get(name, [])))
        if leak:
            raise InputError(f"NSD-Imagery stimulus {leak[0]} is in {name}; expected it held out of training.")


def manifest_path(manifest_dir: str | os.PathLike, subject: str) -> Path:
    """Where the manifest of ``subject`` lives: ``<manifest_dir>/<subject>_splits.json``."""
    return Path(manifest_dir) / f"{subject}_splits.json"


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike) -> str:
    """Write ``manifest`` as deterministic JSON plus ``<path>.sha256``; return its SHA-256."""
    path = Path(path)
    text = dumps_json(manifest)
    digest = sha256_bytes(text.encode("utf-8"))
    if not (path.is_file() and path.read_bytes() == text.encode("utf-8")):  # bytes: a damaged file is rewritten
        write_text(path, text)
    write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's deterministic JSON (what :func:`write_manifest` writes)."""
    return sha256_bytes(dumps_json(manifest).encode("utf-8"))
