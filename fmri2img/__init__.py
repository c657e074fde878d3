"""fmri2img: a reproducible benchmark for decoding CLIP embeddings from 7T fMRI.

Perception (NSD) versus imagery (NSD-Imagery) transfer, with an embedded synthetic
world written in NSD's own file formats so the whole pipeline runs anywhere.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
