"""Project-wide named constants (seeds, defaults). Dataset facts live in
:mod:`fmri2img.data.nsd_constants`, each with its source."""

from __future__ import annotations

#: Seed of every data split (train/val/test by image, imagery folds). Research track roadmap,
#: "Reproducibility Checklist": "default: 42 for train/val split".
SPLIT_SEED = 42

#: Seed of every model initialisation and stochastic training step. Same source: "123 for model init".
INIT_SEED = 123

#: Subjects of NSD-Imagery used by the research track (roadmap: "typically subj01, subj02, subj05, subj07").
DEFAULT_SUBJECTS = ("subj01", "subj02", "subj05", "subj07")

#: Retrieval cut-offs reported everywhere (roadmap, "Evaluation Metrics": K = {1, 5, 10, 50}).
RETRIEVAL_KS = (1, 5, 10, 50)

#: Default MLflow experiment of the research track.
DEFAULT_EXPERIMENT = "fmri2img/imagery"

#: Default locations, relative to the working directory (all overridable on the CLI).
DEFAULT_DATA_ROOT = "data/synthetic"
DEFAULT_CACHE_ROOT = "cache"
DEFAULT_INDEX_DIR = "cache/indices/imagery"
DEFAULT_MANIFEST_DIR = "data/indices/imagery"
DEFAULT_OUTPUT_ROOT = "outputs"
DEFAULT_CHECKPOINT_ROOT = "checkpoints"

#: Name of the embedding set that exposes the synthetic world's planted latents.
SYNTHETIC_TRUTH_EMBEDDINGS = "synthetic-truth"
