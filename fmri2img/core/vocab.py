"""The project's vocabulary: every tuple of names (decoders, configurations, test sets...) defined
once. Modules import these; nothing spells the same list a second time. Orders are report orders
(docs/contracts.md, section 6)."""

from __future__ import annotations

#: Decoders of the registry (:mod:`fmri2img.models.registry`).
DECODERS = ("ridge", "mlp", "two_stage")

#: Configurations of the research track's matrix.
CONFIGURATIONS = ("perception_only", "mixed", "adapter_linear", "adapter_mlp", "adapter_mlp_condition", "finetune")

#: Reference predictions scored beside every configuration (display order).
BASELINES = ("baseline_ground_truth", "baseline_random", "baseline_mean_embedding")

#: What ``adapt`` trains: an adapter module of the registry, or a fine-tuned copy of the decoder.
ADAPTER_MODULES = ("linear", "mlp")
ADAPTER_TYPES = (*ADAPTER_MODULES, "finetune")

#: Adapter configurations of the matrix -> (adapter type, condition embedding).
ADAPTER_CONFIGURATIONS = {
    "adapter_linear": ("linear", False),
    "adapter_mlp": ("mlp", False),
    "adapter_mlp_condition": ("mlp", True),
    "finetune": ("finetune", False),
}

#: What a decoder trains on: NSD perception trials, or those plus imagery trials (H2).
TRAIN_ON = ("perception", "mixed")

#: What a cell's MLflow run holds: everything (params, metrics, curves, figure, files, models, datasets), or
#: params, metrics and curves only (calibration worlds: their store is deleted with them; docs/performance.md).
CELL_LOGGING = ("full", "metrics")

#: Test sets (docs/contracts.md section 6) and the ones each ``--mode`` scores.
TEST_SETS = ("shared1000", "imagery_vision", "imagery")
MODE_TEST_SETS = {
    "perception": ("shared1000", "imagery_vision"),
    "imagery": ("imagery_vision", "imagery"),
    "both": TEST_SETS,
}
MODES = tuple(MODE_TEST_SETS)
#: Imagery and its matched perception: their ``cosine_matched`` averages as many trials per chunk.
MATCHED_TEST_SETS = ("imagery", "imagery_vision")

#: Stimulus types of the index; the first three have an image ground truth (scored as ``all``).
STIMULUS_TYPES = ("natural", "simple", "complex", "conceptual")
IMAGE_TYPES = STIMULUS_TYPES[:3]

#: Values of the index's categorical columns (docs/contracts.md section 2).
INDEX_DATASETS = ("nsd", "nsdimagery")
CONDITIONS = ("perception", "imagery", "attention")
SPLITS = ("train", "val", "test")

#: Condition ids of condition-aware adapters (their order is part of saved adapters).
CONDITION_IDS = {"perception": 0, "imagery": 1}

#: Which trials ``index`` builds (``--dataset``).
DATASETS = ("nsd", "imagery", "both")

#: NSD session beta files ``index`` reads, and those ``synth`` writes.
READ_BETA_FORMATS = ("auto", "nifti", "hdf5")
WRITE_BETA_FORMATS = ("nifti", "hdf5", "both")

#: Sizes of the synthetic world (``fmri2img synth --scale``; :data:`fmri2img.sim.model.SCALES`).
WORLD_SCALES = ("demo", "nsd")

#: Where models run.
DEVICES = ("cpu", "cuda")

#: Where a stage's tasks run (fmri2img.core.executors): a process pool here, or Slurm job arrays.
EXECUTORS = ("local", "slurm")

#: Columns of every results_table.csv (docs/contracts.md section 6), in order; the first six name a cell.
RESULTS_COLUMNS = ("subject", "decoder", "configuration", "test_set", "stimulus_type", "metric",
                   "value", "ci_low", "ci_high", "chance", "n", "p_value", "p_holm")

#: Embedding metrics of a results table (display order); retrieval_at_K follow the K of the run.
METRICS = (
    "cosine", "cosine_per_trial", "retrieval_at_1", "retrieval_at_5", "retrieval_at_10",
    "retrieval_at_50", "two_way", "ssim", "pixcorr", "pixel_mse",
)

#: Image metrics of reconstruction by retrieval.
IMAGE_METRICS = ("ssim", "pixcorr", "pixel_mse")

#: The region and voxel selection every stage decodes from unless told otherwise
#: (fmri2img.data.regions lists the others); results tables of a region axis add these columns.
DEFAULT_REGION = "nsdgeneral"
DEFAULT_VOXEL_SELECTION = "all"
REGION_COLUMNS = ("region", "voxel_selection")
