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

#: Default seed of the synthetic world (any fixed value; the calibration numbers in the docs are for it).
DEFAULT_WORLD_SEED = 0

#: Name of the embedding set that exposes the synthetic world's planted latents.
SYNTHETIC_TRUTH_EMBEDDINGS = "synthetic-truth"

#: Default CLIP architecture: OpenAI CLIP ViT-B/32, 512-D embeddings (Radford et al. 2021;
#: open_clip config ViT-B-32.json), its default weights (open_clip pretrained tag) and the
#: images or texts encoded per forward pass.
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
DEFAULT_EMBED_BATCH_SIZE = 64
