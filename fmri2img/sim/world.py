"""The synthetic NSD world: NSD and NSD-Imagery files with planted, known effects.

:func:`write_world` writes, under one root, files that a real NSD reader can read, in NSD's own
layout (``docs/contracts.md``, section 1), plus a ``truth/`` folder with everything that generated
them. The generative model is :mod:`fmri2img.sim.model`, the file writers :mod:`fmri2img.sim.formats`.
Everything is seeded: the same arguments give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fmri2img import __version__
from fmri2img.core.constants import DEFAULT_SUBJECTS, DEFAULT_WORLD_SEED
from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError, OutputError
from fmri2img.core.files import ensure_dir, save_npy, write_json
from fmri2img.core.vocab import WRITE_BETA_FORMATS
from fmri2img.data import nsd_constants
from fmri2img.sim import anatomy, imagery_release
from fmri2img.sim.formats import (
    VolumeWriter,
    hdf5_chunks,
    responses_table,
    stim_info_table,
    write_hdf5,
    write_mat,
    write_nifti,
    write_png,
    write_table,
)
from fmri2img.sim.model import (
    GENERATIVE_MODEL_TEXT,
    Design,
    GeneratorParams,
    imagery_content,
    imagery_stimuli,
    make_design,
    make_encoding,
    make_latents,
    make_masks,
    noise_ceiling,
    render_images,
    session_betas,
    voxel_ncsnr,
)
from fmri2img.sim.seeds import WorldSeeds, rng_for
from fmri2img.sim.shape import SCALES, WorldShape


@dataclass
class WorldSummary:
    """What :func:`write_world` wrote."""

    root: Path
    subjects: tuple[str, ...]
    scale: str
    sessions: dict[str, int]
    n_images: int
    n_stimuli: int
    n_files: int
    n_bytes: int
    seconds: float
    files: list[str] = field(default_factory=list)


@dataclass
class _Stimuli:
    """The stimuli of a world: pool latents (rows = nsd ids), sets A and C, the 18 NSD-Imagery
    stimuli in table order with their latents and imagery content."""

    latents: np.ndarray
    lat_a: np.ndarray
    lat_c: np.ndarray
    imagery: list[dict[str, Any]]
    sets: list[str]
    stim_latents: np.ndarray
    imagined: np.ndarray
    offsets: dict[str, np.ndarray]
    residuals: np.ndarray
    cells: list[np.ndarray] = field(default_factory=list)  # NSD-Imagery design, one cell per run
    events: pd.DataFrame | None = None  # one row per imagery beta volume (imagery_release.make_design)


def check_request(
    out: str | os.PathLike,
    subjects: Iterable[str] = DEFAULT_SUBJECTS,
    scale: str | WorldShape = "demo",
    sessions: int | None = None,
    beta_format: str = "nifti",
    force: bool = False,
) -> tuple[Path, tuple[str, ...], WorldShape]:
    """Validate :func:`write_world`'s arguments without writing (the CLI calls it before MLflow).

    Returns the output path, the subjects and the resolved :class:`WorldShape`; raises
    :class:`~fmri2img.core.errors.InputError` / :class:`~fmri2img.core.errors.OutputError`.
    """
    subjects = tuple(subjects)
    if not subjects:
        raise InputError("No subject given; expected at least one of " + ", ".join(nsd_constants.ALL_SUBJECTS) + ".")
    for subject in subjects:
        nsd_constants.subject_number(subject)
    if len(set(subjects)) != len(subjects):
        raise InputError(f"Subjects {list(subjects)} contain duplicates; expected each subject once.")
    if isinstance(scale, WorldShape):
        shape = scale
    elif scale in SCALES:
        shape = SCALES[scale]
    else:
        raise InputError(f"Unknown scale {scale!r}; choose one of {', '.join(map(repr, SCALES))}.")
    if shape.n_shared >= shape.images_per_subject or shape.n_shared < nsd_constants.IMAGERY_STIMULI_PER_SET:
        raise InputError(
            f"n_shared={shape.n_shared} must lie in [{nsd_constants.IMAGERY_STIMULI_PER_SET}, "
            f"{shape.images_per_subject}) for {shape.n_sessions} sessions."
        )
    anatomy.check_label_room(shape.n_mask_voxels)
    if sessions is not None and not 1 <= sessions <= shape.n_sessions:
        raise InputError(f"--sessions {sessions} is out of range; expected 1..{shape.n_sessions}.")
    check_choice("beta format", beta_format, WRITE_BETA_FORMATS, error=InputError)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output {out} exists and is not a folder; expected a folder for the world.")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputError(f"Output folder {out} already exists and is not empty; pass --force to replace it.")
        if not (out / "truth" / "params.json").is_file():
            raise OutputError(
                f"Refusing to replace {out}: it is not a synthetic world (no truth/params.json); "
                "choose another --out."
            )
    return out, subjects, shape


def sessions_for(subject: str, shape: WorldShape, sessions: int | None) -> int:
    """Number of NSD sessions written for ``subject``."""
    n = shape.n_sessions if sessions is None else sessions
    if shape.real_session_counts:
        n = min(n, nsd_constants.NSD_SESSIONS[subject])
    return n


def write_world(
    out: str | os.PathLike,
    *,
    subjects: Iterable[str] = DEFAULT_SUBJECTS,
    scale: str | WorldShape = "demo",
    sessions: int | None = None,
    beta_format: str = "nifti",
    null: bool = False,
    seed: int = DEFAULT_WORLD_SEED,
    stimulus_seed: int | None = None,
    subject_seed: int | None = None,
    offset_seed: int | None = None,
    force: bool = False,
    progress: bool = True,
    params: GeneratorParams | None = None,
    imagery_strength: float | None = None,
) -> WorldSummary:
    """Write a synthetic NSD + NSD-Imagery world under ``out`` (layout: docs/contracts.md, 1).

    Parameters
    ----------
    out : path
        Root of the world; written in a temporary sibling folder and renamed at the end.
    subjects : iterable of str
        Subjects to generate (``subj01`` ... ``subj08``).
    scale : {'demo', 'nsd'} or WorldShape
        Size preset (:data:`SCALES`) or an explicit shape (tests use tiny ones).
    sessions : int, optional
        Write only the first ``sessions`` NSD sessions (the design stays complete).
    beta_format : {'nifti', 'hdf5', 'both'}
        Which twin of the NSD session and NSD-Imagery betas to write.
    null : bool
        Imagery identical in distribution to perception (for calibrating statistics).
    seed : int
        Same seed and arguments give byte-identical files.
    stimulus_seed, subject_seed : int, optional
        Seeds of the stimulus and the subject draws (default ``seed``; :class:`WorldSeeds`): a world
        with the same ``seed`` and another ``subject_seed`` shows the same stimuli to new subjects.
    offset_seed : int, optional
        Seed of the imagery offset direction alone (default: drawn with the world family, ``seed``).
    force : bool
        Replace an existing world at ``out``.
    progress : bool
        Show a progress bar on stderr.
    params : GeneratorParams, optional
        Generative-model parameters (default: the calibrated defaults).
    imagery_strength : float in (0, 1], optional
        Overrides ``params.imagery_strength`` (1 = imagery like perception; ``null`` wins).

    Returns
    -------
    WorldSummary
    """
    t0 = time.perf_counter()
    out, subjects, shape = check_request(out, subjects, scale, sessions, beta_format, force)
    scale_name = scale if isinstance(scale, str) else "custom"
    params = params or GeneratorParams()
    if imagery_strength is not None:
        params = dataclasses.replace(params, imagery_strength=float(imagery_strength))
    if null:
        params = params.as_null()
    parent = ensure_dir(out.parent if str(out.parent) else Path("."))
    tmp = Path(_mkdtemp(parent, out.name))
    try:
        seeds = WorldSeeds(int(seed), int(seed if stimulus_seed is None else stimulus_seed),
                           int(seed if subject_seed is None else subject_seed),
                           None if offset_seed is None else int(offset_seed))
        summary = _write_into(tmp, subjects, shape, scale_name, sessions, beta_format, null, seeds,
                              params, progress)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.root = out
    summary.seconds = time.perf_counter() - t0
    return summary


def _mkdtemp(parent: Path, name: str) -> str:
    return tempfile.mkdtemp(prefix=f".{name}.fmri2img-tmp-", dir=parent)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        trash = Path(_mkdtemp(out.parent, out.name + ".old"))
        os.replace(out, trash / "world")
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(trash / "world", out)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _make_stimuli(design: Design, shape: WorldShape, subjects: Sequence[str], params: GeneratorParams,
                  seeds: WorldSeeds) -> _Stimuli:
    """Pool latents (shared block, then each subject's unique block), sets A and C, imagery content."""
    seed, geometry = seeds.stimuli, seeds.world
    latents = np.empty((len(design.nsd_ids), params.dim))
    shared_lat, _ = make_latents(shape.n_shared, params, seed, "shared", geometry)
    latents[design.shared] = shared_lat
    for subject in subjects:
        ids = design.subjectim[nsd_constants.subject_number(subject) - 1, shape.n_shared:]
        latents[ids], _ = make_latents(len(ids), params, seed, f"unique-{subject}", geometry)
    lat_a, _ = make_latents(nsd_constants.IMAGERY_STIMULI_PER_SET, params, seed, "imagery-A", geometry)
    lat_c, _ = make_latents(nsd_constants.IMAGERY_STIMULI_PER_SET, params, seed, "imagery-C", geometry)
    stimuli = imagery_release.release_names(imagery_stimuli(design), design.shared)
    stim_latents = np.concatenate([lat_a, latents[design.imagery_b], lat_c])  # table order (18, d)
    sets = [s["stim_set"] for s in stimuli]
    imagined, offsets, resid = imagery_content(stim_latents, sets, params, seed, geometry, seeds.offset)
    cells, events = imagery_release.make_design(rng_for(seeds.subjects, "imagery-design"))
    return _Stimuli(latents, lat_a, lat_c, stimuli, sets, stim_latents, imagined, offsets, resid, cells, events)


def _write_release_files(root: Path, design: Design, shape: WorldShape, subjects: Sequence[str],
                         n_written: dict[str, int], stim: _Stimuli, params: GeneratorParams, seed: int) -> None:
    # seed: the world family's (the renderer)
    """Files shared by the subjects: imgBrick, NSD-Imagery targets, design and pair lists, nsd_expdesign.mat,
    stim info."""
    images = render_images(stim.latents, shape.image_size, params, seed)
    write_hdf5(root / nsd_constants.STIMULI_HDF5, "imgBrick", images, chunks=(1, *images.shape[1:]))
    img_a = render_images(stim.lat_a, shape.image_size, params, seed)
    for entry, pic in zip(stim.imagery[:6], img_a):
        write_png(root / entry["image"], pic)
    for entry in stim.imagery[6:12]:  # sharedSSSS_nsdNNNNN.png shows imgBrick[NNNNN - 1]
        write_png(root / entry["image"], images[entry["nsd_id"]])
    imagery_release.write_shared(root, stim.cells, stim.imagery)
    write_mat(root / nsd_constants.EXPDESIGN, {
        # MATLAB doubles, 1-based, shaped as in the real file
        "masterordering": (design.masterordering + 1).astype(np.float64)[None, :],
        "subjectim": (design.subjectim + 1).astype(np.float64),
        "sharedix": (design.shared + 1).astype(np.float64)[None, :],
    })
    write_table(root / nsd_constants.STIM_INFO, stim_info_table(design, shape.n_sessions, n_written), sep=",")


def _write_sessions(root: Path, subject: str, design: Design, stim: _Stimuli, G: np.ndarray, writer: VolumeWriter,
                    n_sessions: int, beta_format: str, params: GeneratorParams, seed: int, bar) -> None:
    """The subject's NSD session betas (NIfTI and/or HDF5), one session volume at a time (``seed``: the subjects
    family's)."""
    row = nsd_constants.subject_number(subject) - 1
    for session in range(1, n_sessions + 1):
        bar.set_postfix_str(f"{subject} session {session:02d}")
        t = slice((session - 1) * nsd_constants.TRIALS_PER_SESSION, session * nsd_constants.TRIALS_PER_SESSION)
        shown = design.subjectim[row, design.masterordering[t]]
        signal = params.amplitude * (stim.latents[shown].astype(np.float32) @ G.T)
        vol = session_betas(writer, signal, params.noise_sd, params, rng_for(seed, "betas", subject, session))
        if beta_format in ("nifti", "both"):
            write_nifti(root / nsd_constants.BETAS_NII.format(subject=subject, session=session), vol)
        if beta_format in ("hdf5", "both"):
            cvol = vol.T  # C-contiguous (T, Z, Y, X), as h5py sees the real file
            write_hdf5(root / nsd_constants.BETAS_HDF5.format(subject=subject, session=session),
                       "betas", cvol, chunks=hdf5_chunks(cvol.shape))
        bar.update(1)


def _write_imagery(root: Path, subject: str, stim: _Stimuli, G: np.ndarray, gain: np.ndarray, grid, roi, brain,
                   params: GeneratorParams, seed: int, beta_format: str) -> None:
    """The subject's 720 NSD-Imagery betas (release block order; imagery signal x ``gain``, (n_roi,)), behaviour
    (``seed``: the subjects family's)."""
    stim_idx, tasks = stim.events["stim_index"].to_numpy(), stim.events["task"].to_numpy()
    content = np.where((tasks == "imagery")[:, None], stim.imagined[stim_idx], stim.stim_latents[stim_idx])
    content = np.where((tasks == "attention")[:, None], params.attention_gain * content, content)
    noise = np.array([params.effect(stim.sets[s]).noise_sd if task == "imagery" else params.noise_sd
                      for task, s in zip(tasks, stim_idx)], dtype=np.float32)[:, None]
    signal = params.amplitude * (content.astype(np.float32) @ G.T)
    signal[tasks == "imagery"] *= gain
    writer = VolumeWriter(grid, len(stim_idx), roi, brain)
    vol = session_betas(writer, signal, noise, params, rng_for(seed, "imagery-betas", subject))
    if beta_format in ("nifti", "both"):
        write_nifti(root / imagery_release.betas_path(subject, "nii.gz"), vol)
    if beta_format in ("hdf5", "both"):
        cvol = vol.T  # (T, Z, Y, X), as the real file
        write_hdf5(root / imagery_release.betas_path(subject, "hdf5"), "betas", cvol, chunks=hdf5_chunks(cvol.shape))
    imagery_release.write_behaviour(root, stim.events, subject, rng_for(seed, "imagery-behaviour", subject))


def _write_subject(root: Path, subject: str, design: Design, shape: WorldShape, stim: _Stimuli, n_sessions: int,
                   beta_format: str, params: GeneratorParams, seed: int, bar) -> tuple[anatomy.Anatomy, np.ndarray]:
    """Masks, regions, encoding, behaviour and betas of one subject; returns its anatomy and ncsnr (n_roi,)
    (``seed``: the subjects family's)."""
    bar.set_postfix_str(f"{subject} masks")
    grid = shape.grid_of(subject)
    nsdgeneral, brain = make_masks(grid, shape.n_mask_voxels, seed, subject)
    roi = nsdgeneral == nsd_constants.NSDGENERAL_INSIDE
    write_nifti(root / nsd_constants.NSDGENERAL.format(subject=subject), nsdgeneral)
    write_nifti(root / nsd_constants.BRAINMASK.format(subject=subject), brain)
    anat = anatomy.make_anatomy(nsdgeneral, params, rng_for(seed, "voxel-gain", subject))
    G = make_encoding(roi, params, seed, subject) * anat.voxel_gain[:, None]
    save_npy(root / "truth" / f"G_{subject}.npy", G)
    ncsnr = voxel_ncsnr(G, stim.latents, design, subject, params)
    anatomy.write_anatomy(root, subject, nsdgeneral, anat, ncsnr)
    row = nsd_constants.subject_number(subject) - 1
    write_table(root / nsd_constants.RESPONSES.format(subject=subject),
                responses_table(design, row, n_sessions, rng_for(seed, "behaviour", subject), subject), sep="\t")
    bar.update(1)
    _write_sessions(root, subject, design, stim, G, VolumeWriter(grid, nsd_constants.TRIALS_PER_SESSION, roi, brain),
                    n_sessions, beta_format, params, seed, bar)
    bar.set_postfix_str(f"{subject} imagery")  # the session volume is freed before the imagery one
    _write_imagery(root, subject, stim, G, anat.imagery_gain, grid, roi, brain, params, seed, beta_format)
    bar.update(1)
    return anat, ncsnr


def _write_truth(root: Path, design: Design, stim: _Stimuli, truth: dict[str, Any]) -> list[str]:
    """``truth/``: latents and their stimulus ids, imagery offsets and residuals, params.json."""
    ids = [f"nsd-{i:05d}" for i in design.nsd_ids]
    ids += [s["stimulus_id"] for s in stim.imagery if s["stim_set"] != "B"]
    save_npy(root / "truth" / "latents.npy", np.concatenate([stim.latents, stim.lat_a, stim.lat_c]).astype(np.float32))
    write_json(root / "truth" / "stimulus_ids.json", ids)
    save_npy(root / "truth" / "imagery_offsets.npy",
             np.stack([stim.offsets[x] for x in nsd_constants.IMAGERY_SETS]).astype(np.float32))
    save_npy(root / "truth" / "imagery_residuals.npy", stim.residuals.astype(np.float32))
    write_json(root / "truth" / "params.json", truth)
    return ids


def _write_into(root: Path, subjects: tuple[str, ...], shape: WorldShape, scale_name: str, sessions: int | None,
                beta_format: str, null: bool, seeds: WorldSeeds, params: GeneratorParams, progress: bool) -> WorldSummary:
    design = make_design(shape, subjects, seeds.stimuli)
    n_written = {s: sessions_for(s, shape, sessions) for s in subjects}
    stim = _make_stimuli(design, shape, subjects, params, seeds)
    steps = sum(n_written.values()) + 2 * len(subjects) + 1
    bar = tqdm(total=steps, desc="synth", unit="step", file=sys.stderr, disable=not progress, leave=False)
    try:
        bar.set_postfix_str("stimuli")
        _write_release_files(root, design, shape, subjects, n_written, stim, params, seeds.world)
        bar.update(1)
        written = {subject: _write_subject(root, subject, design, shape, stim, n_written[subject], beta_format,
                                           params, seeds.subjects, bar) for subject in subjects}
        bar.set_postfix_str("truth")
        truth = _truth_params(params, shape, scale_name, subjects, n_written, beta_format, null, seeds, stim.imagery,
                              len(design.nsd_ids), written, stim.latents)
        ids = _write_truth(root, design, stim, truth)
    finally:
        bar.close()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    n_bytes = sum((root / f).stat().st_size for f in files)
    return WorldSummary(root=root, subjects=subjects, scale=scale_name, sessions=n_written,
                        n_images=len(design.nsd_ids), n_stimuli=len(ids), n_files=len(files), n_bytes=n_bytes,
                        seconds=0.0, files=files)


def _truth_params(params, shape, scale_name, subjects, n_written, beta_format, null, seeds, stimuli,
                  n_pool, written, latents) -> dict[str, Any]:
    iu = np.triu_indices(min(len(latents), 500), k=1)
    sub = latents[:500]
    mean_cos = float((sub @ sub.T)[iu].mean())
    effects = {}
    for x, kind in nsd_constants.IMAGERY_SETS.items():
        e = params.effect(x)
        effects[x] = {
            "stimulus_type": kind,
            "strength": params.set_strength(x),
            **dataclasses.asdict(e),
            "cosine_imagined_vs_true": e.rho,
            # per-voxel SNR of the true-latent component, imagery relative to perception
            "snr_ratio_vs_perception": e.gamma * e.rho * params.noise_sd / e.noise_sd,
        }
    return {
        "generator": "fmri2img.sim",
        "fmri2img_version": __version__,
        "seed": seeds.world,  # the renderer's (fmri2img.models.reconstruct)
        "seeds": dataclasses.asdict(seeds),
        "scale": scale_name,
        "shape": {**dataclasses.asdict(shape), "images_per_subject": shape.images_per_subject},
        "params": dataclasses.asdict(params),
        "null": null,
        "subjects": list(subjects),
        "sessions_written": n_written,
        "beta_format": beta_format,
        "n_pool_images": n_pool,
        "generative_model": GENERATIVE_MODEL_TEXT,
        "imagery_stimuli": [{k: s[k] for k in ("stim_set", "stim_name", "cue", "stimulus_id", "nsd_id")}
                            for s in stimuli],
        "truth_files": {
            "latents.npy": "float32 (n_stimuli, dim) unit vectors, rows as stimulus_ids.json",
            "stimulus_ids.json": "row order of latents.npy",
            "G_subjXX.npy": "float32 (n_mask_voxels, dim), rows = nsdgeneral==1 voxels in C order, scaled by q_v",
            "imagery_gain_subjXX.npy": "float32 (n_mask_voxels,): w_v, the imagery gain, rows as G",
            "imagery_offsets.npy": "float32 (3, dim): c_A, c_B, c_C",
            "imagery_residuals.npy": "float32 (18, dim): r_s, rows in imagery_stimuli order (A, B, C; pair-list order)",
        },
        "regions": anatomy.regions_truth(written, params.imagery_strength, params.voxel_gain_sd),
        "planted_effects": {
            "mean_pairwise_cosine_of_latents": mean_cos,
            "perception_reliability": {s: noise_ceiling(snr) for s, (_, snr) in written.items()},
            "regions": anatomy.planted_text(params.imagery_strength),
            "imagery": effects,
            "H1": ("no transfer deficit (null world)" if null else
                   "imagery carries the true latent with gain gamma*rho and larger noise: degraded "
                   "but non-zero transfer, strongest for A, weakest for C"),
            "H2": ("nothing to learn (null world)" if null else
                   "imagery adds a fixed offset c_X (one direction u in the span of the category "
                   "directions, shared by all imagery trials) and gain gamma_X shared by all stimuli of a "
                   "set: learnable by training on imagery trials of other stimuli (mixed training)"),
            "H3": ("nothing to adapt (null world)" if null else
                   "decoded imagery embeddings are ~ gamma*(rho*e + ...) + c: an affine adapter on the "
                   "decoded embeddings can remove the offset"),
        },
    }
