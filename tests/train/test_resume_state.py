"""Exact resume of the engine's state through a checkpoint file (the library road, no trainer)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

import chtorch
from helpers import batch_stream, checkpoint_round_trip, tiny_mlp, train_steps


def test_engine_state_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    """Model, optimizer and sparsity state written with save_checkpoint and read back continue exactly
    like the uninterrupted run: same masks and weights after the remaining steps (updates included)."""

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return (
            model,
            opt,
            chtorch.sparsify(model, opt, method="set", sparsity=0.8, total_steps=20, update_interval=3, seed=0),
        )

    model, opt, sp = build()
    stream = batch_stream()
    reports = train_steps(model, opt, stream, 8, sp)
    state = checkpoint_round_trip(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "sparsity": sp.state_dict()}, tmp_path
    )
    reports += train_steps(model, opt, stream, 8, sp)
    assert sum(r is not None for r in reports) >= 4  # topology updates happened on both sides of the cut

    resumed, resumed_opt, resumed_sp = build()
    resumed.load_state_dict(state["model"])
    resumed_sp.load_state_dict(state["sparsity"])
    resumed_opt.load_state_dict(state["optimizer"])
    tail = batch_stream()
    train_steps(resumed, resumed_opt, itertools.islice(tail, 8, None), 8, resumed_sp)  # the same last 8 batches
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
