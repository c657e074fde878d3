"""Reconstruction backends: predicted embeddings -> images.

Each backend is a class whose ``__init__`` only stores its parameters and whose
``generate(pred_embeddings)`` returns uint8 RGB images of shape (n, H, W, 3), the
:class:`fmri2img.evaluation.image_metrics.ImageGenerator` protocol (so reconstruction by retrieval,
``RetrievalGenerator``, plugs in the same way). They are gathered in :data:`RECONSTRUCTION_BACKENDS`
and built by name with :func:`make_backend`:

- ``synthetic``: the synthetic world's own renderer (latent -> image), the embedded default. The
  demo's reconstructions are real images whose quality follows decoding quality; rendering the
  planted latents gives back the world's stimuli exactly.
- ``unclip``: diffusers' Stable unCLIP image-variation pipeline (``StableUnCLIPImg2ImgPipeline``)
  from a local folder, conditioned on CLIP image embeddings (ViT-H/14 for
  ``stable-diffusion-2-1-unclip``). Needs the optional ``reconstruct`` extra (diffusers, transformers).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fmri2img.core.config import check_choice
from fmri2img.core.errors import ConfigError, CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.embeddings.clip import check_device
from fmri2img.sim.model import GeneratorParams, render_images  # the world's own renderer

#: Seed of the synthetic world's renderer when none is given (``fmri2img.data.synthetic.DEFAULT_SEED``).
SYNTHETIC_DEFAULT_SEED = 0

#: Side of the synthetic world's images (``fmri2img.sim.shape.SYNTH_IMAGE_SIZE``).
SYNTHETIC_IMAGE_SIZE = 64

#: Denoising steps and classifier-free guidance of the unCLIP backend: the defaults of diffusers'
#: ``StableUnCLIPImg2ImgPipeline.__call__`` (num_inference_steps=20, guidance_scale=10).
UNCLIP_STEPS = 20
UNCLIP_GUIDANCE = 10.0

#: Images generated per pipeline call (bounds GPU memory; results are seeded per image).
UNCLIP_BATCH_SIZE = 4

#: The diffusers pipeline class the ``unclip`` backend loads (model_index.json ``_class_name``).
UNCLIP_PIPELINE_CLASS = "StableUnCLIPImg2ImgPipeline"

_DTYPES = ("float32", "float16", "bfloat16")


def _check_embeddings(pred_embeddings: Any) -> np.ndarray:
    arr = np.asarray(pred_embeddings, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"Expected predicted embeddings of shape (n, d), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InputError("Expected finite predicted embeddings, got NaN or inf.")
    return arr


# --------------------------------------------------------------------------- synthetic


class SyntheticRenderer:
    """The synthetic world's renderer as a reconstruction backend (latent -> image).

    Parameters
    ----------
    seed : int
        Seed of the world (fixes the renderer's weights; ``truth/params.json`` ``seed``).
    image_size : int
        Side of the images (``truth/params.json`` ``shape.image_size``).
    render_contrast : float
        ``GeneratorParams.render_contrast`` of the world.
    dim : int or None
        Latent dimension of the world (``GeneratorParams.dim``); when given, embeddings of another
        dimension are refused (MismatchError).
    normalize : bool
        Project each prediction onto the unit sphere first (the world's latents are unit vectors; a
        ridge prediction shrunk towards the mean would otherwise render with less contrast).
    """

    def __init__(self, seed: int = SYNTHETIC_DEFAULT_SEED, image_size: int = SYNTHETIC_IMAGE_SIZE,
                 render_contrast: float = 1.0, dim: int | None = None, normalize: bool = True) -> None:
        self.seed = seed
        self.image_size = image_size
        self.render_contrast = render_contrast
        self.dim = dim
        self.normalize = normalize

    @classmethod
    def from_world_params(cls, params: Mapping[str, Any], normalize: bool = True) -> SyntheticRenderer:
        """The renderer of a world, from its ``truth/params.json`` content (seed, image size, contrast, dim)."""
        try:
            return cls(seed=int(params["seed"]), image_size=int(params["shape"]["image_size"]),
                       render_contrast=float(params["params"]["render_contrast"]), dim=int(params["params"]["dim"]),
                       normalize=normalize)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"Expected a synthetic world's truth/params.json content with seed, shape.image_size, "
                             f"params.render_contrast and params.dim; missing or invalid: {exc}.") from None

    def generate(self, pred_embeddings: Any) -> np.ndarray:
        """Render each prediction.

        Parameters
        ----------
        pred_embeddings : array of shape (n, d)

        Returns
        -------
        uint8 array of shape (n, image_size, image_size, 3)
        """
        latents = _check_embeddings(pred_embeddings)
        if self.dim is not None and latents.shape[1] != self.dim:
            raise MismatchError(f"Embeddings have {latents.shape[1]} dimensions but the synthetic world's renderer "
                                f"takes latents of {self.dim}; decode the 'synthetic-truth' embedding set.")
        if self.normalize:
            norms = np.linalg.norm(latents, axis=1, keepdims=True)
            if np.any(norms == 0):
                raise InputError(f"Cannot normalise an all-zero prediction (row {int(np.flatnonzero(norms == 0)[0])}).")
            latents = latents / norms
        params = GeneratorParams(dim=latents.shape[1], render_contrast=float(self.render_contrast))
        return render_images(latents, int(self.image_size), params, int(self.seed))


# --------------------------------------------------------------------------- unCLIP


def _import_pipeline_class() -> Any:
    try:
        from diffusers import StableUnCLIPImg2ImgPipeline
    except ImportError as exc:
        raise ConfigError(f"The unclip backend needs diffusers and transformers ({_first_line(exc)}); install the "
                          "optional extra: pip install -c requirements/constraints.txt -e '.[reconstruct]'.") from None
    return StableUnCLIPImg2ImgPipeline


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unclip_embedding_dim(pipeline_dir: str | Path) -> int:
    """Image-embedding size of a local Stable unCLIP pipeline, read from its config files (no weights).

    ``image_normalizer/config.json`` ``embedding_dim`` (1024 for stable-diffusion-2-1-unclip, CLIP ViT-H/14).

    Raises
    ------
    MissingInputError
        No such folder, or not a diffusers pipeline folder.
    MismatchError
        A pipeline of another class.
    CorruptFileError
        Unreadable config files.
    """
    root = Path(pipeline_dir)
    index = root / "model_index.json"
    if not root.is_dir():
        raise MissingInputError(f"unCLIP pipeline folder not found: {root}; expected a local copy of a diffusers "
                                f"{UNCLIP_PIPELINE_CLASS} (e.g. stable-diffusion-2-1-unclip).")
    if not index.is_file():
        raise MissingInputError(f"{root} is not a diffusers pipeline folder: no model_index.json.")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
        dim = json.loads((root / "image_normalizer" / "config.json").read_text())["embedding_dim"]
    except FileNotFoundError:
        raise MissingInputError(f"{root} has no image_normalizer/config.json; "
                                f"expected a {UNCLIP_PIPELINE_CLASS}.") from None
    except (ValueError, KeyError, AttributeError) as exc:
        raise CorruptFileError(f"Cannot read the unCLIP pipeline config in {root}: {_first_line(exc)}") from None
    if class_name != UNCLIP_PIPELINE_CLASS:
        raise MismatchError(f"{root} holds a {class_name}, expected a {UNCLIP_PIPELINE_CLASS}.")
    return int(dim)


class UnclipGenerator:
    """Stable unCLIP image variations from predicted CLIP image embeddings (diffusers, local weights).

    Parameters
    ----------
    pipeline_dir : path
        Local folder of a diffusers ``StableUnCLIPImg2ImgPipeline`` (``save_pretrained`` layout);
        never a hub id, nothing is downloaded.
    device : {"cpu", "cuda"}
    seed : int
        Each image i is seeded with ``SeedSequence([seed, i])``, whatever the batching.
    batch_size, num_inference_steps : int
    guidance_scale : float
        Classifier-free guidance between the embedding and a zero embedding (empty prompt).
    noise_level : int
        Noise added to the embeddings before conditioning (0: none).
    image_size : int or None
        Output side (None: the pipeline's default, ``unet.sample_size * vae_scale_factor``).
    embedding_norm : float or None
        Rescale each embedding to this L2 norm first. This toolkit stores unit-norm embeddings; the
        pipeline was trained on raw ``CLIPVisionModelWithProjection.image_embeds``, so give their
        typical norm (measure it with the pipeline's own image_encoder) or None to pass them as is.
    dtype : {"float32", "float16", "bfloat16"}
    progress : bool
    """

    def __init__(self, pipeline_dir: str | Path, device: str = "cpu", seed: int = 0,
                 batch_size: int = UNCLIP_BATCH_SIZE, num_inference_steps: int = UNCLIP_STEPS,
                 guidance_scale: float = UNCLIP_GUIDANCE, noise_level: int = 0, image_size: int | None = None,
                 embedding_norm: float | None = None, dtype: str = "float32", progress: bool = True) -> None:
        self.pipeline_dir = pipeline_dir
        self.device = device
        self.seed = seed
        self.batch_size = batch_size
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.noise_level = noise_level
        self.image_size = image_size
        self.embedding_norm = embedding_norm
        self.dtype = dtype
        self.progress = progress

    def _check_params(self) -> None:

        check_device(self.device)
        check_choice("dtype", self.dtype, _DTYPES)
        for name in ("batch_size", "num_inference_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Invalid {name}={getattr(self, name)}; expected an integer >= 1.")
        if self.embedding_norm is not None and not float(self.embedding_norm) > 0:
            raise ConfigError(f"Invalid embedding_norm={self.embedding_norm}; expected a positive number or None.")

    def load(self) -> UnclipGenerator:
        """Load the pipeline onto ``device`` (done by :meth:`generate` if needed); sets ``pipeline_``
        and ``embedding_dim_``. Returns self."""

        self._check_params()
        self.embedding_dim_ = unclip_embedding_dim(self.pipeline_dir)
        pipeline_class = _import_pipeline_class()
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "accelerate not found" and progress chatter
        transformers_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = pipeline_class.from_pretrained(str(self.pipeline_dir), local_files_only=True,
                                                      torch_dtype=getattr(torch, self.dtype))
        except (OSError, ValueError, RuntimeError, KeyError, EnvironmentError) as exc:
            raise CorruptFileError(f"Cannot load the unCLIP pipeline in {self.pipeline_dir}: "
                                   f"{_first_line(exc)}") from None
        finally:
            diffusers_logging.set_verbosity(levels[0])
            transformers_logging.set_verbosity(levels[1])
        pipe.set_progress_bar_config(disable=True)
        self.pipeline_ = pipe.to(self.device)
        return self

    def generate(self, pred_embeddings: Any) -> np.ndarray:
        """Generate one image per embedding.

        Parameters
        ----------
        pred_embeddings : array of shape (n, d)
            d must be the pipeline's image-embedding size (1024 for ViT-H/14); checked against its
            config before any weights are loaded.

        Returns
        -------
        uint8 array of shape (n, H, H, 3)
        """

        emb = _check_embeddings(pred_embeddings)
        self._check_params()
        dim = unclip_embedding_dim(self.pipeline_dir)
        if emb.shape[1] != dim:
            raise MismatchError(f"Embeddings have {emb.shape[1]} dimensions but the unCLIP pipeline in "
                                f"{self.pipeline_dir} takes {dim}-D CLIP image embeddings (ViT-H/14 gives 1024): "
                                "decode embeddings of the pipeline's own CLIP model.")
        if self.embedding_norm is not None:
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.where(norms > 0, norms, 1.0) * float(self.embedding_norm)
        if getattr(self, "pipeline_", None) is None:
            self.load()
        pipe = self.pipeline_
        out = []
        step = int(self.batch_size)
        for start in tqdm(range(0, len(emb), step), desc="unclip", unit="batch", disable=not self.progress):
            block = emb[start:start + step]
            gens = [torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([int(self.seed), start + k])
                                                              .generate_state(1)[0])) for k in range(len(block))]
            with torch.inference_mode():
                images = pipe(image_embeds=torch.as_tensor(block, dtype=pipe.unet.dtype, device=self.device),
                              prompt=[""] * len(block), num_inference_steps=int(self.num_inference_steps),
                              guidance_scale=float(self.guidance_scale), noise_level=int(self.noise_level),
                              generator=gens, height=self.image_size, width=self.image_size, output_type="np").images
            out.append(np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8))
        return np.concatenate(out)


# --------------------------------------------------------------------------- registry


#: Reconstruction backends by name (adding one: a class with ``generate`` and one entry here).
RECONSTRUCTION_BACKENDS: dict[str, type] = {"synthetic": SyntheticRenderer, "unclip": UnclipGenerator}


def make_backend(name: str, **params: Any) -> Any:
    """Build a reconstruction backend by name.

    Parameters
    ----------
    name : {"synthetic", "unclip"}
    **params
        Keyword arguments of the backend's class (e.g. ``pipeline_dir=``, ``device=``, ``seed=``).

    Raises
    ------
    ConfigError
        Unknown backend or parameter (the message lists the allowed ones).
    """
    check_choice("reconstruction backend", name, RECONSTRUCTION_BACKENDS)
    cls = RECONSTRUCTION_BACKENDS[name]
    signature = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    unknown = sorted(set(params) - set(signature))
    if unknown:
        raise ConfigError(f"Unknown parameter(s) {unknown} for backend {name!r}; allowed: {', '.join(signature)}.")
    missing = [k for k, p in signature.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ConfigError(f"Backend {name!r} needs {', '.join(missing)}.")
    return cls(**params)


__all__ = [
    "RECONSTRUCTION_BACKENDS", "SyntheticRenderer", "UNCLIP_GUIDANCE", "UNCLIP_STEPS", "UnclipGenerator",
    "make_backend", "unclip_embedding_dim",
]
