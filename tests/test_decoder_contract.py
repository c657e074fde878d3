"""One contract, every registered decoder (in the spirit of sklearn's parametrize_with_checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmri2img.core.errors import InputError
from fmri2img.core.vocab import DECODERS
from fmri2img.models.checkpoint import load_checkpoint, save_checkpoint
from fmri2img.models.registry import make_decoder

SMALL = {"ridge": {}, "mlp": {"epochs": 3, "hidden_dim": 16, "progress": False},
         "two_stage": {"epochs": 3, "n_components": 8, "hidden_dim": 16, "latent_dim": 8, "progress": False}}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 40)).astype(np.float32)
    W = rng.normal(size=(40, 12)).astype(np.float32)
    Y = X @ W + 0.1 * rng.normal(size=(120, 12)).astype(np.float32)
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    return X, Y


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_contract(name, data, tmp_path):
    torch.set_num_threads(1)
    X, Y = data
    dec = make_decoder(name, **SMALL[name])
    params = dec.get_params()
    assert set(params) == set(type(dec)._param_names())
    assert not [k for k in vars(dec) if k.endswith("_") and not k.startswith("_")], "__init__ must only store params"
    with pytest.raises(InputError, match="not fitted"):
        dec.predict(X)
    assert dec.fit(X[:100], Y[:100], X_val=X[100:], Y_val=Y[100:]) is dec
    assert dec.get_params() == params  # fit never changes parameters
    pred = dec.predict(X)
    assert pred.shape == Y.shape and pred.dtype == np.float32
    with pytest.raises(InputError):
        dec.predict(X[:, :5])  # wrong voxel count
    with pytest.raises(InputError):
        dec.fit(X[:10], Y[:9])
    # every decoder accepts stats_rows (the perception rows of mixed training); all rows = default
    every = make_decoder(name, **SMALL[name]).fit(X[:100], Y[:100], X_val=X[100:], Y_val=Y[100:],
                                                  stats_rows=np.ones(100, dtype=bool))
    np.testing.assert_array_equal(every.predict(X), pred)
    meta = {"n_voxels": 40, "dim": 12, "embedding_set": "unit", "index_sha256": None,
            "split_manifest_sha256": None, "seeds": {"split": 42, "init": 123}, "train_seconds": 0.0,
            "train_on": "perception"}
    save_checkpoint(dec, tmp_path, meta)
    loaded, lmeta = load_checkpoint(tmp_path / "best.pt", expected_decoder=name, expected_n_voxels=40)
    np.testing.assert_array_equal(loaded.predict(X), pred)
    assert set(lmeta["params"]) == set(params) and lmeta["decoder"] == name


def test_unknown_decoder_names_allowed():
    with pytest.raises(InputError, match="choose one of 'ridge', 'mlp', 'two_stage'"):
        make_decoder("svm")
    with pytest.raises(InputError, match="Unknown parameter 'bogus'"):
        make_decoder("ridge", bogus=1)
