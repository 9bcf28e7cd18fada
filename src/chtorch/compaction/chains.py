"""Dead-neuron removal along chains of linear layers (the module docstring of :mod:`chtorch.compaction`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from chtorch.compaction._common import Activation, empty_linear, has_topology, layer_links, links_of, set_submodule

__all__ = ["find_dead_neurons", "compact"]


@dataclass
class _ChainState:
    names: list[str]
    weights: list[torch.Tensor]  # (out_i, in_i), zero off the mask
    masks: list[torch.Tensor]
    biases: list[torch.Tensor | None]
    alive: list[torch.Tensor]  # per hidden boundary b (output of layer b): bool (out_b,)
    bias_created: list[bool]


def _check_chains(model: nn.Module, chains: Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(chains, str) or (chains and isinstance(chains[0], str)):
        raise TypeError("chains must be a list of chains, each a list of module names, e.g. [['fc1', 'fc2', 'out']]")
    seen: set[str] = set()
    checked = []
    for chain in chains:
        chain = list(chain)
        if len(chain) < 2:
            raise ValueError(f"a chain needs at least two consecutive linear layers, got {chain}")
        for name in chain:
            if name in seen:
                raise ValueError(f"layer {name!r} appears in more than one chain (or twice in one)")
            seen.add(name)
            if layer_links(model.get_submodule(name)) is None:
                raise TypeError(f"layer {name!r} is a {type(model.get_submodule(name)).__name__}, not a linear layer")
        for a, b in zip(chain, chain[1:]):
            wa, wb = links_of(model, a)[0], links_of(model, b)[0]
            if wa.shape[0] != wb.shape[1]:
                raise ValueError(
                    f"chain break: {a!r} has {wa.shape[0]} outputs but {b!r} has {wb.shape[1]} inputs; "
                    "a chain lists layers whose outputs feed the next layer through an elementwise activation"
                )
        checked.append(chain)
    return checked


def _solve_chain(model: nn.Module, names: list[str], activation: Activation | None) -> _ChainState:
    """Remove dead hidden neurons of one chain to a fixed point (see the module docstring)."""
    weights, masks, biases = [], [], []
    for name in names:
        weight, mask, bias = links_of(model, name)
        weights.append(weight.clone())
        masks.append(mask.clone())
        biases.append(None if bias is None else bias.clone())
    alive = [torch.ones(w.shape[0], dtype=torch.bool, device=w.device) for w in weights[:-1]]
    bias_created = [False] * len(names)
    changed = True
    while changed:
        changed = False
        for b in range(len(names) - 1):
            nxt = b + 1
            no_out = alive[b] & ~masks[nxt].any(dim=0)
            no_in = alive[b] & ~masks[b].any(dim=1) & ~no_out
            if no_in.any():
                feeds = weights[nxt][:, no_in]  # (out_next, n_dead) outgoing weights of the dead neurons
                if (feeds != 0).any():
                    if activation is None:
                        raise ValueError(
                            f"{int(no_in.sum())} neuron(s) between {names[b]!r} and {names[nxt]!r} have outgoing "
                            "but no incoming links: they output the constant act(bias), which must be folded into "
                            f"{names[nxt]!r}'s bias. Pass activation=... (the chain's elementwise activation, "
                            "e.g. torch.relu)."
                        )
                    own_bias = biases[b]
                    pre = own_bias[no_in] if own_bias is not None else weights[b].new_zeros(int(no_in.sum()))
                    constant = activation(pre)
                    next_bias = biases[nxt]
                    if next_bias is None:
                        next_bias = weights[nxt].new_zeros(weights[nxt].shape[0])
                        bias_created[nxt] = True
                    biases[nxt] = next_bias + feeds @ constant
            dead = no_in | no_out
            if dead.any():
                changed = True
                alive[b] &= ~dead
                for tensor in (weights[b], masks[b]):
                    tensor[dead, :] = 0
                for tensor in (weights[nxt], masks[nxt]):
                    tensor[:, dead] = 0
    return _ChainState(names, weights, masks, biases, alive, bias_created)


def find_dead_neurons(
    model: nn.Module, chains: Sequence[Sequence[str]], activation: Activation | None = None
) -> dict[str, torch.Tensor]:
    """``{layer name: bool (out_features,)}`` - which output neurons of each non-final chain layer
    stay alive after dead-neuron removal to a fixed point. ``activation`` is only needed when a
    neuron with outgoing but no incoming links must be folded (see :func:`compact`)."""
    result = {}
    for names in _check_chains(model, chains):
        state = _solve_chain(model, names, activation)
        result.update({name: alive.clone() for name, alive in zip(names, state.alive)})
    return result


def compact(
    model: nn.Module,
    chains: Sequence[Sequence[str]],
    activation: Activation | None = None,
    *,
    inplace: bool = False,
    keep_masks: bool = True,
) -> nn.Module:
    """A copy of ``model`` whose chain layers are smaller dense ``nn.Linear`` layers without the
    dead hidden neurons; it computes the same outputs (up to float rounding of folded biases).

    Args:
        chains: e.g. ``[["fc1", "fc2", "fc3", "classifier"]]`` - module names of consecutive linear
            layers joined by elementwise activations (no normalisation or residual in between).
        activation: the chains' elementwise activation (e.g. ``torch.relu``); needed only to fold the
            constant output of neurons that have outgoing but no incoming links (a clear error says
            so when it is needed and missing).
        inplace: modify ``model`` itself instead of a deep copy.
        keep_masks: give compacted layers that had a topology a sliced ``weight_mask`` buffer
            (so :func:`to_sparse_inference` and :func:`export_report` still see the links).

    Input features of a chain's first layer and outputs of its last layer are never removed, so
    the model's interface is unchanged. Shapes: layer ``i`` becomes
    ``(alive_i, alive_{i-1})`` where ``alive_{-1} = in_features`` and ``alive_last = out_features``.
    """
    chains = _check_chains(model, chains)
    states = [_solve_chain(model, names, activation) for names in chains]
    target = model if inplace else copy.deepcopy(model)
    for state in states:
        for i, name in enumerate(state.names):
            old = model.get_submodule(name)
            weight, mask, bias = state.weights[i], state.masks[i], state.biases[i]
            rows = state.alive[i] if i < len(state.names) - 1 else slice(None)
            cols = state.alive[i - 1] if i > 0 else slice(None)
            weight, mask = weight[rows][:, cols], mask[rows][:, cols]
            bias = None if bias is None else bias[rows]
            requires_grad = next(iter(old.parameters()), torch.empty(0)).requires_grad
            layer = empty_linear(weight.shape[1], weight.shape[0], bias is not None, weight.dtype)
            layer.weight = nn.Parameter(weight.contiguous(), requires_grad=requires_grad)
            if bias is not None:
                layer.bias = nn.Parameter(bias.contiguous(), requires_grad=requires_grad)
            if keep_masks and has_topology(old):
                layer.register_buffer("weight_mask", mask.contiguous(), persistent=True)
            layer.train(old.training)
            set_submodule(target, name, layer)
    return target
