"""Turn checkpoints (decoders, per-fold decoders, adapters, fine-tuned copies) into one
callable that decodes the trials of a test set.

Cross-validated configurations (mixed training, adapters, fine-tuning) have one model per
NSD-Imagery fold: the model of fold ``k`` never saw fold ``k``'s stimuli. A trial is decoded
by the model of its stimulus' fold. NSD shared1000 stimuli belong to no fold; they are dealt
to the fold models round-robin in sorted stimulus order (each model decodes about 1/K of
them; no ensembling, which would flatter the perception score).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fmri2img.core.errors import InputError
from fmri2img.core.vocab import CONDITION_IDS
from fmri2img.models.adapters import build_adapter
from fmri2img.models.loop import predict_module


def base_module(decoder):
    """The torch module computing ``decoder.predict`` (ridge: its linear map; torch decoders: ``module_``)."""
    if hasattr(decoder, "to_module"):
        return decoder.to_module()
    module = getattr(decoder, "module_", None)
    if module is None:
        raise InputError(f"Decoder {type(decoder).__name__} is not fitted or exposes no torch module.")
    return module


def fold_assignment(rows: pd.DataFrame, folds: Sequence[int]) -> np.ndarray:
    """Fold of each row: its NSD-Imagery fold, or round-robin over sorted stimulus ids for NSD rows.

    Returns an int array of shape (n_rows,).
    """
    folds = list(folds)
    out = np.empty(len(rows), dtype=np.int64)
    is_imagery = (rows["dataset"] == "nsdimagery").to_numpy()
    if is_imagery.any():
        out[is_imagery] = rows.loc[is_imagery, "fold"].astype(int).to_numpy()
    if (~is_imagery).any():
        ids = rows.loc[~is_imagery, "stimulus_id"].to_numpy()
        uniq = np.unique(ids)
        rank = {s: i for i, s in enumerate(uniq)}
        out[~is_imagery] = [folds[rank[s] % len(folds)] for s in ids]
    missing = sorted(set(out.tolist()) - set(folds))
    if missing:
        raise InputError(f"No model for fold {missing[0]}; this configuration has folds {folds}.")
    return out


def condition_ids(rows: pd.DataFrame) -> np.ndarray:
    """:data:`~fmri2img.core.vocab.CONDITION_IDS` of the rows: perception (NSD, NSD-Imagery
    vision) or imagery."""
    return (rows["condition"] == "imagery").to_numpy().astype(np.int64) * CONDITION_IDS["imagery"]


class Predictor:
    """Decodes trials: ``predictor(X, rows) -> float32 (n_rows, d)``.

    Parameters
    ----------
    fold_models : mapping fold -> callable ``f(X, conditions) -> (n, d)``, or None
        One model per fold (cross-validated configurations).
    single : callable ``f(X, conditions) -> (n, d)``, optional
        One model for every trial (perception-only decoders).
    """

    def __init__(self, single: Callable | None = None, fold_models: Mapping[int, Callable] | None = None):
        if (single is None) == (fold_models is None):
            raise ValueError("give exactly one of single / fold_models")
        self.single = single
        self.fold_models = dict(fold_models) if fold_models is not None else None

    @property
    def folds(self) -> list[int] | None:
        return sorted(self.fold_models) if self.fold_models is not None else None

    def __call__(self, X: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        conditions = condition_ids(rows)
        if self.single is not None:
            return np.asarray(self.single(X, conditions), dtype=np.float32)
        assigned = fold_assignment(rows, self.folds)
        out = None
        for fold in np.unique(assigned):
            sel = assigned == fold
            pred = np.asarray(self.fold_models[int(fold)](X[sel], conditions[sel]), dtype=np.float32)
            if out is None:
                out = np.empty((len(X), pred.shape[1]), dtype=np.float32)
            out[sel] = pred
        return out


def decoder_fn(decoder) -> Callable:
    """``f(X, conditions) -> decoder.predict(X)``."""
    return lambda X, conditions: decoder.predict(X)


def adapted_fn(decoder, adapter, uses_condition: bool) -> Callable:
    """``f(X, conditions) -> adapter(decoder.predict(X), condition)`` on CPU."""
    def predict(X, conditions):
        base = torch.from_numpy(np.ascontiguousarray(decoder.predict(X), dtype=np.float32))
        adapter.eval()
        with torch.no_grad():
            cond = torch.from_numpy(np.asarray(conditions, dtype=np.int64)) if uses_condition else None
            return adapter(base, condition=cond).cpu().numpy()

    return predict


def module_fn(module) -> Callable:
    """``f(X, conditions) -> module(X)`` (a fine-tuned copy of a decoder's module)."""
    module = copy.deepcopy(module).cpu()
    return lambda X, conditions: predict_module(module, X)


def adapter_predictor(decoder, states: Mapping[int, dict], meta: Mapping) -> Predictor:
    """A :class:`Predictor` applying per-fold adapters (or fine-tuned copies) to ``decoder``.

    ``states``: fold -> flat state dict, and ``meta``: the adapters' metadata.json, as
    :func:`fmri2img.models.checkpoint.load_adapters` returns them."""
    config = meta["config"]
    fold_models = {}
    for fold, state in states.items():
        if config["adapter"] == "finetune":
            module = copy.deepcopy(base_module(decoder)).cpu()
            module.load_state_dict(state)
            fold_models[fold] = module_fn(module)
        else:
            module = build_adapter(config["adapter"], meta["dim"], condition=config["condition"],
                                   hidden_dim=config["hidden_dim"], rank=config["rank"])
            module.load_state_dict(state)
            fold_models[fold] = adapted_fn(decoder, module, config["condition"])
    return Predictor(fold_models=fold_models)



class AdaptedModule(torch.nn.Module):
    """``adapter(base(x), condition)`` as one module: a decoder's module followed by one fold's
    adapter (what an adapter configuration decodes trials of ``condition`` with; logged as a model).

    Parameters
    ----------
    base : torch.nn.Module
        Maps betas of shape (n, n_voxels) to embeddings of shape (n, d).
    adapter : torch.nn.Module
        Called as ``adapter(y, condition=condition)``.
    condition : int or None
        A :data:`~fmri2img.core.vocab.CONDITION_IDS` value for condition adapters, else None.
    """

    def __init__(self, base: torch.nn.Module, adapter: torch.nn.Module, condition: int | None = None):
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.condition = condition
        # a condition adapter checks its condition ids in forward (data-dependent): torch.export
        # cannot trace it, and a failed trace prints its whole graph; log it as pickle directly
        self.export_traceable = condition is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x), condition=self.condition)
