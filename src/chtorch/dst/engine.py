"""``DynamicSparsity``: the dynamic sparse training engine.

It owns the topology of the selected ``nn.Linear`` layers of a plain model and keeps three promises:

1. **Masks travel with the model.** Each selected layer gets a persistent bool buffer
   ``weight_mask`` of the weight's shape ``(out_features, in_features)``, so masks are in
   ``model.state_dict()``.
2. **Off-mask entries are exactly zero.** Gradients are masked by tensor hooks; weights and every
   optimizer state tensor shaped like the weight (SGD momentum, Adam moments, ...) are masked by an
   optimizer step post-hook and after every topology update. No ``optimizer.step`` monkey-patching.
3. **Exact budgets, reproducible choices.** After every update each layer holds exactly its target
   number of links; every random choice comes from a generator derived from
   ``(seed, update index, layer index)``, so a resumed run or another ``torchrun`` rank decides the
   same.

A topology update (every ΔT optimizer steps until T_end) runs, per layer: density-schedule pruning
(CHTss, GMP, GraNet, MEST EM&S) → removal (magnitude / SET / RI / MEST × top-k / soft) →
percolation of dead neurons across coupled layers → regrowth back to the target (random / gradient /
Cannistraci-Hebb × top-k / soft). This is Algorithm 1 of Zhang et al., "Brain network science
modelling of sparse neural networks enables Transformers and LLMs to perform as fully connected",
NeurIPS 2025 (arXiv:2501.19107), generalised so that SET, RigL, MEST, GMP, GraNet and CHT are presets
of the same parts (see :mod:`chtorch.dst.methods`).

Departure from the official code, on purpose: the official loops skip ``optimizer.step()`` on an
iteration with a topology update; here the update happens after that step (``sp.step()`` is called
after ``optimizer.step()``), so no gradient step is lost and the user's loop needs no condition.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chtorch.dst import schedules
from chtorch.dst.options import OptionError, SparsityOptions
from chtorch.dst.percolation import Coupling, active_neuron_fraction, infer_couplings, percolate
from chtorch.dst.regrowth import grow_links
from chtorch.dst.removal import keep_links, removal_scores
from chtorch.dst.report import LayerUpdate, UpdateReport, format_table
from chtorch.dst.scope import LayerSelector, select_layers
from chtorch.masks import check_mask
from chtorch.rng import make_generator

__all__ = ["DynamicSparsity", "select_layers", "LayerSelector"]


def _split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers as even as possible (the first ones get the remainder)."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]


STATE_VERSION = 1
BACKENDS = ("auto", "masked", "sparse")
# The truly sparse kernels beat a dense layer up to ~10-15% density on CPU
# (benchmarks/results/sparse-training-*.md); "auto" uses them at or below this mean density.
AUTO_SPARSE_MAX_DENSITY = 0.1
# Below this many positions a layer is too small for sparse kernels to pay off (launch overhead).
AUTO_SPARSE_MIN_POSITIONS = 128 * 128

logger = logging.getLogger("chtorch")


try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    _DTensor = None

_FSDP_MESSAGE = (
    "layer {name!r} has a sharded (DTensor) weight, as FSDP2's fully_shard makes: chtorch's masks, hooks and "
    "topology updates work on whole weights and do not support FSDP yet. Use DistributedDataParallel "
    "(every rank holds the whole model; chtorch keeps the masks identical across ranks), or sparsify a model "
    "that is not sharded."
)


def _refuse_sharded(name: str, weight: torch.Tensor) -> None:
    """FSDP2 turns parameters into DTensors; refuse them with a clear error rather than failing
    deep inside an optimizer hook (decided by trying: masking a DTensor weight with a plain mask
    raises 'got mixed torch.Tensor and DTensor')."""
    if _DTensor is not None and isinstance(weight, _DTensor):
        raise NotImplementedError(_FSDP_MESSAGE.format(name=name))


@dataclass
class _Layer:
    """Book-keeping for one sparsified layer."""

    name: str
    index: int
    module: nn.Linear
    target: int
    frozen: bool = False
    ever_active: torch.Tensor | None = None
    history: torch.Tensor | None = None
    grad_sum: torch.Tensor | None = None
    grad_count: int = 0
    groups: int = 1
    last_overlap: float | None = None  # |removed ∩ regrown| / |regrown| at the last update
    _multiplier: torch.Tensor | None = None
    _multiplier_key: tuple | None = None

    def multiplier(self, like: torch.Tensor) -> torch.Tensor:
        """The mask as a 0/1 tensor of ``like``'s dtype and device, cached until the mask changes.

        Multiplying by a float mask is ~5x faster than by a bool one (no per-element conversion),
        and it runs on every backward and optimizer step. The cache is keyed on the mask's version
        counter, which every in-place write bumps (a topology update, ``model.load_state_dict``)."""
        mask = self.mask
        key = (mask._version, id(mask), like.dtype, like.device)
        if self._multiplier is None or self._multiplier_key != key:
            self._multiplier = mask.to(dtype=like.dtype, device=like.device)
            self._multiplier_key = key
        return self._multiplier

    def blocks(self) -> list[slice]:
        """Row blocks that are budgeted and updated separately (one per attention head, or the
        whole layer)."""
        size = self.module.out_features // self.groups
        return [slice(g * size, (g + 1) * size) for g in range(self.groups)]

    @property
    def mask(self) -> torch.Tensor:
        return self.module.weight_mask

    @property
    def is_sparse(self) -> bool:
        """True when the layer runs on the truly sparse backend (a ``SparseLinear``)."""
        return not isinstance(self.module, nn.Linear)

    @property
    def parameter(self) -> nn.Parameter:
        """The Parameter that holds the layer's weights: the dense ``weight``, or the sparse
        ``values`` ``(nnz,)``."""
        return self.module.values if self.is_sparse else self.module.weight

    def dense_weight(self) -> torch.Tensor:
        """Detached dense weight ``(out_features, in_features)``, zero off the links."""
        return self.module.dense_weight().detach() if self.is_sparse else self.module.weight.detach()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.module.out_features, self.module.in_features)


class DynamicSparsity:
    """Dynamic sparse training of a model's Linear layers (see the module docstring).

    Use :func:`chtorch.sparsify` to build one from a named method; construct it directly to compose
    parts through a :class:`~chtorch.dst.options.SparsityOptions`.

    Args:
        model: a plain ``nn.Module``.
        optimizer: the optimizer that updates the selected weights.
        sparsity: final fraction of zeros per layer (uniform) or overall (ERK), in [0, 1).
        total_steps: number of optimizer steps of the whole run (> 0); sets T_end and decay ends.
        options: the method's parts.
        seed: root of every random choice.
        layers, exclude: layer selection, see :func:`select_layers`.
        method: the preset's name, for reports only.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        total_steps: int,
        options: SparsityOptions | None = None,
        seed: int = 0,
        layers: LayerSelector = None,
        exclude: str | Sequence[str] | None = None,
        method: str | None = None,
        backend: str = "masked",
    ) -> None:
        options = options or SparsityOptions()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "sparse" and options.needs_dense_gradient:
            raise OptionError(
                f"backend='sparse' cannot serve {method or 'this method'}: its "
                f"{'regrowth' if options.regrowth == 'gradient' else 'removal'} reads the dense gradient, which a truly "
                "sparse layer never computes. Use backend='masked' (or 'auto', which picks it), or a method whose "
                "regrowth needs only the topology (static, set, cht, chts, chtss, mest with mest_lambda=0)"
            )
        self._validate_args(sparsity, total_steps, options)
        names = select_layers(model, layers, exclude)
        modules = dict(model.named_modules())
        params_in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name in names:
            if id(modules[name].weight) not in params_in_optimizer:
                raise ValueError(
                    f"the weight of layer {name!r} is not in the optimizer's parameter groups; build the optimizer "
                    "from model.parameters() before calling sparsify, or exclude the layer"
                )
            _refuse_sharded(name, modules[name].weight)
            if hasattr(modules[name], "weight_mask"):
                raise ValueError(f"layer {name!r} already has a weight_mask: the model is already sparsified")

        self.model = model
        self.optimizer = optimizer
        self.sparsity = float(sparsity)
        self.total_steps = int(total_steps)
        self.options = options
        self.seed = int(seed)
        self.method = method
        self.step_count = 0
        self.update_count = 0
        self.t_end = options.t_end if options.t_end is not None else int(options.t_end_fraction * self.total_steps)
        self.decay_end = int(options.decay_end_fraction * self.total_steps)
        self.layers = [_Layer(name, i, modules[name], target=0) for i, name in enumerate(names)]
        self._assign_head_groups()
        self.couplings = self._resolve_couplings()
        self._hooks: list[Any] = []
        self.backend_request = backend
        self.backend_reason = "requested"
        self._prepare()
        self.backends = self._choose_backends(backend)
        self._convert_sparse_layers()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _validate_args(sparsity: float, total_steps: int, options: SparsityOptions) -> None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of zeros; 0.99 keeps 1% of links), got {sparsity!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive integer (optimizer steps of the whole run), got {total_steps!r}")
        if options.density_schedule != "constant" and options.initial_sparsity > sparsity:
            raise OptionError(
                f"initial_sparsity={options.initial_sparsity} is above the target sparsity {sparsity}: "
                "a density decay must start denser than it ends"
            )
        if options.regrowth == "none" and (options.zeta > 0 or options.percolation):
            raise OptionError(
                "regrowth='none' cannot restore links taken by removal or percolation, so budgets would drift: "
                "set zeta=0 and percolation=False (as GMP does), or choose a regrowth"
            )

    def _assign_head_groups(self) -> None:
        for pattern, heads in self.options.head_groups.items():
            hits = [layer for layer in self.layers if layer.name == pattern or fnmatch.fnmatchcase(layer.name, pattern)]
            if not hits:
                raise OptionError(
                    f"head_groups pattern {pattern!r} matches no sparsified layer; sparse layers: {[l.name for l in self.layers]}"
                )
            for layer in hits:
                if layer.module.out_features % heads:
                    raise OptionError(f"layer {layer.name!r} has {layer.module.out_features} outputs, not divisible into {heads} heads")
                layer.groups = heads

    def _resolve_couplings(self) -> list[Coupling]:
        if not self.options.percolation:
            return []
        names = [layer.name for layer in self.layers]
        if self.options.couplings is None:
            return infer_couplings(self.model, names)
        couplings = list(self.options.couplings)
        for c in couplings:
            if not isinstance(c, Coupling):
                raise OptionError(f"couplings must be chtorch.dst.percolation.Coupling objects (chain(...) / rows(...)), got {c!r}")
        return couplings

    def _prepare(self) -> None:
        from chtorch import topology

        opts = self.options
        targets = self._targets(0)
        init = topology.get_initializer(opts.init)
        for layer, target in zip(self.layers, targets):
            n_out, n_in = layer.shape
            weight = layer.module.weight
            generator = make_generator(self.seed, "init", layer.index)
            kwargs = dict(opts.init_options)
            blocks = layer.blocks()
            mask = torch.cat(
                [init(n_out // layer.groups, n_in, n_links=n, generator=generator, **kwargs) for n in _split(target, len(blocks))]
            ).to(device=weight.device, dtype=torch.bool)
            check_mask(mask, layer.shape, target)
            layer.target = target
            layer.module.register_buffer("weight_mask", mask, persistent=True)
            layer.ever_active = mask.clone()
            if opts.regrown_init == "history" or opts.prune_with_history:
                layer.history = torch.zeros_like(weight, dtype=weight.dtype).detach()
            with torch.no_grad():
                if opts.weight_init == "swi":
                    topology.swi_(weight, mask, generator=make_generator(self.seed, "swi", layer.index))
                weight.mul_(mask)
                if weight.grad is not None:
                    weight.grad.mul_(mask)
            self._mask_optimizer_state(layer, None)
            self._hooks.append(weight.register_hook(self._make_grad_hook(layer)))
        self._hooks.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))

    def _choose_backends(self, request: str) -> dict[str, str]:
        """Layer name → "masked" or "sparse". ``auto`` runs a layer truly sparse when the method
        needs no dense gradient and the layer's density, averaged over the run, is at most
        ``AUTO_SPARSE_MAX_DENSITY`` and it is large enough for sparse kernels to pay off; it logs
        what it chose and why. (The kernels are device-agnostic, so the device does not change the
        rule; a GPU's dense GEMMs are faster, which the 10% threshold already reflects.)"""
        if request != "auto":
            return {layer.name: request for layer in self.layers}
        final = dict(zip((l.name for l in self.layers), self._mean_densities()))
        sizes = {l.name: l.shape[0] * l.shape[1] for l in self.layers}
        if self.options.needs_dense_gradient:
            reason = "the method reads dense gradients"
            choice = {name: "masked" for name in final}
        else:
            reason = (
                f"layers with mean density over the run <= {AUTO_SPARSE_MAX_DENSITY} and at least "
                f"{AUTO_SPARSE_MIN_POSITIONS} positions run sparse"
            )
            choice = {
                name: "sparse" if d <= AUTO_SPARSE_MAX_DENSITY and sizes[name] >= AUTO_SPARSE_MIN_POSITIONS else "masked"
                for name, d in final.items()
            }
        n_sparse = sum(v == "sparse" for v in choice.values())
        logger.info("chtorch backend auto: %d of %d layers sparse, %d masked (%s)", n_sparse, len(choice), len(choice) - n_sparse, reason)
        self.backend_reason = reason
        return choice

    def _mean_densities(self) -> list[float]:
        """Each layer's density averaged over the run (a density decay such as CHTss's spends much
        of the run far denser than its final density, where sparse kernels lose to dense ones)."""
        from chtorch import topology

        shapes = [layer.shape for layer in self.layers]
        samples = max(1, min(200, self.total_steps))
        totals = [0.0] * len(shapes)
        for i in range(samples):
            step = i * self.total_steps // samples
            counts = topology.allocate_budgets(shapes, self.scheduled_sparsity(step), distribution=self.options.distribution)
            for j, (c, (a, b)) in enumerate(zip(counts, shapes)):
                totals[j] += c / (a * b) / samples
        return totals

    def _convert_sparse_layers(self) -> None:
        names = [layer.name for layer in self.layers if self.backends[layer.name] == "sparse"]
        if not names:
            return
        from chtorch.sparse import to_sparse

        replaced = to_sparse(self.model, names, optimizer=self.optimizer)
        for layer in self.layers:
            if layer.name in replaced:
                layer.module = replaced[layer.name]

    # ------------------------------------------------------------------ schedules
    def scheduled_sparsity(self, step: int) -> float:
        """The sparsity the density schedule asks for at ``step`` (the final sparsity for
        fixed-density methods)."""
        opts = self.options
        s = self.sparsity
        if opts.density_schedule != "constant":
            n = max(1, self.decay_end // opts.update_interval)
            tau = min(step // opts.update_interval, n)
            decay = {
                "linear": schedules.linear_sparsity,
                "cubic": schedules.cubic_sparsity,
                "sigmoid": lambda t, n_, si, sf: schedules.sigmoid_sparsity(t, n_, si, sf, k=opts.sigmoid_k),
            }[opts.density_schedule]
            s = decay(tau, n, opts.initial_sparsity, self.sparsity)
        if opts.ems:
            extra = schedules.mest_ems_extra_density(step, self.t_end, opts.update_interval)
            s = max(0.0, s - extra)
        return float(s)

    def _targets(self, step: int) -> list[int]:
        from chtorch import topology

        shapes = [layer.shape for layer in self.layers]
        return list(topology.allocate_budgets(shapes, self.scheduled_sparsity(step), distribution=self.options.distribution))

    def is_update_step(self, step: int) -> bool:
        return schedules.is_update_step(step, self.options.update_interval, self.t_end)

    # ------------------------------------------------------------------ hooks
    def _grad_window(self, step: int) -> bool:
        """True when the backward pass of optimizer step ``step`` must record the dense gradient:
        one of the last ``grad_accumulation`` steps before a topology update."""
        opts = self.options
        if not opts.needs_dense_gradient:
            return False
        next_update = math.ceil(step / opts.update_interval) * opts.update_interval
        return next_update <= self.t_end and next_update - step < opts.grad_accumulation and next_update > 0

    def _make_grad_hook(self, layer: _Layer) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if layer.is_sparse:  # the layer was converted: this dense weight is no longer used
                return grad
            _refuse_sharded(layer.name, grad)
            if self._grad_window(self.step_count + 1):
                dense = grad.detach().float()
                layer.grad_sum = dense.clone() if layer.grad_sum is None else layer.grad_sum + dense
                layer.grad_count += 1
            return grad * layer.multiplier(grad)

        return hook

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for layer in self.layers:
                if layer.is_sparse:
                    continue  # nothing exists off the links
                _refuse_sharded(layer.name, layer.module.weight)  # fully_shard applied after sparsify
                layer.module.weight.mul_(layer.multiplier(layer.module.weight))
                self._mask_optimizer_state(layer, None)

    def _mask_optimizer_state(self, layer: _Layer, reset: torch.Tensor | None) -> None:
        """Zero every optimizer state tensor shaped like the weight off the mask, and at ``reset``."""
        if layer.is_sparse:
            return  # SparseLinear.set_mask carries and resets the state of its values
        weight = layer.module.weight
        state = self.optimizer.state.get(weight)
        if not state:
            return
        with torch.no_grad():
            for value in state.values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    value.mul_(layer.multiplier(value))
                    if reset is not None:
                        value.masked_fill_(reset, 0)

    # ------------------------------------------------------------------ the update
    def step(self) -> UpdateReport | None:
        """Call once after every ``optimizer.step()``. Runs a topology update when one is due and
        returns its :class:`UpdateReport`; otherwise returns ``None``."""
        self.step_count += 1
        if not self.is_update_step(self.step_count):
            return None
        return self._update(self.step_count)

    def _dense_grad(self, layer: _Layer) -> torch.Tensor | None:
        if layer.grad_sum is None or layer.grad_count == 0:
            return None
        grad = layer.grad_sum / layer.grad_count
        from chtorch.dst import ranks as distributed

        return distributed.all_reduce_mean(grad)

    def _update(self, step: int) -> UpdateReport:
        opts = self.options
        start = time.perf_counter()
        self.update_count += 1
        index = self.update_count
        zeta = schedules.zeta(step, opts.zeta, self.t_end, anneal=opts.zeta_anneal)
        temperature = (
            schedules.temperature(step, self.t_end, start_delta=opts.delta_start, end_delta=opts.delta_end)
            if opts.removal_selection == "soft"
            else 1.0
        )
        report = UpdateReport(step=step, update_index=index, sparsity=self.scheduled_sparsity(step), zeta=zeta, temperature=temperature)
        grads = {layer.name: self._dense_grad(layer) for layer in self.layers}
        problem = self._non_finite(grads)
        if problem is not None:
            warnings.warn(f"chtorch: topology update at step {step} skipped, masks unchanged: {problem}", RuntimeWarning, stacklevel=3)
            self._reset_grad_accumulators()
            report.skipped = problem
            return report

        targets = self._targets(step)
        old_masks, keeps, infos, history_revived = {}, {}, {}, {}
        for layer, target in zip(self.layers, targets):
            t0 = time.perf_counter()
            weight = layer.dense_weight()
            mask = layer.mask
            old_masks[layer.name] = mask.clone()
            info = LayerUpdate(name=layer.name, n_links=0, target=target, frozen=layer.frozen)
            grad = grads[layer.name]
            keep, revived = torch.zeros_like(mask), torch.zeros_like(mask)
            for b, (rows, block_target) in enumerate(zip(layer.blocks(), _split(target, layer.groups))):
                key = (index, layer.index) if layer.groups == 1 else (index, layer.index, b)
                block_grad = None if grad is None else grad[rows]
                block_keep, block_revived = self._prune_to(layer, rows, block_target, block_grad, key)
                info.pruned += int(torch.count_nonzero(mask[rows])) - int(torch.count_nonzero(block_keep & mask[rows]))
                if not layer.frozen and opts.zeta > 0:
                    n_active = int(torch.count_nonzero(block_keep))
                    n_keep = n_active - int(math.floor(zeta * n_active))
                    block_keep = keep_links(
                        weight[rows],
                        block_keep,
                        n_keep,
                        opts.removal,
                        opts.removal_selection,
                        make_generator(self.seed, "remove", *key),
                        temperature=temperature,
                        grad=block_grad,
                        mest_lambda=opts.mest_lambda,
                    )
                    info.removed += n_active - n_keep
                keep[rows], revived[rows] = block_keep, block_revived
            history_revived[layer.name] = revived
            keeps[layer.name] = keep
            layer.target = target
            info.seconds = time.perf_counter() - t0
            infos[layer.name] = info

        if self.couplings:
            percolated = percolate(keeps, self.couplings)
            for name, new_keep in percolated.items():
                infos[name].percolated = int(torch.count_nonzero(keeps[name])) - int(torch.count_nonzero(new_keep))
            keeps = percolated

        for layer in self.layers:
            t0 = time.perf_counter()
            info, keep, old = infos[layer.name], keeps[layer.name], old_masks[layer.name]
            grad = grads[layer.name]
            new = torch.zeros_like(keep)
            for b, (rows, block_target) in enumerate(zip(layer.blocks(), _split(layer.target, layer.groups))):
                key = (index, layer.index) if layer.groups == 1 else (index, layer.index, b)
                new[rows] = grow_links(
                    keep[rows],
                    block_target - int(torch.count_nonzero(keep[rows])),
                    opts.regrowth if opts.regrowth != "none" else "random",
                    opts.regrowth_selection,
                    make_generator(self.seed, "regrow", *key),
                    grad=None if grad is None else grad[rows],
                    predictor=opts.ch_predictor,
                    variant=opts.ch_variant,
                    floor=opts.soft_floor,
                )
            info.regrown = int(torch.count_nonzero(new))
            info.overlap = int(torch.count_nonzero(new & old & ~keep))
            self._apply(layer, old, keep, new, history_revived[layer.name])
            if opts.early_stop is not None and not layer.frozen and info.regrown > 0 and info.overlap_rate >= opts.early_stop:
                layer.frozen = True
            info.frozen = layer.frozen
            if info.regrown:  # an update that regrew nothing (ζ annealed to 0) has no overlap to report
                layer.last_overlap = info.overlap_rate
            info.n_links = int(torch.count_nonzero(layer.mask))
            info.active_in, info.active_out = active_neuron_fraction(layer.mask)
            info.itop = torch.count_nonzero(layer.ever_active).item() / layer.ever_active.numel()
            info.seconds += time.perf_counter() - t0
            report.layers[layer.name] = info

        from chtorch.dst import ranks as distributed

        distributed.sync_masks([layer.mask for layer in self.layers])
        self._reset_grad_accumulators()
        report.itop_rate = self.itop_rate()
        report.seconds = time.perf_counter() - start
        return report

    def _prune_to(self, layer: _Layer, rows: slice, target: int, grad: torch.Tensor | None, key: tuple[int, ...]):
        """Density-schedule pruning of one row block: keep the ``target`` best links when it holds
        more. Returns (kept mask, positions revived from history) for the block."""
        opts = self.options
        mask = layer.mask[rows]
        revived = torch.zeros_like(mask)
        if int(torch.count_nonzero(mask)) <= target:
            return mask.clone(), revived
        weight = layer.dense_weight()[rows]
        g = make_generator(self.seed, "prune", *key)
        if opts.prune_with_history and layer.history is not None:
            # GMP's moving threshold: a pruned weight competes again with its last value.
            history = layer.history[rows]
            candidates = mask | (history != 0)
            values = torch.where(mask, weight, history)
            scores = removal_scores(values, candidates, opts.prune_score, grad=grad, mest_lambda=opts.mest_lambda)
            keep = keep_links(values, candidates, target, opts.prune_score, "topk", g, scores=scores)
            return keep, keep & ~mask
        keep = keep_links(weight, mask, target, opts.prune_score, "topk", g, grad=grad, mest_lambda=opts.mest_lambda)
        return keep, revived

    def _apply(self, layer: _Layer, old: torch.Tensor, keep: torch.Tensor, new: torch.Tensor, revived: torch.Tensor) -> None:
        """Install ``keep | new`` as the layer's mask: dropped weights are remembered (history) and
        zeroed, new links start at zero or at their history value, and their optimizer state is 0."""
        final = keep | new
        weight = layer.dense_weight() if layer.is_sparse else layer.module.weight
        with torch.no_grad():
            dropped = old & ~keep
            if layer.history is not None:
                layer.history[dropped] = weight[dropped]
            if self.options.regrown_init == "history" and layer.history is not None:
                init = torch.where(new, layer.history, torch.zeros_like(weight))
            else:
                init = torch.zeros_like(weight)
            if layer.history is not None and revived.any():
                init = torch.where(revived, layer.history, init)
            fresh = new | revived
            if layer.is_sparse:
                layer.module.set_mask(final, self.optimizer, new_values=init, reset=fresh)
                layer.ever_active |= final
                return
            weight.copy_(torch.where(fresh, init, weight) * final)
            layer.mask.copy_(final)
            if weight.grad is not None:
                weight.grad.mul_(final)
            self._mask_optimizer_state(layer, fresh)
            layer.ever_active |= final

    def _non_finite(self, grads: dict[str, torch.Tensor | None]) -> str | None:
        for layer in self.layers:
            if not bool(torch.isfinite(layer.parameter.detach()).all()):
                return f"non-finite weights in layer {layer.name!r}"
            grad = grads[layer.name]
            if grad is not None and not bool(torch.isfinite(grad).all()):
                return f"non-finite gradients in layer {layer.name!r}"
        return None

    def _reset_grad_accumulators(self) -> None:
        for layer in self.layers:
            layer.grad_sum = None
            layer.grad_count = 0

    # ------------------------------------------------------------------ inspection
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Layer name → bool mask ``(out_features, in_features)`` (the live buffers)."""
        return {layer.name: layer.mask for layer in self.layers}

    def itop_rate(self) -> float:
        """Fraction of all sparsified positions that have ever been active (ITOP rate)."""
        ever = sum(int(torch.count_nonzero(layer.ever_active)) for layer in self.layers)
        total = sum(layer.mask.numel() for layer in self.layers)
        return ever / max(1, total)

    def density(self) -> float:
        """Overall density of the sparsified layers."""
        return sum(int(torch.count_nonzero(layer.mask)) for layer in self.layers) / max(1, sum(layer.mask.numel() for layer in self.layers))

    def active_neurons(self) -> dict[str, tuple[float, float]]:
        """Layer name → (active input fraction, active output fraction)."""
        return {layer.name: active_neuron_fraction(layer.mask) for layer in self.layers}

    def summary(self) -> str:
        """Per-layer table: shape, target and actual density, active neurons, ITOP, frozen."""
        rows = []
        for layer in self.layers:
            n = layer.mask.numel()
            a_in, a_out = active_neuron_fraction(layer.mask)
            rows.append(
                [
                    layer.name,
                    f"{layer.shape[0]}x{layer.shape[1]}",
                    layer.target,
                    int(torch.count_nonzero(layer.mask)),
                    f"{layer.target / n:.4f}",
                    f"{int(torch.count_nonzero(layer.mask)) / n:.4f}",
                    f"{a_in:.1%}",
                    f"{a_out:.1%}",
                    f"{torch.count_nonzero(layer.ever_active).item() / layer.ever_active.numel():.1%}",
                    "-" if layer.last_overlap is None else f"{layer.last_overlap:.1%}",
                    "yes" if layer.frozen else "",
                    "sparse" if layer.is_sparse else "masked",
                ]
            )
        head = (
            f"chtorch {self.method or 'custom'}: sparsity {self.sparsity}, step {self.step_count}/{self.total_steps}, "
            f"{self.update_count} updates (every {self.options.update_interval} steps until {self.t_end}), "
            f"density {self.density():.4f}, ITOP {self.itop_rate():.1%}"
        )
        table = format_table(
            ["layer", "shape", "target", "links", "target dens.", "density", "in", "out", "ITOP", "overlap", "frozen", "backend"], rows
        )
        return head + "\n" + table

    def __repr__(self) -> str:
        return f"DynamicSparsity(method={self.method!r}, sparsity={self.sparsity}, layers={len(self.layers)}, step={self.step_count})"

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the masks (which are in ``model.state_dict()``) needed to resume exactly:
        counters, targets, early-stop flags, ITOP record, history weights and in-flight gradient sums."""
        return {
            "version": STATE_VERSION,
            "method": self.method,
            "sparsity": self.sparsity,
            "total_steps": self.total_steps,
            "seed": self.seed,
            "step_count": self.step_count,
            "update_count": self.update_count,
            "options": self.options.to_dict(),
            "layers": {
                layer.name: {
                    "shape": layer.shape,
                    "target": layer.target,
                    "frozen": layer.frozen,
                    "ever_active": layer.ever_active.clone(),
                    "history": None if layer.history is None else layer.history.clone(),
                    "grad_sum": None if layer.grad_sum is None else layer.grad_sum.clone(),
                    "grad_count": layer.grad_count,
                    "last_overlap": layer.last_overlap,
                }
                for layer in self.layers
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Validates first and changes nothing on a mismatch."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a chtorch DynamicSparsity state (version {state.get('version') if isinstance(state, dict) else None!r}, expected {STATE_VERSION})"
            )
        if abs(float(state["sparsity"]) - self.sparsity) > 1e-12:
            raise ValueError(
                f"sparsity state is for sparsity {state['sparsity']}, but this run uses {self.sparsity}: resume with the same sparsity"
            )
        saved, mine = list(state["layers"]), [layer.name for layer in self.layers]
        if saved != mine:
            raise ValueError(f"sparsity state is for layers {saved}, but this model's sparse layers are {mine}")
        for layer in self.layers:
            entry = state["layers"][layer.name]
            if tuple(entry["shape"]) != layer.shape:
                raise ValueError(f"layer {layer.name!r}: saved shape {tuple(entry['shape'])} != model shape {layer.shape}")
        self.step_count = int(state["step_count"])
        self.update_count = int(state["update_count"])
        for layer in self.layers:
            entry = state["layers"][layer.name]
            device = layer.mask.device
            layer.target = int(entry["target"])
            layer.frozen = bool(entry["frozen"])
            layer.ever_active = entry["ever_active"].to(device).clone()
            layer.history = None if entry["history"] is None else entry["history"].to(device).clone()
            layer.grad_sum = None if entry["grad_sum"] is None else entry["grad_sum"].to(device).clone()
            layer.grad_count = int(entry["grad_count"])
            layer.last_overlap = entry.get("last_overlap")

    def remove(self) -> None:
        """Detach the hooks (masks stay on the model)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def parameters_count(self) -> tuple[int, int]:
        """(active links, total positions) over the sparsified layers."""
        return sum(int(torch.count_nonzero(l.mask)) for l in self.layers), sum(l.mask.numel() for l in self.layers)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def iter_layers(self) -> Iterable[tuple[str, nn.Linear, torch.Tensor]]:
        for layer in self.layers:
            yield layer.name, layer.module, layer.mask
