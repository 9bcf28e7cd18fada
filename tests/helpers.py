"""Helpers that tests share (import as ``from helpers import ...``; ``tests/`` is on the path via
the root ``conftest.py``): a tiny MLP, a stream of batches, N training steps through the public
three-line integration, a checkpoint round trip, the overrides of a seconds-long ``chtorch
train`` run on the built-in digits data, and a block run with a given intra-op thread count."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TINY_RUN",
    "tiny_config",
    "tiny_mlp",
    "batch_stream",
    "train_steps",
    "checkpoint_round_trip",
    "torch_threads",
]

#: ``--set`` overrides of a seconds-long run: a small MLP on digits, nothing slow written at the end.
TINY_RUN = (
    "model.hidden=[32,32]",
    "data.batch_size=64",
    "train.plots=false",
    "train.report=false",
    "train.tensorboard=false",
)


def tiny_config(*overrides: str, path: str | Path | None = None) -> Any:
    """:func:`chtorch.train.load_config` of ``path`` (default: the built-in defaults) with
    :data:`TINY_RUN` and then ``overrides`` applied."""
    from chtorch.train import load_config

    return load_config(path, [*TINY_RUN, *overrides])


def tiny_mlp(sizes: Sequence[int] = (12, 32, 32, 3), seed: int = 0) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` over ``sizes``, initialised from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batch_stream(
    n_in: int = 12, n_classes: int = 3, batch_size: int = 16, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless, reproducible stream of ``(x, y)``: ``x`` is ``(batch_size, n_in)`` normal noise, ``y``
    a label that depends on ``x`` (so the task is learnable), from a private generator."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_in, n_classes, generator=g)
    while True:
        x = torch.randn(batch_size, n_in, generator=g)
        yield x, (x @ w).argmax(dim=1)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    sparsity: Any = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> list[Any]:
    """``steps`` steps of the integration the README shows (backward, ``optimizer.step()``,
    ``sparsity.step()``, ``zero_grad``); returns the update reports (``None`` when no update was due)."""
    reports = []
    for x, y in itertools.islice(batches, steps):
        loss_fn(model(x), y).backward()
        optimizer.step()
        reports.append(sparsity.step() if sparsity is not None else None)
        optimizer.zero_grad(set_to_none=True)
    return reports


def checkpoint_round_trip(state: dict[str, Any], tmp_path: Path, name: str = "checkpoint.pt") -> dict[str, Any]:
    """``state`` written with :func:`chtorch.train.save_checkpoint` and read back (weights-only load)."""
    from chtorch.train.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(copy.deepcopy(state), tmp_path / name)
    return load_checkpoint(path)


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run ``chtorch ARGS`` in this process: (exit code, stdout, stderr)."""
    from chtorch.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(code: int, err: str, *words: str) -> None:
    """The CLI's error contract (docs/errors.md): exit 2 and one line ``chtorch: error: ...`` naming ``words``."""
    assert code == 2, err
    assert err.startswith("chtorch: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (torch's and the native kernels'), restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def linear_stack(sizes: Sequence[int], seed: int = 0) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLUs between them (none after the last), seeded init."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def optimizer_of_kind(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    """``sgd`` (momentum, weight decay), ``adam`` or anything else for AdamW: the engine tests' optimizers."""
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def random_mask(n_out: int, n_in: int, density: float, seed: int) -> torch.Tensor:
    """A bool (n_out, n_in) mask with each link present with probability ``density``."""
    return torch.rand(n_out, n_in, generator=torch.Generator().manual_seed(seed)) < density


def masked_linear(n_in: int, n_out: int, mask: torch.Tensor, seed: int = 0, bias: bool = True) -> nn.Linear:
    """The masked backend's layer: dense weight, zero off the mask, bool `weight_mask` buffer."""
    torch.manual_seed(seed)  # nn.Linear's init draws from the global RNG; tests own it
    linear = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(mask)
    linear.register_buffer("weight_mask", mask.clone())
    return linear
