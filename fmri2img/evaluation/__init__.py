"""Evaluation: embedding metrics, image metrics, statistics and scoring (pure functions: no files,
no MLflow, no module-level caches; results a caller wants reused go through an explicit
:class:`~fmri2img.core.memo.Memo`)."""
