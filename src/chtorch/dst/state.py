"""Checks of an engine state before :meth:`DynamicSparsity.load_state_dict` applies it.

A state is only valid for the run that wrote it: the same method, options, ``total_steps``,
sparsity and sparse layers of the same shapes. Everything is checked before anything changes, so a
refused state leaves the engine exactly as it was.

The per-layer entries are the fields of :class:`~chtorch.dst.book.LayerBook`, checked by each field's
declared kind, plus what the layer itself says (shape, link count, backend, capacity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from chtorch.dst.book import LayerBook
from chtorch.dst.layer import BACKENDS, Layer
from chtorch.dst.options import SparsityOptions

__all__ = ["STATE_VERSION", "check_state", "layer_state", "RUN_KEYS"]

STATE_VERSION = 1

#: What a state names besides ``version`` and ``layers``: the run it belongs to and the engine's counters.
RUN_KEYS = ("method", "sparsity", "total_steps", "seed", "step_count", "update_count", "options")
_RUN_KEYS = ("version", *RUN_KEYS, "layers")
_BOOK = dataclasses.fields(LayerBook)
# Every book field an entry must hold (fields that older states lack declare their value when absent).
_LAYER_KEYS = ("shape", *(f.name for f in _BOOK if f.metadata["absent"] is dataclasses.MISSING))


def layer_state(layer: Layer) -> dict[str, Any]:
    """One layer's state entry: its book, its shape, its link count (may be below the target under
    EM&S or percolation), its backend and, for a backend whose storage has a size, that capacity."""
    return {
        "shape": layer.shape,
        **layer.book.to_state(),
        "links": int(torch.count_nonzero(layer.mask)),
        "backend": layer.backend,
        "capacity": layer.capacity(),
    }


def _show(value: Any) -> str:
    """A one-line, bounded rendering of a value read from a state (messages stay one line)."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _same(a: Any, b: Any) -> bool:
    """Equality of plain option values (a tensor or another odd object in a state is never equal)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return False
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # an object whose == raises or is not a truth value
        return False


def _count(where: str, value: Any, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (high is not None and value > high):
        limit = f" at most {high}" if high is not None else ""
        raise ValueError(f"{where} must be an integer >= 0{limit}, got {type(value).__name__} {_show(value)}")
    return value


def _tensor(
    where: str, value: Any, shape: tuple[int, int], kinds: tuple[str, ...], optional: bool
) -> torch.Tensor | None:
    if value is None and optional:
        return None
    if not torch.is_tensor(value) or tuple(value.shape) != shape:
        got = f"shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{where} must be a tensor of shape {shape}{' or None' if optional else ''}, got {got}")
    if ("bool" in kinds and value.dtype == torch.bool) or ("float" in kinds and value.is_floating_point()):
        return value
    raise ValueError(f"{where} must be a {' or '.join(kinds)} tensor, got {value.dtype}")


def check_state(state: Any, run: Mapping[str, Any], layers: Sequence[Layer]) -> dict[str, dict[str, Any]]:
    """Validate ``state`` (a :meth:`DynamicSparsity.state_dict`) against the ``run`` it is loaded into
    (``method``, ``sparsity``, ``total_steps`` and ``options`` as a dict) and its ``layers``; return the
    per-layer entries with checked types; raise ``ValueError`` naming the first mismatch."""
    if not isinstance(state, dict):
        raise ValueError(f"a DynamicSparsity state must be a dict (from sp.state_dict()), got {type(state).__name__}")
    if not _same(state.get("version"), STATE_VERSION):
        raise ValueError(
            f"not a chtorch DynamicSparsity state (version {_show(state.get('version'))}, expected {STATE_VERSION})"
        )
    missing = [key for key in _RUN_KEYS if key not in state]
    if missing:
        raise ValueError(f"the sparsity state lacks {missing}: it is not a complete sp.state_dict()")
    fix = "resume with the run's own settings, or start a new run"
    if not _same(state["method"], run["method"]):
        raise ValueError(
            f"the sparsity state is from method {_show(state['method'])}, but this run uses {run['method']!r}; {fix}"
        )
    sparsity = state["sparsity"]
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or abs(float(sparsity) - run["sparsity"]) > 1e-12
    ):
        raise ValueError(
            f"the sparsity state is for sparsity {_show(sparsity)}, but this run uses {run['sparsity']}: "
            "resume with the same sparsity"
        )
    if not _same(state["total_steps"], run["total_steps"]):
        raise ValueError(
            f"the sparsity state is for total_steps={_show(state['total_steps'])}, "
            f"but this run has {run['total_steps']}; {fix}"
        )
    mine = run["options"]
    saved = state["options"]
    if not isinstance(saved, dict):
        raise ValueError(f"the sparsity state's options must be a dict, got {type(saved).__name__}")
    # an option newer than the state reads as its default there (a state stays loadable when options grow)
    saved = {**{k: v for k, v in SparsityOptions().to_dict().items() if k not in saved}, **saved}
    differ = sorted(k for k in set(mine) | set(saved) if not _same(saved.get(k, "<absent>"), mine.get(k, "<absent>")))
    if differ:
        shown = ", ".join(
            f"{k}: state {_show(saved.get(k, '<absent>'))}, run {mine.get(k, '<absent>')!r}" for k in differ[:5]
        )
        raise ValueError(f"the sparsity state is from other options ({shown}); {fix}")
    _count("step_count", state["step_count"])
    if not isinstance(state.get("past_total_steps", False), bool):
        raise ValueError(
            f"the sparsity state's past_total_steps must be a bool, got {_show(state.get('past_total_steps'))}"
        )
    _count("update_count", state["update_count"])
    saved_layers = state["layers"]
    if not isinstance(saved_layers, dict):
        raise ValueError(f"the sparsity state's layers must be a dict, got {type(saved_layers).__name__}")
    names = [layer.name for layer in layers]
    if list(saved_layers) != names:
        raise ValueError(
            f"the sparsity state is for layers {list(saved_layers)}, but this model's sparse layers are {names}"
        )
    entries: dict[str, dict[str, Any]] = {}
    for layer in layers:
        entry = saved_layers[layer.name]
        where = f"layer {layer.name!r}"
        if not isinstance(entry, dict) or any(key not in entry for key in _LAYER_KEYS):
            raise ValueError(f"{where}: the state entry must be a dict with {list(_LAYER_KEYS)}")
        shape = entry["shape"]
        if not isinstance(shape, (tuple, list)) or tuple(shape) != layer.shape:
            raise ValueError(f"{where}: saved shape {_show(shape)} != model shape {layer.shape} (another model)")
        backend = entry.get("backend")  # absent in states written before backends could switch
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"{where}: backend must be one of {list(BACKENDS)}, got {_show(backend)}")
        capacity = entry.get("capacity")
        if capacity is not None:
            _count(f"{where}: capacity", capacity)
        links = entry.get("links")  # absent in states written before link counts were recorded
        positions = layer.shape[0] * layer.shape[1]
        checked = {"links": None if links is None else _count(f"{where}: links", links, positions)}
        for f in _BOOK:
            value = entry.get(f.name, f.metadata["absent"])
            checked[f.name] = _check_field(f"{where}: {f.name}", f.metadata["kind"], value, layer.shape)
        if (checked["history"] is None) != (layer.history is None):
            raise ValueError(
                f"{where}: history is {'absent' if checked['history'] is None else 'present'} "
                "in the state but not in this run"
            )
        entries[layer.name] = checked
    return entries


def _check_field(where: str, kind: str, value: Any, shape: tuple[int, int]) -> Any:
    """``value`` checked as a :class:`LayerBook` field of ``kind`` (see :data:`chtorch.dst.book.KINDS`)."""
    if kind == "count":
        return _count(where, value, shape[0] * shape[1] if where.endswith(": target") else None)
    if kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be a bool, got {_show(value)}")
        return value
    if kind == "fraction":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise ValueError(f"{where} must be None or a fraction in [0, 1], got {_show(value)}")
        return value
    if kind == "mask":
        return _tensor(where, value, shape, ("bool",), False)
    if kind == "floats":
        return _tensor(where, value, shape, ("float",), True)
    raise AssertionError(f"LayerBook field kind {kind!r} has no check")
