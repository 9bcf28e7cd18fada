"""The paper's MLP: config validation, layer naming, shapes, gradients, paper setups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chtorch.data import dataset_info
from chtorch.models import MLP, MLPConfig, linear_layer_names, paper_mlp_config
from chtorch.models.mlp import ACTIVATIONS


def test_default_config_is_the_papers_width():
    config = MLPConfig(in_features=784, n_classes=10)
    assert config.hidden == (1568, 1568, 1568) and config.activation == "relu"
    assert config.dropout == 0.0 and config.bias is True


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"in_features": 0, "n_classes": 10}, "in_features must be a positive int"),
        ({"in_features": 784, "n_classes": 0}, "n_classes must be a positive int"),
        ({"in_features": 784.0, "n_classes": 10}, "in_features must be a positive int"),
        ({"in_features": True, "n_classes": 10}, "in_features must be a positive int"),
        ({"in_features": 784, "n_classes": 10, "hidden": (64, 0)}, "hidden must hold positive ints"),
        ({"in_features": 784, "n_classes": 10, "hidden": (64, 3.5)}, "hidden must hold positive ints"),
        ({"in_features": 784, "n_classes": 10, "activation": "swish2"}, "unknown activation 'swish2'.*relu"),
        ({"in_features": 784, "n_classes": 10, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"in_features": 784, "n_classes": 10, "dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"in_features": 784, "n_classes": 10, "bias": 1}, "bias must be True or False"),
    ],
)
def test_config_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MLPConfig(**kwargs)


def test_hidden_list_becomes_tuple():
    assert MLPConfig(in_features=4, n_classes=2, hidden=[8, 8]).hidden == (8, 8)


def test_layer_names_are_a_consecutive_linear_chain():
    model = MLP(MLPConfig(in_features=12, n_classes=5, hidden=(7, 6, 9)))
    names = linear_layer_names(model)
    assert names == ["layers.0", "layers.1", "layers.2", "classifier"]
    modules = dict(model.named_modules())
    shapes = [tuple(modules[n].weight.shape) for n in names]
    # (out_features, in_features) per layer; each layer's input is the previous layer's output.
    assert shapes == [(7, 12), (6, 7), (9, 6), (5, 9)]
    assert sorted(model.state_dict()) == sorted([f"{n}.{p}" for n in names for p in ("weight", "bias")])


def test_no_hidden_layers_is_logistic_regression():
    model = MLP(MLPConfig(in_features=3, n_classes=2, hidden=()))
    assert linear_layer_names(model) == ["classifier"] and model(torch.zeros(4, 3)).shape == (4, 2)


def test_paper_parameter_count():
    model = MLP(paper_mlp_config("mnist"))
    n = 784 * 1568 + 1568 + 2 * (1568 * 1568 + 1568) + 1568 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == n


def test_forward_shapes_and_flattening():
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=3 * 4 * 4, n_classes=7, hidden=(16, 16)))
    images = torch.randn(5, 3, 4, 4)
    out = model(images)
    assert out.shape == (5, 7) and out.dtype == torch.float32
    torch.testing.assert_close(model(images.reshape(5, -1)), out)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 48\)"):
        model(torch.randn(5, 47))


def test_forward_matches_hand_computation():
    model = MLP(MLPConfig(in_features=2, n_classes=1, hidden=(2,), activation="relu"))
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
        model.layers[0].bias.copy_(torch.tensor([0.0, -1.0]))
        model.classifier.weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.classifier.bias.copy_(torch.tensor([0.5]))
    x = torch.tensor([[1.0, 2.0]])
    # hidden = relu([1 - 2, 2 + 1 - 1]) = [0, 2]; out = 3*0 - 2*2 + 0.5 = -3.5
    assert model(x).item() == pytest.approx(-3.5)


def test_backward_reaches_every_parameter_and_training_reduces_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=10, n_classes=2, hidden=(32, 32)))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = loss.item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_and_runs(activation):
    model = MLP(MLPConfig(in_features=6, n_classes=3, hidden=(5,), activation=activation))
    assert isinstance(model.act, ACTIVATIONS[activation])
    assert torch.isfinite(model(torch.randn(2, 6))).all()


def test_dropout_is_active_in_training_only():
    model = MLP(MLPConfig(in_features=8, n_classes=4, hidden=(64, 64), dropout=0.5))
    x = torch.randn(3, 8)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))
    assert isinstance(MLP(MLPConfig(in_features=8, n_classes=4)).drop, nn.Identity)


def test_bias_false_removes_all_biases():
    model = MLP(MLPConfig(in_features=8, n_classes=4, hidden=(5, 5), bias=False))
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    ("dataset", "in_features", "n_classes", "width"),
    [
        ("mnist", 784, 10, 1568),
        ("fashion_mnist", 784, 10, 1568),
        ("FMNIST", 784, 10, 1568),
        ("emnist_balanced", 784, 47, 1568),
        ("cifar10", 3072, 10, 3072),
    ],
)
def test_paper_configs(dataset, in_features, n_classes, width):
    config = paper_mlp_config(dataset)
    assert (config.in_features, config.n_classes, config.hidden) == (in_features, n_classes, (width,) * 3)
    info = dataset_info(dataset)  # the data side agrees on input size and classes
    assert (info.in_features, info.n_classes) == (in_features, n_classes)


def test_paper_config_overrides_and_unknown_dataset():
    small = paper_mlp_config("mnist", hidden=(64, 64, 64), dropout=0.1)
    assert small.hidden == (64, 64, 64) and small.dropout == 0.1 and small.in_features == 784
    with pytest.raises(ValueError, match="no MLP setup for 'digits'"):
        paper_mlp_config("digits")
    with pytest.raises(ValueError, match="unknown activation"):
        paper_mlp_config("mnist", activation="nope")
