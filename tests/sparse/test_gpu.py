"""The sparse backend and CH-L3n on CUDA, against the CPU results (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chtorch.linkpred import ch_l3n, ch_l3n_dense_reference
from chtorch.sparse import SparseLinear, resolve_impl, to_sparse

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _mask(n_out: int, n_in: int, density: float, seed: int) -> torch.Tensor:
    return torch.rand(n_out, n_in, generator=torch.Generator().manual_seed(seed)) < density


@pytest.mark.parametrize("impl", ["auto", "csr", "gather"])
@pytest.mark.parametrize("batch", [1, 33])
def test_sparse_linear_cuda_matches_cpu(impl: str, batch: int) -> None:
    mask = _mask(70, 90, 0.1, 0)
    cpu = SparseLinear(90, 70, mask, impl="gather", generator=torch.Generator().manual_seed(1))
    gpu = SparseLinear(90, 70, mask.cuda(), impl=impl, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(batch, 90, generator=torch.Generator().manual_seed(2))
    grad = torch.randn(batch, 70, generator=torch.Generator().manual_seed(3))
    results = []
    for layer, device in ((cpu, "cpu"), (gpu, "cuda")):
        xi = x.to(device).requires_grad_(True)
        y = layer(xi)
        y.backward(grad.to(device))
        results.append([t.detach().cpu() for t in (y, xi.grad, layer.values.grad, layer.bias.grad)])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert resolve_impl("auto", torch.float32, torch.device("cuda")) == "csr"


def test_sparse_training_and_topology_update_on_cuda() -> None:
    torch.manual_seed(0)  # nn.Linear's init draws from the global RNG; the test owns it
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    to_sparse(model, {"0": _mask(64, 20, 0.2, 4).cuda()}, optimizer=opt)
    layer = model[0]
    x, y = torch.randn(16, 20, device="cuda"), torch.randint(0, 5, (16,), device="cuda")
    for _ in range(3):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    new_mask = layer.weight_mask.clone()
    new_mask[:, :5] = ~new_mask[:, :5]
    change = layer.set_mask(new_mask, opt)
    assert change.kept + change.added == int(new_mask.sum())
    assert layer.values.device.type == "cuda" and opt.state[layer.values]["exp_avg"].device.type == "cuda"
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("method", ["auto", "dense", "sparse"])
@pytest.mark.parametrize("variant", ["CH2", "CH3", "CH3.1"])
def test_ch_l3n_cuda_matches_cpu(method: str, variant: str) -> None:
    mask = _mask(120, 80, 0.05, 5)
    expected = ch_l3n_dense_reference(mask, variant)
    scores = ch_l3n(mask.cuda(), variant, method=method)
    assert scores.device.type == "cuda"
    torch.testing.assert_close(scores.cpu(), expected, rtol=1e-4, atol=1e-4)
