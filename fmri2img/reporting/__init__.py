"""Figures, captions and paper tables from results tables (pure: they take tables and cell
metrics, return figures and text; :mod:`fmri2img.stages.report` writes them)."""
