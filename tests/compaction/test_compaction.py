"""Compaction (dead-neuron removal), sparse inference export and the export report."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chtorch.compaction import compact, export_report, find_dead_neurons, to_sparse_inference
from chtorch.sparse import SparseInferenceLinear, SparseLinear, to_sparse


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class MLP(nn.Module):
    def __init__(self, sizes, activation=torch.relu, bias=True):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:]))
        self.activation = activation

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)

    def names(self):
        return [f"layers.{i}" for i in range(len(self.layers))]


def _sparse_mlp(sizes, density, seed, activation=torch.relu, bias=True):
    """Masked-backend MLP: every layer but the classifier gets a random `weight_mask`."""
    torch.manual_seed(seed)
    model = MLP(sizes, activation, bias)
    g = _gen(seed)
    with torch.no_grad():
        for layer in model.layers[:-1]:
            mask = torch.rand(layer.weight.shape, generator=g) < density
            layer.weight.mul_(mask)
            layer.register_buffer("weight_mask", mask)
            if bias:
                layer.bias.normal_(0.0, 1.0, generator=g)  # large biases make folding matter
    return model


def _set_mask(layer: nn.Linear, mask: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.mul_(mask)
    layer.register_buffer("weight_mask", mask.clone())


def test_hand_worked_chain_folds_and_cascades():
    torch.manual_seed(0)
    model = MLP([3, 4, 3, 2])
    l0, l1, l2 = model.layers
    # boundary 0 (outputs of l0): neuron 0 has no incoming links (bias folds forward); neuron 3 has
    # no outgoing links; neuron 1 feeds only hidden neuron 2 of boundary 1, which itself has no
    # outgoing links -> cascade back: neuron 1 dies too. Neuron 2 survives.
    _set_mask(l0, torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=torch.bool))
    _set_mask(l1, torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool))
    _set_mask(l2, torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool))
    alive = find_dead_neurons(model, [model.names()], activation=torch.relu)
    assert alive["layers.0"].tolist() == [False, False, True, False]
    assert alive["layers.1"].tolist() == [True, True, False]
    small = compact(model, [model.names()], activation=torch.relu)
    assert [tuple(layer.weight.shape) for layer in small.layers] == [(1, 3), (2, 1), (2, 2)]
    x = torch.randn(16, 3, generator=_gen(1))
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
    # the original is untouched
    assert model.layers[0].weight.shape == (4, 3)


@pytest.mark.parametrize("activation", [torch.relu, torch.tanh, torch.sigmoid], ids=["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_random_sparse_mlp_compacts_exactly(activation, bias):
    model = _sparse_mlp([20, 40, 40, 40, 5], density=0.03, seed=2, activation=activation, bias=bias)
    small = compact(model, [model.names()], activation=activation)
    hidden_before = sum(layer.out_features for layer in model.layers[:-1])
    hidden_after = sum(layer.out_features for layer in small.layers[:-1])
    assert hidden_after < hidden_before  # at 3% density many neurons are dead
    assert small.layers[0].in_features == 20 and small.layers[-1].out_features == 5
    x = torch.randn(32, 20, generator=_gen(3))
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    for old, new in zip(model.layers[:-1], small.layers[:-1]):
        assert int(new.weight_mask.sum()) <= int(old.weight_mask.sum())


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=3, max_size=5),
    density=st.floats(0.0, 0.6),
    seed=st.integers(0, 10_000),
    activation=st.sampled_from([torch.relu, torch.tanh, torch.sigmoid]),
)
def test_property_compaction_preserves_outputs(sizes, density, seed, activation):
    model = _sparse_mlp(sizes, density, seed, activation)
    small = compact(model, [model.names()], activation=activation)
    x = torch.randn(8, sizes[0], generator=_gen(seed + 1))
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    alive = find_dead_neurons(model, [model.names()], activation=activation)
    for name, layer in zip(model.names()[:-1], small.layers[:-1]):
        assert layer.out_features == int(alive[name].sum())


def test_percolated_topology_needs_no_activation():
    """After percolation dead neurons have no links on either side: nothing to fold."""
    torch.manual_seed(4)
    model = MLP([5, 6, 4])
    l0, l1 = model.layers
    mask0 = torch.rand(6, 5, generator=_gen(5)) < 0.7
    mask0[[1, 4]] = False
    _set_mask(l0, mask0)
    with torch.no_grad():
        l1.weight[:, [1, 4]] = 0.0  # the classifier's columns of the dead neurons
    small = compact(model, [model.names()])
    assert small.layers[0].out_features == 4
    x = torch.randn(8, 5, generator=_gen(6))
    torch.testing.assert_close(small(x), model(x))


def test_missing_activation_is_a_clear_error():
    torch.manual_seed(7)
    model = MLP([3, 2, 2])
    _set_mask(model.layers[0], torch.tensor([[0, 0, 0], [1, 1, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="activation="):
        compact(model, [model.names()])


def test_chain_validation():
    model = MLP([3, 4, 2])
    with pytest.raises(TypeError, match="list of chains"):
        compact(model, model.names())
    with pytest.raises(ValueError, match="at least two"):
        compact(model, [["layers.0"]])
    with pytest.raises(ValueError, match="more than one chain"):
        compact(model, [["layers.0", "layers.1"], ["layers.1", "layers.0"]])
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="chain break"):
        compact(other, [["0", "2"]])
    with pytest.raises(TypeError, match="not a linear layer"):
        compact(other, [["0", "1"]])


def test_compact_sparse_backend_layers():
    model = _sparse_mlp([10, 30, 30, 4], density=0.05, seed=8)
    reference = _sparse_mlp([10, 30, 30, 4], density=0.05, seed=8)
    to_sparse(model, ["layers.0", "layers.1"])
    assert isinstance(model.layers[0], SparseLinear)
    small = compact(model, [model.names()], activation=torch.relu)
    assert all(type(layer) is nn.Linear for layer in small.layers)
    assert hasattr(small.layers[0], "weight_mask") and not hasattr(small.layers[2], "weight_mask")
    x = torch.randn(16, 10, generator=_gen(9))
    torch.testing.assert_close(small(x), reference(x), rtol=1e-5, atol=1e-5)


def test_to_sparse_inference_matches_and_respects_density():
    model = _sparse_mlp([12, 24, 24, 3], density=0.1, seed=10)
    exported = to_sparse_inference(model)
    kinds = [type(layer).__name__ for layer in exported.layers]
    assert kinds == ["SparseInferenceLinear", "SparseInferenceLinear", "Linear"]  # classifier: no topology
    assert not exported.training
    x = torch.randn(7, 12, generator=_gen(11))
    torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-5)
    kept_dense = to_sparse_inference(model, max_density=0.01)
    assert all(type(layer) is nn.Linear for layer in kept_dense.layers)
    named = to_sparse_inference(model, names=["layers.2"])
    assert isinstance(named.layers[2], SparseInferenceLinear)
    # compaction then sparse storage
    both = to_sparse_inference(compact(model, [model.names()], activation=torch.relu))
    torch.testing.assert_close(both(x), model(x), rtol=1e-5, atol=1e-5)


def test_export_report_counts_hand_worked():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = torch.zeros(5, 4, dtype=torch.bool)
    mask[[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 0, 1]] = True  # 6 links
    _set_mask(model[0], mask)
    exported = to_sparse_inference(model, max_density=0.5)
    assert isinstance(exported[0], SparseInferenceLinear)
    model.train()
    report = export_report(model, exported, torch.randn(2, 4), repeats=3, warmup=1)
    o, e = report.original, report.exported
    assert (o.params_stored, o.params_effective) == (20 + 5 + 15 + 3, 6 + 5 + 15 + 3)
    assert (e.params_stored, e.params_effective) == (6 + 5 + 15 + 3, 6 + 5 + 15 + 3)
    # batch 2: 2*rows*links + rows*out per layer
    assert o.flops == e.flops == 2 * 2 * 6 + 2 * 5 + 2 * 2 * 15 + 2 * 3
    assert o.dense_flops == o.executed_flops == 2 * 2 * 20 + 2 * 5 + 2 * 2 * 15 + 2 * 3
    assert e.executed_flops == e.flops  # the CSR layer executes its links only
    assert o.latency_s > 0 and e.latency_s > 0
    assert report.max_abs_diff < 1e-5
    assert model.training  # mode restored
    text = report.to_markdown()
    assert "latency" in text and "FLOPs" in text
    assert report.as_dict()["ratios"]["params_stored"] == pytest.approx(43 / 29)


def test_export_report_rejects_bad_repeats():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="repeats"):
        export_report(model, model, torch.randn(1, 2), repeats=0)
