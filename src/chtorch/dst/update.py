"""One topology update: Algorithm 1 of Zhang et al., "Brain network science modelling of sparse
neural networks enables Transformers and LLMs to perform as fully connected", NeurIPS 2025
(arXiv:2501.19107), generalised so that SET, RigL, MEST, GMP, GraNet and CHT are presets of it.

For every sparsified layer, each head block on its own (shapes ``(n_out, n_in)``, rows = outputs):

1. **density pruning** — a density schedule (CHTss, GMP, GraNet, MEST EM&S) lowers the budget: keep
   the best links by ``prune_score`` (top-k), optionally letting pruned weights compete again with
   their last value (GMP); under MEST's EM&S in ``ems_mode="official"`` this step and the next are
   one: keep only the target-density core by the removal score (ζ ignored), and step 4 grows exactly
   the extra density (nothing at the last stage);
2. **removal** — drop ``ζ_t`` of the active links by the ``removal`` score and ``removal_selection``
   (top-k, or soft sampling of the kept links with p ∝ score^T);

then, across layers,

3. **percolation** — drop the links of neurons left without input or output links, along the
   couplings (chains and shared rows), to a fixpoint;

and per layer again

4. **regrowth** — grow back to the exact budget by the ``regrowth`` score and
   ``regrowth_selection``, among ``regrowth_candidates`` (every non-link, or live neurons only);
5. **install** — the new links start at zero (or their history) with zero optimizer state; a link
   removed (by step 2 or 3) and regrown in the same update keeps its weight and optimizer state, as
   in every official code (``readmitted="keep"``; ``"reset"`` treats it as new); removed weights are
   remembered when a part needs their history.

Every random choice draws from the generator of ``(seed, purpose, update index, layer index[, head])``.
Where chtorch chooses between the paper and the official code, docs/decisions.md says which and why.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING

import torch

from chtorch.dst.layer import Layer, split
from chtorch.dst.percolation import active_neuron_fraction, percolate
from chtorch.dst.registry import REGROWN_INITS, REMOVALS
from chtorch.dst.regrowth import grow_links
from chtorch.dst.removal import keep_links, magnitude_score
from chtorch.dst.report import LayerUpdate, UpdateReport
from chtorch.rng import make_generator

if TYPE_CHECKING:
    from chtorch.dst.engine import DynamicSparsity
    from chtorch.dst.options import SparsityOptions

__all__ = ["topology_update"]


@REGROWN_INITS.register("zero", summary="regrown links start at 0 (the official code)")
def regrow_at_zero(history: torch.Tensor | None, new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like)


@REGROWN_INITS.register(
    "history", summary="regrown links start at their last value before removal (App. J)", needs=("weight_history",)
)
def regrow_from_history(history: torch.Tensor | None, new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if history is None:
        return torch.zeros_like(like)
    return torch.where(new, history, torch.zeros_like(like))


def _keep_best(
    weight: torch.Tensor,
    mask: torch.Tensor,
    n_keep: int,
    score: str,
    selection: str,
    generator: torch.Generator,
    options: SparsityOptions,
    *,
    grad: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The ``n_keep`` links of ``mask`` that the registered removal ``score`` keeps."""
    part = REMOVALS.part(score)
    if "rule" in part.flags or part.fn is magnitude_score:
        return keep_links(weight, mask, n_keep, part.name, selection, generator, temperature=temperature)
    scores = part.fn(weight, mask, grad=grad, **part.kwargs(options))
    return keep_links(weight, mask, n_keep, part.name, selection, generator, temperature=temperature, scores=scores)


def prune_to_density(
    sp: DynamicSparsity,
    layer: Layer,
    weight: torch.Tensor,
    rows: slice,
    target: int,
    grad: torch.Tensor | None,
    key: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 on one row block (``weight``: the layer's dense weight): keep the ``target`` best links
    when it holds more. Returns (kept mask, positions revived from history) for the block."""
    opts = sp.options
    mask = layer.mask[rows]
    revived = torch.zeros_like(mask)
    if int(torch.count_nonzero(mask)) <= target:
        return mask.clone(), revived
    weight = weight[rows]
    g = make_generator(sp.seed, "prune", *key)
    if opts.prune_with_history and layer.history is not None:
        # GMP's moving threshold: a pruned weight competes again with its last value.
        history = layer.history[rows]
        candidates = mask | (history != 0)
        values = torch.where(mask, weight, history)
        keep = _keep_best(values, candidates, target, opts.prune_score, "topk", g, opts, grad=grad)
        return keep, keep & ~mask
    return _keep_best(weight, mask, target, opts.prune_score, "topk", g, opts, grad=grad), revived


def remove_links(
    sp: DynamicSparsity,
    weight: torch.Tensor,
    keep: torch.Tensor,
    grad: torch.Tensor | None,
    key: tuple[int, ...],
    zeta: float,
    temperature: float,
) -> torch.Tensor:
    """Step 2 on one row block (``weight``, ``keep``, ``grad``: the block's rows): drop
    ``floor(ζ·active)`` of the links kept by step 1."""
    opts = sp.options
    n_active = int(torch.count_nonzero(keep))
    n_keep = n_active - int(math.floor(zeta * n_active))
    generator = make_generator(sp.seed, "remove", *key)
    return _keep_best(
        weight, keep, n_keep, opts.removal, opts.removal_selection, generator, opts, grad=grad, temperature=temperature
    )


def regrow_links(
    sp: DynamicSparsity, keep: torch.Tensor, n_new: int, grad: torch.Tensor | None, key: tuple[int, ...]
) -> torch.Tensor:
    """Step 4 on one row block: exactly ``n_new`` new links, disjoint from ``keep``."""
    from chtorch.dst.registry import REGROWTHS

    opts = sp.options
    part = REGROWTHS.part(opts.regrowth)
    scores = part.fn(keep, grad=grad, **part.kwargs(opts)) if n_new > 0 else None
    return grow_links(
        keep,
        n_new,
        part.name,
        opts.regrowth_selection,
        make_generator(sp.seed, "regrow", *key),
        grad=grad,
        floor=opts.soft_floor,
        scores=scores,
        candidates=opts.regrowth_candidates,
    )


def install(
    sp: DynamicSparsity,
    layer: Layer,
    old: torch.Tensor,
    keep: torch.Tensor,
    new: torch.Tensor,
    revived: torch.Tensor,
    pruned: torch.Tensor,
) -> None:
    """Step 5: make ``keep | new`` the layer's topology. Dropped weights are remembered (history)
    and zeroed; new links start at the ``regrown_init`` value, revived ones at their history; both
    with zero optimizer state. A regrown link that the update removed or percolated (in ``old``,
    not ``pruned`` by the density schedule) is *readmitted*: with ``readmitted="keep"`` it keeps its
    weight and optimizer state, as the official codes do (they mask weights and moments with the
    final mask only, and initialise only links that were not in the old mask; docs/decisions.md)."""
    final = keep | new
    fresh = new | revived
    if sp.options.readmitted == "keep":
        # pruned links were zeroed by the official codes before regrowth: those restart as new
        fresh = fresh & ~(old & ~pruned)
    with torch.no_grad():
        weight = layer.dense_weight()
        if layer.history is not None:
            dropped = old & ~keep
            layer.history[dropped] = weight[dropped]
        init = REGROWN_INITS.part(sp.options.regrown_init).fn(layer.history, new, weight)
        if layer.history is not None and revived.any() and sp.options.revived_init == "history":
            # a pruned weight that wins again restarts from its last value (App. J); the official
            # code restarts it at 0 (the default, revived_init="zero": it is a new link like any other)
            init = torch.where(revived, layer.history, init)
        layer.install(final, fresh, init, sp.optimizer)
        layer.ever_active |= final


def core_targets(sp: DynamicSparsity) -> list[int]:
    """Each layer's link budget at the final sparsity: the core that MEST's EM&S keeps at every
    update in ``ems_mode="official"`` (the scheduled targets add the extra density on top)."""
    from chtorch import topology

    shapes = [layer.shape for layer in sp.layers]
    return list(topology.allocate_budgets(shapes, sp.sparsity, distribution=sp.options.distribution))


def keep_core(
    sp: DynamicSparsity,
    weight: torch.Tensor,
    mask: torch.Tensor,
    n_core: int,
    grad: torch.Tensor | None,
    key: tuple[int, ...],
    temperature: float,
) -> torch.Tensor:
    """Official EM&S removal on one row block: the ``n_core`` links of ``mask`` that the removal
    score and selection keep (all of them when it holds fewer). The official code's drop fraction
    ``extra/(density + extra)`` is exactly "keep the target-density core"; ζ is not read."""
    opts = sp.options
    n_keep = min(int(n_core), int(torch.count_nonzero(mask)))
    generator = make_generator(sp.seed, "remove", *key)
    return _keep_best(
        weight, mask, n_keep, opts.removal, opts.removal_selection, generator, opts, grad=grad, temperature=temperature
    )


def network_stopped(sp: DynamicSparsity) -> bool:
    """True once CHT's network-wide early stop has frozen every layer: the update changes nothing."""
    opts = sp.options
    return (
        opts.early_stop is not None and opts.early_stop_scope == "network" and all(layer.frozen for layer in sp.layers)
    )


def flag_early_stop(layer: Layer, overlap: float, threshold: float, scope: str) -> None:
    """CHT's early stop (Definition 1, an epitopological local minimum). ``scope="layer"``: the
    layer freezes once its overlap is >= θ. ``scope="network"`` (the official code): the layer is
    flagged once its overlap is > θ (strictly) and keeps evolving; the flags are never reset, and
    the caller freezes every layer once all are flagged."""
    if scope == "layer":
        if overlap >= threshold:
            layer.frozen = True
    elif overlap > threshold:
        layer.early_stop_flag = True


def _block_key(index: int, layer: Layer, block: int) -> tuple[int, ...]:
    return (index, layer.index) if layer.groups == 1 else (index, layer.index, block)


def topology_update(sp: DynamicSparsity, step: int) -> UpdateReport:
    """Run one topology update after optimizer step ``step`` and report it (see the module docs)."""
    opts = sp.options
    start = time.perf_counter()
    sp.update_count += 1
    index = sp.update_count
    zeta = sp.zeta(step)
    temperature = sp.temperature(step)
    report = UpdateReport(
        step=step, update_index=index, sparsity=sp.scheduled_sparsity(step), zeta=zeta, temperature=temperature
    )
    grads = {layer.name: sp.dense_grad(layer) for layer in sp.layers}
    problem = sp.non_finite(grads)
    if problem is not None:
        warnings.warn(
            f"chtorch: topology update at step {step} skipped, masks unchanged: {problem}", RuntimeWarning, stacklevel=4
        )
        sp.reset_grad_accumulators()
        report.skipped = problem
        return report

    # 1-2: density pruning and removal, per layer and head block
    old_masks, keeps, infos, revived_by_layer, pruned_by_layer = {}, {}, {}, {}, {}
    ems_official = opts.ems and opts.ems_mode == "official"
    cores = core_targets(sp) if ems_official else [None] * len(sp.layers)
    core_of = {layer.name: core for layer, core in zip(sp.layers, cores)}
    stopped = network_stopped(sp)
    for layer, target, core in zip(sp.layers, sp.targets(step), cores):
        t0 = time.perf_counter()
        mask, grad, weight = layer.mask, grads[layer.name], layer.dense_weight()
        old_masks[layer.name] = mask.clone()
        info = LayerUpdate(name=layer.name, n_links=0, target=target, frozen=layer.frozen)
        keep, revived, pruned = torch.zeros_like(mask), torch.zeros_like(mask), torch.zeros_like(mask)
        core_blocks = split(core, layer.groups) if core is not None else [None] * layer.groups
        for b, (rows, block_target, block_core) in enumerate(
            zip(layer.blocks(), split(target, layer.groups), core_blocks)
        ):
            key = _block_key(index, layer, b)
            block_grad = None if grad is None else grad[rows]
            if block_core is not None and not layer.frozen:
                # MEST EM&S as the official code: keep only the target-density core by the removal
                # score (ζ ignored); the extra density is regrown below (docs/decisions.md, MEST EM&S)
                block_keep = keep_core(sp, weight[rows], mask[rows], block_core, block_grad, key, temperature)
                info.removed += int(torch.count_nonzero(mask[rows])) - int(torch.count_nonzero(block_keep))
                keep[rows] = block_keep
                continue
            block_keep, block_revived = prune_to_density(sp, layer, weight, rows, block_target, block_grad, key)
            info.pruned += int(torch.count_nonzero(mask[rows])) - int(torch.count_nonzero(block_keep & mask[rows]))
            pruned[rows] = mask[rows] & ~block_keep
            if not layer.frozen and opts.zeta > 0:
                n_active = int(torch.count_nonzero(block_keep))
                block_keep = remove_links(sp, weight[rows], block_keep, block_grad, key, zeta, temperature)
                info.removed += n_active - int(torch.count_nonzero(block_keep))
            keep[rows], revived[rows] = block_keep, block_revived
        revived_by_layer[layer.name], keeps[layer.name], pruned_by_layer[layer.name] = revived, keep, pruned
        layer.target = target
        info.seconds = time.perf_counter() - t0
        infos[layer.name] = info

    # 3: percolation across coupled layers (not once a network-wide early stop froze the topology)
    if sp.couplings and not stopped:
        percolated = percolate(keeps, sp.couplings)
        for name, new_keep in percolated.items():
            infos[name].percolated = int(torch.count_nonzero(keeps[name])) - int(torch.count_nonzero(new_keep))
        keeps = percolated

    # 4-5: regrowth to the exact budget, then install
    for layer in sp.layers:
        t0 = time.perf_counter()
        info, keep, old, grad = infos[layer.name], keeps[layer.name], old_masks[layer.name], grads[layer.name]
        new = torch.zeros_like(keep)
        core = core_of[layer.name] if ems_official and not layer.frozen else None
        core_blocks = split(core, layer.groups) if core is not None else [None] * layer.groups
        for b, (rows, block_target, block_core) in enumerate(
            zip(layer.blocks(), split(layer.target, layer.groups), core_blocks)
        ):
            if block_core is None:
                n_new = block_target - int(torch.count_nonzero(keep[rows]))
            else:
                # official EM&S: grow exactly the extra density; links lost to percolation are not
                # compensated, so a layer may end below its budget (the last stage grows nothing)
                n_new = min(block_target - block_core, int(torch.count_nonzero(~keep[rows])))
            new[rows] = regrow_links(
                sp, keep[rows], n_new, None if grad is None else grad[rows], _block_key(index, layer, b)
            )
        info.regrown = int(torch.count_nonzero(new))
        info.overlap = int(torch.count_nonzero(new & old & ~keep))
        install(sp, layer, old, keep, new, revived_by_layer[layer.name], pruned_by_layer[layer.name])
        if opts.early_stop is not None and not layer.frozen and info.regrown > 0:
            flag_early_stop(layer, info.overlap_rate, opts.early_stop, opts.early_stop_scope)
        if info.regrown:  # an update that regrew nothing (ζ annealed to 0) has no overlap to report
            layer.last_overlap = info.overlap_rate
        info.n_links = int(torch.count_nonzero(layer.mask))
        info.active_in, info.active_out = active_neuron_fraction(layer.mask)
        info.itop = torch.count_nonzero(layer.ever_active).item() / layer.ever_active.numel()
        info.seconds += time.perf_counter() - t0
        report.layers[layer.name] = info

    if (
        opts.early_stop is not None
        and opts.early_stop_scope == "network"
        and all(layer.early_stop_flag for layer in sp.layers)
    ):
        for layer in sp.layers:  # every layer has reached its epitopological local minimum: stop evolving
            layer.frozen = True
    for layer in sp.layers:
        report.layers[layer.name].frozen = layer.frozen

    from chtorch.dst import ranks

    ranks.sync_masks([layer.mask for layer in sp.layers])
    sp.reset_grad_accumulators()
    report.itop_rate = sp.itop_rate()
    report.seconds = time.perf_counter() - start
    return report
