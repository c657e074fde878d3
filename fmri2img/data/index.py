"""Build and check the per-subject trial index (docs/contracts.md, sections 2 and 3).

:func:`build_index` reads an NSD / NSD-Imagery release (or the synthetic world), checks every input
before doing heavy work, hashes each source file once (streamed), splits stimuli disjointly, builds
the beta cache one session at a time, and writes, in this order, the split manifest, the Parquet
index and its ``.sha256`` sidecar. If anything fails nothing new is written under a final name
(the beta cache may keep complete per-session files, which a rerun reuses).

The index is deterministic: rows sorted by (dataset, trial), metadata without timestamps, so the
same inputs give a byte-identical file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmri2img.core.constants import DEFAULT_MANIFEST_DIR, SPLIT_SEED
from fmri2img.core.config import check_choice
from fmri2img.core.errors import ChecksumError, ConfigError, InputError, MismatchError, MissingInputError
from fmri2img.core.files import check_writable, read_json, resolve_under, sha256_file, write_json
from fmri2img.core.vocab import DATASETS
from fmri2img.data import betas, nsd, nsd_constants, nsd_imagery_release, nsd_imagery_verify, regions, splits
from fmri2img.data.schema import SCHEMA, make_metadata, read_index, write_index

log = logging.getLogger(__name__)

#: Columns of schema version 2 that only NSD-Imagery rows fill (null on NSD rows) and their pandas dtypes.
NSD_NULL_COLUMNS = {"run_trial": "Int16", "epoch": "string", "cue": "string", "button": "Float64", "rt": "Float64",
                    "is_correct": "Float64"}


def default_index_path(cache_root: str | os.PathLike, subject: str) -> Path:
    """``<cache_root>/indices/imagery/<subject>.parquet``."""
    return Path(cache_root) / "indices" / "imagery" / f"{subject}.parquet"


def source_path(data_root: str | os.PathLike, relative: str) -> Path:
    """Absolute path of a file named in the index (refuses paths escaping ``data_root``)."""
    return resolve_under(data_root, relative)


# --- hashing -------------------------------------------------------------------------


def _memo_path(cache_root: str | os.PathLike, subject: str) -> Path:
    return Path(cache_root) / "checksums" / f"{subject}.json"


def hash_sources(
    data_root: str | os.PathLike, relatives: list[str], memo: Path | None = None, *, force: bool = False
) -> dict[str, str]:
    """SHA-256 of each file (streamed). With ``memo``, a file whose size and mtime are unchanged
    since it was last hashed is not read again (``force=True`` re-reads everything)."""
    known: dict[str, Any] = {}
    if memo is not None and memo.is_file() and not force:
        try:
            known = read_json(memo)
        except InputError:
            known = {}
        if not isinstance(known, dict):  # a damaged memo only costs re-hashing
            known = {}
    result, updated = {}, {}
    for rel in sorted(set(relatives)):
        path = source_path(data_root, rel)
        if not path.is_file():
            raise MissingInputError(f"File not found: {path}; expected it in the NSD layout (docs/nsd_data.md).")
        stat = path.stat()
        entry = known.get(rel)
        if (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
                and isinstance(entry.get("sha256"), str)):
            digest = entry["sha256"]
        else:
            digest = sha256_file(path)
        result[rel] = digest
        updated[rel] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    if memo is not None:
        merged = {**known, **updated}
        if merged != known:
            write_json(memo, merged)
    return result


def _report_changes(output: Path, sources: dict[str, str]) -> list[str]:
    """Files whose SHA-256 differs from the one recorded in an existing index at ``output``."""
    if not output.is_file():
        return []
    try:
        old = read_index(output, check_checksum=False).attrs["sources"]
    except InputError:
        return []
    changed = sorted(rel for rel, digest in sources.items() if rel in old and old[rel] != digest)
    for rel in changed:
        log.warning("%s changed since the last index (SHA-256 %s... -> %s...); rebuilding what depends on it.",
                    rel, old[rel][:12], sources[rel][:12])
    return changed


# --- NSD perception ------------------------------------------------------------------


def _nsd_plan(root: Path, subject: str, beta_format: str) -> dict[str, Any]:
    files = {
        "expdesign": nsd_constants.EXPDESIGN,
        "stim_info": nsd_constants.STIM_INFO,
        "stimuli": nsd_constants.STIMULI_HDF5,
    }
    for rel in files.values():
        nsd.require(root, rel)
    sessions = nsd.list_sessions(root, subject, beta_format)
    responses = nsd_constants.RESPONSES.format(subject=subject)
    return {**files, "sessions": sessions, "responses": responses if (root / responses).is_file() else None}


def _nsd_rows(root: Path, subject: str, plan: dict[str, Any]) -> tuple[pd.DataFrame, Any]:
    design = nsd.read_expdesign(root / plan["expdesign"])
    nsd.check_stim_info(nsd.read_stim_info(root / plan["stim_info"]), design, plan["stim_info"])
    for session, rel in plan["sessions"]:
        info = nsd.inspect_betas(root / rel)
        if info.n_volumes != nsd_constants.TRIALS_PER_SESSION:
            raise MismatchError(
                f"{rel} has {info.n_volumes} volumes; expected {nsd_constants.TRIALS_PER_SESSION} (one per trial of session {session})."
            )
    n_trials = len(plan["sessions"]) * nsd_constants.TRIALS_PER_SESSION
    trials = nsd.nsd_trials(design, subject, n_trials)
    files = dict(plan["sessions"])
    trials["beta_file"] = trials["session"].map(files)
    trials["run"] = pd.array([None] * len(trials), dtype="Int32")
    if plan["responses"]:
        responses = nsd.read_responses(root / plan["responses"])
        responses = responses[responses["trial"] <= n_trials]
        merged = trials[["trial", "nsd_id"]].merge(responses, on="trial", how="inner", suffixes=("", "_resp"))
        wrong = merged[merged["nsd_id"] != merged["nsd_id_resp"]]
        if not wrong.empty:
            row = wrong.iloc[0]
            raise MismatchError(
                f"{plan['responses']}: trial {int(row['trial'])} shows 73KID {int(row['nsd_id_resp']) + 1} but "
                f"nsd_expdesign.mat says {int(row['nsd_id']) + 1}; expected the same image."
            )
        runs = pd.Series(merged["run"].to_numpy(), index=merged["trial"].to_numpy())
        trials["run"] = pd.array(trials["trial"].map(runs), dtype="Int32")
    n_images = nsd.count_stimulus_images(root / plan["stimuli"])
    beyond = trials[trials["nsd_id"] >= n_images]
    if not beyond.empty:
        row = beyond.iloc[0]
        raise InputError(
            f"Stimulus nsd-{int(row['nsd_id']):05d} (trial {int(row['trial'])}) has no image: "
            f"{plan['stimuli']} imgBrick holds {n_images} images."
        )
    frame = pd.DataFrame({
        "dataset": "nsd",
        "condition": "perception",
        "session": pd.array(trials["session"], dtype="Int32"),
        "run": trials["run"],
        "trial": trials["trial"].astype(np.int32),
        "beta_file": trials["beta_file"],
        "beta_volume": trials["beta_volume"].astype(np.int32),
        "stimulus_id": [f"nsd-{i:05d}" for i in trials["nsd_id"]],
        "nsd_id": pd.array(trials["nsd_id"], dtype="Int32"),
        "stimulus_type": "natural",
        "stimulus_name": None,
        "image_ref": [f"{nsd_constants.STIMULI_HDF5}#{i}" for i in trials["nsd_id"]],
        "text": None,
        "is_shared1000": trials["is_shared1000"].astype(bool),
        **{c: pd.array([None] * len(trials), dtype=t) for c, t in NSD_NULL_COLUMNS.items()},
    })
    return frame, design


# --- NSD-Imagery ----------------------------------------------------------------------


def _imagery_plan(root: Path, subject: str, variant: str, beta_format: str,
                  trials: str | os.PathLike | None) -> dict[str, Any]:
    """What to read for NSD-Imagery: the release as published, or (``trials``) the hand-written tables."""
    plan: dict[str, Any] = {"subject": subject, "variant": variant, "beta_format": beta_format, "trials": None}
    if trials is None:
        nsd_imagery_release.beta_file(root, subject, variant, beta_format)  # the cheapest missing-file check
        return plan
    path = Path(trials) if Path(trials).is_absolute() else root / trials
    try:
        plan["trials"] = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise InputError(f"--imagery-trials {trials} lies outside the data root {root}; expected a table under it "
                         "(its SHA-256 is recorded release-relative).") from None
    nsd.require(root, plan["trials"])
    nsd.require(root, nsd_constants.IMAGERY_STIMULI_TABLE)
    plan["betas"] = nsd_imagery_release.beta_file(root, subject, variant, beta_format)
    return plan


def _imagery_release(root: Path, plan: dict[str, Any], progress: bool) -> tuple[pd.DataFrame, list[str], dict]:
    """The index frame of :mod:`~fmri2img.data.nsd_imagery_release` (or of the tables), sources and metadata."""
    if plan["trials"] is None:
        release = nsd_imagery_release.read_release(root, plan["subject"], plan["variant"], plan["beta_format"],
                                                   progress=progress)
        plan["release"] = release
        return nsd_imagery_release.index_frame(release), list(release.sources), release.metadata
    frame = nsd_imagery_release.index_frame_from_tables(root, plan["trials"])
    info = nsd.inspect_betas(root / plan["betas"])
    if info.n_volumes != len(frame):
        raise MismatchError(f"{plan['betas']} has {info.n_volumes} volumes but {plan['trials']} lists {len(frame)} "
                            "trials; expected one row per volume.")
    sources = [plan["betas"], plan["trials"], nsd_constants.IMAGERY_STIMULI_TABLE]
    return frame, sources, {"subject": plan["subject"], "variant": plan["variant"], "beta_file": plan["betas"],
                            "trials_override": plan["trials"]}


def _image_refs(root: Path, joined: pd.DataFrame, n_images: int | None) -> dict[str, str]:
    """Stimulus id -> image reference: ``nsd_stimuli.hdf5#<id>`` for set B NSD images, else the PNG."""
    refs = {}
    for row in joined.drop_duplicates("stimulus_id").itertuples(index=False):
        if row.stim_set == "C":
            if not row.text.strip():
                raise InputError(f"Stimulus {row.stimulus_id} (set C) has no text; expected its word.")
            continue
        if not row.image or not (root / row.image).is_file():
            raise InputError(f"Stimulus {row.stimulus_id} (set {row.stim_set}) has no image: "
                             f"{root / row.image if row.image else 'the image column is empty'}; expected a PNG.")
        source_path(root, row.image)
        refs[row.stimulus_id] = row.image
        if row.stim_set == "B" and pd.notna(row.nsd_id) and n_images is not None:
            if int(row.nsd_id) >= n_images:
                raise InputError(f"Stimulus {row.stimulus_id} has no image: {nsd_constants.STIMULI_HDF5} imgBrick "
                                 f"holds {n_images} images.")
            refs[row.stimulus_id] = f"{nsd_constants.STIMULI_HDF5}#{int(row.nsd_id)}"  # one image per stimulus id
    return refs


def _imagery_rows(root: Path, plan: dict[str, Any], shared: set[int], n_images: int | None,
                  progress: bool) -> tuple[pd.DataFrame, list[str], dict]:
    """Index rows of the 720 NSD-Imagery betas, the source files (beta file first) and the reader's metadata."""
    joined, sources, meta = _imagery_release(root, plan, progress)
    refs = _image_refs(root, joined, n_images)
    nsd_ids = joined["nsd_id"]
    frame = pd.DataFrame({
        "dataset": "nsdimagery",
        "condition": joined["condition"],
        "session": pd.array([None] * len(joined), dtype="Int32"),
        "run": pd.array(joined["run"], dtype="Int32"),
        "trial": joined["beta_index"].astype(np.int32),
        "beta_file": meta["beta_file"],
        "beta_volume": (joined["beta_index"] - 1).astype(np.int32),
        "stimulus_id": joined["stimulus_id"],
        "nsd_id": pd.array(nsd_ids, dtype="Int32"),
        "stimulus_type": joined["stimulus_type"],
        "stimulus_name": joined["stim_name"],
        "image_ref": [refs.get(i) for i in joined["stimulus_id"]],
        "text": [t if s == "C" and t.strip() else None for s, t in zip(joined["stim_set"], joined["text"])],
        "is_shared1000": [bool(pd.notna(i) and int(i) in shared) for i in nsd_ids],
        "run_trial": pd.array(joined["trial"], dtype="Int16"),
        "epoch": pd.array(joined["epoch"], dtype="string"),
        "cue": pd.array(joined["cue"], dtype="string"),
        **{c: pd.array(joined[c], dtype="Float64") for c in ("button", "rt", "is_correct")},
        "_stim_set": joined["stim_set"],
    })
    pngs = sorted({i for i in joined["image"] if i})
    return frame, sorted({*sources, *pngs}), meta


def check_imagery_order(plan: dict[str, Any] | None, cache_path: Path) -> None:
    """After caching: the vision betas must not favour another within-run order than the reader assumed
    (:func:`~fmri2img.data.nsd_imagery_verify.check_within_run_order`; raises :class:`MismatchError`)."""
    release = (plan or {}).get("release")
    if release is None:
        return
    rel = release.metadata["beta_file"]
    X = np.nan_to_num(np.load(cache_path / betas.npy_name(rel), mmap_mode="r"))
    nsd_imagery_verify.check_within_run_order(X, release.table, release.metadata["within_run_order"], rel)


# --- the index -------------------------------------------------------------------------


def _read_tables(root: Path, subject: str, nsd_plan, img_plan, progress: bool = True
                 ) -> tuple[pd.DataFrame, Any, list[str], dict]:
    """Index rows of the NSD and NSD-Imagery trials (checked, no beta data read), the design,
    the NSD-Imagery source files and the NSD-Imagery reader's metadata."""
    frames, design, n_images, imagery_meta = [], None, None, {}
    if nsd_plan is not None:
        nsd_frame, design = _nsd_rows(root, subject, nsd_plan)
        frames.append(nsd_frame)
    elif (root / nsd_constants.EXPDESIGN).is_file():
        design = nsd.read_expdesign(root / nsd_constants.EXPDESIGN)
    if (root / nsd_constants.STIMULI_HDF5).is_file():
        n_images = nsd.count_stimulus_images(root / nsd_constants.STIMULI_HDF5)
    shared = set(design.shared_nsd_ids().tolist()) if design is not None else set()
    img_sources: list[str] = []
    if img_plan is not None:
        img_frame, img_sources, imagery_meta = _imagery_rows(root, img_plan, shared, n_images, progress)
        frames.append(img_frame)
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "subject", subject)
    return frame, design, img_sources, imagery_meta


def _split(frame: pd.DataFrame, subject: str, design, folds: int, *, with_nsd: bool,
           with_imagery: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stimulus-disjoint splits and folds added to the rows (sorted, repeats numbered, columns of
    the schema); returns them and the split manifest."""
    nsd_rows = (frame["dataset"] == "nsd").to_numpy()
    img_rows = ~nsd_rows
    imagery_nsd_ids = frame.loc[img_rows, "nsd_id"].dropna().astype(int).unique()
    nsd_splits = fold_of = None
    if with_nsd:
        nsd_splits = splits.nsd_split(
            frame.loc[nsd_rows, "nsd_id"].astype(int).to_numpy(), design.shared_nsd_ids(),
            seed=SPLIT_SEED, force_test=imagery_nsd_ids,
        )
    if with_imagery:
        stim = frame.loc[img_rows, ["stimulus_id", "_stim_set"]].drop_duplicates("stimulus_id")
        fold_of = splits.assign_imagery_folds(stim["stimulus_id"].tolist(), stim["_stim_set"].tolist(), k=folds,
                                              seed=SPLIT_SEED)
    manifest = splits.make_manifest(subject, nsd=nsd_splits, imagery=fold_of, folds=folds)
    split_of = {f"nsd-{i:05d}": name for name, ids in (nsd_splits or {}).items() for i in ids}
    frame["split"] = [split_of[s] if d == "nsd" else "test" for d, s in zip(frame["dataset"], frame["stimulus_id"])]
    frame["fold"] = pd.array(
        [fold_of[s] if d == "nsdimagery" else None for d, s in zip(frame["dataset"], frame["stimulus_id"])],
        dtype="Int8",
    )
    frame = frame.sort_values(["dataset", "trial"], kind="stable").reset_index(drop=True)
    frame["repeat"] = frame.groupby(["dataset", "condition", "stimulus_id"], sort=False).cumcount().astype(np.int16)
    frame = frame[SCHEMA.names]
    return frame, manifest


def _relatives(mask_rel: str, beta_files: list[str], img_sources: list[str], nsd_plan,
               roi_files: list[str]) -> list[str]:
    """Every source file of an index (release-relative), to be hashed."""
    relatives = [mask_rel, *roi_files, *beta_files, *img_sources]
    if nsd_plan is not None:
        relatives += [nsd_plan["expdesign"], nsd_plan["stim_info"], nsd_plan["stimuli"]]
        relatives += [nsd_plan["responses"]] if nsd_plan["responses"] else []
    return relatives


def build_index(
    subject: str,
    data_root: str | os.PathLike,
    cache_root: str | os.PathLike,
    dataset: str = "both",
    output: str | os.PathLike | None = None,
    manifest_dir: str | os.PathLike = DEFAULT_MANIFEST_DIR,
    jobs: int = 1,
    verify: bool = False,
    progress: bool = True,
    folds: int = splits.DEFAULT_FOLDS,
    beta_format: str = "auto",
    imagery_betas: str = nsd_imagery_release.DEFAULT_VARIANT,
    imagery_trials: str | os.PathLike | None = None,
) -> Path:
    """Build the trial index and beta cache of ``subject``; return the index path.

    Parameters
    ----------
    subject : str
        ``subj01`` ... ``subj08``.
    data_root : path
        Root of an NSD download (``nsddata/``, ``nsddata_betas/``, ...) or of ``fmri2img synth`` output.
    cache_root : path
        Where the beta cache (``betas/``), the checksum memo (``checksums/``) and, by default,
        the index (``indices/imagery/<subject>.parquet``) go.
    dataset : {'both', 'nsd', 'imagery'}
        Which trials to index; ``manifest_dir`` gets the split manifest ``<subject>_splits.json``.
    jobs : int
        Sessions read in parallel when building the beta cache.
    verify : bool
        Check an existing index, manifest and cache against the sources (every file re-hashed)
        and rebuild nothing; raises :class:`~fmri2img.core.errors.ChecksumError` naming a changed file.
    folds : int
        NSD-Imagery stimulus folds K (stimulus-disjoint, balanced over sets A/B/C).
    beta_format : {'auto', 'nifti', 'hdf5'}
        Which beta files to read, NSD sessions and NSD-Imagery (``auto``: HDF5 where present, else NIfTI).
    imagery_betas, imagery_trials : str, path or None
        NSD-Imagery GLM variant (``nsdimagerybetas_<variant>``); a hand-written trial table used instead of
        the release's design, behaviour files and pair lists (docs/nsd_data.md, section 3).
    """
    nsd_constants.subject_number(subject)
    check_choice("dataset", dataset, DATASETS)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"Invalid jobs={jobs!r}; expected an integer >= 1.")
    root = nsd.check_root(data_root)
    output = Path(output) if output is not None else default_index_path(cache_root, subject)
    if verify:
        return verify_index(output, root, cache_root, manifest_dir)
    for target in (output, splits.manifest_path(manifest_dir, subject), _memo_path(cache_root, subject)):
        check_writable(target)  # fail before reading or hashing anything
    with_nsd, with_imagery = dataset in ("nsd", "both"), dataset in ("imagery", "both")
    if with_imagery and (not isinstance(folds, int) or folds < 2):
        raise ConfigError(f"Invalid folds={folds!r}; expected an integer >= 2.")
    # 1. every input exists (cheap) before anything is read or hashed
    mask_rel = nsd_constants.NSDGENERAL.format(subject=subject)
    nsd.require(root, mask_rel)
    nsd_plan = _nsd_plan(root, subject, beta_format) if with_nsd else None
    img_plan = _imagery_plan(root, subject, imagery_betas, beta_format, imagery_trials) if with_imagery else None

    # 2. read and check the tables (no beta data yet); 3. stimulus-disjoint splits
    frame, design, img_sources, imagery_meta = _read_tables(root, subject, nsd_plan, img_plan, progress)
    frame, manifest = _split(frame, subject, design, folds, with_nsd=nsd_plan is not None,
                             with_imagery=img_plan is not None)

    # 4. hash every source once (streamed; unchanged files are looked up in the memo)
    beta_files = list(dict.fromkeys(frame["beta_file"]))
    relatives = _relatives(mask_rel, beta_files, img_sources, nsd_plan, list(regions.atlas_files(root, subject).values()))
    sources = hash_sources(root, relatives, _memo_path(cache_root, subject))
    _report_changes(output, sources)
    # 5. beta cache (the heavy part), then manifest, index and sidecar
    cache = betas.build_beta_cache(subject, root, cache_root, beta_files, sources, jobs=jobs, progress=progress)
    if cache.n_valid < cache.n_voxels:
        log.warning("%s: %d of %d cached voxels are NaN or all-zero in some beta file and are dropped.",
                    subject, cache.n_voxels - cache.n_valid, cache.n_voxels)
    check_imagery_order(img_plan, cache.path)
    manifest_sha = splits.write_manifest(manifest, splits.manifest_path(manifest_dir, subject))
    metadata = make_metadata(sources, manifest_sha, str(root.resolve()), imagery_meta)
    return write_index(frame, output, metadata)


def verify_index(
    output: str | os.PathLike,
    data_root: str | os.PathLike,
    cache_root: str | os.PathLike,
    manifest_dir: str | os.PathLike = DEFAULT_MANIFEST_DIR,
) -> Path:
    """Re-check an index without rebuilding: its sidecar, every source's SHA-256 (re-read in
    full), the split manifest's SHA-256 and the beta cache. Raises naming the first problem."""
    output = Path(output)
    frame = read_index(output)
    recorded: dict[str, str] = frame.attrs["sources"]
    subject = str(frame["subject"].iloc[0]) if len(frame) else ""
    current = hash_sources(data_root, sorted(recorded), None, force=True)
    changed = sorted(rel for rel in recorded if current[rel] != recorded[rel])
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ChecksumError(
            f"{changed[0]}{more} changed since {output} was built (SHA-256 {current[changed[0]][:12]}..., "
            f"recorded {recorded[changed[0]][:12]}...); rerun `fmri2img index`."
        )
    manifest = splits.manifest_path(manifest_dir, subject)
    if not manifest.is_file():
        raise MissingInputError(f"Split manifest not found: {manifest}; expected the one {output} was built with.")
    if sha256_file(manifest) != frame.attrs["split_manifest_sha256"]:
        raise ChecksumError(f"Split manifest {manifest} differs from the one recorded in {output}; rerun `fmri2img index`.")
    beta_files = list(dict.fromkeys(frame["beta_file"]))
    betas.verify_beta_cache(betas.index_cache_dir(cache_root, frame), recorded, beta_files)
    return output
