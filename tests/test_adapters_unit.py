"""Adapters: identity at initialisation, gradients, recovery of a planted distortion, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmri2img.core.errors import InputError
from fmri2img.core.vocab import CONDITION_IDS
from fmri2img.data.trials import Dataset
from fmri2img.models import loop, losses
from fmri2img.models.adapters import LinearAdapter, MLPAdapter
from fmri2img.models.loop import count_parameters
from fmri2img.models.registry import adapter_class

torch.set_num_threads(1)

DIM = 16

#: Adapter configurations covered by every generic test: (registry name, constructor kwargs).
CONFIGS = [
    ("linear", {}),
    ("linear", {"n_conditions": 2}),
    ("linear", {"rank": 4}),
    ("mlp", {"hidden_dim": 8}),
    ("mlp", {"hidden_dim": 8, "n_conditions": 2}),
]
IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'plain'}" for name, kw in CONFIGS]


def build(name: str, seed: int = 0, **kwargs):
    with loop.deterministic(seed):
        return adapter_class(name)(DIM, **kwargs)


def conditions_for(adapter, n: int):
    return None if adapter.n_conditions is None else torch.arange(n) % adapter.n_conditions


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=IDS)
def test_identity_at_initialisation(name, kwargs):
    adapter = build(name, **kwargs).eval()
    y = torch.randn(10, DIM)
    with torch.no_grad():
        if adapter.n_conditions is None:
            assert torch.equal(adapter(y), y)
        else:
            for condition in (CONDITION_IDS["perception"], CONDITION_IDS["imagery"], conditions_for(adapter, 10)):
                assert torch.equal(adapter(y, condition=condition), y)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=IDS)
def test_gradients_reach_every_parameter(name, kwargs):
    adapter = build(name, **kwargs)
    y, target = torch.randn(32, DIM), torch.randn(32, DIM)
    condition = conditions_for(adapter, 32)
    before = {k: v.detach().clone() for k, v in adapter.named_parameters()}
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)
    for _ in range(3):  # zero-initialised layers pass gradients on from the second step
        optimizer.zero_grad()
        loss = ((adapter(y, condition=condition) - target) ** 2).mean()
        loss.backward()
        assert all(p.grad is not None for p in adapter.parameters())
        optimizer.step()
    unchanged = [k for k, v in adapter.named_parameters() if torch.equal(v.detach(), before[k])]
    assert unchanged == []


def planted_distortion(seed: int = 0, n: int = 300):
    """Embeddings y and their distorted version y' = A y + b (A near the identity)."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n, DIM)).astype(np.float32)
    A = np.eye(DIM) + 0.4 * rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)
    b = 0.5 * rng.standard_normal(DIM)
    return y, (y @ A.T + b).astype(np.float32)


def train(adapter, y, target, condition=None, epochs=60, seed=0, device="cpu"):
    n_train = 200
    with loop.deterministic(seed, device) as rng:
        fit, stop = slice(0, n_train - 40), slice(n_train - 40, n_train)
        loop.train_module(
            adapter, losses.CosineMSELoss(cosine_weight=0.0, mse_weight=1.0),
            Dataset(y[fit], target[fit], condition=None if condition is None else condition[fit]),
            Dataset(y[stop], target[stop], condition=None if condition is None else condition[stop]),
            loop.TrainSpec(epochs=epochs, lr=1e-2, weight_decay=0.0, batch_size=32, patience=10, progress=False,
                           device=device), rng)
    return adapter


def remaining_error(adapter, y, target, condition=None) -> float:
    """Squared error left on the held-out rows (index >= 200), relative to doing nothing."""
    held = slice(200, None)
    with torch.no_grad():
        c = None if condition is None else torch.from_numpy(condition[held])
        out = adapter(torch.from_numpy(y[held]), condition=c)
    return float(np.sum((out.numpy() - target[held]) ** 2) / np.sum((y[held] - target[held]) ** 2))


@pytest.mark.parametrize(("name", "kwargs", "max_left"), [("linear", {}, 0.05), ("mlp", {"hidden_dim": 32}, 0.3)])
def test_recovers_planted_distortion_on_held_out_rows(name, kwargs, max_left):
    y, target = planted_distortion()
    adapter = train(build(name, **kwargs), y, target)
    assert remaining_error(adapter, y, target) < max_left


def test_one_conditioned_adapter_serves_both_domains():
    """Imagery rows are distorted, perception rows are not: the condition tells them apart."""
    y, distorted = planted_distortion(seed=1, n=400)
    condition = (np.arange(len(y)) % 2).astype(np.int64)  # 0 perception, 1 imagery
    target = np.where(condition[:, None] == CONDITION_IDS["imagery"], distorted, y).astype(np.float32)
    conditioned = train(build("mlp", hidden_dim=32, n_conditions=2), y, target, condition)
    shared = train(build("mlp", hidden_dim=32), y, target)
    held = np.arange(len(y)) >= 200
    imagery = held & (condition == 1)
    with torch.no_grad():
        out_c = conditioned(torch.from_numpy(y), condition=torch.from_numpy(condition)).numpy()
        out_s = shared(torch.from_numpy(y)).numpy()
    err_c = np.sum((out_c[held] - target[held]) ** 2)
    err_s = np.sum((out_s[held] - target[held]) ** 2)
    baseline = np.sum((y[imagery] - target[imagery]) ** 2)
    assert err_c < 0.5 * err_s
    assert np.sum((out_c[imagery] - target[imagery]) ** 2) < 0.5 * baseline


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_trains_a_conditioned_adapter_as_well_as_cpu():
    """train_module on the GPU (fused AdamW there too, condition ids on the device) learns the
    planted distortion as well as on the CPU; the trained adapter runs on the CPU."""
    y, target = planted_distortion()
    condition = (np.arange(len(y)) % 2).astype(np.int64)
    cpu = train(build("mlp", hidden_dim=8, n_conditions=2), y, target, condition)
    gpu = train(build("mlp", hidden_dim=8, n_conditions=2), y, target, condition, device="cuda").cpu()
    assert abs(remaining_error(gpu, y, target, condition) - remaining_error(cpu, y, target, condition)) < 0.05


def test_training_is_deterministic():
    y, target = planted_distortion()
    a = train(build("mlp", hidden_dim=8), y, target, epochs=3)
    b = train(build("mlp", hidden_dim=8), y, target, epochs=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_count_parameters():
    assert count_parameters(LinearAdapter(DIM)) == DIM * DIM + DIM
    assert count_parameters(LinearAdapter(DIM, n_conditions=2)) == DIM * DIM + DIM + 2 * DIM
    assert count_parameters(LinearAdapter(DIM, rank=2)) == 2 * DIM * 2 + DIM
    hidden = 8
    expected_mlp = 2 * DIM + (DIM * hidden + hidden) + (hidden * DIM + DIM)  # LayerNorm, fc1, fc2
    assert count_parameters(MLPAdapter(DIM, hidden_dim=hidden)) == expected_mlp
    assert count_parameters(MLPAdapter(DIM, hidden_dim=hidden, n_conditions=3)) == expected_mlp + 3 * hidden
    frozen = MLPAdapter(DIM, hidden_dim=hidden)
    frozen.fc1.requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == expected_mlp - (DIM * hidden + hidden)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=IDS)
def test_config_round_trip(name, kwargs):
    adapter = build(name, **kwargs)
    y = torch.randn(5, DIM)
    condition = conditions_for(adapter, 5)
    with torch.no_grad():  # move away from the identity so the comparison means something
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rebuilt = adapter_class(name)(**adapter.get_config())
    rebuilt.load_state_dict({k: v.clone() for k, v in adapter.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(y, condition=condition), adapter.eval()(y, condition=condition))
        assert not torch.equal(adapter(y, condition=condition), y)


def test_condition_errors():
    y = torch.randn(4, DIM)
    with pytest.raises(InputError, match="no condition"):
        LinearAdapter(DIM)(y, condition=1)
    with pytest.raises(InputError, match="condition="):
        MLPAdapter(DIM, n_conditions=2)(y)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        MLPAdapter(DIM, n_conditions=2)(y, condition=2)
    with pytest.raises(InputError, match="shape"):
        LinearAdapter(DIM, n_conditions=2)(y, condition=torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="positive integer"):
        LinearAdapter(0)
