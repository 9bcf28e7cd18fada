"""Mixed precision: under ``torch.autocast`` (bf16 on CPU) masks stay exact, off-mask weights and
optimizer state stay exactly zero, and a topology update computes in fp32 even inside the region;
the dense gradients RigL reads are summed in ``grad_accumulation_dtype``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import chtorch
from chtorch.masks import link_budget
from helpers import tiny_mlp


def assert_invariants(sp, opt) -> None:
    for layer in sp.layers:
        mask = layer.mask
        assert mask.dtype == torch.bool
        assert int(mask.sum()) == layer.target  # the exact budget the schedule gave the last update
        weight = layer.module.weight
        assert weight.dtype == torch.float32
        assert bool((weight[~mask] == 0).all()) and bool(torch.isfinite(weight).all())
        for value in opt.state[weight].values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                assert bool((value[~mask] == 0).all())


@pytest.mark.parametrize("method", ["chts", "rigl", "set", "mest", "chtss"])
@pytest.mark.parametrize("inside", [False, True])
def test_bf16_autocast_keeps_every_invariant(method, inside):
    model = tiny_mlp((12, 32, 32, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = chtorch.sparsify(model, opt, method=method, sparsity=0.8, total_steps=12, update_interval=2)
    g = torch.Generator().manual_seed(0)
    updates = 0
    assert all(layer.target == link_budget(*layer.shape, 0.8) for layer in sp.layers) or method in ("chtss", "mest")
    for _ in range(12):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            assert logits.dtype == torch.bfloat16  # the region really is bf16
            loss = nn.functional.cross_entropy(logits, y)
            if inside:  # a loop that steps inside the autocast region
                loss.backward()
                opt.step()
                report = sp.step()
        if not inside:
            loss.backward()
            opt.step()
            report = sp.step()
        opt.zero_grad()
        updates += report is not None
        assert_invariants(sp, opt)
    assert updates == sp.update_count > 0


def test_an_update_inside_autocast_scores_in_fp32(monkeypatch):
    seen = []
    import chtorch.dst.update as update_module

    original = update_module.remove_links

    def spy(ctx, weight, keep, grad, key, zeta, temperature):
        seen.append((weight.dtype, torch.is_autocast_enabled("cpu")))
        return original(ctx, weight, keep, grad, key, zeta, temperature)

    monkeypatch.setattr(update_module, "remove_links", spy)
    model = tiny_mlp((12, 32, 32, 3)).to(torch.bfloat16)  # weights held in bf16, as the official LLaMA code
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.8, total_steps=8, update_interval=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nn.functional.cross_entropy(
            model(torch.randn(4, 12, dtype=torch.bfloat16)), torch.tensor([0, 1, 2, 0])
        ).backward()
        opt.step()
        assert sp.step() is not None
    assert seen and all(dtype == torch.float32 and not autocast for dtype, autocast in seen)
    for layer in sp.layers:
        assert bool((layer.module.weight[~layer.mask] == 0).all())


@pytest.mark.parametrize(("accumulate", "dtype"), [("float32", torch.float32), ("param", torch.bfloat16)])
def test_rigl_regrowth_gradient_is_summed_in_the_chosen_dtype(accumulate, dtype):
    model = tiny_mlp((12, 32, 32, 3)).to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    sp = chtorch.sparsify(
        model,
        opt,
        method="rigl",
        sparsity=0.8,
        total_steps=8,
        update_interval=2,
        grad_accumulation=2,
        grad_accumulation_dtype=accumulate,
    )
    nn.functional.cross_entropy(model(torch.randn(4, 12, dtype=torch.bfloat16)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert sp.step() is None
    for layer in sp.layers:
        assert layer.grad_count == 1 and layer.grad_sum.dtype == dtype
    opt.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(4, 12, dtype=torch.bfloat16)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    report = sp.step()
    assert report is not None and not report.skipped and sp.layers[0].grad_sum is None


def test_grad_accumulation_dtype_is_checked():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="grad_accumulation_dtype"):
        chtorch.sparsify(model, opt, method="rigl", sparsity=0.8, total_steps=8, grad_accumulation_dtype="bf16")
