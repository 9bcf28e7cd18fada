"""Masks written from outside the engine: ``model.load_state_dict`` or an assignment between steps.

The ``weight_mask`` buffers live in ``model.state_dict()``, so a user can load a mask the engine did
not choose. :class:`MaskWatch` notices (a mask's version counter or identity moved, or a
``load_state_dict`` pre-hook saw a non-bool mask before torch converted it into the bool buffer)
and the engine's next ``step()`` refuses a mask that is not bool, has another shape, or holds
another number of links than the engine left in it, naming the layer. The count
is the one the engine last saw, or the one its loaded state recorded: a layer may hold fewer links
than its budget (MEST EM&S does not compensate percolated links, and a regrowth can run out of
candidates), so the budget is only an upper bound. Unchanged masks cost a dict lookup per layer and step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["MaskWatch"]

_FIX = "load the model state the engine state belongs to (a checkpoint's own weight_mask), or build a new engine"


class MaskWatch:
    """Remembers each layer's mask as the engine left it and checks it before the next step."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, int]] = {}
        self.links: dict[str, int | None] = {}  # the link count each mask must hold; None: at most the budget
        self.loaded_dtypes: dict[str, torch.dtype] = {}

    def remember(self, layers: Sequence[Any]) -> None:
        """Record every layer's mask (identity, version counter, link count) as valid."""
        self.seen = {layer.name: (id(layer.mask), layer.mask._version) for layer in layers}
        self.links = {layer.name: int(torch.count_nonzero(layer.mask)) for layer in layers}
        self.loaded_dtypes.clear()

    def expect(self, links: dict[str, int | None]) -> None:
        """The link counts a loaded engine state recorded (None where a state written before they
        were recorded: then any count up to the budget passes); the next :meth:`check` holds the
        masks to them, whatever loaded them."""
        self.links.update(links)
        self.seen.clear()

    def loader(self, name: str) -> Callable[..., None]:
        """A module ``load_state_dict`` pre-hook noting a non-bool ``weight_mask`` of layer ``name``."""
        return _LoadHook(self, name)

    def check(self, layers: Sequence[Any]) -> None:
        """Raise ``ValueError`` naming the first layer whose changed mask is not a bool tensor of the
        layer's shape with the link count the engine expects; otherwise remember the changed masks as
        valid (unchanged ones cost a lookup: no count on the training step's path)."""
        for layer in layers:
            mask = getattr(layer.module, "weight_mask", None)
            unchanged = torch.is_tensor(mask) and self.seen.get(layer.name) == (id(mask), mask._version)
            if unchanged and layer.name not in self.loaded_dtypes:
                continue
            if not torch.is_tensor(mask):
                raise ValueError(
                    f"layer {layer.name!r} has no weight_mask tensor any more (got {type(mask).__name__}); {_FIX}"
                )
            dtype = self.loaded_dtypes.get(layer.name, mask.dtype)
            if dtype != torch.bool:
                raise ValueError(
                    f"layer {layer.name!r}: the weight_mask loaded into the model is {dtype}, not torch.bool; {_FIX}"
                )
            if tuple(mask.shape) != layer.shape:
                raise ValueError(
                    f"layer {layer.name!r}: weight_mask has shape "
                    f"{tuple(mask.shape)}, the layer is {layer.shape}; {_FIX}"
                )
            links = int(torch.count_nonzero(mask))
            expected = self.links.get(layer.name)
            if expected is None and links > layer.target:
                raise ValueError(
                    f"layer {layer.name!r}: weight_mask holds {links} "
                    f"links but the layer's budget is {layer.target}; {_FIX}"
                )
            if expected is not None and links != expected:
                raise ValueError(
                    f"layer {layer.name!r}: weight_mask holds {links} links but the engine left it with {expected} "
                    f"(budget {layer.target}); {_FIX}"
                )
            self.seen[layer.name] = (id(mask), mask._version)
            self.links[layer.name] = links
            self.loaded_dtypes.pop(layer.name, None)


class _LoadHook:
    """:meth:`MaskWatch.loader`'s hook. A class rather than a closure so that a sparsified model can
    still be pickled (``torch.save(model)``) or deep-copied; the copy gets a no-op in its place, since
    the engine watches its own model only."""

    def __init__(self, watch: MaskWatch, name: str) -> None:
        self.watch = watch
        self.name = name

    def __call__(self, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        value = state_dict.get(prefix + "weight_mask")
        if torch.is_tensor(value) and value.dtype != torch.bool:
            self.watch.loaded_dtypes[self.name] = value.dtype

    def __reduce__(self) -> tuple[Any, tuple]:
        return (_detached, ())


def _detached() -> Callable[..., None]:
    return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    """The hook a copied model carries instead of the engine's watch."""
