"""Checkpoint folders: ``best.pt`` (flat ``dict[str, Tensor]``) + ``metadata.json`` (contracts §5),
and the per-fold adapters of ``fmri2img adapt`` (``adapter_best.pt`` + ``metadata.json``).

``save_checkpoint`` writes both files atomically (weights first, then the metadata that
records their SHA-256); ``load_checkpoint`` verifies the hash, loads the weights with
``torch.load(weights_only=True)`` (no arbitrary unpickling), rebuilds the decoder from the
registry with the saved params and refuses a checkpoint that does not match what it is applied
to (decoder type, voxel count, embedding set) with one line naming both values.
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from fmri2img.core.errors import CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.core.files import read_json, sha256_bytes, sha256_file, verify_sha256, write_bytes, write_json
from fmri2img.core.provenance import package_versions
from fmri2img.models.registry import make_decoder

#: File names inside a checkpoint folder (roadmap: ``checkpoints/<model>/subj01/best.pt``).
WEIGHTS_FILE = "best.pt"
METADATA_FILE = "metadata.json"
ADAPTER_FILE = "adapter_best.pt"

#: Keys of metadata.json (docs/contracts.md section 5) plus the weights' hash added here.
METADATA_KEYS = (
    "decoder", "params", "n_voxels", "dim", "embedding_set", "index_sha256",
    "split_manifest_sha256", "seeds", "train_seconds", "versions", "train_on", "weights_sha256",
)

#: Keys ``save_checkpoint`` fills itself when the caller leaves them out.
_AUTO_KEYS = ("decoder", "params", "versions", "weights_sha256")


#: Types of the metadata entries :func:`load_checkpoint` uses (a damaged file is refused, not half-used).
METADATA_TYPES = {"decoder": str, "params": dict, "n_voxels": int, "embedding_set": str, "weights_sha256": str,
                  "dim": int}


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _check_state(state: Any, source: str) -> dict:
    if not isinstance(state, dict) or not state:
        raise CorruptFileError(f"{source} is not a flat dict of tensors (got {type(state).__name__}).")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CorruptFileError(
                f"{source} is not a flat dict of tensors: entry {key!r} is a {type(value).__name__}."
            )
    return state


def save_checkpoint(decoder: Any, out_dir: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write ``best.pt`` and ``metadata.json`` for a fitted decoder into ``out_dir``.

    Parameters
    ----------
    decoder : BaseDecoder
        Fitted decoder exposing ``name``, ``get_params()`` and ``state_dict()``.
    out_dir : path
        Checkpoint folder (created if needed).
    metadata : dict
        The contract's keys ``n_voxels, dim, embedding_set, index_sha256,
        split_manifest_sha256, seeds, train_seconds, train_on`` (others allowed).
        ``decoder``, ``params`` and ``versions`` are filled from the decoder / environment when
        absent; ``weights_sha256`` is always computed here.

    Returns
    -------
    Path of the written ``best.pt``.
    """
    meta = dict(metadata)
    meta.setdefault("decoder", decoder.name)
    if meta["decoder"] != decoder.name:
        raise MismatchError(f"metadata says decoder {meta['decoder']!r} but the decoder is {decoder.name!r}.")
    meta.setdefault("params", decoder.get_params())
    if "versions" not in meta:
        meta["versions"] = package_versions()
    missing = [k for k in METADATA_KEYS if k not in meta and k not in _AUTO_KEYS]
    if missing:
        raise InputError(f"Checkpoint metadata lacks {', '.join(missing)}; expected the keys of docs/contracts.md §5.")
    state = _check_state(decoder.state_dict(), f"{type(decoder).__name__}.state_dict()")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    weights = Path(out_dir) / WEIGHTS_FILE
    meta["weights_sha256"] = save_state(weights, state)
    write_json(Path(out_dir) / METADATA_FILE, meta)
    return weights


def save_state(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> str:
    """Write a flat state dict atomically with ``torch.save``; return the file's SHA-256.

    Serialised in memory: torch.save names the zip's root folder after the target file, so saving
    to a random temporary name would make the bytes (and the hash) differ per run."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    write_bytes(path, data)
    return sha256_bytes(data)


def load_state(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a flat state dict with ``torch.load(weights_only=True)`` (no arbitrary unpickling);
    raise :class:`CorruptFileError` naming ``what`` was expected otherwise."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 38": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - bytes that are no torch file raise IndexError, KeyError, ...
        if isinstance(exc, pickle.UnpicklingError):  # torch's own text advises weights_only=False: never
            first = "it holds pickled Python objects or is not a torch file (refused by weights_only=True)"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"Cannot load {path} as a tensor state dict: {first}; expected {what}.") from None
    return _check_state(state, str(path))


def load_checkpoint(
    path: str | os.PathLike,
    expected_decoder: str | None = None,
    expected_n_voxels: int | None = None,
    expected_embedding_set: str | None = None,
    device: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint folder (or its ``best.pt``) and rebuild the fitted decoder.

    Parameters
    ----------
    path : path
        Checkpoint folder or its ``best.pt``; ``metadata.json`` must sit next to the weights.
    expected_decoder, expected_n_voxels, expected_embedding_set : optional
        What the checkpoint is applied to; any difference raises :class:`MismatchError`.
    device : str, optional
        Overrides the saved ``device`` param (e.g. load a CUDA-trained model on 'cpu').

    Returns
    -------
    (decoder, metadata)

    Raises
    ------
    MissingInputError, CorruptFileError (unreadable or non-tensor weights, bad metadata),
    ChecksumError (weights changed since saving), MismatchError.
    """
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    meta_path = weights.parent / METADATA_FILE
    if not weights.is_file():
        raise MissingInputError(f"Checkpoint weights not found: {weights}; expected a {WEIGHTS_FILE} file.")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{meta_path} is not a JSON object; expected checkpoint metadata.")
    missing = [k for k in ("decoder", "params", "n_voxels", "embedding_set", "weights_sha256") if k not in meta]
    if missing:
        raise CorruptFileError(f"{meta_path} lacks {', '.join(missing)}; expected checkpoint metadata (contracts §5).")
    wrong = [key for key, kind in METADATA_TYPES.items() if key in meta and not _is(meta[key], kind)]
    if wrong:
        raise CorruptFileError(f"{meta_path}: {wrong[0]} is {meta[wrong[0]]!r}; expected a "
                               f"{METADATA_TYPES[wrong[0]].__name__} (checkpoint metadata, contracts §5).")
    checks = (
        ("decoder", expected_decoder, meta["decoder"]),
        ("voxel count", expected_n_voxels, meta["n_voxels"]),
        ("embedding set", expected_embedding_set, meta["embedding_set"]),
    )
    for what, expected, actual in checks:
        if expected is not None and expected != actual:
            raise MismatchError(f"Checkpoint {weights.parent} has {what} {actual!r}, expected {expected!r}.")
    verify_sha256(weights, meta["weights_sha256"])
    state = load_state(weights, "a flat dict of tensors (torch.save)")
    params = dict(meta["params"])
    if device is not None and "device" in params:
        params["device"] = device
    try:
        decoder = make_decoder(meta["decoder"], **params)
    except (TypeError, ValueError) as exc:  # unknown or mistyped params (InputError/ConfigError are ValueErrors)
        raise CorruptFileError(f"{meta_path}: params do not build a {meta['decoder']} decoder: {exc}") from None
    kwargs = {}
    signature = inspect.signature(decoder.load_state_dict).parameters
    if "n_features" in signature:
        kwargs["n_features"] = meta["n_voxels"]
    if "n_targets" in signature and "dim" in meta:
        kwargs["n_targets"] = meta["dim"]
    try:
        decoder.load_state_dict(state, **kwargs)
    except (KeyError, RuntimeError, ValueError) as exc:  # InputError is a ValueError
        raise CorruptFileError(f"Cannot load {weights} into a {meta['decoder']} decoder: {exc}") from None
    return decoder, meta


def load_adapters(path: str | os.PathLike, base_checkpoint: str | os.PathLike,
                  expected_type: str | None = None) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, Any]]:
    """Load ``adapter_best.pt`` (+ metadata.json beside it) trained on ``base_checkpoint``.

    Returns ``(state_by_fold, metadata)``; ``finetune`` entries are state dicts of a copy of the
    base module. Refuses an adapter trained on another base (by SHA-256) or of another type.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise MissingInputError(f"Adapter checkpoint not found: {path}; expected {ADAPTER_FILE} from `fmri2img adapt`.")
    meta = read_json(path.parent / METADATA_FILE)
    if expected_type is not None and meta.get("adapter") != expected_type:
        raise MismatchError(f"{path} is a '{meta.get('adapter')}' adapter, not '{expected_type}'.")
    base_path = Path(base_checkpoint)
    base_weights = base_path if base_path.is_file() else base_path / WEIGHTS_FILE
    actual = sha256_file(base_weights)
    if actual != meta.get("base_checkpoint_sha256"):
        raise MismatchError(f"Adapter {path} was trained on another base checkpoint "
                            f"(SHA-256 {str(meta.get('base_checkpoint_sha256'))[:12]}...), not {base_weights} "
                            f"({actual[:12]}...).")
    state = load_state(path, "a flat state dict of tensors from `fmri2img adapt`")
    by_fold: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        head, _, name = key.partition(".")
        by_fold.setdefault(int(head[4:]), {})[name] = tensor
    return by_fold, meta
