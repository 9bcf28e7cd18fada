"""Series over optimizer steps from a run's records (hand-worked), and the training-FLOP model."""

from __future__ import annotations

import pytest

from chtorch.train.run_series import (
    FLOPS_PER_LINK,
    dense_flops_per_step,
    density_points,
    held_links,
    layer_shapes,
    training_flops,
    uses_step_axis,
)


def _epoch(epoch: int, step: int, links: tuple[int, int], density: float) -> dict:
    layers = {"a": {"links": links[0], "shape": [10, 20]}, "b": {"links": links[1], "shape": [5, 10]}}
    return {"kind": "epoch", "epoch": epoch, "step": step, "density": density, "layers": layers}


def _update(step: int, links: tuple[int, int], density: float, skipped: str | None = None) -> dict:
    layers = {"a": {"links": links[0]}, "b": {"links": links[1]}}
    return {"kind": "update", "step": step, "density": density, "skipped": skipped, "layers": layers}


RECORDS = [
    _epoch(0, 0, (100, 25), 0.5),
    {"kind": "step", "step": 5, "loss": 1.0, "lr": 0.1},
    _update(5, (60, 15), 0.3),
    _update(8, (60, 15), 0.3, skipped="nothing to update"),
    _epoch(1, 10, (60, 15), 0.3),
    _update(15, (20, 5), 0.1),
    _epoch(2, 20, (20, 5), 0.1),
]


def test_density_is_taken_at_every_update_and_epoch_record() -> None:
    assert density_points(RECORDS) == ([0, 5, 10, 15, 20], [0.5, 0.3, 0.3, 0.1, 0.1])


def test_links_held_and_shapes() -> None:
    assert held_links(RECORDS) == ([0, 5, 10, 15, 20], [125, 75, 75, 25, 25])
    assert layer_shapes(RECORDS) == {"a": (10, 20), "b": (5, 10)}
    assert held_links([{"kind": "epoch", "step": 0, "density": 1.0}]) == ([], [])  # a dense run


def test_training_flops_by_hand() -> None:
    steps, links = held_links(RECORDS)
    # 125 links for steps 1-5, 75 for 6-15, 25 for 16-20; 6 FLOPs per link, row and step.
    expected = FLOPS_PER_LINK * (125 * 5 + 75 * 10 + 25 * 5)
    assert training_flops(steps, links)[-1] == expected
    assert training_flops(steps, links)[:2] == [0.0, FLOPS_PER_LINK * 125 * 5]
    dense = dense_flops_per_step(layer_shapes(RECORDS)) * 20
    assert dense == FLOPS_PER_LINK * (200 + 50) * 20
    assert expected / dense == pytest.approx((125 * 5 + 75 * 10 + 25 * 5) / (250 * 20))


def test_step_axis_for_step_unit_recipes() -> None:
    assert uses_step_axis({"sparsity": {"update_unit": "step"}})
    assert not uses_step_axis({"sparsity": {"update_unit": "epoch"}}) and not uses_step_axis({})
