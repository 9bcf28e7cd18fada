"""Network percolation: remove the links of neurons that lost all their links on one side.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), Fig. 1 (c1)–(c2) and App. F. A hidden neuron whose
incoming links are all gone cannot send a signal, and one whose outgoing links are all gone cannot
influence the output: their remaining links are dead weight. Removing them can strand further
neurons, so the rule is applied until nothing changes (a fixpoint). The budget freed here is regrown
on live neurons by the regrowth step, so active-neuron counts shrink over training (the paper's ANP).

Couplings say which neurons are shared between layers:

- ``chain(a, b, c, ...)``: the outputs of ``a`` are the inputs of ``b`` (and so on), through an
  elementwise function — consecutive layers of an MLP, ``v_proj → o_proj``, ``up_proj → down_proj``.
  Hidden neuron ``h`` is alive iff row ``h`` of ``a`` and column ``h`` of ``b`` both hold links.
- ``rows(a, b, ...)``: the layers' output neurons are used together (a dot product of ``q`` and ``k``
  rows, the SwiGLU product of ``gate`` and ``up``): row ``h`` is alive iff it has links in every one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chtorch.dst.options import OptionError
from chtorch.dst.scope import layer_shape
from chtorch.masks import in_degree, out_degree

__all__ = [
    "Coupling",
    "chain",
    "rows",
    "percolate",
    "infer_couplings",
    "resolve_couplings",
    "BlockPairs",
    "CONVENTIONAL_PAIRS",
    "active_neuron_fraction",
    "active_neuron_count",
    "ANP_COUNTS",
]


@dataclass(frozen=True)
class Coupling:
    """A set of layers that share neurons; ``kind`` is "chain" or "rows" (see the module docs)."""

    kind: str
    layers: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("chain", "rows"):
            raise ValueError(f"coupling kind must be 'chain' or 'rows', got {self.kind!r}")
        if len(self.layers) < 2:
            raise ValueError(f"a coupling needs at least two layers, got {self.layers}")


def chain(*layers: str) -> Coupling:
    """Consecutive layers: outputs of each feed the inputs of the next."""
    return Coupling("chain", tuple(layers))


def rows(*layers: str) -> Coupling:
    """Layers whose output rows are only useful together (q/k, gate/up)."""
    return Coupling("rows", tuple(layers))


def _check(couplings: Sequence[Coupling], masks: Mapping[str, torch.Tensor]) -> None:
    for c in couplings:
        for name in c.layers:
            if name not in masks:
                raise ValueError(
                    f"percolation coupling {c} names {name!r}, which is "
                    f"not a sparsified layer; sparse layers: {sorted(masks)}"
                )
        if c.kind == "chain":
            for a, b in zip(c.layers, c.layers[1:]):
                if masks[a].shape[0] != masks[b].shape[1]:
                    raise ValueError(
                        f"chain {a} -> {b}: {a} has {masks[a].shape[0]} outputs but {b} has {masks[b].shape[1]} inputs"
                    )
        else:
            sizes = {masks[n].shape[0] for n in c.layers}
            if len(sizes) != 1:
                raise ValueError(f"rows coupling {c.layers}: output sizes differ {sorted(sizes)}")


def percolate(masks: Mapping[str, torch.Tensor], couplings: Sequence[Coupling]) -> dict[str, torch.Tensor]:
    """Masks with every link of a dead neuron removed, iterated to a fixpoint.

    ``masks``: name → bool ``(n_out, n_in)``. Returns new tensors for every name (inputs untouched).
    Layers named in no coupling come back unchanged.
    """
    _check(couplings, masks)
    out = {name: m.clone() for name, m in masks.items()}
    changed = True
    while changed:
        changed = False
        for c in couplings:
            if c.kind == "chain":
                for a, b in zip(c.layers, c.layers[1:]):
                    alive = (out_degree(out[a]) > 0) & (in_degree(out[b]) > 0)
                    dead = ~alive
                    if bool((out[a][dead].any()) or (out[b][:, dead].any())):
                        out[a][dead] = False
                        out[b][:, dead] = False
                        changed = True
            else:
                alive = torch.ones(out[c.layers[0]].shape[0], dtype=torch.bool, device=out[c.layers[0]].device)
                for name in c.layers:
                    alive &= out_degree(out[name]) > 0
                dead = ~alive
                for name in c.layers:
                    if bool(out[name][dead].any()):
                        out[name][dead] = False
                        changed = True
    return out


@dataclass(frozen=True)
class BlockPairs:
    """Child names that identify coupled layers inside one parent module: ``rows`` pairs share their
    output neurons, in ``chains`` pairs the first feeds the second. A model declares its own as a
    ``percolation_pairs`` attribute (a :class:`BlockPairs` or a mapping with ``rows`` and ``chains``)."""

    rows: tuple[tuple[str, str], ...] = ()
    chains: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, declared: Any) -> BlockPairs:
        if isinstance(declared, BlockPairs):
            return declared
        if isinstance(declared, Mapping) and set(declared) <= {"rows", "chains"}:
            return cls(tuple(map(tuple, declared.get("rows", ()))), tuple(map(tuple, declared.get("chains", ()))))
        raise ValueError(
            "percolation_pairs must be a chtorch.dst.BlockPairs or a mapping with 'rows' and 'chains', "
            f"got {declared!r}"
        )


#: The naming conventions of models that declare no ``percolation_pairs`` (Hugging Face LLaMA, OPT,
#: GPT-2): q/k and gate/up rows; v → o, gate|up → down, fc1 → fc2, c_fc → c_proj chains. GPT-2's fused
#: ``attn.c_attn`` (q|k|v) stays uncoupled. Anything else falls back to an MLP chain.
CONVENTIONAL_PAIRS = BlockPairs(
    rows=(("q_proj", "k_proj"), ("gate_proj", "up_proj")),
    chains=(
        ("v_proj", "o_proj"),
        ("gate_proj", "down_proj"),
        ("up_proj", "down_proj"),
        ("w_1", "w_2"),
        ("fc1", "fc2"),
        ("c_fc", "c_proj"),
    ),
)


def infer_couplings(model: nn.Module, selected: Iterable[str], pairs: BlockPairs | None = None) -> list[Coupling]:
    """Couplings for the selected Linear layers of ``model``, found by name.

    Blocks are recognised by their child names: ``pairs``, else the model's own ``percolation_pairs``
    declaration, else :data:`CONVENTIONAL_PAIRS`; a pair is coupled only when the shapes agree
    (grouped-query attention with fewer key heads is left uncoupled). When no such block is found,
    the selected layers form one MLP chain, split wherever a layer's outputs do not match the next
    one's inputs.
    """
    declared = getattr(model, "percolation_pairs", None)
    if pairs is None:
        pairs = BlockPairs.of(declared) if declared is not None else CONVENTIONAL_PAIRS
    selected = list(selected)
    chosen = set(selected)
    modules = dict(model.named_modules())
    found: list[Coupling] = []
    parents = sorted({name.rpartition(".")[0] for name in selected})
    for parent in parents:
        prefix = f"{parent}." if parent else ""
        for group, make in ((pairs.rows, rows), (pairs.chains, chain)):
            for a, b in group:
                na, nb = prefix + a, prefix + b
                if na in chosen and nb in chosen:
                    (a_out, _), (b_out, b_in) = layer_shape(modules[na]), layer_shape(modules[nb])
                    ok = a_out == b_out if make is rows else a_out == b_in
                    if ok:
                        found.append(make(na, nb))
    if found:
        return found
    chains: list[Coupling] = []
    current = [selected[0]] if selected else []
    for prev, name in zip(selected, selected[1:]):
        if layer_shape(modules[prev])[0] == layer_shape(modules[name])[1]:
            current.append(name)
        else:
            if len(current) > 1:
                chains.append(chain(*current))
            current = [name]
    if len(current) > 1:
        chains.append(chain(*current))
    return chains


def active_neuron_fraction(mask: torch.Tensor) -> tuple[float, float]:
    """(fraction of input neurons with a link, fraction of output neurons with a link)."""
    n_out, n_in = mask.shape
    return (
        int(torch.count_nonzero(mask.any(dim=0))) / max(1, n_in),
        int(torch.count_nonzero(mask.any(dim=1))) / max(1, n_out),
    )


ANP_COUNTS = ("official", "both_sides")


def active_neuron_count(
    masks: Mapping[str, torch.Tensor], couplings: Iterable[Coupling] = (), count: str = "official"
) -> tuple[int, int]:
    """(active, total) neurons of the sparse layers' bipartite graphs — the paper's ANP is
    ``active / total``.

    Neurons are counted once per neuron layer: along a ``chain(a, b, c)`` the groups are the inputs
    of ``a``, the hidden neurons between ``a`` and ``b`` and between ``b`` and ``c``, and the outputs
    of ``c``. A hidden neuron is active when it keeps an *outgoing* link (``count="official"``, the
    official MLP code's ``--record_anp``: each sparse layer's inputs with a link, plus the last
    layer's outputs) or a link on *both* sides (``count="both_sides"``). The two agree on percolated
    masks; they differ after a regrowth that linked a neuron on one side only. A layer outside any
    chain contributes its inputs and its outputs (each active when it keeps a link).
    E.g. chain a → b with hidden neuron h linked only into b: official counts h, both_sides does not.
    """
    if count not in ANP_COUNTS:
        raise ValueError(f"count must be one of {ANP_COUNTS}, got {count!r}")
    active = total = 0
    chained: set[str] = set()
    for coupling in couplings:
        if coupling.kind != "chain":
            continue
        names = [n for n in coupling.layers if n in masks]
        if len(names) < 2:
            continue
        chained.update(names)
        first, last = masks[names[0]], masks[names[-1]]
        groups = [in_degree(first) > 0]
        for a, b in zip(names, names[1:]):
            feeds_on = in_degree(masks[b]) > 0
            groups.append(feeds_on if count == "official" else (out_degree(masks[a]) > 0) & feeds_on)
        groups.append(out_degree(last) > 0)
        for g in groups:
            active += int(g.sum())
            total += g.numel()
    for name, mask in masks.items():
        if name in chained:
            continue
        for g in (in_degree(mask) > 0, out_degree(mask) > 0):
            active += int(g.sum())
            total += g.numel()
    return active, total


def resolve_couplings(rule: Any, percolation: bool, model: nn.Module, names: list[str]) -> tuple[list[Coupling], Any]:
    """The couplings percolation follows (none without ``percolation``) from option ``couplings``:
    None (inferred from the model), couplings, or a rule ``(model, selected names) -> couplings``
    (e.g. a recipe's). Returns them and what the rule gave (the option itself when not a rule)."""
    if callable(rule):
        rule = rule(model, names)
    if not percolation:
        return [], rule
    if rule is None:
        return infer_couplings(model, names), rule
    couplings = list(rule)
    for c in couplings:
        if not isinstance(c, Coupling):
            raise OptionError(
                f"couplings must be chtorch.dst.percolation.Coupling objects (chain(...) / rows(...)), got {c!r}"
            )
    return couplings, rule
