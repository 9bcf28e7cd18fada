"""The optimizer implementation option (`optim.kernel`): fused, foreach and loop give the same
training, the state moves between them, and `auto` picks fused only where torch has it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chtorch.config import OptimConfig
from chtorch.train.optim import build_optimizer


def _train(
    config: OptimConfig, steps: int = 5, state: dict | None = None, skip: int = 0
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``steps`` steps on a fixed batch stream, from its ``skip``-th batch on (a resumed run's)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    optimizer = build_optimizer(model, config)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    g = torch.Generator().manual_seed(1)
    for step in range(skip + steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        if step < skip:
            continue
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_every_kernel_trains_the_same(name: str) -> None:
    weights = {}
    for kernel in ("fused", "foreach", "loop"):
        model, optimizer = _train(OptimConfig(name=name, lr=0.05, nesterov=True, kernel=kernel))
        weights[kernel] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(weights["fused"], weights["loop"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights["foreach"], weights["loop"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(weights["loop"], _train(OptimConfig(name=name, lr=0.05), steps=0)[0][0].weight.flatten())


def test_auto_is_fused_on_cpu_float_and_the_others_are_as_asked() -> None:
    model = nn.Linear(3, 2)
    assert build_optimizer(model, OptimConfig(kernel="auto")).defaults["fused"] is True
    assert build_optimizer(model, OptimConfig(kernel="foreach")).defaults["foreach"] is True
    loop = build_optimizer(model, OptimConfig(kernel="loop")).defaults
    assert loop["foreach"] is False and not loop["fused"]


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_auto_leaves_dtypes_without_a_fused_kernel_to_torch() -> None:
    model = nn.Linear(3, 2).to(torch.complex64)
    optimizer = build_optimizer(model, OptimConfig(name="adamw", kernel="auto"))
    assert not optimizer.defaults["fused"]


@pytest.mark.parametrize("first, second", [("fused", "loop"), ("loop", "fused"), ("foreach", "fused")])
def test_state_moves_between_kernels(first: str, second: str) -> None:
    """A checkpoint written with one implementation resumes with another (same state keys)."""
    model, optimizer = _train(OptimConfig(name="adamw", lr=0.01, kernel=first), steps=3)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    resumed, _ = _train(OptimConfig(name="adamw", lr=0.01, kernel=second), steps=2, state=state, skip=3)
    reference, _ = _train(OptimConfig(name="adamw", lr=0.01, kernel=first), steps=5)
    for a, b in zip(resumed.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auto_falls_back_where_torch_has_no_fused_kernel(monkeypatch) -> None:
    """On a torch without fused CPU kernels, `auto` builds torch's default instead of failing; an
    explicit `fused` still reports torch's error."""
    real = torch.optim.SGD

    def no_fused(*args, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported devices: ['cuda']"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", no_fused)
    optimizer = build_optimizer(nn.Linear(3, 2), OptimConfig(kernel="auto"))
    assert isinstance(optimizer, real) and not optimizer.defaults["fused"]
    with pytest.raises(RuntimeError, match="fused=True"):
        build_optimizer(nn.Linear(3, 2), OptimConfig(kernel="fused"))
