"""Per-layer link budgets: uniform sparsity (the paper's choice) or Erdős–Rényi-Kernel (ERK) as in
RigL (Evci et al., ICML 2020, `rigl/sparse_utils.py` semantics; Zhang et al., NeurIPS 2025,
arXiv:2501.19107: the paper itself uses uniform)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from chtorch._checks import check_number
from chtorch.masks import link_budget

__all__ = ["allocate_budgets", "erk_densities", "BUDGET_DISTRIBUTIONS"]

BUDGET_DISTRIBUTIONS = ("uniform", "erk")


def _check_shapes(shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    checked = []
    for index, shape in enumerate(shapes):
        try:
            n_out, n_in = shape
        except (TypeError, ValueError):
            raise ValueError(f"shapes[{index}] must be an (out_features, in_features) pair, got {shape!r}") from None
        for value in (n_out, n_in):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"shapes[{index}] = {shape!r}: sizes must be positive integers")
        checked.append((int(n_out), int(n_in)))
    return checked


def erk_densities(shapes: Sequence[tuple[int, int]], sparsity: float, erk_power_scale: float = 1.0) -> list[float]:
    """Real-valued ERK densities, one per layer, each in ``[0, 1]``.

    density_l = ε · ((n_in + n_out) / (n_in · n_out)) ** power, with ε chosen so the kept parameters
    total ``(1 − sparsity) · Σ n_out·n_in``. A layer whose density would exceed 1 is made dense and ε
    is solved again for the rest, repeatedly (RigL's fallback).
    """
    shapes = _check_shapes(shapes)
    sparsity = _check_sparsity(sparsity)
    sizes = [n_out * n_in for n_out, n_in in shapes]
    raw = [((n_out + n_in) / (n_out * n_in)) ** float(erk_power_scale) for n_out, n_in in shapes]
    dense: set[int] = set()
    keep_total = (1.0 - sparsity) * sum(sizes)
    while True:
        rest = [l for l in range(len(shapes)) if l not in dense]
        if not rest:
            break
        budget = keep_total - sum(sizes[l] for l in dense)
        divisor = sum(raw[l] * sizes[l] for l in rest)
        epsilon = budget / divisor
        largest = max(raw[l] for l in rest)
        if largest * epsilon <= 1.0:
            break
        # Every layer at the largest raw density would overflow: make them dense, solve again.
        dense.update(l for l in rest if raw[l] == largest)
    return [1.0 if l in dense else min(1.0, max(0.0, epsilon * raw[l])) for l in range(len(shapes))]


def allocate_budgets(
    shapes: Sequence[tuple[int, int]],
    sparsity: float,
    distribution: str = "uniform",
    erk_power_scale: float = 1.0,
) -> list[int]:
    """Exact integer link counts, one per ``(n_out, n_in)`` layer.

    - ``"uniform"``: every layer gets ``chtorch.masks.link_budget(n_out, n_in, sparsity)`` (what the
      paper uses; each layer is individually exact).
    - ``"erk"``: :func:`erk_densities` turned into integers by largest-remainder rounding, so the counts
      sum **exactly** to ``round((1 − sparsity) · Σ n_out·n_in)`` and no layer exceeds its size.
      Ties in the remainders go to the earlier layer.
    """
    shapes = _check_shapes(shapes)
    sparsity = _check_sparsity(sparsity)
    key = distribution.lower() if isinstance(distribution, str) else distribution
    if key == "uniform":
        return [link_budget(n_out, n_in, sparsity) for n_out, n_in in shapes]
    if key != "erk":
        raise ValueError(f"distribution must be one of {BUDGET_DISTRIBUTIONS}, got {distribution!r}")
    if not isinstance(erk_power_scale, numbers.Real) or not math.isfinite(erk_power_scale):
        raise ValueError(f"erk_power_scale must be a finite number, got {erk_power_scale!r}")
    if not shapes:
        return []
    sizes = [n_out * n_in for n_out, n_in in shapes]
    target = int(round((1.0 - sparsity) * sum(sizes)))
    exact = [d * s for d, s in zip(erk_densities(shapes, sparsity, erk_power_scale), sizes)]
    counts = [min(size, math.floor(x)) for x, size in zip(exact, sizes)]
    short = target - sum(counts)
    # Largest remainder first; float error may leave |short| slightly larger than the remainders
    # account for, so loop until exact while respecting 0 <= count <= size.
    order = sorted(range(len(shapes)), key=lambda l: (-(exact[l] - counts[l]), l))
    while short != 0:
        moved = False
        for l in order if short > 0 else reversed(order):
            if short > 0 and counts[l] < sizes[l]:
                counts[l] += 1
                short -= 1
                moved = True
            elif short < 0 and counts[l] > 0:
                counts[l] -= 1
                short += 1
                moved = True
            if short == 0:
                break
        if not moved:  # cannot happen: 0 <= target <= sum(sizes)
            raise RuntimeError("ERK rounding could not reach the exact target")
    return counts


def _check_sparsity(sparsity: float) -> float:
    return check_number("sparsity", sparsity, 0, 1, hint="the fraction of zeros")
