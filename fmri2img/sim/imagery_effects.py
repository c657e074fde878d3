"""How imagery of an NSD-Imagery stimulus set relates to perception in the synthetic world: one
strength ``s`` in (0, 1] (1 = imagery distributed exactly like perception) sets every planted effect."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Imagery strength ``s`` of the embedded default world (``--imagery-strength``). 0.6 keeps the
#: previous defaults' imagery noise for set A (6 vs 4 psc) while the planted H1-H3 effects stay clear
#: of zero on every seed (docs/trust.md: measured truth per strength).
DEFAULT_IMAGERY_STRENGTH = 0.6

#: Exponents ``k_X`` of sets A (simple), B (complex), C (conceptual): ``s_X = s ** k_X``, so that
#: decoding falls from simple to conceptual imagery, the order NSD-Imagery reports (Kneeland et al.
#: 2025); the values are this generator's own choice.
IMAGERY_SET_EXPONENTS = (1.0, 1.25, 1.75)

#: ``kappa``: norm of the imagery offset at strength 0 (``|c_X| = (1 - s_X) kappa``); 2.5 gives the
#: previous default offset norm 1.0 at the default strength of set A.
IMAGERY_OFFSET_SCALE = 2.5

#: ``nu``: imagery noise sd ``= noise_sd (1 + (1 - s_X) nu)``; 1.25 gives 6 psc for set A at the default.
IMAGERY_NOISE_INFLATION = 1.25


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




def strength_effect(strength: float, noise_sd: float, offset_scale: float, noise_inflation: float) -> ImageryEffect:
    """The imagery effect of a set of strength ``s`` in (0, 1]: ``gamma = rho = sqrt(s)`` (so the true
    latent enters with weight ``gamma rho = s``), offset norm ``(1 - s) offset_scale``, noise sd
    ``noise_sd (1 + (1 - s) noise_inflation)``. ``s = 1`` is imagery distributed like perception."""
    root = math.sqrt(strength)
    return ImageryEffect(gamma=root, rho=root, offset_norm=(1.0 - strength) * offset_scale,
                         noise_sd=noise_sd * (1.0 + (1.0 - strength) * noise_inflation))


#: Exponents ``k_r`` of the region-dependent imagery gain per stream (``streams.nii.gz`` names):
#: imagery signal at voxel ``v`` is scaled by ``s ** k_r(v)`` (then normalised over nsdgeneral), so
#: imagery transfer orders ventral / lateral / parietal > mid streams > early (V1-V3), the ordering
#: imagery studies report for early vs higher visual cortex (e.g. Kneeland et al. 2025, NSD-Imagery);
#: the values are this generator's own choice. Exponents 2 / 1 / 0 planted a ventral-minus-early H1
#: difference (about 0.25) that 4 subjects x 12 stimuli resolve for ridge only; 4 / 2 / 0 doubles the
#: gain contrast (docs/regions.md, measured on world seeds 0 and 1).
STREAM_IMAGERY_EXPONENTS = {"early": 4.0, "midventral": 2.0, "midlateral": 2.0, "midparietal": 2.0,
                            "ventral": 0.0, "lateral": 0.0, "parietal": 0.0}

#: Exponent of nsdgeneral voxels that no stream labels (between early and the high streams).
UNLABELLED_IMAGERY_EXPONENT = 2.0
