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
The update reads an :class:`UpdateContext` (what the engine decided for this update: options, seed,
index, ζ, temperature, budgets, gradients) and changes only the layers it is given and the optimizer
state at their links; the engine owns its counters. Where chtorch chooses between the paper and the
official code, docs/decisions.md says which and why.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from chtorch.dst import ranks
from chtorch.dst.layer import Layer, split
from chtorch.dst.options import SparsityOptions
from chtorch.dst.percolation import Coupling, active_neuron_fraction, percolate
from chtorch.dst.registry import REGROWN_INITS, REGROWTHS, REMOVALS
from chtorch.dst.regrowth import grow_links
from chtorch.dst.removal import keep_links, magnitude_score
from chtorch.dst.report import LayerUpdate, UpdateReport
from chtorch.rng import make_generator

__all__ = ["UpdateContext", "topology_update", "averaged_gradients", "network_stopped"]


@dataclass(frozen=True)
class UpdateContext:
    """What one topology update reads, decided by the engine before it runs.

    ``step``: the optimizer step after which it runs; ``update_index``: 1 for the first update (a
    key of every generator); ``sparsity``: the scheduled sparsity; ``zeta``: fraction of links
    removed; ``temperature``: exponent of a soft removal (1.0 for top-k); ``targets``: each layer's
    exact budget, in the order of the layers; ``cores``: each layer's budget at the final sparsity
    (MEST's EM&S core in ``ems_mode="official"``) or None; ``grads``: layer name → dense gradient
    ``(out, in)`` averaged over the recorded steps and ranks, or None; ``optimizer``: whose state at
    the links the update resets."""

    options: SparsityOptions
    seed: int
    step: int
    update_index: int
    sparsity: float
    zeta: float
    temperature: float
    targets: Sequence[int]
    cores: Sequence[int] | None
    grads: Mapping[str, torch.Tensor | None]
    optimizer: torch.optim.Optimizer


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
    scores = part.fn(weight, mask, grad=grad, **options.part_kwargs(part))
    return keep_links(weight, mask, n_keep, part.name, selection, generator, temperature=temperature, scores=scores)


def prune_to_density(
    ctx: UpdateContext,
    layer: Layer,
    weight: torch.Tensor,
    rows: slice,
    target: int,
    grad: torch.Tensor | None,
    key: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 on one row block (``weight``: the layer's dense weight): keep the ``target`` best links
    when it holds more. Returns (kept mask, positions revived from history) for the block."""
    opts = ctx.options
    mask = layer.mask[rows]
    revived = torch.zeros_like(mask)
    if int(torch.count_nonzero(mask)) <= target:
        return mask.clone(), revived
    weight = weight[rows]
    g = make_generator(ctx.seed, "prune", *key)
    if opts.prune_with_history and layer.history is not None:
        # GMP's moving threshold: a pruned weight competes again with its last value.
        history = layer.history[rows]
        candidates = mask | (history != 0)
        values = torch.where(mask, weight, history)
        keep = _keep_best(values, candidates, target, opts.prune_score, "topk", g, opts, grad=grad)
        return keep, keep & ~mask
    return _keep_best(weight, mask, target, opts.prune_score, "topk", g, opts, grad=grad), revived


def remove_links(
    ctx: UpdateContext,
    weight: torch.Tensor,
    keep: torch.Tensor,
    grad: torch.Tensor | None,
    key: tuple[int, ...],
    zeta: float,
    temperature: float,
) -> torch.Tensor:
    """Step 2 on one row block (``weight``, ``keep``, ``grad``: the block's rows): drop
    ``floor(ζ·active)`` of the links kept by step 1."""
    opts = ctx.options
    n_active = int(torch.count_nonzero(keep))
    n_keep = n_active - int(math.floor(zeta * n_active))
    generator = make_generator(ctx.seed, "remove", *key)
    return _keep_best(
        weight, keep, n_keep, opts.removal, opts.removal_selection, generator, opts, grad=grad, temperature=temperature
    )


def regrow_links(
    ctx: UpdateContext, keep: torch.Tensor, n_new: int, grad: torch.Tensor | None, key: tuple[int, ...]
) -> torch.Tensor:
    """Step 4 on one row block: exactly ``n_new`` new links, disjoint from ``keep``."""
    opts = ctx.options
    part = REGROWTHS.part(opts.regrowth)
    scores = part.fn(keep, grad=grad, **opts.part_kwargs(part)) if n_new > 0 else None
    return grow_links(
        keep,
        n_new,
        part.name,
        opts.regrowth_selection,
        make_generator(ctx.seed, "regrow", *key),
        grad=grad,
        floor=opts.soft_floor,
        scores=scores,
        candidates=opts.regrowth_candidates,
    )


def install(
    options: SparsityOptions,
    optimizer: torch.optim.Optimizer,
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
    if options.readmitted == "keep":
        # pruned links were zeroed by the official codes before regrowth: those restart as new
        fresh = fresh & ~(old & ~pruned)
    with torch.no_grad():
        weight = layer.dense_weight()
        if layer.history is not None:
            dropped = old & ~keep
            layer.history[dropped] = weight[dropped]
        init = REGROWN_INITS.part(options.regrown_init).fn(layer.history, new, weight)
        if layer.history is not None and revived.any() and options.revived_init == "history":
            # a pruned weight that wins again restarts from its last value (App. J); the official
            # code restarts it at 0 (the default, revived_init="zero": it is a new link like any other)
            init = torch.where(revived, layer.history, init)
        layer.install(final, fresh, init, optimizer)
        layer.ever_active |= final


def keep_core(
    ctx: UpdateContext,
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
    opts = ctx.options
    n_keep = min(int(n_core), int(torch.count_nonzero(mask)))
    generator = make_generator(ctx.seed, "remove", *key)
    return _keep_best(
        weight, mask, n_keep, opts.removal, opts.removal_selection, generator, opts, grad=grad, temperature=temperature
    )


def network_stopped(layers: Sequence[Layer], options: SparsityOptions) -> bool:
    """True once CHT's network-wide early stop has frozen every layer: the update changes nothing."""
    return (
        options.early_stop is not None
        and options.early_stop_scope == "network"
        and all(layer.frozen for layer in layers)
    )


def averaged_gradients(layers: Sequence[Layer]) -> dict[str, torch.Tensor | None]:
    """Layer name → its dense gradient averaged over the recorded steps (and over ranks), or None."""
    grads: dict[str, torch.Tensor | None] = {}
    for layer in layers:
        if layer.grad_sum is None or layer.grad_count == 0:
            grads[layer.name] = None
        else:
            # summed in grad_accumulation_dtype (bf16 under "param"), read in fp32
            grads[layer.name] = ranks.all_reduce_mean((layer.grad_sum / layer.grad_count).float())
    return grads


def non_finite(layers: Sequence[Layer], grads: Mapping[str, torch.Tensor | None]) -> str | None:
    """Why an update must be skipped (non-finite weights or gradients), or None."""
    for layer in layers:
        if not bool(torch.isfinite(layer.parameter.detach()).all()):
            return f"non-finite weights in layer {layer.name!r}"
        grad = grads[layer.name]
        if grad is not None and not bool(torch.isfinite(grad).all()):
            return f"non-finite gradients in layer {layer.name!r}"
    return None


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


def topology_update(ctx: UpdateContext, layers: Sequence[Layer], couplings: Sequence[Coupling]) -> UpdateReport:
    """Run one topology update of ``layers`` (percolating along ``couplings``) as ``ctx`` says and
    report it (see the module docs). Non-finite weights or gradients skip it, masks unchanged."""
    opts, index, zeta, temperature, grads = ctx.options, ctx.update_index, ctx.zeta, ctx.temperature, ctx.grads
    start = time.perf_counter()
    report = UpdateReport(step=ctx.step, update_index=index, sparsity=ctx.sparsity, zeta=zeta, temperature=temperature)
    problem = non_finite(layers, grads)
    if problem is not None:
        warnings.warn(
            f"chtorch: topology update at step {ctx.step} skipped, masks unchanged: {problem}",
            RuntimeWarning,
            stacklevel=4,
        )
        report.skipped = problem
        return report

    # 1-2: density pruning and removal, per layer and head block
    old_masks, keeps, infos, revived_by_layer, pruned_by_layer = {}, {}, {}, {}, {}
    ems_official = opts.ems and opts.ems_mode == "official"
    cores = list(ctx.cores) if ems_official and ctx.cores is not None else [None] * len(layers)
    core_of = {layer.name: core for layer, core in zip(layers, cores)}
    stopped = network_stopped(layers, opts)
    for layer, target, core in zip(layers, ctx.targets, cores):
        t0 = time.perf_counter()
        # scores in fp32 whatever the weights' dtype (bf16 -> fp32 is exact; ties stay ties)
        mask, grad, weight = layer.mask, grads[layer.name], layer.dense_weight().float()
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
                block_keep = keep_core(ctx, weight[rows], mask[rows], block_core, block_grad, key, temperature)
                info.removed += int(torch.count_nonzero(mask[rows])) - int(torch.count_nonzero(block_keep))
                keep[rows] = block_keep
                continue
            block_keep, block_revived = prune_to_density(ctx, layer, weight, rows, block_target, block_grad, key)
            info.pruned += int(torch.count_nonzero(mask[rows])) - int(torch.count_nonzero(block_keep & mask[rows]))
            pruned[rows] = mask[rows] & ~block_keep
            if not layer.frozen and opts.zeta > 0:
                n_active = int(torch.count_nonzero(block_keep))
                block_keep = remove_links(ctx, weight[rows], block_keep, block_grad, key, zeta, temperature)
                info.removed += n_active - int(torch.count_nonzero(block_keep))
            keep[rows], revived[rows] = block_keep, block_revived
        revived_by_layer[layer.name], keeps[layer.name], pruned_by_layer[layer.name] = revived, keep, pruned
        layer.target = target
        info.seconds = time.perf_counter() - t0
        infos[layer.name] = info

    # 3: percolation across coupled layers (not once a network-wide early stop froze the topology)
    if couplings and not stopped:
        percolated = percolate(keeps, couplings)
        for name, new_keep in percolated.items():
            infos[name].percolated = int(torch.count_nonzero(keeps[name])) - int(torch.count_nonzero(new_keep))
        keeps = percolated

    # 4-5: regrowth to the exact budget, then install
    for layer in layers:
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
                ctx, keep[rows], n_new, None if grad is None else grad[rows], _block_key(index, layer, b)
            )
        info.regrown = int(torch.count_nonzero(new))
        info.overlap = int(torch.count_nonzero(new & old & ~keep))
        install(opts, ctx.optimizer, layer, old, keep, new, revived_by_layer[layer.name], pruned_by_layer[layer.name])
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
        and all(layer.early_stop_flag for layer in layers)
    ):
        for layer in layers:  # every layer has reached its epitopological local minimum: stop evolving
            layer.frozen = True
    for layer in layers:
        report.layers[layer.name].frozen = layer.frozen

    ranks.sync_masks([layer.mask for layer in layers])
    ever = sum(int(torch.count_nonzero(layer.ever_active)) for layer in layers)
    report.itop_rate = ever / max(1, sum(layer.mask.numel() for layer in layers))
    report.seconds = time.perf_counter() - start
    return report
