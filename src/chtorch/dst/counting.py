"""How the engine counts optimizer steps: by the optimizer's own step events, not by ``sp.step()`` calls.

Every schedule of a run (update interval, T_end, ζ, the density decay; :class:`~chtorch.dst.timeline.Timeline`)
is a function of the optimizer step. A loop may call ``sp.step()`` on every micro-step of gradient
accumulation (Accelerate's ``accumulate()`` and plain loops do), and an optimizer step may never run
(a ``torch.amp.GradScaler`` that found inf/NaN gradients skips it; a loop leaves one out). The
engine's step post-hook on the optimizer (:meth:`StepCounter.stepped`) sees exactly the steps that
ran; ``sp.step()`` counts those (:meth:`StepCounter.take`), so a call without an optimizer step
counts nothing and never updates the topology.

The dense gradients that RigL, GraNet and MEST read are recorded per backward pass into the layer's
step gradient and join the running sum when the optimizer step runs (:meth:`StepCounter.fold`),
divided by the ``GradScaler``'s scale when the loop named one: a skipped step's gradient is dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from chtorch.dst.layer import Layer

__all__ = ["StepCounter", "step_source"]


def step_source(optimizer: Any) -> Any:
    """The optimizer whose ``step()`` really runs: a wrapper that forwards ``step()`` to the optimizer
    it holds (Accelerate's ``AcceleratedOptimizer``) has no step hooks of its own."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class StepCounter:
    """The optimizer steps seen since the last ``sp.step()``, and the ``total_steps`` warning."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)
        self.pending = 0  # optimizer steps since the last sp.step()
        self.told_to_skip = False  # the loop was told to leave out this iteration's optimizer step
        self.past_total_steps = False  # more optimizer steps than total_steps were taken (warned once)
        self.scaler: Any = None

    def set_scaler(self, scaler: Any) -> None:
        if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
            raise ValueError(f"scaler must be a torch.amp.GradScaler (or None), got {type(scaler).__name__}")
        self.scaler = scaler

    def stepped(self, layers: Sequence[Layer]) -> None:
        """An optimizer step ran (the optimizer's step post-hook)."""
        self.pending += 1
        self.fold(layers)

    def fold(self, layers: Sequence[Layer]) -> None:
        """Add each layer's step gradient to its running sum (unscaled)."""
        if not any(layer.has_step_grad() for layer in layers):
            return
        scaler = self.scaler
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        for layer in layers:
            layer.fold_grad(scale)

    def take(self, layers: Sequence[Layer]) -> int:
        """The optimizer steps that this ``sp.step()`` counts: those that ran since the last call, or
        one for an iteration whose step the loop was told to leave out (its gradient counts as if it ran)."""
        steps, told = self.pending, self.told_to_skip
        self.pending, self.told_to_skip = 0, False
        if told and steps == 0:
            self.fold(layers)
            steps = 1
        return steps

    def reset(self) -> None:
        """Forget steps in flight (a loaded state starts at a step boundary)."""
        self.pending, self.told_to_skip = 0, False

    def check_total(self, step: int) -> None:
        """Warn once when optimizer step ``step`` is past ``total_steps``."""
        if step > self.total_steps and not self.past_total_steps:
            self.past_total_steps = True
            warnings.warn(
                f"chtorch: optimizer step {step} is past total_steps={self.total_steps}: the schedules (T_end, "
                "zeta, density decay) were planned for total_steps optimizer steps and end there; pass the run's "
                "number of optimizer steps (with gradient accumulation: micro-batches / accumulation)",
                RuntimeWarning,
                stacklevel=4,
            )
