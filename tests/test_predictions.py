"""The predictions folder contract (fmri2img.data.predictions): round trip and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fmri2img.core.errors import CorruptFileError, InputError, MissingInputError
from fmri2img.data import predictions as P


def _png(path, size=(8, 8), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_round_trip(tmp_path):
    emb = {"shared1000": (["nsd-00001", "nsd-00002"], np.arange(6, dtype=np.float32).reshape(2, 3)),
           "imagery": (["img-A-hbar"], np.ones((1, 3), np.float32))}
    P.write_embeddings(tmp_path, emb)
    image = np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    P.write_image(tmp_path, "imagery", "img-A-hbar", image)
    got = P.read_predictions(tmp_path)
    assert got.test_sets == ["shared1000", "imagery"]
    assert got.embeddings["shared1000"][0] == ["nsd-00001", "nsd-00002"]
    np.testing.assert_array_equal(got.embeddings["shared1000"][1], emb["shared1000"][1])
    np.testing.assert_array_equal(P.load_images([got.images["imagery"]["img-A-hbar"]])[0], image)
    alone = P.read_predictions(tmp_path / P.EMBEDDINGS_FILE)  # an NPZ file: its embeddings only
    assert alone.test_sets == ["shared1000", "imagery"] and not alone.images


def test_refusals(tmp_path):
    with pytest.raises(MissingInputError, match="not found"):
        P.read_predictions(tmp_path / "absent")
    with pytest.raises(MissingInputError, match="holds no predictions"):
        P.read_predictions(tmp_path)
    np.savez(tmp_path / P.EMBEDDINGS_FILE, stimulus_id=np.array(["a", "a"]), test_set=np.array(["imagery"] * 2),
             embedding=np.ones((2, 3)))
    with pytest.raises(InputError, match="appears twice"):
        P.read_predictions(tmp_path)
    np.savez(tmp_path / P.EMBEDDINGS_FILE, stimulus_id=np.array(["a"]), test_set=np.array(["train"]),
             embedding=np.ones((1, 3)))
    with pytest.raises(InputError, match="Unknown test set 'train'"):
        P.read_predictions(tmp_path)
    np.savez(tmp_path / P.EMBEDDINGS_FILE, stimulus_id=np.array(["a"]), embedding=np.ones((1, 3)))
    with pytest.raises(InputError, match="lacks"):
        P.read_predictions(tmp_path)
    (tmp_path / P.EMBEDDINGS_FILE).write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="embeddings.npz"):
        P.read_predictions(tmp_path)
    (tmp_path / P.EMBEDDINGS_FILE).unlink()
    (tmp_path / "images" / "imagery").mkdir(parents=True)
    (tmp_path / "images" / "imagery" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt"):
        P.read_predictions(tmp_path)


def test_images_must_be_square_and_of_one_size(tmp_path):
    _png(tmp_path / "a.png", (8, 8))
    _png(tmp_path / "b.png", (6, 6))
    _png(tmp_path / "c.png", (8, 6))
    with pytest.raises(InputError, match="expected"):
        P.load_images([tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(InputError, match="square RGB"):
        P.load_images([tmp_path / "c.png"])
    (tmp_path / "d.png").write_bytes(b"not a png")
    with pytest.raises(CorruptFileError, match="d.png"):
        P.load_images([tmp_path / "d.png"])


def test_check_ids_names_an_unknown_id():
    P.check_ids(["a"], ["a", "b"], "imagery", "x")
    with pytest.raises(InputError, match="'z'"):
        P.check_ids(["a", "z"], ["a", "b"], "imagery", "x")
