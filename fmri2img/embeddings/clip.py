"""open_clip model loading and image/text encoding.

Weights come from exactly one source:

* a hub tag (``pretrained="openai"``), taken from the local cache if present, else downloaded.
  Without network this fails fast with one line (:class:`~fmri2img.core.errors.OfflineError`)
  saying how to pass a local file instead: the cache lookup runs with Hugging Face's offline
  mode on (no retries), and a download is only tried if the host answers within
  :data:`NETWORK_PROBE_TIMEOUT_S` seconds;
* a local checkpoint file (``checkpoint=PATH``, a state dict loaded with ``weights_only=True``);
* random initialisation with the project's init seed (``random_init=True``), for tests only.

The model identity (:func:`model_identity`) names the model, the weights (tag or checkpoint
SHA-256) and the open_clip version; it keys the embedding cache (:mod:`fmri2img.embeddings.cache`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import socket
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from huggingface_hub import constants as hf_constants

from fmri2img.core.constants import DEFAULT_CLIP_MODEL, DEFAULT_PRETRAINED, INIT_SEED
from fmri2img.core.config import check_choice
from fmri2img.core.errors import ConfigError, CorruptFileError, MismatchError, MissingInputError, OfflineError
from fmri2img.core.files import sha256_file
from fmri2img.core.vocab import DEVICES
from fmri2img.embeddings.cache import l2_normalize

#: Seconds to wait for the weights host to answer before declaring the machine offline.
NETWORK_PROBE_TIMEOUT_S = 3.0

#: Host of open_clip's hub downloads (``hf_hub`` entries of its pretrained registry).
HF_HUB_HOST = "huggingface.co"

#: Distribution name of open_clip on PyPI.
OPEN_CLIP_DIST = "open_clip_torch"

_UNSAFE_TAG_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")
_TRUE = {"1", "true", "yes", "on"}


def open_clip_version() -> str:
    """Installed open_clip version (without importing it)."""
    try:
        return metadata.version(OPEN_CLIP_DIST)
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency of the package
        raise MissingInputError("open_clip is not installed; expected the open-clip-torch package.") from None


def model_identity(
    model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    random_init: bool = False,
) -> dict[str, Any]:
    """What made an embedding: architecture, weights and open_clip version.

    Exactly one of ``pretrained``, ``checkpoint`` and ``random_init`` selects the weights;
    with none of them, ``pretrained`` defaults to :data:`DEFAULT_PRETRAINED`.

    Returns
    -------
    dict
        ``model``, ``pretrained``, ``checkpoint_sha256``, ``checkpoint_file``, ``init``,
        ``open_clip_version``.
    """
    given = [name for name, value in (("pretrained", pretrained), ("checkpoint", checkpoint)) if value]
    if random_init:
        given.append("random_init")
    if len(given) > 1:
        raise ConfigError(f"Choose one source of weights, got {' and '.join(given)}.")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"Invalid model name {model!r}; expected an open_clip architecture such as 'ViT-B-32'.")
    identity: dict[str, Any] = {
        "model": model,
        "pretrained": None,
        "checkpoint_sha256": None,
        "checkpoint_file": None,
        "init": None,
        "open_clip_version": open_clip_version(),
    }
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise MissingInputError(f"Checkpoint not found: {path}; expected an open_clip state-dict file.")
        identity["checkpoint_sha256"] = sha256_file(path)
        identity["checkpoint_file"] = path.name
    elif random_init:
        identity["init"] = f"random(seed={INIT_SEED})"
    else:
        identity["pretrained"] = pretrained or DEFAULT_PRETRAINED
    return identity


def model_tag(identity: Mapping[str, Any]) -> str:
    """Cache folder name of a model identity.

    ``ViT-B-32__openai``, ``ViT-B-32__ckpt-<first 12 hex of the checkpoint SHA-256>`` or
    ``ViT-B-32__random-seed123``.
    """
    model = _UNSAFE_TAG_CHARS.sub("-", str(identity["model"])).strip("-.")
    if identity.get("checkpoint_sha256"):
        weights = f"ckpt-{identity['checkpoint_sha256'][:12]}"
    elif identity.get("init"):
        weights = f"random-seed{INIT_SEED}"
    else:
        weights = _UNSAFE_TAG_CHARS.sub("-", str(identity["pretrained"]))
    return f"{model}__{weights}"


def check_device(device: str) -> str:
    """Return ``device`` if usable; :class:`ConfigError` otherwise."""
    check_choice("device", device, DEVICES)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu.")
    return device


def hub_offline_by_env() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def network_reachable(host: str, port: int = 443, timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=probe, daemon=True)  # a hanging DNS lookup cannot block us
    worker.start()
    worker.join(timeout + 1.0)
    return bool(outcome and outcome[0])


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Turn Hugging Face's offline mode on for the block (cache only, no HTTP, no retries)."""
    previous_attr, previous_env = hf_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    hf_constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub's HTTP layer
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous_attr
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence open_clip's root-logger messages (it logs download failures before raising)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class ClipEncoder:
    """A loaded open_clip model with its image transform and tokenizer.

    Attributes
    ----------
    identity : dict
        :func:`model_identity` of the weights.
    model : torch.nn.Module
        The open_clip model, in eval mode, on ``device``.
    preprocess : callable
        PIL image -> tensor of shape (3, H, W) (open_clip's inference transform).
    tokenizer : callable
        list of str -> LongTensor of shape (n, context_length).
    device : str
    preprocessing : dict
        Description of the image and text preprocessing (stored in the cache meta).
    """

    identity: dict[str, Any]
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    preprocessing: dict[str, Any]

    @property
    def tag(self) -> str:
        return model_tag(self.identity)

    @property
    def dim(self) -> int:
        projection = getattr(self.model, "text_projection", None)
        if projection is not None and hasattr(projection, "shape"):
            return int(projection.shape[-1])
        return int(self.encode_texts(["a"]).shape[1])

    def meta(self) -> dict[str, Any]:
        """Meta of an embedding set made by this encoder (contracts, section 4)."""
        return dict(self.identity, tag=self.tag, preprocessing=self.preprocessing)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed RGB PIL images.

        Returns
        -------
        array of shape (n_images, d), float32, L2-normalised
        """
        batch = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_image(batch)
        return l2_normalize(features.float().cpu().numpy(), what="image embeddings")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts through the same model's text tower.

        Returns
        -------
        array of shape (n_texts, d), float32, L2-normalised
        """
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens)
        return l2_normalize(features.float().cpu().numpy(), what="text embeddings")


def _create(model: str, pretrained: str | None, device: str, cache_dir: str | None):
    clip_model, _, preprocess = open_clip.create_model_and_transforms(
        model, pretrained=pretrained, device=device, cache_dir=cache_dir
    )
    clip_model.eval()
    return clip_model, preprocess


def _offline_message(model: str, tag: str, cfg: Mapping[str, Any], reason: str) -> str:
    hub = str(cfg.get("hf_hub") or "").strip("/")
    where = f"https://huggingface.co/{hub}" if hub else (cfg.get("url") or "the open_clip model hub")
    return (
        f"Cannot get CLIP weights {model!r} pretrained={tag!r}: {reason}. "
        f"Download the checkpoint on a machine with network ({where}, or "
        f"open_clip.create_model({model!r}, pretrained={tag!r}) and copy the cached file) "
        f"and pass it with --checkpoint FILE (library: checkpoint=FILE)."
    )


def _create_from_hub(model: str, tag: str, device: str, cache_dir: str | None):
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        choices = ", ".join(tags) if tags else "none (use --checkpoint FILE)"
        raise ConfigError(f"Unknown pretrained tag {tag!r} for model {model!r}; choose one of {choices}.")
    url_only = not cfg.get("hf_hub")
    if not url_only or _url_cached(cfg, cache_dir):
        try:
            with _hub_offline(), _quiet_logging():
                return _create(model, tag, device, cache_dir)  # local cache only, never the network
        except RuntimeError:
            pass
    host = urlparse(cfg["url"]).hostname if url_only and cfg.get("url") else HF_HUB_HOST
    if hub_offline_by_env():
        raise OfflineError(_offline_message(model, tag, cfg, "HF_HUB_OFFLINE is set and they are not in the local cache"))
    if not network_reachable(host):
        raise OfflineError(_offline_message(model, tag, cfg, f"no network ({host} unreachable) and not in the local cache"))
    try:
        with _quiet_logging():
            return _create(model, tag, device, cache_dir)
    except RuntimeError as exc:
        raise OfflineError(_offline_message(model, tag, cfg, f"download failed ({_first_line(exc)})")) from None


def _url_cached(cfg: Mapping[str, Any], cache_dir: str | None) -> bool:
    url = cfg.get("url") or ""
    folder = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
    return bool(url) and (folder / os.path.basename(url)).is_file()


def _preprocessing(clip_model, tokenizer) -> dict[str, Any]:
    cfg = dict(getattr(clip_model.visual, "preprocess_cfg", {}) or {})
    image = {key: (list(value) if isinstance(value, tuple) else value) for key, value in cfg.items()}
    image["input"] = "RGB image (imgBrick uint8 row or PNG file), open_clip inference transform"
    return {
        "image": image,
        "text": {
            "tokenizer": type(tokenizer).__name__,
            "context_length": int(getattr(tokenizer, "context_length", 0) or 0),
        },
    }


def load_clip(
    model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str = "cpu",
    hub_cache_dir: str | os.PathLike | None = None,
    identity: Mapping[str, Any] | None = None,
) -> ClipEncoder:
    """Load an open_clip model for encoding.

    Parameters
    ----------
    model : str
        open_clip architecture (``open_clip.list_models()``), default ``ViT-B-32``.
    pretrained : str, optional
        Hub tag (``openai``...). Default when no other source is given.
    checkpoint : path, optional
        Local state-dict file of ``model`` (loaded strictly, ``weights_only=True``).
    random_init : bool
        Random weights with the project's init seed (tests only).
    device : {"cpu", "cuda"}
    hub_cache_dir : path, optional
        Where hub weights are cached (default: open_clip's / Hugging Face's default).
    identity : mapping, optional
        A :func:`model_identity` already computed for these arguments (avoids hashing the checkpoint twice).

    Raises
    ------
    ConfigError
        Unknown model, tag or device.
    OfflineError
        Hub weights are needed and there is no network.
    MismatchError, CorruptFileError
        The checkpoint does not fit the model / cannot be read.
    """
    check_device(device)
    if model not in open_clip.list_models():
        raise ConfigError(
            f"Unknown open_clip model {model!r}; choose one of open_clip.list_models() (e.g. {DEFAULT_CLIP_MODEL!r})."
        )
    identity = dict(identity) if identity is not None else model_identity(model, pretrained, checkpoint, random_init)
    cache_dir = os.fspath(hub_cache_dir) if hub_cache_dir else None
    if identity["checkpoint_sha256"]:
        try:
            with _quiet_logging(), warnings.catch_warnings():  # a bad file's warnings: the error says it all
                warnings.simplefilter("ignore")
                clip_model, preprocess = _create(model, os.fspath(checkpoint), device, None)
        except Exception as exc:  # torch / open_clip raise RuntimeError, UnpicklingError, KeyError...
            text = _first_line(exc)
            if isinstance(exc, pickle.UnpicklingError):  # torch's own text advises weights_only=False: never
                text = "it holds pickled Python objects or is not a torch file (refused by weights_only=True)"
            kind = MismatchError if re.search(r"size mismatch|Missing key|Unexpected key", str(exc)) else CorruptFileError
            raise kind(f"Checkpoint {checkpoint} does not load into open_clip model {model!r}: {text}") from None
    elif identity["init"]:
        with torch.random.fork_rng(devices=[]), _quiet_logging():
            torch.manual_seed(INIT_SEED)
            clip_model, preprocess = _create(model, None, device, None)
    else:
        clip_model, preprocess = _create_from_hub(model, identity["pretrained"], device, cache_dir)
    tokenizer = open_clip.get_tokenizer(model)
    return ClipEncoder(
        identity=identity,
        model=clip_model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=device,
        preprocessing=_preprocessing(clip_model, tokenizer),
    )
