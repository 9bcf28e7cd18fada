"""The optimizer's learning-rate schedules: pure functions of the optimizer step.

The paper's recipes (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Tables 4-6): a linear decay
(MLP), noam (Vaswani et al. 2017; Transformer) and a warm-up then cosine decay (LLaMA). Each is a
pure function of the step, so a ``LambdaLR`` over it resumes exactly; :mod:`chtorch.train.optim`
composes them with the engine's re-warm-up after a topology update
(:func:`chtorch.dst.schedules.rewarmup_factor`).
"""

from __future__ import annotations

import math

from chtorch._checks import check_number

__all__ = ["linear_decay", "noam", "cosine_with_warmup"]


def _int(name: str, value: object, minimum: int = 0) -> int:
    return check_number(name, value, minimum, integer=True)


def _real(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    return check_number(name, value, low, high)


def linear_decay(step: int, total: int, start: float, end: float) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step ``total``), held after: an LR
    value (the MLP recipe: 0.025 → 2.5e-4), or a multiplier with ``start=1``."""
    step = _int("step", step)
    total = _int("total", total)
    start = _real("start", start)
    end = _real("end", end)
    if total == 0:
        return end
    return start + (end - start) * min(step, total) / total


def noam(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """Noam schedule (Vaswani et al. 2017, OpenNMT ``noam``), an **LR value**:
    ``scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)``; 0 at step 0. Use with base LR 1.0
    in ``LambdaLR``. E.g. d_model=512, warmup=4000, scale=2: peak 2·512^-0.5·4000^-0.5 ≈ 1.398e-3."""
    step = _int("step", step)
    d_model = _int("d_model", d_model, 1)
    warmup = _int("warmup", warmup, 1)
    scale = _real("scale", scale)
    if step == 0:
        return 0.0
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """A **multiplier**: linear warm-up ``step / warmup``, then cosine decay from 1 to ``min_ratio`` at
    ``total`` (held after), as the LLaMA recipe's global schedule (the official LLaMA code)."""
    step = _int("step", step)
    total = _int("total", total)
    warmup = _int("warmup", warmup)
    min_ratio = _real("min_ratio", min_ratio, 0.0, 1.0)
    if step < warmup:
        return step / warmup
    if total <= warmup:
        return min_ratio  # no room for a decay phase
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
