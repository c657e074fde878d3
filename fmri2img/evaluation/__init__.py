"""Evaluation: embedding metrics, image metrics and statistics (pure functions).

- :mod:`.metrics`: cosine, retrieval@K, two-way identification, baselines (numpy only).
- :mod:`.image_metrics`: SSIM, pixel MSE, PixCorr, optional LPIPS, reconstruction by retrieval.
- :mod:`.stats`: paired tests, bootstrap CIs, permutation tests, Holm (pingouin / scipy).

Submodules are imported explicitly (``from fmri2img.evaluation import metrics``) so that using
the metrics does not import pingouin or scikit-image.
"""
