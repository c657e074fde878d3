"""Sizes of a synthetic world (:class:`WorldShape`) and the ``--scale`` presets (:data:`SCALES`)."""

from __future__ import annotations

from dataclasses import dataclass

from fmri2img.data import nsd_constants

#: Side of the synthetic stimulus images in pixels, at every scale (the real imgBrick is 425;
#: 64 keeps ``--scale nsd`` at ~0.5 GB of images instead of ~20 GB).
SYNTH_IMAGE_SIZE = 64


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
        return self.n_sessions * nsd_constants.TRIALS_PER_SESSION // nsd_constants.MAX_REPEATS

    @property
    def n_trials(self) -> int:
        return self.n_sessions * nsd_constants.TRIALS_PER_SESSION

    def grid_of(self, subject: str) -> tuple[int, int, int]:
        return tuple(self.grid) if self.grid is not None else nsd_constants.FUNC1PT8_GRID[subject]


#: ``--scale`` presets. demo: ~2,000 voxels, 1,000 images x 3 repeats (100 shared), written in
#: seconds. nsd: real grids, 15,724 voxels (subj01's nsdgeneral), 40 sessions, 10,000 images.
SCALES = {
    "demo": WorldShape(grid=(20, 24, 20), n_mask_voxels=2_000, n_sessions=4, n_shared=100),
    "nsd": WorldShape(
        grid=None,
        n_mask_voxels=nsd_constants.NSDGENERAL_VOXELS_SUBJ01,
        n_sessions=nsd_constants.NSD_SESSIONS["subj01"],
        n_shared=nsd_constants.N_SHARED,
        real_session_counts=True,
    ),
}
