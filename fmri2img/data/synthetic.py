"""The synthetic NSD world: NSD and NSD-Imagery files with planted, known effects.

:func:`write_world` writes, under one root, files that a real NSD reader can read, in NSD's
own layout (``docs/contracts.md``, section 1), plus a ``truth/`` folder with everything that
generated them. The generative model (``docs/synthetic_world.md``):

* stimulus latents ``e_s`` (unit vectors, ``d = 512``) ~
  ``normalise(w_shared m + w_category u_cat(s) + w_unique z_s)`` with ``m``, ``u_c``, ``z_s``
  random unit vectors (exact form: :func:`make_latents`), so the mean pairwise cosine is ~0.45
  as with CLIP embeddings;
* images rendered deterministically from ``e_s`` (a fixed linear map onto low-frequency 2D
  cosines per colour channel, squashed to uint8), so similar latents give similar pictures;
* perception betas (percent signal change) of trial ``t`` in session ``k`` at voxel ``v``:
  ``x = s_kv (a (G e_s)_v + eps) + o_kv``, ``eps ~ N(0, noise_sd^2)``, with ``G`` (voxels x d)
  spatially smooth over the grid (one per subject), ``o_kv`` a per-session offset and ``s_kv`` a
  per-session gain drift;
* NSD-Imagery betas of stimulus ``s`` of set ``X``: vision trials as perception; imagery trials
  ``a G (gamma_X (rho_X e_s + sqrt(1 - rho_X^2) r_s) + c_X)`` + noise of sd ``noise_sd_X``, with
  ``r_s`` a unit vector orthogonal to ``e_s`` and ``c_X = offset_norm_X u`` a fixed offset
  (``u`` a unit vector in the span of the category directions, the same for every set);
  attention trials ``a G (attention_gain e_s)`` + perception noise.

Everything is seeded: the same arguments give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io as _stdio
import math
import os
import shutil
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmri2img import __version__
from fmri2img.constants import DEFAULT_SUBJECTS
from fmri2img.data import nsd_constants as nsd
from fmri2img.errors import InputError, OutputError
from fmri2img.io import ensure_dir, save_npy, write_json

# --------------------------------------------------------------------------------------------
# Named constants
# --------------------------------------------------------------------------------------------

#: Default seed of the world (any fixed value; the calibration numbers in the docs are for it).
DEFAULT_SEED = 0

#: Side of the synthetic stimulus images in pixels, at every scale (the real imgBrick is 425;
#: 64 keeps ``--scale nsd`` at ~0.5 GB of images instead of ~20 GB).
SYNTH_IMAGE_SIZE = 64

#: Voxel size of the func1pt8mm space in mm [NSD manual, "Betas"].
VOXEL_MM = 1.8

#: Trials per run in an NSD session: 12 runs of 62 or 63 trials summing to 750 [NSD manual,
#: "nsd_expdesign.mat"]. Which runs hold 63 is this generator's choice (the odd ones).
RUN_TRIALS = (63, 62) * (nsd.RUNS_PER_SESSION // 2)

#: NSD-Imagery trials per stimulus and task in this synthetic design: 8 + 16 + 16 = 40 trials
#: x 18 stimuli = 720 betas [NSDI: 720 betas per subject; the split by task is ours].
IMAGERY_TRIALS_PER_STIMULUS = {"vision": 8, "imagery": 16, "attention": 16}

#: Stimulus names of NSD-Imagery sets A (simple) and C (conceptual: these are the words shown);
#: set B are six shared1000 images named ``complex1..6``. The names are this generator's own.
IMAGERY_NAMES_A = ("hbar", "vbar", "ldiag", "rdiag", "cross", "ring")
IMAGERY_WORDS_C = ("dog", "tree", "car", "house", "ball", "boat")

#: Cue letters, one per NSD-Imagery stimulus in table order (A1..A6, B1..B6, C1..C6).
IMAGERY_CUES = tuple("ABCDEFGHIJKLMNOPQR")

#: Number of cosine frequencies per image axis of the renderer (0 .. 9 half-cycles per image).
RENDER_FREQUENCIES = 10

#: Amplitude of cosine (u, v) in the renderer is ``1 / (1 + RENDER_SLOPE * (u + v))``: low
#: frequencies dominate, yet enough of them vary that pixel correlation tracks latent cosine.
RENDER_SLOPE = 0.3

#: Fraction of each grid axis covered by the ellipsoidal synthetic brain (its semi-axes).
BRAIN_SEMI_AXIS_FRACTION = 0.45

#: The nsdgeneral blob sits posterior (low y) and slightly inferior, like visual cortex.
BLOB_CENTRE_OFFSET = (0.0, -0.45, -0.1)

#: First fake COCO id written to nsd_stim_info_merged.csv (real COCO ids are < 600,000).
FAKE_COCO_ID_BASE = 1_000_000

#: HDF5 chunk shape of the betas (trials, z, y, x-row): every chunk holds all trials of one row
#: of voxels, so voxel-wise reads touch few chunks (the real file is chunked for voxel reads).
def _hdf5_chunks(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (shape[0], 1, 1, shape[3])


BETA_FORMATS = ("nifti", "hdf5", "both")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageryEffect:
    """How imagery of one NSD-Imagery stimulus set relates to perception.

    Imagery trials carry ``a G (gamma (rho e_s + sqrt(1 - rho^2) r_s) + c)`` plus noise of sd
    ``noise_sd``, where ``|c| = offset_norm``.

    Attributes
    ----------
    gamma : float
        Gain of the imagined content relative to perception (1 = as strong).
    rho : float
        Cosine between the imagined latent and the true one (1 = same content).
    offset_norm : float
        Norm of the imagery offset ``c`` in latent space (0 = none).
    noise_sd : float
        Single-trial noise sd of imagery betas, in percent signal change.
    """

    gamma: float
    rho: float
    offset_norm: float
    noise_sd: float


#: Perception-identical imagery (``--null``).
def null_effect(noise_sd: float) -> ImageryEffect:
    return ImageryEffect(gamma=1.0, rho=1.0, offset_norm=0.0, noise_sd=noise_sd)


@dataclass(frozen=True)
class GeneratorParams:
    """Parameters of the generative model (scale independent). Defaults are the calibrated ones.

    Attributes
    ----------
    dim : int
        Latent dimension ``d`` (512, like CLIP ViT-B/32).
    n_categories : int
        Number of category clusters of the latents.
    weight_shared, weight_category, weight_unique : float
        Weights of the shared mean direction, the category direction and the stimulus' own
        direction (each a unit vector) before normalisation; 0.95 / 1.0 / 0.4 give a mean
        pairwise cosine of ~0.45 and a category structure strong enough that a ridge decoder
        reads the category directions (and hence the imagery offset along them) out well.
    amplitude : float
        Perception gain ``a``: ``(G e_s)_v`` has unit variance, so the signal sd is ``a`` psc.
    noise_sd : float
        Single-trial noise sd of perception (and vision / attention) betas, in psc.
    session_offset_sd : float
        Sd of the per-session, per-voxel offset ``o_kv`` (psc).
    session_gain_sd : float
        Sd of ``log s_kv``, the per-session, per-voxel gain drift.
    smooth_sigma_vox : float
        Gaussian sigma (voxels) of the smooth part of ``G``.
    smooth_fraction : float
        Share of the variance of ``G`` that is spatially smooth (the rest is voxel-specific).
    attention_gain : float
        Gain of the stimulus in attention trials (``a G (attention_gain e_s)``).
    imagery_a, imagery_b, imagery_c : ImageryEffect
        Imagery effect of the simple (A), complex (B) and conceptual (C) sets.
    render_contrast : float
        Sd of the pre-squash image intensity (higher = more saturated pictures).
    """

    dim: int = 512
    n_categories: int = 20
    weight_shared: float = 0.95
    weight_category: float = 1.0
    weight_unique: float = 0.4
    amplitude: float = 0.75
    noise_sd: float = 4.0
    session_offset_sd: float = 2.0
    session_gain_sd: float = 0.2
    smooth_sigma_vox: float = 1.0
    smooth_fraction: float = 0.5
    attention_gain: float = 1.0
    imagery_a: ImageryEffect = ImageryEffect(gamma=0.8, rho=0.85, offset_norm=1.0, noise_sd=6.0)
    imagery_b: ImageryEffect = ImageryEffect(gamma=0.7, rho=0.8, offset_norm=1.0, noise_sd=6.0)
    imagery_c: ImageryEffect = ImageryEffect(gamma=0.5, rho=0.65, offset_norm=1.0, noise_sd=6.0)
    render_contrast: float = 1.0

    def effect(self, stim_set: str) -> ImageryEffect:
        """The :class:`ImageryEffect` of set ``'A'``, ``'B'`` or ``'C'``."""
        return {"A": self.imagery_a, "B": self.imagery_b, "C": self.imagery_c}[stim_set]

    def as_null(self) -> GeneratorParams:
        """The same parameters with imagery identical in distribution to perception."""
        eff = null_effect(self.noise_sd)
        return dataclasses.replace(self, imagery_a=eff, imagery_b=eff, imagery_c=eff)


@dataclass(frozen=True)
class WorldShape:
    """Sizes of a world. ``images per subject = n_sessions * 750 / 3`` (each shown 3 times).

    Attributes
    ----------
    grid : tuple of 3 ints or None
        Functional grid (X, Y, Z); ``None`` uses each subject's real grid (``FUNC1PT8_GRID``).
    n_mask_voxels : int
        Voxels with nsdgeneral == 1.
    n_sessions : int
        Sessions of the design (``masterordering`` has ``n_sessions * 750`` trials).
    n_shared : int
        Shared images (the first ``n_shared`` columns of ``subjectim``; "shared1000").
    image_size : int
        Side of the stimulus images in pixels.
    real_session_counts : bool
        Subjects write at most their real number of sessions (``NSD_SESSIONS``: 30-40).
    """

    grid: tuple[int, int, int] | None
    n_mask_voxels: int
    n_sessions: int
    n_shared: int
    image_size: int = SYNTH_IMAGE_SIZE
    real_session_counts: bool = False

    @property
    def images_per_subject(self) -> int:
        return self.n_sessions * nsd.TRIALS_PER_SESSION // nsd.MAX_REPEATS

    @property
    def n_trials(self) -> int:
        return self.n_sessions * nsd.TRIALS_PER_SESSION

    def grid_of(self, subject: str) -> tuple[int, int, int]:
        return tuple(self.grid) if self.grid is not None else nsd.FUNC1PT8_GRID[subject]


#: ``--scale`` presets. demo: ~2,000 voxels, 1,000 images x 3 repeats (100 shared), written in
#: seconds. nsd: real grids, 15,724 voxels (subj01's nsdgeneral), 40 sessions, 10,000 images.
SCALES = {
    "demo": WorldShape(grid=(20, 24, 20), n_mask_voxels=2_000, n_sessions=4, n_shared=100),
    "nsd": WorldShape(
        grid=None,
        n_mask_voxels=nsd.NSDGENERAL_VOXELS_SUBJ01,
        n_sessions=nsd.NSD_SESSIONS["subj01"],
        n_shared=nsd.N_SHARED,
        real_session_counts=True,
    ),
}


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


GENERATIVE_MODEL_TEXT = (
    "Stimulus latents e_s (unit vectors, d dims) = c0*m + sqrt(1-c0^2)*normalise(w_category*u_cat(s) "
    "+ w_unique*z_s), c0 = w_shared/|w|, m, u_c, z_s random unit vectors with u_c, z_s orthogonal "
    "to m (= normalise(w_shared*m + w_category*u + w_unique*z) up to small cross terms). Images: uint8 = 255*sigmoid(contrast * "
    "sum_k (W e_s)_{c,k} B_k(x, y)) with B_k low-frequency 2D cosines, W fixed. Perception beta "
    "(psc) of trial t in session k at mask voxel v: x = s_kv*(a*(G e_s)_v + eps) + o_kv, eps ~ "
    "N(0, noise_sd^2), log s_kv ~ N(0, session_gain_sd^2), o_kv ~ N(0, session_offset_sd^2); G "
    "(mask voxels x d, one per subject) = sqrt(f)*smooth + sqrt(1-f)*white with unit-variance "
    "entries, smooth = Gaussian-smoothed (sigma voxels) white noise fields. Brain voxels outside "
    "nsdgeneral: s_kv*eps + o_kv. Stored int16 = round(x*300). NSD-Imagery (one session): vision "
    "trials as perception; imagery trials of set X: a*G(gamma_X*(rho_X*e_s + sqrt(1-rho_X^2)*r_s) "
    "+ c_X) + N(0, noise_sd_X^2), r_s unit and orthogonal to e_s (fixed per stimulus), c_X = "
    "offset_norm_X*u with u a fixed unit vector in the span of the category directions u_c (the "
    "offset is shared by all imagery trials, along directions a perception decoder reads out); attention trials a*G(attention_gain*e_s) + "
    "N(0, noise_sd^2); same session drift form as perception."
)


# --------------------------------------------------------------------------------------------
# Random streams and small helpers
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator per (seed, component...) so components do not shift each other."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _random_units(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return _unit_rows(rng.standard_normal((n, dim)))


def _orthogonal_units(a: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Rows of ``a`` with their component along the unit ``direction`` removed, then normalised."""
    return _unit_rows(a - np.outer(a @ direction, direction))


def latent_directions(params: GeneratorParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The shared direction ``m`` (dim,) and the category directions ``u_c`` (n_categories, dim),
    unit vectors, ``u_c`` orthogonal to ``m``."""
    base = _rng(seed, "latent-directions")
    shared = _random_units(base, 1, params.dim)[0]
    cat_dirs = _orthogonal_units(base.standard_normal((params.n_categories, params.dim)), shared)
    return shared, cat_dirs


def make_latents(
    n: int, params: GeneratorParams, seed: int, stream: str
) -> tuple[np.ndarray, np.ndarray]:
    """Latents of ``n`` stimuli drawn from the model.

    ``e_s = c0 m + sqrt(1 - c0^2) normalise(w_category u_cat(s) + w_unique z_s)`` with
    ``c0 = w_shared / |w|`` and ``u_c``, ``z_s`` orthogonal to ``m``: this is
    ``normalise(w_shared m + w_category u + w_unique z)`` up to the small random cross terms,
    with every latent's projection on the shared direction exactly ``c0`` (~0.67), so a
    decoder's intercept (the mean latent) cannot decide retrieval on its own.

    Returns
    -------
    latents : float64 array of shape (n, dim)
        Unit vectors.
    categories : int array of shape (n,)
        Category of each stimulus.
    """
    shared, cat_dirs = latent_directions(params, seed)
    rng = _rng(seed, "latents", stream)
    categories = rng.integers(0, params.n_categories, size=n)
    unique = _orthogonal_units(rng.standard_normal((n, params.dim)), shared)
    total = math.sqrt(params.weight_shared**2 + params.weight_category**2 + params.weight_unique**2)
    c0 = params.weight_shared / total  # the fixed projection of every latent on m
    rest = _unit_rows(params.weight_category * cat_dirs[categories] + params.weight_unique * unique)
    return c0 * shared + math.sqrt(1.0 - c0**2) * rest, categories


def render_images(latents: np.ndarray, size: int, params: GeneratorParams, seed: int) -> np.ndarray:
    """Render uint8 RGB pictures of shape (n, size, size, 3) from latents (deterministic).

    Each channel is a linear combination of ``RENDER_FREQUENCIES**2`` low-frequency 2D cosines
    with coefficients ``W e_s`` (``W`` fixed by ``seed``), squashed by a sigmoid.
    """
    k = RENDER_FREQUENCIES
    rng = _rng(seed, "renderer")
    weights = rng.standard_normal((3 * k * k, latents.shape[1])) * math.sqrt(1.0 / latents.shape[1])
    pos = (np.arange(size) + 0.5) / size
    freqs = np.arange(k)
    cos = np.cos(np.pi * freqs[:, None] * pos[None, :])  # (k, size)
    amp = 1.0 / (1.0 + RENDER_SLOPE * (freqs[:, None] + freqs[None, :]))
    basis = (amp[:, :, None, None] * cos[:, None, :, None] * cos[None, :, None, :]).reshape(k * k, -1)
    basis *= 1.0 / np.sqrt((amp**2).sum())  # unit-variance intensity for unit coefficients
    out = np.empty((latents.shape[0], size, size, 3), dtype=np.uint8)
    for start in range(0, latents.shape[0], 512):
        coef = latents[start:start + 512] @ weights.T  # (b, 3*k*k)
        for c in range(3):
            inten = coef[:, c * k * k:(c + 1) * k * k] @ basis  # (b, size*size)
            pix = 255.0 / (1.0 + np.exp(-params.render_contrast * inten))
            out[start:start + 512, :, :, c] = np.rint(pix).reshape(-1, size, size).astype(np.uint8)
    return out


def make_masks(grid: tuple[int, int, int], n_mask: int, seed: int, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask (ellipsoid) and nsdgeneral (a smooth posterior blob of exactly ``n_mask`` voxels).

    Returns
    -------
    nsdgeneral : int16 array of shape grid
        1 inside the ROI, 0 in the brain outside it, -1 outside the brain (as in NSD).
    brainmask : int16 array of shape grid
        1 in the brain, 0 outside.
    """
    from scipy.ndimage import gaussian_filter

    shape = np.array(grid, dtype=float)
    coords = np.indices(grid, dtype=np.float64)
    centre = (shape - 1) / 2
    radii = shape * BRAIN_SEMI_AXIS_FRACTION
    rel = (coords - centre[:, None, None, None]) / radii[:, None, None, None]
    brain = (rel**2).sum(axis=0) <= 1.0
    if n_mask > int(brain.sum()):
        raise InputError(
            f"Cannot place {n_mask} nsdgeneral voxels in a {grid} grid whose brain holds "
            f"{int(brain.sum())}; expected n_mask_voxels <= {int(brain.sum())}."
        )
    blob_rel = rel - np.asarray(BLOB_CENTRE_OFFSET)[:, None, None, None]
    dist = np.sqrt((blob_rel**2).sum(axis=0))
    wobble = gaussian_filter(_rng(0, "blob", subject).standard_normal(grid), sigma=2.0)
    wobble /= wobble.std()
    score = np.where(brain, -dist + 0.08 * wobble, -np.inf).ravel()
    chosen = np.argsort(-score, kind="stable")[:n_mask]
    roi = np.zeros(int(np.prod(grid)), dtype=bool)
    roi[chosen] = True
    roi = roi.reshape(grid)
    nsdgeneral = np.where(brain, 0, -1).astype(np.int16)
    nsdgeneral[roi] = nsd.NSDGENERAL_INSIDE
    return nsdgeneral, brain.astype(np.int16)


def make_encoding(roi: np.ndarray, params: GeneratorParams, seed: int, subject: str) -> np.ndarray:
    """Encoding matrix ``G`` of shape (n_roi_voxels, dim), rows in C order of ``roi``.

    ``G = sqrt(f) * smooth + sqrt(1 - f) * white``: ``smooth`` are white-noise fields smoothed
    over the grid with a Gaussian of ``smooth_sigma_vox`` and rescaled to unit variance over the
    ROI; entries of ``G`` have unit variance.
    """
    from scipy.ndimage import gaussian_filter

    idx = np.array(np.nonzero(roi))  # (3, n) in C order
    margin = int(math.ceil(3 * params.smooth_sigma_vox)) + 1
    lo = np.maximum(idx.min(axis=1) - margin, 0)
    hi = idx.max(axis=1) + margin + 1
    box = tuple(int(h - low) for h, low in zip(hi, lo))
    local = tuple(idx - lo[:, None])
    rng = _rng(seed, "encoding", subject)
    n = idx.shape[1]
    out = np.empty((n, params.dim), dtype=np.float32)
    frac = params.smooth_fraction
    for start in range(0, params.dim, 64):
        k = min(64, params.dim - start)
        fields = rng.standard_normal((*box, k), dtype=np.float32)
        if params.smooth_sigma_vox > 0:
            s = params.smooth_sigma_vox
            fields = gaussian_filter(fields, sigma=(s, s, s, 0))
        smooth = fields[local]  # (n, k)
        smooth /= smooth.std(axis=0, keepdims=True)
        white = rng.standard_normal((n, k), dtype=np.float32)
        out[:, start:start + k] = math.sqrt(frac) * smooth + math.sqrt(1 - frac) * white
    return out


# --------------------------------------------------------------------------------------------
# Experimental design
# --------------------------------------------------------------------------------------------


@dataclass
class _Design:
    nsd_ids: np.ndarray  # (n_pool,) 0-based ids (= rows of imgBrick), arange
    shared: np.ndarray  # (n_shared,) 0-based ids, ascending
    subjectim: np.ndarray  # (8, images_per_subject) 0-based ids
    masterordering: np.ndarray  # (n_trials,) 0-based column of subjectim
    pool_owner: np.ndarray  # (n_pool,) -1 shared, else index into generated subjects
    imagery_b: np.ndarray  # (6,) 0-based ids of set B (shared images)


def _make_design(shape: WorldShape, subjects: Sequence[str], seed: int) -> _Design:
    n_unique = shape.images_per_subject - shape.n_shared
    n_pool = shape.n_shared + n_unique * len(subjects)
    rng = _rng(seed, "design")
    perm = rng.permutation(n_pool)  # perm[j] = nsd id of pool slot j
    shared = np.sort(perm[:shape.n_shared])
    owner = np.full(n_pool, -1, dtype=np.int64)
    subjectim = np.zeros((len(nsd.ALL_SUBJECTS), shape.images_per_subject), dtype=np.int64)
    subjectim[:, :shape.n_shared] = shared
    non_shared = np.sort(perm[shape.n_shared:])
    for i, subject in enumerate(subjects):
        block = perm[shape.n_shared + i * n_unique: shape.n_shared + (i + 1) * n_unique]
        owner[block] = i
        subjectim[nsd.subject_number(subject) - 1, shape.n_shared:] = block
    for row, subject in enumerate(nsd.ALL_SUBJECTS):
        if subject not in subjects:  # not generated: any non-shared pool images
            subjectim[row, shape.n_shared:] = rng.choice(non_shared, size=n_unique, replace=False)
    order = np.repeat(np.arange(shape.images_per_subject), nsd.MAX_REPEATS)
    masterordering = rng.permutation(order)
    imagery_b = np.sort(rng.choice(shared, size=nsd.IMAGERY_STIMULI_PER_SET, replace=False))
    return _Design(np.arange(n_pool), shared, subjectim, masterordering, owner, imagery_b)


def _imagery_stimuli(design: _Design) -> list[dict[str, Any]]:
    """The 18 NSD-Imagery stimuli in table order (A1..6, B1..6, C1..6)."""
    stimuli = []
    for i, name in enumerate(IMAGERY_NAMES_A):
        stimuli.append({"stim_set": "A", "stim_name": name, "image": f"images/{name}.png", "text": "",
                        "nsd_id": None, "stimulus_id": f"img-A-{name}"})
    for i, nsd_id in enumerate(design.imagery_b):
        name = f"complex{i + 1}"
        stimuli.append({"stim_set": "B", "stim_name": name, "image": f"images/{name}.png", "text": "",
                        "nsd_id": int(nsd_id), "stimulus_id": f"nsd-{int(nsd_id):05d}"})
    for word in IMAGERY_WORDS_C:
        stimuli.append({"stim_set": "C", "stim_name": word, "image": "", "text": word,
                        "nsd_id": None, "stimulus_id": f"img-C-{word}"})
    for stim, cue in zip(stimuli, IMAGERY_CUES):
        stim["cue"] = cue
    return stimuli


def _imagery_trials(seed: int, subject: str) -> list[tuple[int, int, str, int]]:
    """Trial list (run, trial, task, stimulus index 0..17) of one subject, in beta order.

    12 runs, 4 per stimulus set (run order shuffled); a run holds its set's 6 stimuli x (2 vision
    + 4 imagery + 4 attention) = 60 trials in shuffled order.
    """
    rng = _rng(seed, "imagery-design", subject)
    runs_per_set = nsd.IMAGERY_RUNS // len(nsd.IMAGERY_SETS)
    run_sets = rng.permutation(np.repeat(np.arange(len(nsd.IMAGERY_SETS)), runs_per_set))
    per_run = {task: n // runs_per_set for task, n in IMAGERY_TRIALS_PER_STIMULUS.items()}
    trials = []
    for run, set_idx in enumerate(run_sets, start=1):
        block = [(task, set_idx * nsd.IMAGERY_STIMULI_PER_SET + s)
                 for s in range(nsd.IMAGERY_STIMULI_PER_SET)
                 for task, n in per_run.items() for _ in range(n)]
        for t, j in enumerate(rng.permutation(len(block)), start=1):
            trials.append((run, t, block[j][0], block[j][1]))
    return trials


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _affine() -> np.ndarray:
    return np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])


def _write_nifti(path: Path, data: np.ndarray) -> None:
    """NIfTI-1 (.nii.gz, gzip mtime 0 via nibabel, so deterministic), no intensity scaling."""
    import nibabel as nib

    img = nib.Nifti1Image(data, _affine())
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))


def _write_hdf5(path: Path, name: str, data: np.ndarray, chunks: tuple[int, ...] | None) -> None:
    """One dataset, no timestamps (``track_times=False``), so files are byte-identical."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", track_order=False) as fh:
        fh.create_dataset(name, data=data, chunks=chunks, track_times=False)


def _write_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """MATLAB v5 via scipy, with the header's creation date replaced by a fixed text."""
    from scipy.io import savemat

    buf = _stdio.BytesIO()
    savemat(buf, arrays, format="5", do_compression=False, oned_as="row")
    data = bytearray(buf.getvalue())
    header = f"MATLAB 5.0 MAT-file, written by fmri2img {__version__} (synthetic NSD world)".encode()
    data[:116] = header.ljust(116, b" ")[:116]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = _stdio.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _write_table(path: Path, frame, sep: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame.to_csv(sep=sep, index=False, lineterminator="\n"), encoding="utf-8")


def _to_int16(psc: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int16)
    return np.clip(np.rint(psc * nsd.BETA_SCALE), info.min, info.max).astype(np.int16)


class _VolumeWriter:
    """Fills an int16 (X, Y, Z, T) Fortran-ordered volume voxel-block by voxel-block.

    Fortran order (X, Y, Z, T) is both what NIfTI stores and, transposed, the C-ordered
    (T, Z, Y, X) array h5py writes, so neither writer copies the volume.
    """

    def __init__(self, grid: tuple[int, int, int], n_trials: int, roi: np.ndarray, brain: np.ndarray):
        self.grid = grid
        self.vol = np.zeros((*grid, n_trials), dtype=np.int16, order="F")
        self.flat = self.vol.reshape((-1, n_trials), order="F")  # view: rows = voxels (F order)
        roi_ijk = np.nonzero(roi)  # C order, the row order of G
        self.roi_rows = np.ravel_multi_index(roi_ijk, grid, order="F")
        other = brain.astype(bool) & ~roi.astype(bool)
        self.other_rows = np.ravel_multi_index(np.nonzero(other), grid, order="F")


def _session_betas(
    writer: _VolumeWriter,
    signal_roi: np.ndarray,
    noise_sd: np.ndarray | float,
    params: GeneratorParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fill ``writer.vol`` for one session and return it.

    ``signal_roi`` : float32 array of shape (n_trials, n_roi) -- ``a G(...)`` per trial.
    ``noise_sd`` : scalar or array of shape (n_trials, 1) -- per-trial noise sd.
    """
    n_trials = signal_roi.shape[0]
    n_roi = len(writer.roi_rows)
    n_other = len(writer.other_rows)
    offset = rng.normal(0.0, params.session_offset_sd, size=n_roi + n_other).astype(np.float32)
    gain = np.exp(rng.normal(0.0, params.session_gain_sd, size=n_roi + n_other)).astype(np.float32)
    sd = np.asarray(noise_sd, dtype=np.float32)
    x = signal_roi + sd * rng.standard_normal((n_trials, n_roi), dtype=np.float32)
    x = gain[:n_roi] * x + offset[:n_roi]
    writer.flat[writer.roi_rows, :] = _to_int16(x).T
    block = 16_384
    for start in range(0, n_other, block):
        rows = writer.other_rows[start:start + block]
        o, g = offset[n_roi + start:n_roi + start + len(rows)], gain[n_roi + start:n_roi + start + len(rows)]
        noise = sd * rng.standard_normal((n_trials, len(rows)), dtype=np.float32)
        writer.flat[rows, :] = _to_int16(g * noise + o).T
    return writer.vol


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
    :class:`~fmri2img.errors.InputError` / :class:`~fmri2img.errors.OutputError`.
    """
    subjects = tuple(subjects)
    if not subjects:
        raise InputError("No subject given; expected at least one of " + ", ".join(nsd.ALL_SUBJECTS) + ".")
    for subject in subjects:
        nsd.subject_number(subject)
    if len(set(subjects)) != len(subjects):
        raise InputError(f"Subjects {list(subjects)} contain duplicates; expected each subject once.")
    if isinstance(scale, WorldShape):
        shape = scale
    elif scale in SCALES:
        shape = SCALES[scale]
    else:
        raise InputError(f"Unknown scale {scale!r}; choose one of {', '.join(map(repr, SCALES))}.")
    if shape.n_shared >= shape.images_per_subject or shape.n_shared < nsd.IMAGERY_STIMULI_PER_SET:
        raise InputError(
            f"n_shared={shape.n_shared} must lie in [{nsd.IMAGERY_STIMULI_PER_SET}, "
            f"{shape.images_per_subject}) for {shape.n_sessions} sessions."
        )
    if sessions is not None and not 1 <= sessions <= shape.n_sessions:
        raise InputError(f"--sessions {sessions} is out of range; expected 1..{shape.n_sessions}.")
    if beta_format not in BETA_FORMATS:
        raise InputError(f"Unknown beta format {beta_format!r}; choose one of {', '.join(map(repr, BETA_FORMATS))}.")
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
        n = min(n, nsd.NSD_SESSIONS[subject])
    return n


def write_world(
    out: str | os.PathLike,
    *,
    subjects: Iterable[str] = DEFAULT_SUBJECTS,
    scale: str | WorldShape = "demo",
    sessions: int | None = None,
    beta_format: str = "nifti",
    null: bool = False,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    progress: bool = True,
    params: GeneratorParams | None = None,
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
        Which twin of the NSD session betas to write. NSD-Imagery betas are always NIfTI.
    null : bool
        Imagery identical in distribution to perception (for calibrating statistics).
    seed : int
        Same seed and arguments give byte-identical files.
    force : bool
        Replace an existing world at ``out``.
    progress : bool
        Show a progress bar on stderr.
    params : GeneratorParams, optional
        Generative-model parameters (default: the calibrated defaults).

    Returns
    -------
    WorldSummary
    """
    t0 = time.perf_counter()
    out, subjects, shape = check_request(out, subjects, scale, sessions, beta_format, force)
    scale_name = scale if isinstance(scale, str) else "custom"
    params = params or GeneratorParams()
    if null:
        params = params.as_null()
    parent = ensure_dir(out.parent if str(out.parent) else Path("."))
    tmp = Path(_mkdtemp(parent, out.name))
    try:
        summary = _write_into(tmp, subjects, shape, scale_name, sessions, beta_format, null, seed,
                              params, progress)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.root = out
    summary.seconds = time.perf_counter() - t0
    return summary


def _mkdtemp(parent: Path, name: str) -> str:
    import tempfile

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


def _write_into(
    root: Path,
    subjects: tuple[str, ...],
    shape: WorldShape,
    scale_name: str,
    sessions: int | None,
    beta_format: str,
    null: bool,
    seed: int,
    params: GeneratorParams,
    progress: bool,
) -> WorldSummary:
    import pandas as pd
    from tqdm import tqdm

    design = _make_design(shape, subjects, seed)
    n_pool = len(design.nsd_ids)
    n_written = {s: sessions_for(s, shape, sessions) for s in subjects}

    # ---- stimuli: pool latents (shared block, then each subject's unique block), sets A and C
    latents = np.empty((n_pool, params.dim))
    shared_lat, _ = make_latents(shape.n_shared, params, seed, "shared")
    latents[design.shared] = shared_lat
    for i, subject in enumerate(subjects):
        ids = design.subjectim[nsd.subject_number(subject) - 1, shape.n_shared:]
        latents[ids], _ = make_latents(len(ids), params, seed, f"unique-{subject}")
    lat_a, _ = make_latents(nsd.IMAGERY_STIMULI_PER_SET, params, seed, "imagery-A")
    lat_c, _ = make_latents(nsd.IMAGERY_STIMULI_PER_SET, params, seed, "imagery-C")
    stimuli = _imagery_stimuli(design)
    stim_latents = np.concatenate([lat_a, latents[design.imagery_b], lat_c])  # table order (18, d)
    # imagery content: r_s orthogonal to e_s, c_X = offset_norm_X * u
    rng = _rng(seed, "imagery-effects")
    # the offset direction u lies in the span of the category directions: the structured part
    # of the latent space that a perception decoder reads out best, so the offset distorts
    # decoded imagery (a random direction would be shrunk away by any regularised decoder)
    _, cat_dirs = latent_directions(params, seed)
    u = _unit_rows((rng.standard_normal(params.n_categories) @ cat_dirs)[None, :])[0]
    resid = rng.standard_normal(stim_latents.shape)
    resid -= (resid * stim_latents).sum(axis=1, keepdims=True) * stim_latents
    resid = _unit_rows(resid)
    sets = [s["stim_set"] for s in stimuli]
    eff = [params.effect(x) for x in sets]
    gamma = np.array([e.gamma for e in eff])[:, None]
    rho = np.array([e.rho for e in eff])[:, None]
    offsets = {x: params.effect(x).offset_norm * u for x in nsd.IMAGERY_SETS}
    imagined = gamma * (rho * stim_latents + np.sqrt(1 - rho**2) * resid) + np.stack([offsets[x] for x in sets])

    steps = sum(n_written.values()) + 2 * len(subjects) + 1
    bar = tqdm(total=steps, desc="synth", unit="step", file=sys.stderr, disable=not progress, leave=False)
    try:
        # ---- shared release files
        bar.set_postfix_str("stimuli")
        images = render_images(latents, shape.image_size, params, seed)
        _write_hdf5(root / nsd.STIMULI_HDF5, "imgBrick", images, chunks=(1, *images.shape[1:]))
        imagery_dir = root / nsd.IMAGERY_STIMULI_DIR
        img_a = render_images(lat_a, shape.image_size, params, seed)
        for stim, pic in zip(stimuli[:6], img_a):
            _write_png(imagery_dir / stim["image"], pic)
        for stim in stimuli[6:12]:
            _write_png(imagery_dir / stim["image"], images[stim["nsd_id"]])
        _write_table(imagery_dir / "stimuli.tsv", pd.DataFrame({
            "stim_set": sets,
            "stim_name": [s["stim_name"] for s in stimuli],
            "cue": [s["cue"] for s in stimuli],
            "image": [s["image"] for s in stimuli],
            "text": [s["text"] for s in stimuli],
            "nsd_id": pd.array([s["nsd_id"] for s in stimuli], dtype="Int64"),
        }), sep="\t")
        _write_mat(root / nsd.EXPDESIGN, {
            # MATLAB doubles, 1-based, shaped as in the real file
            "masterordering": (design.masterordering + 1).astype(np.float64)[None, :],
            "subjectim": (design.subjectim + 1).astype(np.float64),
            "sharedix": (design.shared + 1).astype(np.float64)[None, :],
        })
        _write_table(root / nsd.STIM_INFO, _stim_info(design, shape, subjects, n_written), sep=",")
        bar.update(1)

        # ---- per subject
        planted_nc = {}
        for subject in subjects:
            bar.set_postfix_str(f"{subject} masks")
            grid = shape.grid_of(subject)
            nsdgeneral, brain = make_masks(grid, shape.n_mask_voxels, seed, subject)
            roi = nsdgeneral == nsd.NSDGENERAL_INSIDE
            _write_nifti(root / nsd.NSDGENERAL.format(subject=subject), nsdgeneral)
            _write_nifti(root / nsd.BRAINMASK.format(subject=subject), brain)
            G = make_encoding(roi, params, seed, subject)
            save_npy(root / "truth" / f"G_{subject}.npy", G)
            planted_nc[subject] = _noise_ceiling(G, latents, design, subject, params)
            row = nsd.subject_number(subject) - 1
            n_sess = n_written[subject]
            _write_table(root / nsd.RESPONSES.format(subject=subject),
                         _responses(design, row, n_sess, seed, subject), sep="\t")
            writer = _VolumeWriter(grid, nsd.TRIALS_PER_SESSION, roi, brain)
            sig_scale = params.amplitude
            bar.update(1)
            for session in range(1, n_sess + 1):
                bar.set_postfix_str(f"{subject} session {session:02d}")
                t = slice((session - 1) * nsd.TRIALS_PER_SESSION, session * nsd.TRIALS_PER_SESSION)
                shown = design.subjectim[row, design.masterordering[t]]
                signal = sig_scale * (latents[shown].astype(np.float32) @ G.T)
                vol = _session_betas(writer, signal, params.noise_sd, params,
                                     _rng(seed, "betas", subject, session))
                if beta_format in ("nifti", "both"):
                    _write_nifti(root / nsd.BETAS_NII.format(subject=subject, session=session), vol)
                if beta_format in ("hdf5", "both"):
                    cvol = vol.T  # C-contiguous (T, Z, Y, X), as h5py sees the real file
                    _write_hdf5(root / nsd.BETAS_HDF5.format(subject=subject, session=session),
                                "betas", cvol, chunks=_hdf5_chunks(cvol.shape))
                bar.update(1)

            del writer, vol  # free the session volume before allocating the imagery one
            # ---- NSD-Imagery
            bar.set_postfix_str(f"{subject} imagery")
            trials = _imagery_trials(seed, subject)
            stim_idx = np.array([t[3] for t in trials])
            tasks = np.array([t[2] for t in trials])
            content = np.where((tasks == "imagery")[:, None], imagined[stim_idx],
                               stim_latents[stim_idx])
            content = np.where((tasks == "attention")[:, None], params.attention_gain * content, content)
            noise = np.array([params.effect(sets[s]).noise_sd if task == "imagery" else params.noise_sd
                              for task, s in zip(tasks, stim_idx)], dtype=np.float32)[:, None]
            signal = params.amplitude * (content.astype(np.float32) @ G.T)
            im_writer = _VolumeWriter(grid, len(trials), roi, brain)
            vol = _session_betas(im_writer, signal, noise, params, _rng(seed, "imagery-betas", subject))
            _write_nifti(root / nsd.IMAGERY_BETAS_FILE.format(subject=subject), vol)
            _write_table(root / nsd.IMAGERY_TRIALS.format(subject=subject), pd.DataFrame({
                "beta_index": np.arange(1, len(trials) + 1),
                "run": [t[0] for t in trials],
                "trial": [t[1] for t in trials],
                "task": tasks,
                "stim_set": [sets[s] for s in stim_idx],
                "stim_name": [stimuli[s]["stim_name"] for s in stim_idx],
                "cue": [stimuli[s]["cue"] for s in stim_idx],
            }), sep="\t")
            bar.update(1)

        # ---- truth
        bar.set_postfix_str("truth")
        ids = [f"nsd-{i:05d}" for i in design.nsd_ids]
        ids += [s["stimulus_id"] for s in stimuli if s["stim_set"] != "B"]
        all_latents = np.concatenate([latents, lat_a, lat_c]).astype(np.float32)
        save_npy(root / "truth" / "latents.npy", all_latents)
        write_json(root / "truth" / "stimulus_ids.json", ids)
        save_npy(root / "truth" / "imagery_offsets.npy",
                 np.stack([offsets[x] for x in nsd.IMAGERY_SETS]).astype(np.float32))
        save_npy(root / "truth" / "imagery_residuals.npy", resid.astype(np.float32))
        write_json(root / "truth" / "params.json", _truth_params(
            params, shape, scale_name, subjects, n_written, beta_format, null, seed, stimuli,
            n_pool, planted_nc, latents))
    finally:
        bar.close()

    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    n_bytes = sum((root / f).stat().st_size for f in files)
    return WorldSummary(root=root, subjects=subjects, scale=scale_name, sessions=n_written,
                        n_images=n_pool, n_stimuli=len(ids), n_files=len(files), n_bytes=n_bytes,
                        seconds=0.0, files=files)


def _trial_reps(design: _Design, row: int, n_trials: int) -> dict[int, list[int]]:
    """0-based nsd id -> sorted 1-based trial numbers (within the first ``n_trials``)."""
    reps: dict[int, list[int]] = {}
    shown = design.subjectim[row, design.masterordering[:n_trials]]
    for t, nsd_id in enumerate(shown, start=1):
        reps.setdefault(int(nsd_id), []).append(t)
    return reps


def _stim_info(design: _Design, shape: WorldShape, subjects: Sequence[str], n_written: dict[str, int]):
    import pandas as pd

    n_pool = len(design.nsd_ids)
    is_shared = np.zeros(n_pool, dtype=bool)
    is_shared[design.shared] = True
    cols: dict[str, Any] = {
        "cocoId": FAKE_COCO_ID_BASE + design.nsd_ids,
        "cocoSplit": np.where(design.nsd_ids % 2 == 0, "train2017", "val2017"),
        "nsdId": design.nsd_ids,
        "shared1000": is_shared,
    }
    rep_cols: dict[str, np.ndarray] = {}
    for row, subject in enumerate(nsd.ALL_SUBJECTS):
        seen = np.zeros(n_pool, dtype=np.int64)
        seen[design.subjectim[row]] = 1
        cols[f"subject{row + 1}"] = seen
        n_trials = n_written.get(subject, shape.n_sessions) * nsd.TRIALS_PER_SESSION
        reps = np.zeros((n_pool, nsd.MAX_REPEATS), dtype=np.int64)
        for nsd_id, trials in _trial_reps(design, row, n_trials).items():
            reps[nsd_id, :len(trials)] = trials
        for k in range(nsd.MAX_REPEATS):
            rep_cols[f"subject{row + 1}_rep{k}"] = reps[:, k]
    cols.update(rep_cols)
    frame = pd.DataFrame(cols)
    frame.insert(0, "", np.arange(n_pool))  # the real file starts with an unnamed index column
    return frame


def _responses(design: _Design, row: int, n_sessions: int, seed: int, subject: str):
    """Behaviour table of the trials done (``responses.tsv``); recognition simulated (80% correct)."""
    import pandas as pd

    rng = _rng(seed, "behaviour", subject)
    n = n_sessions * nsd.TRIALS_PER_SESSION
    col = design.masterordering[:n]
    ids = design.subjectim[row, col]
    session = np.arange(n) // nsd.TRIALS_PER_SESSION + 1
    within = np.arange(n) % nsd.TRIALS_PER_SESSION
    run_starts = np.cumsum((0,) + RUN_TRIALS[:-1])
    run = np.searchsorted(run_starts, within, side="right")
    trial = within - run_starts[run - 1] + 1
    first_session: dict[int, int] = {}
    is_old = np.zeros(n, dtype=np.int64)
    is_old_current = np.zeros(n, dtype=np.int64)
    seen_in: dict[int, set[int]] = {}
    for t, (nsd_id, s) in enumerate(zip(ids.tolist(), session.tolist())):
        if nsd_id in first_session:
            is_old[t] = 1
            is_old_current[t] = int(s in seen_in[nsd_id])
        else:
            first_session[nsd_id] = s
        seen_in.setdefault(nsd_id, set()).add(s)
    correct = (rng.random(n) < 0.8).astype(np.int64)
    said_old = np.where(correct == 1, is_old, 1 - is_old)
    return pd.DataFrame({
        "SUBJECT": nsd.subject_number(subject),
        "SESSION": session,
        "RUN": run,
        "TRIAL": trial,
        "TIME": np.round(738000.0 + session + within * 4.0 / 86400.0, 6),
        "ISOLD": is_old,
        "ISCORRECT": correct,
        "RT": np.round(np.exp(rng.normal(6.8, 0.3, size=n)), 1),
        "CHANGEMIND": 0,
        "ISOLDCURRENT": is_old_current,
        "ISCORRECTCURRENT": (said_old == is_old_current).astype(np.int64),
        "MISSINGDATA": 0,
        "73KID": ids + 1,
        "10KID": col + 1,
    })


def _noise_ceiling(G: np.ndarray, latents: np.ndarray, design: _Design, subject: str,
                   params: GeneratorParams) -> dict[str, float]:
    """Planted single-voxel reliability: ncsnr = sd over images of a(G e)_v / noise_sd."""
    row = nsd.subject_number(subject) - 1
    signal = params.amplitude * (latents[design.subjectim[row]] @ G.T.astype(np.float64))
    ncsnr = signal.std(axis=0) / params.noise_sd
    nc3 = 100 * ncsnr**2 / (ncsnr**2 + 1 / nsd.MAX_REPEATS)
    nc1 = 100 * ncsnr**2 / (ncsnr**2 + 1)
    return {"median_ncsnr": float(np.median(ncsnr)), "median_noise_ceiling_3trials_pct": float(np.median(nc3)),
            "median_noise_ceiling_1trial_pct": float(np.median(nc1))}


def _truth_params(params, shape, scale_name, subjects, n_written, beta_format, null, seed, stimuli,
                  n_pool, planted_nc, latents) -> dict[str, Any]:
    iu = np.triu_indices(min(len(latents), 500), k=1)
    sub = latents[:500]
    mean_cos = float((sub @ sub.T)[iu].mean())
    effects = {}
    for x, kind in nsd.IMAGERY_SETS.items():
        e = params.effect(x)
        effects[x] = {
            "stimulus_type": kind,
            **dataclasses.asdict(e),
            "cosine_imagined_vs_true": e.rho,
            # per-voxel SNR of the true-latent component, imagery relative to perception
            "snr_ratio_vs_perception": e.gamma * e.rho * params.noise_sd / e.noise_sd,
        }
    return {
        "generator": "fmri2img.data.synthetic",
        "fmri2img_version": __version__,
        "seed": seed,
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
            "G_subjXX.npy": "float32 (n_mask_voxels, dim), rows = nsdgeneral==1 voxels in C order",
            "imagery_offsets.npy": "float32 (3, dim): c_A, c_B, c_C",
            "imagery_residuals.npy": "float32 (18, dim): r_s, rows in stimuli.tsv order",
        },
        "planted_effects": {
            "mean_pairwise_cosine_of_latents": mean_cos,
            "perception_reliability": planted_nc,
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


def world_size_bytes(root: str | os.PathLike) -> int:
    """Total size of the files under ``root``."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


__all__ = [
    "DEFAULT_SEED", "SCALES", "SYNTH_IMAGE_SIZE", "GeneratorParams", "ImageryEffect", "WorldShape",
    "WorldSummary", "check_request", "make_encoding", "make_latents", "make_masks", "render_images",
    "sessions_for", "write_world", "world_size_bytes",
]
