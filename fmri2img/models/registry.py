"""One registry of decoders and adapters: adding one touches its module and one entry here."""

from __future__ import annotations

import importlib
from typing import Any

from fmri2img.core.config import check_choice
from fmri2img.core.errors import InputError

#: Decoder name (:data:`~fmri2img.core.vocab.DECODERS`) -> "module:Class" (imported on first use:
#: a ridge fit on CPU never imports torch).
DECODER_CLASSES = {
    "ridge": "fmri2img.models.ridge:RidgeDecoder",
    "mlp": "fmri2img.models.mlp:MLPDecoder",
    "two_stage": "fmri2img.models.two_stage:TwoStageDecoder",
}

#: Adapter name (:data:`~fmri2img.core.vocab.ADAPTER_MODULES`) -> "module:Class".
ADAPTER_CLASSES = {
    "linear": "fmri2img.models.adapters:LinearAdapter",
    "mlp": "fmri2img.models.adapters:MLPAdapter",
}


def _load(table: dict[str, str], name: str, kind: str) -> type:
    check_choice(kind, name, table, error=InputError)
    module, cls = table[name].split(":")
    return getattr(importlib.import_module(module), cls)


def decoder_class(name: str) -> type:
    return _load(DECODER_CLASSES, name, "decoder")


def make_decoder(name: str, **params: Any):
    """Instantiate decoder ``name`` with ``params`` (unknown names/params raise InputError)."""
    cls = decoder_class(name)
    allowed = cls._param_names()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(f"Unknown parameter {unknown[0]!r} for decoder {name!r}; allowed: {', '.join(allowed)}.")
    return cls(**params)


def adapter_class(name: str) -> type:
    return _load(ADAPTER_CLASSES, name, "adapter")
