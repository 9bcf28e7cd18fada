"""The registries of the parts a method is made of, one per option that names a part.

Option → registry: how a part is called.

- ``init`` → :data:`chtorch.topology.INITIALIZERS`: ``fn(n_out, n_in, n_links=, generator=, **init_options)``
- ``weight_init`` → :data:`WEIGHT_INITS`: ``fn(weight, mask, generator=)`` (in place)
- ``removal``, ``prune_score`` → :data:`REMOVALS`: ``fn(weight, mask, *, grad=None, **params)`` → scores
- ``regrowth`` → :data:`REGROWTHS`: ``fn(keep, *, grad=None, **params)`` → scores
- ``removal_selection``, ``regrowth_selection`` → :data:`SELECTIONS`:
  ``fn(scores, k, generator, *, temperature=, floor=)`` → indices
- ``density_schedule`` → :data:`DENSITY_SCHEDULES`: ``fn(tau, n, s_i, s_f, **params)`` → sparsity
- ``temperature_schedule`` → :data:`TEMPERATURE_SCHEDULES`: ``fn(step, t_end, **params)`` → T (the δ
  schedules declare ``params={"start_delta": "delta_start", "end_delta": "delta_end"}``)
- ``regrown_init`` → :data:`REGROWN_INITS`: ``fn(history, new)`` → initial values

Each part declares what it needs (:class:`chtorch._registry.Part`): ``"dense_gradient"`` (the engine
records the dense gradient before an update; the truly sparse backend cannot serve it),
``"weight_history"`` (the engine remembers removed weights), ``"live_neurons"`` (regrowth only between
neurons that keep links), ``"input_correlation"`` (CSTI). ``SparsityOptions.needs()`` collects them over
the parts an options record uses; the options a part declares in ``params`` are the ones it reads, so
setting one while the part does not run is an error (:mod:`chtorch.dst.reads`). A user's part
registered here (or with :func:`register_part`) is a valid option value for :func:`chtorch.sparsify`,
a config's ``sparsity.options`` and the HF callback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from chtorch._registry import Part, Registry
from chtorch.topology.registry import INITIALIZERS

__all__ = [
    "SELECTIONS",
    "REMOVALS",
    "REGROWTHS",
    "DENSITY_SCHEDULES",
    "TEMPERATURE_SCHEDULES",
    "WEIGHT_INITS",
    "REGROWN_INITS",
    "KINDS",
    "registry",
    "register_part",
    "get_part",
    "part_names",
    "parts",
]

SELECTIONS = Registry("selection", "selection rule")
REMOVALS = Registry("removal", "removal score")
REGROWTHS = Registry("regrowth", "regrowth score")
DENSITY_SCHEDULES = Registry("density_schedule", "density schedule")
TEMPERATURE_SCHEDULES = Registry("temperature_schedule", "temperature schedule")
WEIGHT_INITS = Registry("weight_init", "weight initialisation")
REGROWN_INITS = Registry("regrown_init", "regrown-weight initialisation")

#: Kinds of part, in the order ``chtorch methods -v`` lists them.
KINDS = (
    "topology",
    "weight_init",
    "removal",
    "selection",
    "temperature_schedule",
    "regrowth",
    "regrown_init",
    "density_schedule",
)

_BUILTIN_MODULES = (
    "chtorch.topology",
    "chtorch.dst.sampling",
    "chtorch.dst.removal",
    "chtorch.dst.regrowth",
    "chtorch.dst.schedules",
    "chtorch.dst.initial",
    "chtorch.dst.update",
)
_loaded = False


def _load_builtins() -> None:
    """Import the modules whose parts register themselves (once)."""
    global _loaded
    if _loaded:
        return
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    _loaded = True


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`), with the built-in parts loaded."""
    _load_builtins()
    if kind == "topology":
        return INITIALIZERS
    table = {
        "selection": SELECTIONS,
        "removal": REMOVALS,
        "regrowth": REGROWTHS,
        "density_schedule": DENSITY_SCHEDULES,
        "temperature_schedule": TEMPERATURE_SCHEDULES,
        "weight_init": WEIGHT_INITS,
        "regrown_init": REGROWN_INITS,
    }
    if kind not in table:
        raise ValueError(f"unknown kind of part {kind!r}; kinds: {', '.join(KINDS)}")
    return table[kind]


def register_part(
    kind: str, name: str, *aliases: str, **declarations: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a user's part of ``kind`` as ``name``, e.g.::

        @chtorch.register_part("removal", "abs_times_age", summary="|W| weighted by link age")
        def abs_times_age(weight, mask, *, grad=None):
            return weight.abs() * mask

        chtorch.sparsify(model, optimizer, method="chts", removal="abs_times_age", total_steps=n)

    ``declarations``: ``summary``, ``needs`` (e.g. ``("dense_gradient",)``), ``params`` (keyword →
    option name), ``flags``. See the module docs for each kind's call signature."""
    return registry(kind).register(name, *aliases, **declarations)


def get_part(kind: str, name: str) -> Part:
    """The declarations of part ``name`` of ``kind``."""
    return registry(kind).part(name)


def part_names(kind: str) -> tuple[str, ...]:
    """Canonical names of the registered parts of ``kind``."""
    return registry(kind).names()


def parts() -> dict[str, tuple[Part, ...]]:
    """Every registered part by kind (for ``chtorch methods -v``)."""
    return {kind: registry(kind).parts() for kind in KINDS}
