"""Regions of interest of the synthetic world: NSD's ``prf-visualrois`` and ``streams`` label volumes
inside the nsdgeneral blob, their label tables, the per-voxel signal gain ``q_v`` (reliability differs
between voxels) and the region-dependent imagery gain ``w_v`` (``docs/synthetic_world.md``).

Anatomy, all inside nsdgeneral (so the voxel set of nsdgeneral is all a reader needs): the blob's voxels
are ranked along y (posterior -> anterior; ties inferior first). The most posterior
:data:`STREAM_BANDS` [0] share is ``early`` (V1, V2, V3 from posterior to anterior, each split by z into
ventral ``v`` = inferior half and dorsal ``d``), the next share the mid streams, the next the high
streams (each split by z into ventral = inferior third, lateral, parietal = superior third); the most
anterior rest stays unlabelled in ``streams``. hV4 is the posterior :data:`HV4_SHARE` of midventral.
Every split is by rank, so the label counts depend only on the number of nsdgeneral voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from fmri2img.core.errors import InputError
from fmri2img.core.files import save_npy, write_text
from fmri2img.data import nsd_constants
from fmri2img.sim.formats import write_nifti
from fmri2img.sim.imagery_effects import STREAM_IMAGERY_EXPONENTS, UNLABELLED_IMAGERY_EXPONENT

#: Shares of the nsdgeneral voxels, posterior to anterior: early (V1-V3), mid streams, high streams; the
#: remaining, most anterior ~3% stay unlabelled in ``streams`` (as NSD's streams do not cover all of
#: nsdgeneral). This generator's choice, roughly the proportions of the real nsdgeneral.
STREAM_BANDS = (0.30, 0.25, 0.42)

#: hV4 = the most posterior share of midventral (prf-visualrois' hV4 borders V3v).
HV4_SHARE = 1.0 / 3.0

#: Early areas, posterior to anterior; each is split by z into ventral (inferior) and dorsal halves.
EARLY_AREAS = ("V1", "V2", "V3")

#: Suffixes of the three streams of each band, inferior to superior.
STREAM_KINDS = ("ventral", "lateral", "parietal")

#: Gaussian sigma (voxels) of the log-normal per-voxel signal gain field ``q_v``.
VOXEL_GAIN_SIGMA_VOX = 2.0

#: Label volumes written per subject: file template -> codes (NSD's names).
LABEL_VOLUMES = {"prf-visualrois": (nsd_constants.PRF_VISUALROIS, nsd_constants.PRF_VISUALROIS_CTAB,
                                    nsd_constants.PRF_VISUALROIS_CODES),
                 "streams": (nsd_constants.STREAMS, nsd_constants.STREAMS_CTAB, nsd_constants.STREAMS_CODES)}


@dataclass
class Anatomy:
    """The regions of one subject; per-voxel arrays are in the C order of nsdgeneral == 1 (rows of G).

    Attributes
    ----------
    streams, visualrois : int16 arrays of shape (n_roi,)
        ``streams`` and ``prf-visualrois`` codes of each nsdgeneral voxel (0 = not labelled).
    voxel_gain : float32 array of shape (n_roi,)
        ``q_v``, mean of ``q_v^2`` = 1.
    imagery_gain : float32 array of shape (n_roi,)
        ``w_v``, mean of ``w_v^2`` = 1.
    """

    streams: np.ndarray
    visualrois: np.ndarray
    voxel_gain: np.ndarray
    imagery_gain: np.ndarray


def _code(codes: dict[int, str], name: str) -> int:
    return next(c for c, n in codes.items() if n == name)


def _ordered(idx: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """``idx`` sorted by ``keys`` (the first key primary)."""
    return idx[np.lexsort(tuple(k[idx] for k in reversed(keys)))]


def assign_labels(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stream and prf-visualrois codes of voxels at integer coordinates ``x, y, z`` (each (n,)).

    Returns
    -------
    streams, visualrois : int16 arrays of shape (n,)
        Codes of :data:`~fmri2img.data.nsd_constants.STREAMS_CODES` and ``PRF_VISUALROIS_CODES``; 0 = none.
    """
    n = len(y)
    streams, visual = np.zeros(n, dtype=np.int16), np.zeros(n, dtype=np.int16)
    by_y = _ordered(np.arange(n), y, z, x)
    cuts = np.rint(np.cumsum(STREAM_BANDS) * n).astype(int)
    early, mid, high = by_y[:cuts[0]], by_y[cuts[0]:cuts[1]], by_y[cuts[1]:cuts[2]]
    streams[early] = _code(nsd_constants.STREAMS_CODES, "early")
    for area, part in zip(EARLY_AREAS, np.array_split(early, len(EARLY_AREAS))):
        inferior, superior = np.array_split(_ordered(part, z, y, x), 2)
        visual[inferior] = _code(nsd_constants.PRF_VISUALROIS_CODES, area + "v")
        visual[superior] = _code(nsd_constants.PRF_VISUALROIS_CODES, area + "d")
    for prefix, band in (("mid", mid), ("", high)):
        for kind, part in zip(STREAM_KINDS, np.array_split(_ordered(band, z, y, x), len(STREAM_KINDS))):
            streams[part] = _code(nsd_constants.STREAMS_CODES, prefix + kind)
    midventral = _ordered(np.flatnonzero(streams == _code(nsd_constants.STREAMS_CODES, "midventral")), y, z, x)
    visual[midventral[:int(np.rint(len(midventral) * HV4_SHARE))]] = _code(nsd_constants.PRF_VISUALROIS_CODES, "hV4")
    return streams, visual


def _missing_labels(n_roi: int) -> list[str]:
    """Labels that an nsdgeneral of ``n_roi`` voxels leaves empty (counts depend only on ``n_roi``)."""
    coords = np.arange(n_roi)
    streams, visual = assign_labels(coords, coords, coords)
    return ([n for c, n in nsd_constants.STREAMS_CODES.items() if not (streams == c).any()]
            + [n for c, n in nsd_constants.PRF_VISUALROIS_CODES.items() if not (visual == c).any()])


def check_label_room(n_roi: int) -> None:
    """Raise :class:`InputError` if ``n_roi`` nsdgeneral voxels cannot hold a voxel of every ROI label."""
    missing = _missing_labels(n_roi)
    if missing:
        enough = next(n for n in range(max(n_roi, 1), 10 * max(n_roi, 1) + 100) if not _missing_labels(n))
        raise InputError(f"n_mask_voxels={n_roi} is too small to give every ROI label a voxel "
                         f"(empty: {', '.join(missing)}); expected n_mask_voxels >= {enough}.")


def voxel_gain(grid: tuple[int, int, int], roi: np.ndarray, log_sd: float, rng: np.random.Generator) -> np.ndarray:
    """``q_v`` of the ROI voxels (C order), shape (n_roi,): ``exp(log_sd z_v)`` with ``z`` a white-noise field
    smoothed by :data:`VOXEL_GAIN_SIGMA_VOX` and standardised over the ROI, scaled so that mean(q^2) = 1."""
    field = gaussian_filter(rng.standard_normal(grid), sigma=VOXEL_GAIN_SIGMA_VOX)[roi]
    z = (field - field.mean()) / field.std()
    q = np.exp(log_sd * z)
    return (q / np.sqrt(np.mean(q**2))).astype(np.float32)


def imagery_gain(streams: np.ndarray, strength: float) -> np.ndarray:
    """``w_v = s^k_r(v) / sqrt(mean_v s^(2 k_r(v)))`` per voxel (shape of ``streams``, float32); ``s = 1`` gives 1."""
    exponent = np.full(streams.shape, UNLABELLED_IMAGERY_EXPONENT)
    for code, name in nsd_constants.STREAMS_CODES.items():
        exponent[streams == code] = STREAM_IMAGERY_EXPONENTS[name]
    raw = float(strength) ** exponent
    return (raw / np.sqrt(np.mean(raw**2))).astype(np.float32)


def make_anatomy(nsdgeneral: np.ndarray, params: Any, rng: np.random.Generator) -> Anatomy:
    """The :class:`Anatomy` of one subject's nsdgeneral volume (1 inside, 0 brain, -1 outside); ``params`` a
    :class:`~fmri2img.sim.model.GeneratorParams` (``voxel_gain_sd``, ``imagery_strength``), ``rng`` seeds ``q_v``."""
    roi = nsdgeneral == nsd_constants.NSDGENERAL_INSIDE
    check_label_room(int(roi.sum()))
    x, y, z = np.nonzero(roi)
    streams, visual = assign_labels(x, y, z)
    return Anatomy(streams, visual, voxel_gain(nsdgeneral.shape, roi, params.voxel_gain_sd, rng),
                   imagery_gain(streams, params.imagery_strength))


def ctab_text(codes: dict[int, str]) -> str:
    """A label table in NSD's simple format: ``0 Unknown``, then ``<code> <name>`` per label."""
    return "".join(f"{c} {n}\n" for c, n in {0: "Unknown", **codes}.items())


def label_volume(nsdgeneral: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """int16 volume: ``labels`` (C order of nsdgeneral == 1) inside, 0 elsewhere in the brain, -1 outside."""
    vol = np.where(nsdgeneral == -1, -1, 0).astype(np.int16)
    vol[nsdgeneral == nsd_constants.NSDGENERAL_INSIDE] = labels
    return vol


def write_anatomy(root: Path, subject: str, nsdgeneral: np.ndarray, anatomy: Anatomy, ncsnr: np.ndarray) -> None:
    """Label volumes and tables, ``ncsnr.nii.gz`` (float32, 0 outside nsdgeneral) and ``truth/imagery_gain_*.npy``."""
    roi = nsdgeneral == nsd_constants.NSDGENERAL_INSIDE
    for name, labels in (("prf-visualrois", anatomy.visualrois), ("streams", anatomy.streams)):
        volume, ctab, codes = LABEL_VOLUMES[name]
        write_nifti(root / volume.format(subject=subject), label_volume(nsdgeneral, labels))
        write_text(root / ctab.format(subject=subject), ctab_text(codes))
    snr = np.zeros(nsdgeneral.shape, dtype=np.float32)
    snr[roi] = ncsnr
    write_nifti(root / nsd_constants.NCSNR.format(subject=subject), snr)
    save_npy(root / "truth" / f"imagery_gain_{subject}.npy", anatomy.imagery_gain)


def _per_stream(values: np.ndarray, streams: np.ndarray, how) -> dict[str, float]:
    out = {n: float(how(values[streams == c])) for c, n in nsd_constants.STREAMS_CODES.items()}
    if (streams == 0).any():
        out["unlabelled"] = float(how(values[streams == 0]))
    return out


def planted_text(strength: float) -> str:
    """``planted_effects["regions"]`` of ``truth/params.json``."""
    if strength == 1.0:
        return "no region effect (null world: w_v = 1 everywhere)"
    return "imagery transfer expected to order ventral/lateral/parietal > mid > early (V1-V3)"


def regions_truth(written: dict[str, tuple[Anatomy, np.ndarray]], strength: float, log_sd: float) -> dict[str, Any]:
    """The ``regions`` entry of ``truth/params.json`` from each subject's (anatomy, ncsnr (n_roi,)):
    exponents, the imagery gain per stream, label counts and the median ncsnr per stream."""
    anatomies = {s: a for s, (a, _) in written.items()}
    ncsnr = {s: snr for s, (_, snr) in written.items()}
    first = next(iter(anatomies.values()))
    counts = {s: {name: {n: int((getattr(a, attr) == c).sum()) for c, n in LABEL_VOLUMES[name][2].items()}
                  for name, attr in (("prf-visualrois", "visualrois"), ("streams", "streams"))}
              for s, a in anatomies.items()}
    return {
        "stream_imagery_exponents": {**STREAM_IMAGERY_EXPONENTS, "unlabelled": UNLABELLED_IMAGERY_EXPONENT},
        "imagery_strength": strength,
        # label counts depend only on n_mask_voxels, so w per stream is the same for every subject
        "imagery_gain_per_stream": _per_stream(first.imagery_gain, first.streams, np.mean),
        "voxel_gain_sd": log_sd,
        "label_counts": counts,
        "median_ncsnr_per_stream": {s: _per_stream(ncsnr[s], a.streams, np.median) for s, a in anatomies.items()},
        "text": ("imagery signal at nsdgeneral voxel v is scaled by w_v = s^k / sqrt(mean over nsdgeneral of "
                 "s^(2k)), k per stream (early 4, mid streams 2, ventral/lateral/parietal 0, unlabelled 2); "
                 "vision and attention trials are not scaled; perception signal is scaled per voxel by q_v "
                 "(log-normal, smooth, mean q^2 = 1), so ncsnr differs between voxels"),
    }
