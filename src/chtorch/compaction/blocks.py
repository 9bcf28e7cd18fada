"""Compaction inside Transformer blocks: the gated feed-forward (SwiGLU) and an account of attention.

:func:`chtorch.compaction.compact` cuts dead neurons out of *chains* (layer → elementwise activation
→ layer). A LLaMA feed-forward is not a chain: ``down(silu(gate(x)) * up(x))``. Its hidden neuron
``j`` carries nothing, whatever the input, when ``down`` has no link out of it, or ``gate`` or
``up`` has no link into it and no bias there (``silu(0) = 0`` and ``0 · u = 0``). Those neurons are
what percolation frees in a gated block (Zhang et al., NeurIPS 2025, arXiv:2501.19107, App. F:
gate|up → down chains); :func:`compact_gated` removes them with identical outputs.

Attention dimensions are counted, not cut (:func:`attention_notes`): a q/k dimension that either
projection never writes adds 0 to every score, and a v dimension that ``v`` never writes or ``o``
never reads adds nothing to the output; but removing them would give heads unequal sizes (and the
q/k head size sets the softmax scale), which the models' attention does not support.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from chtorch.compaction._common import empty_linear, has_topology, layer_links, links_of, set_submodule

__all__ = ["find_gated_blocks", "compact_gated", "attention_notes"]


def _siblings(model: nn.Module, names: Sequence[str]) -> list[list[str]]:
    modules = dict(model.named_modules())
    found = []
    for parent, _ in model.named_modules():
        prefix = f"{parent}." if parent else ""
        full = [prefix + n for n in names]
        if all(f in modules and layer_links(modules[f]) is not None for f in full):
            found.append(full)
    return found


def find_gated_blocks(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(gate, up, down)`` module names of every gated feed-forward (``gate_proj``, ``up_proj``,
    ``down_proj`` siblings, the LLaMA / Hugging Face naming)."""
    return [(gate, up, down) for gate, up, down in _siblings(model, ("gate_proj", "up_proj", "down_proj"))]


def _unwritten(weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Output rows that are exactly 0 for every input: no link and no (non-zero) bias."""
    empty = ~mask.any(dim=1)
    return empty if bias is None else empty & (bias == 0)


def gated_alive(model: nn.Module, block: Sequence[str]) -> torch.Tensor:
    """Bool ``(d_ff,)``: the hidden neurons of a gated block that can change its output."""
    gate, up, down = (links_of(model, n) for n in block)
    return ~(_unwritten(*gate) | _unwritten(*up) | ~down[1].any(dim=0))


def compact_gated(model: nn.Module, blocks: Sequence[Sequence[str]], *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` whose gated feed-forward blocks lost their dead hidden neurons
    (see the module docs); the outputs are unchanged. ``gate``/``up`` become ``(alive, d_model)``,
    ``down`` ``(d_model, alive)``; layers that had a topology keep a sliced ``weight_mask``."""
    target = model if inplace else copy.deepcopy(model)
    for block in blocks:
        alive = gated_alive(model, block)
        for i, name in enumerate(block):
            old = model.get_submodule(name)
            weight, mask, bias = links_of(model, name)
            if i < 2:
                weight, mask, bias = weight[alive], mask[alive], None if bias is None else bias[alive]
            else:
                weight, mask = weight[:, alive], mask[:, alive]
            layer = empty_linear(weight.shape[1], weight.shape[0], bias is not None, weight.dtype)
            requires_grad = next(iter(old.parameters()), torch.empty(0)).requires_grad
            layer.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=requires_grad)
            if bias is not None:
                layer.bias = nn.Parameter(bias.detach().clone().contiguous(), requires_grad=requires_grad)
            if has_topology(old):
                layer.register_buffer("weight_mask", mask.clone().contiguous(), persistent=True)
            layer.train(old.training)
            set_submodule(target, name, layer)
    return target


def attention_notes(model: nn.Module) -> list[str]:
    """One line per kind of attention projection group, saying how many dimensions carry nothing
    and that they stay (stored as they are, sparse where the layers are)."""
    qk_dead = qk_total = vo_dead = vo_total = 0
    blocks = _siblings(model, ("q_proj", "k_proj", "v_proj", "o_proj"))
    for q, k, v, o in blocks:
        (qw, qm, qb), (kw, km, kb) = links_of(model, q), links_of(model, k)
        (vw, vm, vb), (_, om, _) = links_of(model, v), links_of(model, o)
        if qm.shape[0] == km.shape[0]:
            qk_dead += int((_unwritten(qw, qm, qb) | _unwritten(kw, km, kb)).sum())
            qk_total += qm.shape[0]
        if vm.shape[0] == om.shape[1]:
            vo_dead += int((_unwritten(vw, vm, vb) | ~om.any(dim=0)).sum())
            vo_total += vm.shape[0]
    if not blocks:
        return []
    return [
        f"attention ({len(blocks)} blocks): {qk_dead} of {qk_total} "
        f"q/k and {vo_dead} of {vo_total} v/o dimensions carry nothing; "
        "not compacted (heads must keep equal sizes, and the q/k head size sets the softmax scale)"
    ]
