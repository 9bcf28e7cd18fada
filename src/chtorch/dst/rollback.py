"""All or nothing: what ``sparsify`` changes on a model and an optimizer, and how to undo it.

Building the engine writes to objects the user owns: a ``weight_mask`` buffer on every selected
layer, masked (or re-drawn) weights and gradients, masked optimizer moments, tensor hooks, an
optimizer post-hook, and for the sparse backend new modules and new optimizer parameters. A failure
half-way (an initialiser that raises, a layer the sparse backend refuses) must leave all of them as
they were, so the user can correct the call and try again: ``sparsify`` is atomic.
:class:`Snapshot` records them before the first write and :meth:`Snapshot.restore` puts them back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from chtorch.dst.scope import layer_weight

__all__ = ["Snapshot"]


def _copy(value: Any) -> Any:
    return value.detach().clone() if torch.is_tensor(value) else value


class Snapshot:
    """The state of ``modules`` (name -> the selected layer) and ``optimizer`` before set-up.

    Weights and gradients are copied (they are written in place); the module objects, the
    optimizer's parameter lists and its state entries are kept by reference plus a copy of each
    state tensor, so :meth:`restore` gives back the very same objects with the same bits.
    """

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.modules = dict(modules)
        self.optimizer = optimizer
        weights = {name: layer_weight(m) for name, m in modules.items()}
        self.weights = {name: w.detach().clone() for name, w in weights.items()}
        self.grads = {name: None if w.grad is None else w.grad.detach().clone() for name, w in weights.items()}
        self.groups = [
            {key: (list(v) if key == "params" else v) for key, v in group.items()} for group in optimizer.param_groups
        ]
        self.state_keys = list(optimizer.state.keys())
        self.state = {id(p): {k: (v, _copy(v)) for k, v in optimizer.state[p].items()} for p in self.state_keys}
        self.hooks: list[Any] = []

    def track(self, handle: Any) -> Any:
        """Remember a hook handle so that :meth:`restore` removes it."""
        self.hooks.append(handle)
        return handle

    @torch.no_grad()
    def restore(self) -> None:
        """Undo every change made since the snapshot was taken."""
        for handle in self.hooks:
            handle.remove()
        for name, module in self.modules.items():
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if parent._modules.get(attr) is not module:  # the sparse backend replaced it
                parent._modules[attr] = module
            module._buffers.pop("weight_mask", None)
            weight = layer_weight(module)
            weight.copy_(self.weights[name])
            saved = self.grads[name]
            if saved is None:
                weight.grad = None
            elif weight.grad is None:
                weight.grad = saved
            else:
                weight.grad.copy_(saved)
        for group, saved_group in zip(self.optimizer.param_groups, self.groups):
            group.clear()
            group.update(saved_group)
        del self.optimizer.param_groups[len(self.groups) :]
        current = self.optimizer.state
        kept = {id(p) for p in self.state_keys}
        for key in [k for k in current if id(k) not in kept]:
            del current[key]
        for p in self.state_keys:
            entry = current[p]
            entry.clear()
            for key, (original, copy) in self.state[id(p)].items():
                if torch.is_tensor(original):
                    original.copy_(copy)  # the same tensor object, with its bits back
                entry[key] = original
