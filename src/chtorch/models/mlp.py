"""Multi-layer perceptron of the paper's image-classification study.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §2.1 / Table 4: three hidden layers of width 1568
(3072 for CIFAR-10) with ReLU, and a final classifier; the hidden layers are the sparse ones, the
classifier stays dense (the official MLP code sparsifies all layers except the final classifier; docs/decisions.md).

The module is plain PyTorch with no sparsity code. Its Linear layers are registered in forward
order — ``layers.0``, ``layers.1``, ..., then ``classifier`` — so the chain of consecutive sparse
layers that percolation walks is simply module order (see ``chtorch.models.linear_layer_names``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chtorch._fields import setting

__all__ = ["ACTIVATIONS", "MLPConfig", "MLP", "paper_mlp_config"]

#: Activation names accepted by :class:`MLPConfig`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


@dataclass
class MLPConfig:
    """Shape and options of an :class:`MLP`.

    in_features: length of the flattened input (784 for 28×28 grey images, 3072 for CIFAR-10).
    n_classes: number of output logits.
    hidden: widths of the hidden layers, in order (the paper: three of 1568, or 3072 for CIFAR-10).
    activation: one of :data:`ACTIVATIONS` (the paper uses ``"relu"``).
    dropout: dropout probability after each hidden activation (0 disables it).
    bias: whether every Linear layer has a bias.
    """

    in_features: int = setting(help="length of the flattened input", min=1)
    n_classes: int = setting(help="number of output logits", min=1)
    hidden: tuple[int, ...] = setting(
        (1568, 1568, 1568),
        "hidden widths; the paper uses three of 1568 (3072 for CIFAR-10), i.e. 2x the input size",
        min=1,
    )
    activation: str = setting(
        "relu",
        "activation after each hidden layer",
        choices=("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu"),
    )
    dropout: float = setting(0.0, "dropout after each hidden activation", min=0.0, max=1.0, max_open=True)
    bias: bool = setting(True, "biases in every Linear layer")

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)  # lists from YAML/JSON become tuples
        for field_name in ("in_features", "n_classes"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPConfig.{field_name} must be a positive int, got {value!r}")
        for width in self.hidden:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"MLPConfig.hidden must hold positive ints, got {self.hidden!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MLPConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"MLPConfig.bias must be True or False, got {self.bias!r}")


class MLP(nn.Module):
    """Flatten → (Linear → activation → dropout) per hidden width → Linear ``classifier``.

    Input: ``(B, *)`` with ``prod(*) == in_features`` (e.g. ``(B, 1, 28, 28)`` or ``(B, 784)``).
    Output: logits ``(B, n_classes)``. Weights use PyTorch's default Linear initialisation;
    a sparse training method re-initialises the layers it sparsifies.
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.in_features, *config.hidden)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=config.bias) for n_in, n_out in zip(widths[:-1], widths[1:])
        )
        # One stateless activation/dropout module shared by all hidden layers keeps the Linear
        # layers' names consecutive (layers.0, layers.1, ...).
        self.act = ACTIVATIONS[config.activation]()
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(widths[-1], config.n_classes, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1) if x.dim() > 2 else x
        if x.dim() != 2 or x.shape[1] != self.config.in_features:
            raise ValueError(
                f"MLP expects inputs of shape (B, {self.config.in_features}) "
                f"or (B, ...) flattening to it, got {tuple(x.shape)}"
            )
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.classifier(x)


# (in_features, n_classes, hidden width) of the paper's setups (Table 4).
_PAPER_SETUPS: dict[str, tuple[int, int, int]] = {
    "mnist": (784, 10, 1568),
    "fashion_mnist": (784, 10, 1568),
    "emnist_balanced": (784, 47, 1568),
    "cifar10": (3072, 10, 3072),
}
_ALIASES = {
    "fmnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist",
    "emnist": "emnist_balanced",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


def paper_mlp_config(dataset: str, **overrides: object) -> MLPConfig:
    """The paper's MLP for ``dataset``: three hidden layers of 1568 (MNIST, Fashion-MNIST, EMNIST
    balanced) or 3072 (CIFAR-10), ReLU, input size and classes of the dataset. Keyword
    ``overrides`` replace fields (e.g. ``hidden=(256, 256, 256)`` for a CPU-sized run)."""
    key = _ALIASES.get(dataset.lower(), dataset.lower())
    if key not in _PAPER_SETUPS:
        raise ValueError(
            f"the paper has no MLP setup for {dataset!r}; choose one of {sorted(_PAPER_SETUPS)} or build "
            "MLPConfig(in_features=..., n_classes=..., hidden=...) directly"
        )
    in_features, n_classes, width = _PAPER_SETUPS[key]
    fields: dict[str, object] = {"in_features": in_features, "n_classes": n_classes, "hidden": (width,) * 3}
    fields.update(overrides)
    return MLPConfig(**fields)  # type: ignore[arg-type]
