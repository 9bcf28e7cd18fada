"""When things happen in one run: the engine's schedules as functions of the optimizer step.

A :class:`Timeline` is fixed by the options, the final sparsity and the run's length; it knows T_end
(after which the topology is frozen), the end of a density decay, and for any step the scheduled
sparsity, each layer's exact budget, ζ, the removal temperature, whether an update is due and
whether the dense gradient is being recorded for one (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
Algorithm 1 and §3; the pure formulas are :mod:`chtorch.dst.schedules`). It holds no state, so a
resumed run has the same timeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from chtorch import topology
from chtorch.dst import schedules
from chtorch.dst.options import SparsityOptions
from chtorch.dst.registry import get_part

__all__ = ["Timeline"]


class Timeline:
    """The schedules of a run of ``total_steps`` optimizer steps at final ``sparsity`` under ``options``."""

    def __init__(self, options: SparsityOptions, sparsity: float, total_steps: int) -> None:
        self.options = options
        self.sparsity = float(sparsity)
        self.total_steps = int(total_steps)
        self.t_end = options.t_end if options.t_end is not None else int(options.t_end_fraction * self.total_steps)
        self.decay_end = int(options.decay_end_fraction * self.total_steps)

    def sparsity_at(self, step: int) -> float:
        """The sparsity the registered density schedule asks for at ``step`` (the final sparsity for
        fixed-density methods), less MEST's EM&S extra density while it applies. One decay event per
        update interval until ``decay_end``: :func:`schedules.decay_events` / :func:`schedules.decay_tau`."""
        opts = self.options
        schedule = get_part("density_schedule", opts.density_schedule)
        n = max(1, schedules.decay_events(0, self.decay_end, opts.update_interval))
        tau = schedules.decay_tau(step, 0, opts.update_interval)
        s = schedule.fn(tau, n, opts.initial_sparsity, self.sparsity, **schedule.kwargs(opts))
        if opts.ems:
            s = max(0.0, s - schedules.mest_ems_extra_density(step, self.t_end, opts.update_interval))
        return float(s)

    def budgets(self, shapes: Sequence[tuple[int, int]], step: int | None = None) -> list[int]:
        """Each layer's exact link budget (layers of ``shapes`` ``(out, in)``) at ``step``, or at the
        final sparsity when ``step`` is None (MEST's EM&S core)."""
        sparsity = self.sparsity if step is None else self.sparsity_at(step)
        return list(topology.allocate_budgets(list(shapes), sparsity, distribution=self.options.distribution))

    def zeta(self, step: int) -> float:
        """Fraction of active links removed by the update at ``step``."""
        return schedules.zeta(step, self.options.zeta, self.t_end, anneal=self.options.zeta_anneal)

    def temperature(self, step: int) -> float:
        """Exponent T of a non-top-k removal selection at ``step`` (1.0 for top-k), from the registered
        ``temperature_schedule``, called with the options it declares it reads (``params``)."""
        opts = self.options
        if opts.removal_selection == "topk":
            return 1.0
        part = get_part("temperature_schedule", opts.temperature_schedule)
        return part.fn(step, self.t_end, **part.kwargs(opts))

    def is_update_step(self, step: int) -> bool:
        """True when a topology update runs after optimizer step ``step``: every ``update_interval``
        steps while ``step < T_end`` (``final_update="before_t_end"``) or ``step <= T_end``
        (``"at_t_end"``), :func:`schedules.is_update_step`."""
        opts = self.options
        return schedules.is_update_step(step, opts.update_interval, self.t_end, final_update=opts.final_update)

    def records_gradient(self, step: int) -> bool:
        """True when the backward pass of optimizer step ``step`` must record the dense gradient:
        one of the last ``grad_accumulation`` steps before a topology update of a method that reads it."""
        opts = self.options
        if not opts.needs_dense_gradient:
            return False
        next_update = math.ceil(step / opts.update_interval) * opts.update_interval
        return self.is_update_step(next_update) and next_update - step < opts.grad_accumulation
