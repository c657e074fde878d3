"""The generative model of the synthetic NSD world (``docs/synthetic_world.md``): parameters,
stimulus latents, images, masks, encoding matrices, the experimental design and the betas.

* stimulus latents ``e_s`` (unit vectors, ``d = 512``) ~
  ``normalise(w_shared m + w_category u_cat(s) + w_unique z_s)`` with ``m``, ``u_c``, ``z_s``
  random unit vectors (exact form: :func:`make_latents`), so the mean pairwise cosine is ~0.45
  as with CLIP embeddings;
* images rendered deterministically from ``e_s`` (a fixed linear map onto low-frequency 2D
  cosines per colour channel, squashed to uint8), so similar latents give similar pictures;
* perception betas (percent signal change) of trial ``t`` in session ``k`` at voxel ``v``:
  ``x = s_kv (a (G e_s)_v + eps) + o_kv``, ``eps ~ N(0, noise_sd^2)``, with ``G`` (voxels x d)
  spatially smooth over the grid (one per subject, rows scaled by a smooth per-voxel gain ``q_v``:
  :mod:`fmri2img.sim.anatomy`), ``o_kv`` a per-session offset and ``s_kv`` a per-session gain drift;
* NSD-Imagery betas of stimulus ``s`` of set ``X``: vision trials as perception; imagery trials
  ``a G (gamma_X (rho_X e_s + sqrt(1 - rho_X^2) r_s) + c_X)`` + noise of sd ``noise_sd_X``, with
  ``r_s`` a unit vector orthogonal to ``e_s`` and ``c_X = offset_norm_X u`` a fixed offset
  (``u`` a unit vector in the span of the category directions, the same for every set and drawn with
  the latent geometry: a property of the world's imagery, not of its stimuli), scaled per
  voxel by the region-dependent imagery gain ``w_v`` (:mod:`fmri2img.sim.anatomy`);
  attention trials ``a G (attention_gain e_s)`` + perception noise.

Everything is seeded: independent generators per component (:func:`rng_for`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from fmri2img.core.errors import InputError
from fmri2img.data import nsd_constants
from fmri2img.sim.formats import VolumeWriter, to_int16
from fmri2img.sim.imagery_effects import (
    DEFAULT_IMAGERY_STRENGTH,
    IMAGERY_NOISE_INFLATION,
    IMAGERY_OFFSET_SCALE,
    IMAGERY_SET_EXPONENTS,
    ImageryEffect,
    strength_effect,
)
from fmri2img.sim.seeds import rng_for

#: Voxel size of the func1pt8mm space in mm [NSD manual, "Betas"].
VOXEL_MM = 1.8

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
    imagery_strength : float in (0, 1]
        ``s``: how much of perception imagery keeps; 1 = imagery distributed exactly like
        perception (the null world). Set X gets ``s_X = s ** k_X`` and :func:`strength_effect`.
    imagery_set_exponents : (k_A, k_B, k_C)
        Per-set exponents: simple (A) imagery strongest, conceptual (C) weakest.
    imagery_offset_scale : float
        ``kappa``: the imagery offset has norm ``(1 - s_X) kappa``.
    imagery_noise_inflation : float
        ``nu``: imagery noise sd is ``noise_sd (1 + (1 - s_X) nu)``.
    render_contrast : float
        Sd of the pre-squash image intensity (higher = more saturated pictures).
    voxel_gain_sd : float
        Sd of ``log q_v``, the smooth per-voxel signal gain (``fmri2img.sim.anatomy.voxel_gain``): voxels
        differ in reliability (ncsnr); ``mean(q_v^2) = 1`` over nsdgeneral, so total signal power is unchanged.
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
    imagery_strength: float = DEFAULT_IMAGERY_STRENGTH
    imagery_set_exponents: tuple[float, float, float] = IMAGERY_SET_EXPONENTS
    imagery_offset_scale: float = IMAGERY_OFFSET_SCALE
    imagery_noise_inflation: float = IMAGERY_NOISE_INFLATION
    render_contrast: float = 1.0
    voxel_gain_sd: float = 0.5

    def __post_init__(self) -> None:
        if not self.voxel_gain_sd >= 0.0:
            raise InputError(f"voxel_gain_sd must be >= 0 (0 = every voxel equally reliable), "
                             f"got {self.voxel_gain_sd!r}.")
        if not 0.0 < self.imagery_strength <= 1.0:
            raise InputError(f"imagery_strength must be in (0, 1] (1 = imagery distributed like perception), "
                             f"got {self.imagery_strength!r}.")

    def set_strength(self, stim_set: str) -> float:
        """``s_X = imagery_strength ** k_X`` of set ``'A'``, ``'B'`` or ``'C'``."""
        exponent = self.imagery_set_exponents[tuple(nsd_constants.IMAGERY_SETS).index(stim_set)]
        return float(self.imagery_strength ** exponent)

    def effect(self, stim_set: str) -> ImageryEffect:
        """The :class:`ImageryEffect` of set ``'A'``, ``'B'`` or ``'C'`` (see :func:`strength_effect`)."""
        return strength_effect(self.set_strength(stim_set), self.noise_sd, self.imagery_offset_scale,
                               self.imagery_noise_inflation)

    def as_null(self) -> GeneratorParams:
        """The same parameters with imagery identical in distribution to perception (strength 1)."""
        return dataclasses.replace(self, imagery_strength=1.0)


GENERATIVE_MODEL_TEXT = (
    "Stimulus latents e_s (unit vectors, d dims) = c0*m + sqrt(1-c0^2)*normalise(w_category*u_cat(s) "
    "+ w_unique*z_s), c0 = w_shared/|w|, m, u_c, z_s random unit vectors with u_c, z_s orthogonal "
    "to m (= normalise(w_shared*m + w_category*u + w_unique*z) up to small cross terms). Images: uint8 = 255*sigmoid(contrast * "
    "sum_k (W e_s)_{c,k} B_k(x, y)) with B_k low-frequency 2D cosines, W fixed. Perception beta "
    "(psc) of trial t in session k at mask voxel v: x = s_kv*(a*(G e_s)_v + eps) + o_kv, eps ~ "
    "N(0, noise_sd^2), log s_kv ~ N(0, session_gain_sd^2), o_kv ~ N(0, session_offset_sd^2); G "
    "(mask voxels x d, one per subject) = sqrt(f)*smooth + sqrt(1-f)*white with unit-variance "
    "entries, smooth = Gaussian-smoothed (sigma voxels) white noise fields, each row then scaled by q_v "
    "(a smooth log-normal per-voxel gain, log-sd voxel_gain_sd, mean q_v^2 = 1 over nsdgeneral: voxels differ in "
    "ncsnr = sd_s(a*(G e_s)_v)/noise_sd, written as ncsnr.nii.gz). Brain voxels outside "
    "nsdgeneral: s_kv*eps + o_kv. Stored int16 = round(x*300). NSD-Imagery (one session): vision "
    "trials as perception; imagery trials of set X: a*G(gamma_X*(rho_X*e_s + sqrt(1-rho_X^2)*r_s) "
    "+ c_X) + N(0, noise_sd_X^2), r_s unit and orthogonal to e_s (fixed per stimulus), c_X = "
    "offset_norm_X*u with u a fixed unit vector in the span of the category directions u_c, orthogonal to "
    "their mean and drawn with them (a property of the world's imagery, not of its stimuli: the offset is shared "
    "by all imagery trials, along directions a perception decoder reads out); gamma_X = rho_X = sqrt(s_X), "
    "offset_norm_X = (1-s_X)*kappa, noise_sd_X = noise_sd*(1+(1-s_X)*nu), "
    "s_X = s^k_X with s the imagery strength (1 = imagery distributed like perception); the imagery trials' "
    "signal at voxel v is scaled by w_v = s^k_r(v)/sqrt(mean over nsdgeneral of s^(2*k_r(v))), k_r per stream "
    "of streams.nii.gz (early 4, midventral/midlateral/midparietal 2, ventral/lateral/parietal 0, unlabelled 2); "
    "attention trials a*G(attention_gain*e_s) + "
    "N(0, noise_sd^2); same session drift form as perception."
)


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
    base = rng_for(seed, "latent-directions")
    shared = _random_units(base, 1, params.dim)[0]
    cat_dirs = _orthogonal_units(base.standard_normal((params.n_categories, params.dim)), shared)
    return shared, cat_dirs


def make_latents(
    n: int, params: GeneratorParams, seed: int, stream: str, directions_seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Latents of ``n`` stimuli drawn from the model.

    ``e_s = c0 m + sqrt(1 - c0^2) normalise(w_category u_cat(s) + w_unique z_s)`` with
    ``c0 = w_shared / |w|`` and ``u_c``, ``z_s`` orthogonal to ``m``: this is
    ``normalise(w_shared m + w_category u + w_unique z)`` up to the small random cross terms,
    with every latent's projection on the shared direction exactly ``c0`` (~0.67), so a
    decoder's intercept (the mean latent) cannot decide retrieval on its own.

    ``seed`` draws the categories and ``z_s``; ``directions_seed`` (default ``seed``) ``m`` and ``u_c``.

    Returns
    -------
    latents : float64 array of shape (n, dim)
        Unit vectors.
    categories : int array of shape (n,)
        Category of each stimulus.
    """
    shared, cat_dirs = latent_directions(params, seed if directions_seed is None else directions_seed)
    rng = rng_for(seed, "latents", stream)
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
    rng = rng_for(seed, "renderer")
    weights = rng.standard_normal((3 * k * k, latents.shape[1]))  # unit-variance coefficients for unit latents
    pos = (np.arange(size) + 0.5) / size
    freqs = np.arange(k)
    cos = np.cos(np.pi * freqs[:, None] * pos[None, :])  # (k, size)
    amp = 1.0 / (1.0 + RENDER_SLOPE * (freqs[:, None] + freqs[None, :]))
    basis = (amp[:, :, None, None] * cos[:, None, :, None] * cos[None, :, None, :]).reshape(k * k, -1)
    basis /= np.sqrt((basis**2).sum(axis=0).mean())  # unit mean-square intensity for unit-variance coefficients
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
    wobble = gaussian_filter(rng_for(0, "blob", subject).standard_normal(grid), sigma=2.0)
    wobble /= wobble.std()
    score = np.where(brain, -dist + 0.08 * wobble, -np.inf).ravel()
    chosen = np.argsort(-score, kind="stable")[:n_mask]
    roi = np.zeros(int(np.prod(grid)), dtype=bool)
    roi[chosen] = True
    roi = roi.reshape(grid)
    nsdgeneral = np.where(brain, 0, -1).astype(np.int16)
    nsdgeneral[roi] = nsd_constants.NSDGENERAL_INSIDE
    return nsdgeneral, brain.astype(np.int16)


def make_encoding(roi: np.ndarray, params: GeneratorParams, seed: int, subject: str) -> np.ndarray:
    """Encoding matrix ``G`` of shape (n_roi_voxels, dim), rows in C order of ``roi``.

    ``G = sqrt(f) * smooth + sqrt(1 - f) * white``: ``smooth`` are white-noise fields smoothed
    over the grid with a Gaussian of ``smooth_sigma_vox`` and rescaled to unit variance over the
    ROI; entries of ``G`` have unit variance.
    """
    idx = np.array(np.nonzero(roi))  # (3, n) in C order
    margin = int(math.ceil(3 * params.smooth_sigma_vox)) + 1
    lo = np.maximum(idx.min(axis=1) - margin, 0)
    hi = idx.max(axis=1) + margin + 1
    box = tuple(int(h - low) for h, low in zip(hi, lo))
    local = tuple(idx - lo[:, None])
    rng = rng_for(seed, "encoding", subject)
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


@dataclass
class Design:
    nsd_ids: np.ndarray  # (n_pool,) 0-based ids (= rows of imgBrick), arange
    shared: np.ndarray  # (n_shared,) 0-based ids, ascending
    subjectim: np.ndarray  # (8, images_per_subject) 0-based ids
    masterordering: np.ndarray  # (n_trials,) 0-based column of subjectim
    pool_owner: np.ndarray  # (n_pool,) -1 shared, else index into generated subjects
    imagery_b: np.ndarray  # (6,) 0-based ids of set B (shared images)


def make_design(shape: Any, subjects: Sequence[str], seed: int) -> Design:
    n_unique = shape.images_per_subject - shape.n_shared
    n_pool = shape.n_shared + n_unique * len(subjects)
    rng = rng_for(seed, "design")
    perm = rng.permutation(n_pool)  # perm[j] = nsd id of pool slot j
    shared = np.sort(perm[:shape.n_shared])
    owner = np.full(n_pool, -1, dtype=np.int64)
    subjectim = np.zeros((len(nsd_constants.ALL_SUBJECTS), shape.images_per_subject), dtype=np.int64)
    subjectim[:, :shape.n_shared] = shared
    non_shared = np.sort(perm[shape.n_shared:])
    for i, subject in enumerate(subjects):
        block = perm[shape.n_shared + i * n_unique: shape.n_shared + (i + 1) * n_unique]
        owner[block] = i
        subjectim[nsd_constants.subject_number(subject) - 1, shape.n_shared:] = block
    for row, subject in enumerate(nsd_constants.ALL_SUBJECTS):
        if subject not in subjects:  # not generated: any non-shared pool images
            subjectim[row, shape.n_shared:] = rng.choice(non_shared, size=n_unique, replace=False)
    order = np.repeat(np.arange(shape.images_per_subject), nsd_constants.MAX_REPEATS)
    masterordering = rng.permutation(order)
    imagery_b = np.sort(rng.choice(shared, size=nsd_constants.IMAGERY_STIMULI_PER_SET, replace=False))
    return Design(np.arange(n_pool), shared, subjectim, masterordering, owner, imagery_b)


def imagery_stimuli(design: Design) -> list[dict[str, Any]]:
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


def session_betas(
    writer: VolumeWriter,
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
    writer.flat[writer.roi_rows, :] = to_int16(x).T
    block = 16_384
    for start in range(0, n_other, block):
        rows = writer.other_rows[start:start + block]
        o, g = offset[n_roi + start:n_roi + start + len(rows)], gain[n_roi + start:n_roi + start + len(rows)]
        noise = sd * rng.standard_normal((n_trials, len(rows)), dtype=np.float32)
        writer.flat[rows, :] = to_int16(g * noise + o).T
    return writer.vol


def offset_direction(cat_dirs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector ``u`` in the span of the category directions, orthogonal to their mean.

    ``u`` is a property of the world's imagery (drawn with its latent geometry, not with its stimuli),
    so worlds that redraw the stimuli keep it and the population truth is conditional on it
    (docs/trust.md). Its projection on a stimulus latent, ``0.70 u . u_cat(s)`` at the default
    weights, helps some stimuli and hurts others; orthogonal to the shared direction (every ``u_c`` is)
    and to the mean category direction, it averages to 0 over uniformly drawn categories.

    cat_dirs : (n_categories, dim), n_categories >= 2. Returns (dim,).
    """
    mean = cat_dirs.mean(axis=0)
    mean /= np.linalg.norm(mean)
    v = rng.standard_normal(cat_dirs.shape[0]) @ cat_dirs
    return _unit_rows((v - (v @ mean) * mean)[None, :])[0]


def imagery_content(stim_latents: np.ndarray, sets: Sequence[str], params: GeneratorParams, seed: int,
                    directions_seed: int | None = None,
                    offset_seed: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """What each NSD-Imagery stimulus' imagery trials carry: ``gamma_X (rho_X e_s + sqrt(1 - rho_X^2)
    r_s) + c_X`` with ``r_s`` a unit vector orthogonal to ``e_s`` and ``c_X = offset_norm_X u``.
    ``seed`` (the stimuli's) draws the ``r_s``; ``directions_seed`` (default ``seed``: the world's) the
    latent directions and ``u`` (:func:`offset_direction`); ``offset_seed`` (default ``directions_seed``)
    redraws ``u`` alone.

    Returns
    -------
    imagined : array of shape (n_stimuli, dim)
    offsets : dict set -> ``c_X`` (dim,)
    residuals : array of shape (n_stimuli, dim), the ``r_s``
    """
    geometry = seed if directions_seed is None else directions_seed
    # the offset direction u lies in the span of the category directions: the structured part
    # of the latent space that a perception decoder reads out best, so the offset distorts
    # decoded imagery (a random direction would be shrunk away by any regularised decoder)
    _, cat_dirs = latent_directions(params, geometry)
    u = offset_direction(cat_dirs, rng_for(geometry if offset_seed is None else offset_seed, "imagery-offset"))
    rng = rng_for(seed, "imagery-effects")
    resid = rng.standard_normal(stim_latents.shape)
    resid -= (resid * stim_latents).sum(axis=1, keepdims=True) * stim_latents
    resid = _unit_rows(resid)
    eff = [params.effect(x) for x in sets]
    gamma = np.array([e.gamma for e in eff])[:, None]
    rho = np.array([e.rho for e in eff])[:, None]
    offsets = {x: params.effect(x).offset_norm * u for x in nsd_constants.IMAGERY_SETS}
    imagined = gamma * (rho * stim_latents + np.sqrt(1 - rho**2) * resid) + np.stack([offsets[x] for x in sets])
    return imagined, offsets, resid


def voxel_ncsnr(G: np.ndarray, latents: np.ndarray, design: Design, subject: str,
                params: GeneratorParams) -> np.ndarray:
    """Planted per-voxel noise-ceiling SNR of perception, shape (n_roi,): sd over the subject's images of
    ``a (G e)_v`` divided by ``noise_sd`` (from the latents' covariance, so no (images x voxels) array)."""
    row = nsd_constants.subject_number(subject) - 1
    cov = np.cov(latents[design.subjectim[row]], rowvar=False, bias=True)  # (dim, dim), sd with ddof 0
    G64 = G.astype(np.float64)
    var = np.maximum(((G64 @ cov) * G64).sum(axis=1), 0.0)
    return params.amplitude * np.sqrt(var) / params.noise_sd


def noise_ceiling(ncsnr: np.ndarray) -> dict[str, float]:
    """Medians of the planted ncsnr (n_roi,) and of the noise ceiling ``100 ncsnr^2 / (ncsnr^2 + 1/n)``."""
    nc3 = 100 * ncsnr**2 / (ncsnr**2 + 1 / nsd_constants.MAX_REPEATS)
    nc1 = 100 * ncsnr**2 / (ncsnr**2 + 1)
    return {"median_ncsnr": float(np.median(ncsnr)), "median_noise_ceiling_3trials_pct": float(np.median(nc3)),
            "median_noise_ceiling_1trial_pct": float(np.median(nc1))}
