"""Feature networks of the field's reconstruction battery, loaded from local weight files.

AlexNet (layers 2 and 5), InceptionV3 (pool), CLIP (image embedding), EfficientNet-B1 (pool) and
SwAV ResNet-50 (pool), with the preprocessing of MindEye2's ``final_evaluations.ipynb`` (the field's
reference; sources in ``docs/field_metrics_notes.md``): the float image in [0, 1] resized (bilinear,
antialiased) to a fixed side, normalised, then the named node's output flattened. The scores
computed from these features are in :mod:`fmri2img.evaluation.field_metrics`.

Nothing is downloaded: each network is built with ``weights=None`` and loaded from the file named in
:class:`FeatureWeights`. A network whose file is not configured or absent is *reported*, not dropped
(:func:`battery_features` returns the reason in place of its features); a file that exists but
cannot be read raises :class:`~fmri2img.core.errors.CorruptFileError`, one that does not fit the
architecture :class:`~fmri2img.core.errors.MismatchError`.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from fmri2img.core.constants import DEFAULT_EMBED_BATCH_SIZE, INIT_SEED
from fmri2img.core.config import check_choice
from fmri2img.core.errors import ConfigError, CorruptFileError, MismatchError, MissingInputError
from fmri2img.data.stimuli import check_images
from fmri2img.embeddings.clip import check_device, load_clip

#: ImageNet normalisation of the torchvision networks (MindEyeV2 final_evaluations.ipynb; the weights'
#: own ``transforms()``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: CLIP architecture of the field's CLIP two-way score: OpenAI ViT-L/14 (MindEyeV2 final_evaluations.ipynb
#: and Brain-Diffuser scripts/eval_extract_features.py, ``clip.load("ViT-L/14")``), as open_clip names it.
FIELD_CLIP_MODEL = "ViT-L-14"


@dataclass(frozen=True)
class NetworkSpec:
    """How the field reads one network.

    Attributes
    ----------
    nodes : tuple of (metric, node) pairs
        torchvision graph node (``create_feature_extractor`` name) whose output is each metric's
        features; ``"encode_image"`` for CLIP's image embedding.
    resize : int or None
        Side of the network input (bilinear resize of the whole image, no crop); None: the CLIP
        model's own image size.
    mean, std : tuple of 3 floats or None
        Input normalisation; None: the CLIP model's own.
    usual_file : str
        File name of the published weights (messages only).
    """

    nodes: tuple[tuple[str, str], ...]
    resize: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    usual_file: str


#: The battery's networks (MindEyeV2 src/final_evaluations.ipynb, cells "AlexNet", "InceptionV3", "CLIP",
#: "EffNet-B", "SwAV"): AlexNet ``features.4`` / ``features.11`` are the ReLUs after the 2nd and 5th conv;
#: resize sides are each weight set's ``transforms()`` resize without its centre crop (Inception 342,
#: EfficientNet-B1 255) or 256 / 224 for AlexNet / SwAV.
FIELD_NETWORKS: dict[str, NetworkSpec] = {
    "alexnet": NetworkSpec((("alexnet2", "features.4"), ("alexnet5", "features.11")), 256, IMAGENET_MEAN,
                           IMAGENET_STD, "alexnet-owt-7be5be79.pth (torchvision AlexNet_Weights.IMAGENET1K_V1)"),
    "inception_v3": NetworkSpec((("inception_v3", "avgpool"),), 342, IMAGENET_MEAN, IMAGENET_STD,
                                "inception_v3_google-0cc3c7bd.pth (torchvision Inception_V3_Weights.IMAGENET1K_V1)"),
    "clip": NetworkSpec((("clip", "encode_image"),), None, None, None,
                        "an open_clip state dict of ViT-L-14 with OpenAI's weights"),
    "efficientnet_b1": NetworkSpec((("efficientnet_b1", "avgpool"),), 255, IMAGENET_MEAN, IMAGENET_STD,
                                   "efficientnet_b1-c27df63c.pth (torchvision EfficientNet_B1_Weights.IMAGENET1K_V2)"),
    "swav": NetworkSpec((("swav", "avgpool"),), 224, IMAGENET_MEAN, IMAGENET_STD,
                        "swav_800ep_pretrain.pth.tar (facebookresearch/swav hub model 'resnet50')"),
}

#: Metric name -> network name.
METRIC_NETWORK = {metric: net for net, spec in FIELD_NETWORKS.items() for metric, _ in spec.nodes}


@dataclass(frozen=True)
class FeatureWeights:
    """Local weight files of the battery's networks (None: not configured, reported as not computed).

    Attributes
    ----------
    alexnet, inception_v3, efficientnet_b1 : str or None
        torchvision state-dict files of those architectures.
    swav : str or None
        SwAV's ResNet-50 checkpoint (``module.``-prefixed keys, projection head and prototypes
        allowed; the classifier ``fc`` is not used).
    clip : str or None
        open_clip state dict of ``clip_model`` (as ``fmri2img embed --checkpoint``).
    clip_model : str
        open_clip architecture of ``clip`` (the field: ``ViT-L-14``).
    random_init : bool
        Tests only: every network with random weights (seed :data:`~fmri2img.core.constants.INIT_SEED`),
        files ignored. Numbers made so say ``random(seed=...)`` in :attr:`FeatureNetwork.weights`.
    """

    alexnet: str | None = None
    inception_v3: str | None = None
    clip: str | None = None
    efficientnet_b1: str | None = None
    swav: str | None = None
    clip_model: str = FIELD_CLIP_MODEL
    random_init: bool = False

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> FeatureWeights:
        """Build from a config mapping; unknown keys and non-string paths are refused (ConfigError)."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise ConfigError(f"Unknown feature weights key(s) {unknown}; allowed: {', '.join(allowed)}.")
        for key in FIELD_NETWORKS:
            value = mapping.get(key)
            if value is not None and not isinstance(value, (str, Path)):
                raise ConfigError(f"Invalid feature weights {key}={value!r}; expected a file path or null.")
        if not isinstance(mapping.get("clip_model", FIELD_CLIP_MODEL), str):
            raise ConfigError(f"Invalid clip_model={mapping['clip_model']!r}; expected an open_clip model name.")
        if not isinstance(mapping.get("random_init", False), bool):
            raise ConfigError(f"Invalid random_init={mapping['random_init']!r}; expected true or false.")
        return cls(**{k: (str(v) if isinstance(v, Path) else v) for k, v in mapping.items()})

    def missing_reason(self, network: str) -> str | None:
        """Why ``network`` cannot be computed (``"weights for X not found at PATH"``), or None."""
        if self.random_init:
            return None
        path = getattr(self, network)
        if path is None:
            return f"no weights configured for {network} (feature weights key '{network}')"
        if not Path(path).is_file():
            return f"weights for {network} not found at {path}"
        return None


# --------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_state_dict(path: str, network: str) -> dict[str, Any]:
    """Tensors of a weights file (``torch.load(weights_only=True)``); CorruptFileError if unreadable."""

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CorruptFileError(f"Weights file {path} for {network} is not a torch state dict (or holds pickled "
                               "Python objects, refused by weights_only=True).") from None
    except Exception as exc:  # truncated zip, bad magic number...: torch raises RuntimeError, EOFError, ...
        raise CorruptFileError(f"Weights file {path} for {network} cannot be read: {_first_line(exc)}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptFileError(f"Weights file {path} for {network} is not a state dict of tensors.")
    return dict(obj)


def _build_torchvision(network: str, random_init: bool) -> Any:
    """The torchvision architecture of ``network`` with ``weights=None`` (Inception as its pretrained
    weights expect it: ``transform_input=True``, as ``inception_v3(weights=...)`` sets; its own
    truncated-normal initialisation only for random weights)."""

    if network == "alexnet":
        return models.alexnet(weights=None)
    if network == "inception_v3":
        return models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=random_init)
    if network == "efficientnet_b1":
        return models.efficientnet_b1(weights=None)
    return models.resnet50(weights=None)  # swav


def _load_into(model: Any, state: dict[str, Any], path: str, network: str) -> None:
    """Load ``state`` strictly (SwAV: ``module.`` stripped, head keys dropped, ``fc`` left random)."""
    expected = model.state_dict()
    if network == "swav":
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k in expected}
        state.update({k: v for k, v in expected.items() if k.startswith("fc.")})
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[0]!r})" for what, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("keys of another shape", shapes)) if v]
        raise MismatchError(f"Weights file {path} does not fit the {network} architecture: {'; '.join(parts)}; "
                            f"expected {FIELD_NETWORKS[network].usual_file}.")
    model.load_state_dict(state, strict=True)


@dataclass
class FeatureNetwork:
    """One loaded network of the battery.

    Attributes
    ----------
    network : str
        Key of :data:`FIELD_NETWORKS`.
    forward : callable
        Normalised float tensor (b, 3, s, s) -> dict metric -> tensor (b, ...).
    resize : int
    mean, std : tuple of 3 floats
    device : str
    weights : str
        The weights file, or ``random(seed=...)``.
    """

    network: str
    forward: Callable[[Any], dict[str, Any]]
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str
    weights: str

    def extract(self, images: Any, batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
                progress: bool = False) -> dict[str, np.ndarray]:
        """Features of a batch of images.

        Parameters
        ----------
        images : uint8 or float array of shape (n, H, H, 3), floats in [0, 1]
        batch_size : int
        progress : bool

        Returns
        -------
        dict metric -> float32 array of shape (n, d_metric), the node's output flattened.
        """


        arr = check_images(images, "images")
        chunks: dict[str, list[np.ndarray]] = {}
        starts = range(0, len(arr), max(1, int(batch_size)))
        for start in tqdm(starts, desc=self.network, unit="batch", disable=not progress):
            x = torch.from_numpy(np.ascontiguousarray(arr[start:start + batch_size])).permute(0, 3, 1, 2)
            x = x.float() / 255.0 if arr.dtype == np.uint8 else x.float()
            x = TF.resize(x, [self.resize, self.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
            x = TF.normalize(x, list(self.mean), list(self.std)).to(self.device)
            with torch.inference_mode():
                out = self.forward(x)
            for metric, value in out.items():
                chunks.setdefault(metric, []).append(value.float().flatten(1).cpu().numpy())
        return {metric: np.concatenate(parts) for metric, parts in chunks.items()}


def load_network(network: str, weights: FeatureWeights, device: str = "cpu") -> FeatureNetwork:
    """Build one battery network and load its local weights.

    Parameters
    ----------
    network : str
        Key of :data:`FIELD_NETWORKS`.
    weights : FeatureWeights
    device : {"cpu", "cuda"}

    Raises
    ------
    ConfigError
        Unknown network or device.
    MissingInputError
        The weights are not configured or not found (:meth:`FeatureWeights.missing_reason`).
    CorruptFileError, MismatchError
        The file cannot be read / does not fit the architecture.
    """

    check_choice("feature network", network, FIELD_NETWORKS)
    check_device(device)
    reason = weights.missing_reason(network)
    if reason:
        raise MissingInputError(f"Cannot load {network}: {reason}; expected {FIELD_NETWORKS[network].usual_file}.")
    spec = FIELD_NETWORKS[network]
    label = f"random(seed={INIT_SEED})" if weights.random_init else str(getattr(weights, network))
    if network == "clip":
        return _load_clip_network(weights, device, label)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = _build_torchvision(network, weights.random_init)
    if not weights.random_init:
        path = str(getattr(weights, network))
        _load_into(model, _read_state_dict(path, network), path, network)
    model.eval().requires_grad_(False)
    with warnings.catch_warnings():  # torchvision notes that eval-mode nodes are a subset of train-mode ones
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
        extractor = create_feature_extractor(model, return_nodes={node: metric for metric, node in spec.nodes})
    extractor = extractor.to(device)
    extractor.eval()
    return FeatureNetwork(network, extractor, spec.resize, spec.mean, spec.std, device, label)


def _load_clip_network(weights: FeatureWeights, device: str, label: str) -> FeatureNetwork:
    """CLIP's image tower through :func:`fmri2img.embeddings.clip.load_clip` (same checks and errors)."""

    encoder = load_clip(model=weights.clip_model, checkpoint=None if weights.random_init else weights.clip,
                        random_init=weights.random_init, device=device)
    cfg = getattr(encoder.model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", encoder.model.visual.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    model = encoder.model

    def forward(x: Any) -> dict[str, Any]:
        return {"clip": model.encode_image(x)}

    return FeatureNetwork("clip", forward, size, mean, std, device, label)


# --------------------------------------------------------------------------- the battery


def battery_features(recons: Any, truths: Any, weights: FeatureWeights, *, device: str = "cpu",
                     batch_size: int = DEFAULT_EMBED_BATCH_SIZE, progress: bool = False) -> dict[str, Any]:
    """Features of reconstructions and ground truths for every feature metric of the battery.

    Networks are loaded one at a time (memory), each applied to both image sets.

    Parameters
    ----------
    recons, truths : uint8 or float array of shape (n, H, H, 3)
    weights : FeatureWeights
    device : {"cpu", "cuda"}
    batch_size : int
    progress : bool

    Returns
    -------
    dict metric -> (recon_features, truth_features), float32 arrays of shape (n, d_metric), or a
        str: why the metric is not computed (``"weights for alexnet not found at PATH"``). The input
        of :func:`fmri2img.evaluation.field_metrics.score_battery`.
    """
    return battery_features_sets([(recons, truths)], weights, device=device, batch_size=batch_size,
                                 progress=progress)[0]


def battery_features_sets(pairs: Sequence[tuple[Any, Any]], weights: FeatureWeights, *, device: str = "cpu",
                          batch_size: int = DEFAULT_EMBED_BATCH_SIZE, progress: bool = False) -> list[dict[str, Any]]:
    """:func:`battery_features` of several (reconstructions, ground truths) sets, each network loaded once.

    Parameters
    ----------
    pairs : sequence of (recons, truths), uint8 or float arrays of shape (n_k, H_k, H_k, 3)
        Image sizes may differ between sets (each network resizes its input).

    Returns
    -------
    list of dicts, one per pair, as :func:`battery_features`.
    """
    for recons, truths in pairs:
        check_images(recons, "reconstructions")
        check_images(truths, "ground-truth images")
    out: list[dict[str, Any]] = [{} for _ in pairs]
    for network, spec in FIELD_NETWORKS.items():
        reason = weights.missing_reason(network)
        if reason:
            for entry in out:
                entry.update({metric: reason for metric, _ in spec.nodes})
            continue
        net = load_network(network, weights, device)
        for entry, (recons, truths) in zip(out, pairs):
            rec = net.extract(recons, batch_size, progress)
            gt = net.extract(truths, batch_size, progress)
            entry.update({metric: (rec[metric], gt[metric]) for metric, _ in spec.nodes})
        del net
    return out


__all__ = [
    "FIELD_CLIP_MODEL", "FIELD_NETWORKS", "IMAGENET_MEAN", "IMAGENET_STD", "METRIC_NETWORK", "FeatureNetwork",
    "FeatureWeights", "NetworkSpec", "battery_features", "battery_features_sets", "load_network",
]
