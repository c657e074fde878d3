"""Config loading: validation, unknown keys, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from fmri2img.core.config import (check_choice, check_fraction, check_positive, from_dict, load_config, override,
                                  save_config, to_dict)
from fmri2img.core.errors import ConfigError, InputError, MissingInputError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    epochs: int = 5

    def validate(self):
        check_positive("epochs", self.epochs)


@dataclass(frozen=True)
class Outer:
    model: Literal["ridge", "mlp"] = "ridge"
    subjects: tuple[str, ...] = ("subj01",)
    fraction: float = 0.2
    train: Inner = field(default_factory=Inner)
    note: str | None = None

    def validate(self):
        check_fraction("fraction", self.fraction)


def test_from_dict_nested_and_coercion():
    cfg = from_dict(Outer, {"model": "mlp", "subjects": ["subj01", "subj02"], "train": {"lr": 1}})
    assert cfg.model == "mlp" and cfg.subjects == ("subj01", "subj02")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError, match=r"unknown key 'modle'.*allowed keys: fraction, model"):
        from_dict(Outer, {"modle": "mlp"})
    with pytest.raises(ConfigError, match=r"config.train: unknown key 'lrr'"):
        from_dict(Outer, {"train": {"lrr": 1}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": "svm"}, "choose one of 'ridge', 'mlp'"),
        ({"train": {"epochs": -1}}, "epochs=-1"),
        ({"fraction": 1.5}, r"fraction in \(0, 1\]"),
        ({"train": {"epochs": "ten"}}, "expected an integer"),
    ],
)
def test_invalid_values(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_check_choice_names_the_value_and_every_allowed_one():
    check_choice("decoder", "mlp", ("ridge", "mlp"))  # allowed: no error
    check_choice("backend", "torch", {"numpy": 1, "torch": 2})  # a mapping's keys are the choices
    with pytest.raises(ConfigError, match=r"^Unknown decoder 'svm'; choose one of 'ridge', 'mlp'\.$"):
        check_choice("decoder", "svm", ("ridge", "mlp"))
    with pytest.raises(InputError, match="Unknown test set 'train'"):
        check_choice("test set", "train", ("imagery",), error=InputError)


def test_load_config_and_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\nfraction: 0.5\n")
    cfg = load_config(Outer, path)
    assert cfg.fraction == 0.5
    cfg2 = override(cfg, fraction=None, model="ridge")
    assert cfg2.model == "ridge" and cfg2.fraction == 0.5
    assert to_dict(cfg2)["train"] == {"lr": 1e-3, "epochs": 5}
    with pytest.raises(ConfigError, match="fraction"):
        override(cfg, fraction=0.0)
    with pytest.raises(MissingInputError, match="nope.yaml"):
        load_config(Outer, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, tmp_path / "bad.yaml")


def test_save_config_round_trips_every_stage_config(tmp_path):
    from fmri2img.evaluation.scoring import EvalOptions
    from fmri2img.stages.ablation.matrix import AblationConfig
    from fmri2img.stages.adapt import AdaptConfig
    from fmri2img.stages.train import TrainConfig

    configs = [
        TrainConfig(model="mlp", train_on="mixed", holdout_fold=1, seed=4, decoder_params={"hidden_dim": 16}),
        AdaptConfig(adapter="mlp", condition=True, folds=(0, 2), rank=0),
        EvalOptions(ks=(1, 3), n_boot=10, n_perm=20, seed=9, distractors="shared1000"),
        AblationConfig(subjects=("subj02",), eval=EvalOptions(ks=(2,)), adapt=AdaptConfig(epochs=3)),
    ]
    for i, config in enumerate(configs):
        path = save_config(config, tmp_path / f"c{i}.yaml")
        assert load_config(type(config), path) == config


def test_shipped_ablation_yaml_equals_the_built_in_defaults():
    """`fmri2img ablate` outside the repository (no ablation.yaml) runs the same study."""
    from pathlib import Path

    from fmri2img.stages.ablation.matrix import AblationConfig

    shipped = Path(__file__).resolve().parents[1] / "projects" / "imagery" / "configs" / "ablation.yaml"
    assert load_config(AblationConfig, shipped) == AblationConfig()


def test_invalid_value_in_a_file_names_the_file(tmp_path):
    from fmri2img.core.errors import InputError
    from fmri2img.evaluation.scoring import EvalOptions

    path = tmp_path / "eval.yaml"
    path.write_text("n_boot: -1\n")
    with pytest.raises(InputError, match=r"eval\.yaml: Invalid n_boot=-1"):
        load_config(EvalOptions, path)
