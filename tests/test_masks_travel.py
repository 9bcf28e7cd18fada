"""Masks travel with the model: docs/integration.md's resume code runs as written and continues the run
exactly; ``chtorch.load_sparse`` restores masks into a fresh model (before ``sparsify`` too);
``chtorch.strip`` gives a plain model computing what the sparse one computes."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import chtorch

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "integration.md"


def resume_snippet() -> str:
    """The python block under **Resume.** in the own-loop guide."""
    section = GUIDE.read_text().split("**Resume.**", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert block is not None, "docs/integration.md: no python block under **Resume.**"
    return block.group(1)


class MyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 32, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(3)]


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, sp, loader, epochs: int) -> None:
    for _ in range(epochs):
        for x, y in loader:
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            sp.step()
            optimizer.zero_grad()


def _build(backend: str = "masked", **extra):
    torch.manual_seed(0)
    model = MyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    sp = chtorch.sparsify(
        model, optimizer, method="chts", sparsity=0.99, total_steps=4 * 3, update_interval=3, backend=backend, **extra
    )
    return model, optimizer, sp


def _same_run(a: nn.Module, b: nn.Module, sp_a, sp_b) -> None:
    assert sp_a.step_count == sp_b.step_count and sp_a.update_count == sp_b.update_count
    for name in sp_a.layer_names:
        assert torch.equal(sp_a.masks[name], sp_b.masks[name]), name
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_the_guides_resume_code_runs_and_continues_exactly(tmp_path):
    loader, epochs = _loader(), 4
    model, optimizer, sp = _build()
    _train(model, optimizer, sp, loader, 1)  # one topology update behind it
    assert sp.update_count == 1
    original = (model, optimizer, sp)
    namespace = {
        "torch": torch,
        "chtorch": chtorch,
        "MyModel": MyModel,
        "loader": loader,
        "epochs": epochs,
        "path": tmp_path / "checkpoint.pt",
        "model": model,
        "optimizer": optimizer,
        "sp": sp,
    }
    exec(compile(resume_snippet(), str(GUIDE), "exec"), namespace)
    resumed = (namespace["model"], namespace["optimizer"], namespace["sp"])
    assert resumed[0] is not model
    _same_run(original[0], resumed[0], original[2], resumed[2])
    x = loader[0][0]
    assert torch.equal(original[0](x), resumed[0](x))
    _train(*original, loader, 2)
    _train(*resumed, loader, 2)
    assert original[2].update_count == 2  # T_end = 9: the last update runs before it
    _same_run(original[0], resumed[0], original[2], resumed[2])


@pytest.mark.parametrize("backend", ["masked", "sparse", "auto"])
def test_round_trip_through_a_fresh_model(backend):
    loader = _loader()
    model, optimizer, sp = _build(backend)
    _train(model, optimizer, sp, loader, 1)
    live = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sparsity": sp.state_dict()}
    saved = copy.deepcopy(live)  # as from disk: a state_dict holds the live tensors
    fresh = MyModel()
    with pytest.raises(RuntimeError, match="weight_mask"):
        fresh.load_state_dict(saved["model"])  # why load_sparse exists
    masks = chtorch.load_sparse(fresh, saved["model"])
    assert sorted(masks) == sorted(sp.layer_names)
    x = loader[1][0]
    torch.testing.assert_close(fresh(x), model(x))  # before sparsify: the model computes as saved
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    sp2 = chtorch.sparsify(
        fresh, opt2, method="chts", sparsity=0.99, total_steps=12, update_interval=3, backend=backend, masks=masks
    )
    sp2.load_state_dict(saved["sparsity"])
    opt2.load_state_dict(saved["optimizer"])
    _same_run(model, fresh, sp, sp2)
    _train(model, optimizer, sp, loader, 2)
    _train(fresh, opt2, sp2, loader, 2)
    _same_run(model, fresh, sp, sp2)


def test_load_sparse_refuses_a_state_of_another_model():
    model, _, _ = _build()
    state = model.state_dict()
    state["net.0.weight_mask"] = state["net.0.weight_mask"].float()
    with pytest.raises(ValueError, match=r"'net.0'.*not torch.bool"):
        chtorch.load_sparse(MyModel(), state)
    other = nn.Sequential(nn.Linear(32, 64))
    with pytest.raises(ValueError, match="no such layer"):
        chtorch.load_sparse(other, model.state_dict())


@pytest.mark.parametrize("backend", ["masked", "sparse"])
def test_strip_gives_a_plain_model_computing_the_same(backend):
    loader = _loader()
    model, optimizer, sp = _build(backend)
    _train(model, optimizer, sp, loader, 1)
    masks = {n: m.clone() for n, m in sp.masks.items()}
    plain = chtorch.strip(model)
    layers = dict(plain.named_modules())
    for name, mask in masks.items():
        layer = layers[name]
        assert type(layer) is nn.Linear and "weight_mask" not in dict(layer.named_buffers())
        assert not layer._load_state_dict_pre_hooks and not layer.weight._backward_hooks
        assert torch.count_nonzero(layer.weight[~mask]) == 0
    assert not any(k.endswith("weight_mask") for k in plain.state_dict())
    x = loader[2][0]
    if backend == "masked":
        assert torch.equal(plain(x), model(x))
    else:
        torch.testing.assert_close(plain(x), model(x))
    fresh = MyModel()
    fresh.load_state_dict(plain.state_dict())  # plain keys: any PyTorch code loads it
    torch.testing.assert_close(fresh(x), model(x))
    # the original keeps training under its engine, untouched by the copy
    _train(model, optimizer, sp, loader, 1)
    assert sp.update_count == 2 and any(not torch.equal(masks[n], sp.masks[n]) for n in masks)
