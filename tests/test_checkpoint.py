"""Checkpoint round trip, integrity and mismatch refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fmri2img.core.errors import ChecksumError, CorruptFileError, InputError, MismatchError, MissingInputError
from fmri2img.core.files import sha256_file
from fmri2img.models.checkpoint import METADATA_FILE, METADATA_KEYS, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from fmri2img.models.ridge import RidgeDecoder

torch.set_num_threads(1)


def _meta(n_voxels=30, dim=4):
    return {
        "n_voxels": n_voxels, "dim": dim, "embedding_set": "synthetic-truth", "index_sha256": "a" * 64,
        "split_manifest_sha256": "b" * 64, "seeds": {"split": 42, "init": 123}, "train_seconds": 0.5,
        "train_on": "perception",
    }


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((25, 30)).astype(np.float32)
    Y = rng.standard_normal((25, 4)).astype(np.float32)
    return RidgeDecoder(alphas=[1.0, 10.0, 100.0], alpha_per_target=False).fit(X, Y), X


def test_round_trip(tmp_path, fitted):
    model, X = fitted
    weights = save_checkpoint(model, tmp_path / "ckpt", _meta())
    assert weights == tmp_path / "ckpt" / WEIGHTS_FILE
    meta = json.loads((tmp_path / "ckpt" / METADATA_FILE).read_text())
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["decoder"] == "ridge" and meta["weights_sha256"] == sha256_file(weights)
    state = torch.load(weights, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    for target in (tmp_path / "ckpt", weights):
        loaded, meta2 = load_checkpoint(target, expected_decoder="ridge", expected_n_voxels=30,
                                        expected_embedding_set="synthetic-truth")
        assert isinstance(loaded, RidgeDecoder)
        assert loaded.get_params() == {**model.get_params(), "alphas": [1.0, 10.0, 100.0]}
        assert loaded.predict(X).tobytes() == model.predict(X).tobytes()
        assert meta2 == meta


def test_save_is_deterministic(tmp_path, fitted):
    model, _ = fitted
    a = save_checkpoint(model, tmp_path / "a", _meta())
    b = save_checkpoint(model, tmp_path / "b", _meta())
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / METADATA_FILE).read_bytes() == (tmp_path / "b" / METADATA_FILE).read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expected_decoder": "mlp"}, "decoder 'ridge', expected 'mlp'"),
        ({"expected_n_voxels": 31}, "voxel count 30, expected 31"),
        ({"expected_embedding_set": "clip-vit-l14"}, "embedding set 'synthetic-truth', expected 'clip-vit-l14'"),
    ],
)
def test_mismatch_refused(tmp_path, fitted, kwargs, match):
    save_checkpoint(fitted[0], tmp_path, _meta())
    with pytest.raises(MismatchError, match=match) as info:
        load_checkpoint(tmp_path, **kwargs)
    assert "\n" not in str(info.value)


def test_tampered_weights_refused(tmp_path, fitted):
    weights = save_checkpoint(fitted[0], tmp_path, _meta())
    state = torch.load(weights, weights_only=True)
    state["coef"] += 1.0
    torch.save(state, weights)
    with pytest.raises(ChecksumError):
        load_checkpoint(tmp_path)


def _write_with_valid_hash(tmp_path, obj):
    weights = tmp_path / WEIGHTS_FILE
    if isinstance(obj, bytes):
        weights.write_bytes(obj)
    else:
        torch.save(obj, weights)
    meta = {**_meta(), "decoder": "ridge", "params": {}, "versions": {}, "weights_sha256": sha256_file(weights)}
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    return weights


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.parametrize(
    "obj",
    [
        {"coef": _Evil()},                                # pickled object: refused by weights_only
        {"nested": {"coef": torch.zeros(2)}},             # not flat
        [torch.zeros(2)],                                 # not a dict
        b"not a torch file",                              # not a zip archive
    ],
)
def test_non_state_dict_refused(tmp_path, obj):
    _write_with_valid_hash(tmp_path, obj)
    with pytest.raises(CorruptFileError):
        load_checkpoint(tmp_path)


def test_inconsistent_shapes_refused(tmp_path, fitted):
    save_checkpoint(fitted[0], tmp_path, _meta(n_voxels=31))
    with pytest.raises(CorruptFileError, match="31"):
        load_checkpoint(tmp_path)


def test_missing_files_and_metadata(tmp_path, fitted):
    with pytest.raises(MissingInputError):
        load_checkpoint(tmp_path / "nowhere")
    meta = _meta()
    del meta["index_sha256"]
    with pytest.raises(InputError, match="index_sha256"):
        save_checkpoint(fitted[0], tmp_path / "x", meta)
    with pytest.raises(MismatchError):
        save_checkpoint(fitted[0], tmp_path / "y", {**_meta(), "decoder": "mlp"})


def test_generic_decoder(tmp_path, monkeypatch):
    """Any BaseDecoder with state_dict/load_state_dict works (stands in for the torch decoders)."""
    from fmri2img.models import registry
    from fmri2img.models.base import BaseDecoder

    class TinyDecoder(BaseDecoder):
        name = "tiny"

        def __init__(self, width=3):
            self.width = width

        def state_dict(self):
            return {"w": self.w_.clone()}

        def load_state_dict(self, state):
            self.w_ = state["w"]
            return self

    monkeypatch.setitem(registry.DECODER_CLASSES, "tiny", f"{__name__}:TinyDecoder")
    monkeypatch.setattr(f"{__name__}.TinyDecoder", TinyDecoder, raising=False)
    dec = TinyDecoder(width=5)
    dec.w_ = torch.arange(5.0)
    save_checkpoint(dec, tmp_path, _meta())
    loaded, meta = load_checkpoint(tmp_path, expected_decoder="tiny")
    assert loaded.width == 5 and torch.equal(loaded.w_, dec.w_)
    assert meta["params"] == {"width": 5}
