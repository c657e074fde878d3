"""Seeds of a synthetic world: one independent generator per component (:func:`rng_for`) and the
families of draws that sibling worlds share or redraw (:class:`WorldSeeds`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldSeeds:
    """The seed of each family of random draws. One seed for all of them is an ordinary world
    (``fmri2img synth --seed``); worlds that share some families and redraw the others are siblings
    (``fmri2img calibrate``'s conditional truths, docs/trust.md).

    Attributes
    ----------
    world : int
        The latent geometry (the shared and the category directions), the image renderer and the
        imagery offset direction ``u`` (a property of the world's imagery, unless ``offset`` is set).
    stimuli : int
        The design (which images each subject sees, which shared images are imagery set B), every
        stimulus' latent and category, the imagery residuals.
    subjects : int
        Encodings, voxel gains, the NSD-Imagery trial order, every beta's noise and the behaviour.
    offset : int or None
        The imagery offset direction ``u`` alone; None: drawn with the world family.
    """

    world: int
    stimuli: int
    subjects: int
    offset: int | None = None

    @classmethod
    def single(cls, seed: int) -> WorldSeeds:
        return cls(int(seed), int(seed), int(seed))


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator per (seed, component...) so components do not shift each other."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)
