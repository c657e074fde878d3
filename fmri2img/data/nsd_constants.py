"""Facts about the Natural Scenes Dataset release, each with its source.

Sources:
* [NSD] Allen et al. (2022), Nature Neuroscience 25:116-126, and the NSD data manual
  (https://cvnlab.slite.page/p/CT9Fwl4_hc/NSD-Data-Manual), sections "nsd_expdesign.mat",
  "Betas" and "ROIs".
* [NSDI] NSD-Imagery release notes (the NSD-Imagery data manual): 18 stimuli (sets A, B, C of six),
  12 runs, 720 single-trial betas per subject.
"""

from __future__ import annotations

from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError

#: Functional grid (X, Y, Z) of the 1.8 mm "func1pt8mm" space per subject [NSD manual, "Betas"].
FUNC1PT8_GRID = {
    "subj01": (81, 104, 83),
    "subj02": (82, 106, 84),
    "subj03": (81, 106, 82),
    "subj04": (85, 99, 80),
    "subj05": (79, 97, 78),
    "subj06": (85, 113, 83),
    "subj07": (78, 95, 81),
    "subj08": (80, 103, 78),
}

#: Completed NSD sessions per subject [NSD, Fig. 1 / manual "Experiments"].
NSD_SESSIONS = {
    "subj01": 40, "subj02": 40, "subj03": 32, "subj04": 30,
    "subj05": 40, "subj06": 32, "subj07": 40, "subj08": 30,
}

ALL_SUBJECTS = tuple(sorted(FUNC1PT8_GRID))

#: Trials per NSD scan session: 12 runs of 62/63 trials [NSD manual, "nsd_expdesign.mat"].
TRIALS_PER_SESSION = 750
RUNS_PER_SESSION = 12

#: Images per subject (10,000; each shown up to 3 times) and shared images (1,000) [NSD].
IMAGES_PER_SUBJECT = 10_000
N_SHARED = 1_000
MAX_REPEATS = 3

#: Total images of the NSD stimulus set ("73k") [NSD manual, "nsd_stimuli.hdf5"].
N_IMAGES_73K = 73_000

#: Stimulus image size in nsd_stimuli.hdf5 'imgBrick' (73000 x 425 x 425 x 3 uint8) [NSD manual].
IMAGE_SIZE = 425

#: Beta encoding: int16 values are percent signal change x 300 [NSD manual, "Betas"].
BETA_SCALE = 300.0

#: nsdgeneral ROI: value 1 marks voxels inside; 0 and -1 lie outside [NSD manual, "ROIs"].
NSDGENERAL_INSIDE = 1

#: Voxels in subj01's nsdgeneral at 1.8 mm (the size used by most decoding papers).
NSDGENERAL_VOXELS_SUBJ01 = 15_724

#: NSD-Imagery [NSDI]: stimulus sets and their types, stimuli per set, runs and betas per subject.
IMAGERY_SETS = {"A": "simple", "B": "complex", "C": "conceptual"}
IMAGERY_STIMULI_PER_SET = 6
IMAGERY_RUNS = 12
IMAGERY_BETAS = 720
IMAGERY_TASKS = ("vision", "imagery", "attention")

#: Release-relative paths (templates take ``subject`` and ``session``) [NSD manual, "Data files"].
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
NSDGENERAL = "nsddata/ppdata/{subject}/func1pt8mm/roi/nsdgeneral.nii.gz"
BRAINMASK = "nsddata/ppdata/{subject}/func1pt8mm/brainmask.nii.gz"
RESPONSES = "nsddata/ppdata/{subject}/behav/responses.tsv"
BETAS_DIR = "nsddata_betas/ppdata/{subject}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
BETAS_NII = BETAS_DIR + "/betas_session{session:02d}.nii.gz"
BETAS_HDF5 = BETAS_DIR + "/betas_session{session:02d}.hdf5"
STIMULI_HDF5 = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
#: Hand-written override tables (``index --imagery-trials``, docs/nsd_data.md section 4); this project's
#: format, not the release's (the release is read by fmri2img.data.nsd_imagery_release).
IMAGERY_TRIALS = "nsddata/experiments/nsdimagery/nsdimagery_trials_{subject}.tsv"
IMAGERY_STIMULI_DIR = "nsddata_stimuli/stimuli/nsdimagery"
IMAGERY_STIMULI_TABLE = IMAGERY_STIMULI_DIR + "/stimuli.tsv"

# --- Regions of interest and voxel reliability [NSD manual, "ROIs" and "Betas"] ---------------------
#: ROI label volumes (func1pt8mm, same grid as the betas): value > 0 a label code, 0 not labelled,
#: -1 outside the brain.
PRF_VISUALROIS = "nsddata/ppdata/{subject}/func1pt8mm/roi/prf-visualrois.nii.gz"
STREAMS = "nsddata/ppdata/{subject}/func1pt8mm/roi/streams.nii.gz"
#: Label tables (``<code> <name>`` per line) where the release has them; codes below otherwise.
PRF_VISUALROIS_CTAB = "nsddata/freesurfer/{subject}/label/prf-visualrois.mgz.ctab"
STREAMS_CTAB = "nsddata/freesurfer/{subject}/label/streams.mgz.ctab"
#: Label codes of prf-visualrois and streams as published [NSD manual, "ROIs"].
PRF_VISUALROIS_CODES = {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
STREAMS_CODES = {1: "early", 2: "midventral", 3: "midlateral", 4: "midparietal", 5: "ventral", 6: "lateral",
                 7: "parietal"}
#: Per-voxel noise-ceiling SNR of the betas (all trials, all sessions); NC(n) = 100 ncsnr^2 / (ncsnr^2 + 1/n)
#: for the mean of n trials [Allen et al. 2022, Methods, "Noise ceiling"].
NCSNR = BETAS_DIR + "/ncsnr.nii.gz"


def subject_number(subject: str) -> int:
    """``'subj01'`` -> 1. Raises :class:`~fmri2img.core.errors.InputError` for unknown subjects."""
    check_choice("subject", subject, ALL_SUBJECTS, error=InputError)
    return int(subject[4:])


# --- NSD-Imagery as published (read by fmri2img.data.nsd_imagery_release) ---------------------------
# Sources:
# * [NSDI-code] cvnlab/nsddatapaper (the release's own analysis code): main/nsdsetup.m (run order of
#   nsdimageryexpfile, 150/300 volumes per run at TR 1.6 s), main/glm_nsdimagery2.m (GLMsingle on the
#   12 design cells of `stimulus`, 3-s events, "att does have two adjacent 3-s trials"), main/export.m
#   (betas_nsdimagery.{nii.gz,hdf5} = int16(GLMsingle modelmd * 300), written without reordering).
# * [NSDI-manual] https://cvnlab.slite.page/p/oS386H_KfZF4-s (12 runs; six conditions x 8 = 48 trials).
# * [NSDI-repro] public reproductions that read the release (docs/nsd_imagery_release.md lists them).

#: The 12 runs in acquisition order; beta blocks follow this order [NSDI-code nsdsetup.m].
IMAGERY_RUN_NAMES = ("visA", "attA", "imgA_1", "visB", "attB", "imgB_1",
                     "visC", "attC", "imgC_1", "imgA_2", "imgB_2", "imgC_2")
#: Run-name prefix -> task [NSDI-manual].
IMAGERY_RUN_TASKS = {"vis": "vision", "img": "imagery", "att": "attention"}
#: Stimulus trials per run (six conditions x 8) [NSDI-manual].
IMAGERY_TRIALS_PER_RUN = 48
IMAGERY_REPEATS_PER_RUN = 8
#: Betas per trial: attention trials have a cue and a detection epoch, each its own beta [NSDI-code].
IMAGERY_BETAS_PER_TRIAL = {"vision": 1, "imagery": 1, "attention": 2}
IMAGERY_ATTENTION_EPOCHS = ("cue", "detection")
#: GLM variants (folder suffixes); GLMdenoise_RR (GLMsingle "b3") is the default [NSDI-code export.m].
IMAGERY_GLM_VARIANTS = ("fithrf_GLMdenoise_RR", "fithrf")
#: Cue letters per set, in pair-list order [NSDI-repro]; the reader takes the release's pair lists.
IMAGERY_CUES = {"A": ("H", "R", "V", "L", "P", "E"), "B": ("W", "K", "B", "C", "D", "T"),
                "C": ("S", "Z", "M", "Y", "N", "F")}

#: Release-relative paths of NSD-Imagery [NSDI-repro; NSDI-code export.m for the beta file names].
IMAGERY_EXP_DIR = "nsddata/experiments/nsdimagery"
IMAGERY_DESIGN = IMAGERY_EXP_DIR + "/designmatrixGLMsingle.mat"  # variable `stimulus`, 1 x 12 cell
IMAGERY_PAIR_LIST = IMAGERY_EXP_DIR + "/{stim_set}_pair_list.mat"  # variable `pair_list`: id, target, cue
IMAGERY_TARGET_IMAGE = IMAGERY_EXP_DIR + "/rawtargetimages/set{stim_set}/{name}"
IMAGERY_BDATA = "nsddata/bdata/nsdimagery/nsdimagery_{subject}_{run}.tsv"
IMAGERY_BETAS_IN = "nsddata_betas/ppdata/{subject}/func1pt8mm/nsdimagerybetas_{variant}/betas_nsdimagery.{ext}"
