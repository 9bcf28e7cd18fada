"""Checks of an engine state before :meth:`DynamicSparsity.load_state_dict` applies it.

A state is only valid for the run that wrote it: the same method, options, ``total_steps``,
sparsity and sparse layers of the same shapes. Everything is checked before anything changes, so a
refused state leaves the engine exactly as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from chtorch.dst.engine import DynamicSparsity

__all__ = ["STATE_VERSION", "check_state"]

STATE_VERSION = 1

_RUN_KEYS = ("version", "method", "sparsity", "total_steps", "seed", "step_count", "update_count", "options", "layers")
_LAYER_KEYS = ("shape", "target", "frozen", "ever_active", "history", "grad_sum", "grad_count", "last_overlap")


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


def check_state(engine: DynamicSparsity, state: Any) -> dict[str, dict[str, Any]]:
    """Validate ``state`` (a :meth:`DynamicSparsity.state_dict`) against ``engine`` and return its
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
    if not _same(state["method"], engine.method):
        raise ValueError(
            f"the sparsity state is from method {_show(state['method'])}, but this run uses {engine.method!r}; {fix}"
        )
    sparsity = state["sparsity"]
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or abs(float(sparsity) - engine.sparsity) > 1e-12
    ):
        raise ValueError(
            f"the sparsity state is for sparsity {_show(sparsity)}, but "
            f"this run uses {engine.sparsity}: resume with the same sparsity"
        )
    if not _same(state["total_steps"], engine.total_steps):
        raise ValueError(
            f"the sparsity state is for total_steps={_show(state['total_steps'])}, "
            f"but this run has {engine.total_steps}; {fix}"
        )
    mine = engine.options.to_dict()
    saved = state["options"]
    if not isinstance(saved, dict):
        raise ValueError(f"the sparsity state's options must be a dict, got {type(saved).__name__}")
    differ = sorted(k for k in set(mine) | set(saved) if not _same(saved.get(k, "<absent>"), mine.get(k, "<absent>")))
    if differ:
        shown = ", ".join(
            f"{k}: state {_show(saved.get(k, '<absent>'))}, run {mine.get(k, '<absent>')!r}" for k in differ[:5]
        )
        raise ValueError(f"the sparsity state is from other options ({shown}); {fix}")
    _count("step_count", state["step_count"])
    _count("update_count", state["update_count"])
    layers = state["layers"]
    if not isinstance(layers, dict):
        raise ValueError(f"the sparsity state's layers must be a dict, got {type(layers).__name__}")
    names = [layer.name for layer in engine.layers]
    if list(layers) != names:
        raise ValueError(f"the sparsity state is for layers {list(layers)}, but this model's sparse layers are {names}")
    entries: dict[str, dict[str, Any]] = {}
    for layer in engine.layers:
        entry = layers[layer.name]
        where = f"layer {layer.name!r}"
        if not isinstance(entry, dict) or any(key not in entry for key in _LAYER_KEYS):
            raise ValueError(f"{where}: the state entry must be a dict with {list(_LAYER_KEYS)}")
        shape = entry["shape"]
        if not isinstance(shape, (tuple, list)) or tuple(shape) != layer.shape:
            raise ValueError(f"{where}: saved shape {_show(shape)} != model shape {layer.shape} (another model)")
        overlap = entry["last_overlap"]
        if overlap is not None and (
            isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap <= 1
        ):
            raise ValueError(f"{where}: last_overlap must be None or a fraction in [0, 1], got {_show(overlap)}")
        if not isinstance(entry["frozen"], bool):
            raise ValueError(f"{where}: frozen must be a bool, got {_show(entry['frozen'])}")
        backend = entry.get("backend")  # absent in states written before backends could switch
        if backend not in (None, "masked", "sparse"):
            raise ValueError(f"{where}: backend must be 'masked' or 'sparse', got {_show(backend)}")
        capacity = entry.get("capacity")
        if capacity is not None:
            _count(f"{where}: capacity", capacity)
        flag = entry.get("early_stop_flag", False)  # absent in states written before the network-wide early stop
        if not isinstance(flag, bool):
            raise ValueError(f"{where}: early_stop_flag must be a bool, got {_show(flag)}")
        if (entry["history"] is None) != (layer.history is None):
            raise ValueError(
                f"{where}: history is {'absent' if entry['history'] is None else 'present'} "
                "in the state but not in this run"
            )
        links = entry.get("links")  # absent in states written before link counts were recorded
        entries[layer.name] = {
            "target": _count(f"{where}: target", entry["target"], layer.shape[0] * layer.shape[1]),
            "links": None if links is None else _count(f"{where}: links", links, layer.shape[0] * layer.shape[1]),
            "frozen": entry["frozen"],
            "ever_active": _tensor(f"{where}: ever_active", entry["ever_active"], layer.shape, ("bool",), False),
            "history": _tensor(f"{where}: history", entry["history"], layer.shape, ("float",), True),
            "grad_sum": _tensor(f"{where}: grad_sum", entry["grad_sum"], layer.shape, ("float",), True),
            "grad_count": _count(f"{where}: grad_count", entry["grad_count"]),
            "last_overlap": overlap,
            "early_stop_flag": flag,
        }
    return entries
