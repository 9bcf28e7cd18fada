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

This module holds the engine's life cycle (set-up, hooks, ``step``, state) and its counters (optimizer
steps, counted by :mod:`chtorch.dst.counting`); the schedules are a :class:`~chtorch.dst.timeline.Timeline`,
one update is :func:`chtorch.dst.update.topology_update` (Algorithm 1 of Zhang et al., NeurIPS 2025,
arXiv:2501.19107), layers are :mod:`chtorch.dst.layer` (book-keeping :mod:`chtorch.dst.book`), the saved
state is checked by :mod:`chtorch.dst.state`, the start is :mod:`chtorch.dst.initial`. The update runs
after ``optimizer.step()``; with ``skip_step_on_update`` the loop leaves out the optimizer step of an
update iteration (:meth:`DynamicSparsity.skips_optimizer_step`; docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from chtorch._checks import check_number
from chtorch.dst import ranks
from chtorch.dst.counting import StepCounter, step_source
from chtorch.dst.initial import given_masks, initial_mask
from chtorch.dst.layer import (
    Layer,
    MaskedLayer,
    auto_backend,
    backend_names,
    choose_backends,
    get_backend,
    make_layer,
    refuse_sharded,
    switch_backend,
)
from chtorch.dst.maskwatch import MaskWatch
from chtorch.dst.options import OptionError, SparsityOptions, check_engine_args
from chtorch.dst.percolation import Coupling, active_neuron_fraction, resolve_couplings
from chtorch.dst.registry import get_part
from chtorch.dst.report import UpdateReport, summary_table
from chtorch.dst.rollback import Snapshot
from chtorch.dst.scope import (
    LayerSelector,
    check_budgets,
    check_owned,
    check_structure,
    head_groups,
    is_transposed,
    layer_shape,
    layer_weight,
    logical_weight,
    select_layers,
)
from chtorch.dst.state import RUN_KEYS, STATE_VERSION, check_state, layer_state
from chtorch.dst.timeline import Timeline
from chtorch.dst.update import UpdateContext, averaged_gradients, network_stopped, topology_update
from chtorch.masks import keep_bits, zero_off_mask_
from chtorch.rng import make_generator
from chtorch.sparse import kernel_names

__all__ = ["DynamicSparsity", "select_layers", "LayerSelector"]


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
        backend: a registered backend ("masked", "sparse", ...) or "auto" (see :func:`chtorch.sparsify`).
        kernel: the sparse kernel of the layers a backend runs sparse (:func:`chtorch.sparse.kernel_names`).
        masks: start from these topologies (layer name -> bool ``(out_features, in_features)``, e.g. a
            checkpoint's) instead of drawing them: every selected layer needs one, the weights are
            kept as they are (masked; ``weight_init`` is not applied) and so is the optimizer state
            at the links, so a resumed run needs only ``load_state_dict`` afterwards.
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
        masks: Mapping[str, torch.Tensor] | None = None,
        kernel: str = "auto",
    ) -> None:
        if options is None:
            options = SparsityOptions()
        if not isinstance(options, SparsityOptions):
            raise OptionError(f"options must be a chtorch SparsityOptions, got {type(options).__name__}")
        options.validate()  # a field assigned after construction is checked too
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        optimizer = step_source(optimizer)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                "optimizer must be a torch.optim.Optimizer (built from "
                f"model.parameters()), got {type(optimizer).__name__}"
            )
        if backend not in backend_names():
            raise ValueError(f"backend must be one of {backend_names()}, got {backend!r}")
        if kernel not in kernel_names():
            raise ValueError(f"kernel must be one of {kernel_names()}, got {kernel!r}")
        check_number("seed", seed, 0, 2**63 - 1, integer=True, hint="the root of every random choice")
        check_engine_args(sparsity, total_steps, options)
        names = select_layers(model, layers, exclude)
        check_structure(model, names)
        modules = dict(model.named_modules())
        check_owned(modules, names, optimizer, masks if isinstance(masks, Mapping) else None)
        for name in names:
            refuse_sharded(name, modules[name].weight)
        groups = head_groups(options.head_groups, names, modules)
        given = given_masks(masks, names, modules)

        self.model = model
        self.optimizer = optimizer
        self.sparsity = float(sparsity)
        self.total_steps = int(total_steps)
        self.options = options
        self.seed = int(seed)
        self.method = method
        self.kernel = kernel
        self.step_count = 0  # optimizer steps taken (counted by the optimizer's own step events)
        self.update_count = 0
        self.counter = StepCounter(self.total_steps)  # counts the optimizer's step events
        self.timeline = Timeline(options, self.sparsity, self.total_steps)
        self.t_end, self.decay_end = self.timeline.t_end, self.timeline.decay_end
        self.couplings = self._resolve_couplings(names)
        self._hooks: list[Any] = []
        self._removed = False
        self._watch = MaskWatch()
        self.backend_request = backend
        shapes = [layer_shape(modules[n]) for n in names]
        steps = sorted({0, self.decay_end, self.t_end, self.total_steps})
        check_budgets(
            names,
            shapes,
            groups,
            given,
            {step: (self.scheduled_sparsity(step), self.timeline.budgets(shapes, step)) for step in steps},
        )
        densities = [c / (a * b) for c, (a, b) in zip(self.timeline.budgets(shapes, 0), shapes)]
        self.backends, self.backend_reason = choose_backends(backend, names, shapes, densities)
        transposed = [n for n in names if is_transposed(modules[n])]
        if transposed and backend == "sparse":
            raise OptionError(
                "backend='sparse' replaces nn.Linear layers only; "
                f"{transposed[0]!r} is a GPT-2 Conv1D: use backend='masked'"
            )
        self.backends.update(dict.fromkeys(transposed, "masked"))  # the truly sparse layer is an nn.Linear replacement
        # Every mask is drawn before the first write to the model, and the writes are undone on any
        # failure: sparsify is all or nothing.
        targets = self.timeline.budgets(shapes, 0)
        planned = {
            name: given[name]
            if name in given
            else initial_mask(
                options.init,
                options.init_options,
                shape,
                target,
                groups[name],
                self.seed,
                index,
                modules[name].weight.device,
            )
            for index, (name, shape, target) in enumerate(zip(names, shapes, targets))
        }
        snapshot = Snapshot(model, {n: modules[n] for n in names}, optimizer)
        try:
            self.layers: list[Layer] = self._prepare(names, modules, groups, planned, given, snapshot)
        except BaseException:
            snapshot.restore()
            self._hooks.clear()
            raise
        self._watch.remember(self.layers)

    # ------------------------------------------------------------------ set-up
    def _resolve_couplings(self, names: list[str]) -> list[Coupling]:
        couplings, given = resolve_couplings(self.options.couplings, self.options.percolation, self.model, names)
        if callable(self.options.couplings):  # the state names what the rule gave, as if it had been passed
            self._couplings_text = None if given is None else repr(given)
        return couplings

    def _prepare(
        self,
        names: list[str],
        modules: dict[str, nn.Module],
        groups: dict[str, int],
        planned: dict[str, torch.Tensor],
        given: dict[str, torch.Tensor],
        snapshot: Snapshot,
    ) -> list[Layer]:
        """Register each layer's mask (``planned``), initialise its weights, mask its optimizer
        state, then move the layers chosen for the sparse backend onto it and hook the masked ones.
        Every hook goes through ``snapshot`` so that a failure can remove it."""
        opts = self.options
        weight_init = get_part("weight_init", opts.weight_init).fn
        layers: list[Layer] = []
        for index, name in enumerate(names):
            module = modules[name]
            weight = logical_weight(module)  # (out, in), a view of a Conv1D's (in, out) weight
            mask = planned[name]
            target = int(torch.count_nonzero(mask))
            # (out, in) for every layer type: a Conv1D's weight (in, out) is masked by weight_mask.T.
            module.register_buffer("weight_mask", mask, persistent=True)
            masked = MaskedLayer(name, index, module, target, groups[name])
            with torch.no_grad():
                if name not in given:
                    weight_init(weight, mask, generator=make_generator(self.seed, "swi", index))
                zero_off_mask_(weight, keep_bits(mask, weight))
                grad = layer_weight(module).grad
                if grad is not None:
                    grad = grad.T if is_transposed(module) else grad
                    zero_off_mask_(grad, keep_bits(mask, grad))
            masked.mask_optimizer_state(self.optimizer)
            layers.append(masked)
        for backend in sorted(set(self.backends.values()) - {"masked"}):
            chosen = [layer.name for layer in layers if self.backends[layer.name] == backend]
            adopt = get_backend(backend).adopt
            replaced = adopt(self.model, chosen, self.optimizer, self.kernel) if adopt is not None else {}
            layers = [
                make_layer(backend, l.name, l.index, replaced.get(l.name, l.module), l.target, l.groups, l.book)
                if l.name in chosen
                else l
                for l in layers
            ]
        for layer in layers:
            if opts.needs_weight_history:
                layer.history = torch.zeros(layer.shape, dtype=layer.parameter.dtype, device=layer.mask.device)
            self._watch_layer(layer, snapshot.track)
        self._hooks.append(snapshot.track(self.optimizer.register_step_post_hook(self._after_optimizer_step)))
        return layers

    def _watch_layer(self, layer: Layer, track: Callable[[Any], Any] = lambda handle: handle) -> None:
        """Hook ``layer``'s module: its gradients (masking, and the dense gradient a method reads) and
        the ``load_state_dict`` pre-hook of the mask watch. ``track`` registers each handle with a
        rollback snapshot during set-up."""
        layer.grad_dtype = None if self.options.grad_accumulation_dtype == "param" else torch.float32
        self._hooks.append(track(layer.watch_gradients(self._recording, self.options.needs_dense_gradient)))
        self._hooks.append(track(layer.module.register_load_state_dict_pre_hook(self._watch.loader(layer.name))))

    def _switch_backends(self, wanted: Mapping[str, str] | None = None) -> None:
        """Move layers to the backend ``wanted`` names (default: what ``auto`` picks for each layer's
        current budget), carrying weights and optimizer state exactly (:func:`switch_backend`).
        Runs after every update of an ``auto`` run, and when a state is loaded. Under
        ``torch.distributed`` the layers stay where they are: DDP holds the Parameters it syncs."""
        if wanted is None:
            if self.backend_request != "auto" or ranks.is_distributed():
                return
            wanted = {
                layer.name: auto_backend(layer.target / layer.mask.numel(), layer.mask.numel()) for layer in self.layers
            }
        for i, layer in enumerate(self.layers):
            backend = wanted.get(layer.name, layer.backend)
            if backend != layer.backend:
                new = switch_backend(layer, backend, self.model, self.optimizer, self.kernel)
                self._watch_layer(new)
                self.layers[i] = new
                self.backends[layer.name] = backend

    # ------------------------------------------------------------------ schedules (see Timeline)
    def scheduled_sparsity(self, step: int) -> float:
        """The sparsity the density schedule asks for at ``step`` (:meth:`Timeline.sparsity_at`)."""
        return self.timeline.sparsity_at(step)

    def targets(self, step: int) -> list[int]:
        """Each layer's exact link budget at ``step``."""
        return self.timeline.budgets([layer.shape for layer in self.layers], step)

    def core_targets(self) -> list[int]:
        """Each layer's link budget at the final sparsity: the core that MEST's EM&S keeps at every
        update in ``ems_mode="official"`` (the scheduled targets add the extra density on top)."""
        return self.timeline.budgets([layer.shape for layer in self.layers])

    def zeta(self, step: int) -> float:
        """Fraction of active links removed by the update at ``step``."""
        return self.timeline.zeta(step)

    def temperature(self, step: int) -> float:
        """Exponent T of a soft removal at ``step`` (1.0 for top-k)."""
        return self.timeline.temperature(step)

    def is_update_step(self, step: int) -> bool:
        return self.timeline.is_update_step(step)

    def skips_optimizer_step(self) -> bool:
        """True when option ``skip_step_on_update`` is on and the coming :meth:`step` runs a topology
        update that changes the topology (not once a network-wide early stop froze it): a training
        loop then leaves out that ``optimizer.step()`` but still calls ``sp.step()``, as the official
        MLP and LLaMA codes do (docs/decisions.md, "optimizer step on an update iteration")."""
        if not self.options.skip_step_on_update or self._removed:
            return False
        skip = self.is_update_step(self.step_count + 1) and not network_stopped(self.layers, self.options)
        # the next sp.step() counts this iteration although its optimizer step never runs
        self.counter.told_to_skip = self.counter.told_to_skip or skip
        return skip

    def set_grad_scaler(self, scaler: Any) -> None:
        """Name a loop's ``torch.amp.GradScaler`` (None: none): the dense gradients RigL, GraNet and
        MEST read are recorded scaled and divided by its scale. A step it skips is never counted."""
        self.counter.set_scaler(scaler)

    @property
    def past_total_steps(self) -> bool:
        """True once more optimizer steps than ``total_steps`` were taken (warned once; in the state)."""
        return self.counter.past_total_steps

    # ------------------------------------------------------------------ hooks
    def _grad_window(self, step: int) -> bool:
        return self.timeline.records_gradient(step)

    def _recording(self) -> bool:  # the coming optimizer step's backward passes record dense gradients
        return self._grad_window(self.step_count + 1)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The optimizer's step post-hook: the only place that sees an optimizer step that really ran
        (gradient accumulation calls ``sp.step()`` more often, a ``GradScaler`` skips steps)."""
        for layer in self.layers:
            layer.after_optimizer_step(self.optimizer)
        self.counter.stepped(self.layers)

    # ------------------------------------------------------------------ the update
    def step(self) -> UpdateReport | None:
        """Call after ``optimizer.step()`` (or on every micro-step: it counts optimizer steps). Runs a
        topology update when one is due and returns its :class:`UpdateReport`; otherwise returns ``None``.

        The engine counts the optimizer's own step events (its step post-hook), not calls: a call
        with no optimizer step since the previous one (a micro-step of gradient accumulation, a step
        that a ``GradScaler`` skipped for inf/NaN gradients, a step the loop left out) counts nothing
        and never updates the topology. The one exception is the iteration whose optimizer step
        :meth:`skips_optimizer_step` told the loop to leave out: it counts. Raises ``RuntimeError``
        after :meth:`remove` and ``ValueError`` when a mask was replaced by one that breaks the budget."""
        if self._removed:
            raise RuntimeError(
                "sp.step() after sp.remove(): the engine's hooks are "
                "detached, so it no longer keeps off-mask entries at zero; "
                "build a new engine with chtorch.sparsify(..., masks=...) to continue dynamic sparse training"
            )
        self._watch.check(self.layers)
        report = None
        # more than one step when the loop calls sp.step() less often than it steps the optimizer
        for _ in range(self.counter.take(self.layers)):
            report = self._count_step() or report
        return report

    def _count_step(self) -> UpdateReport | None:
        """Count one optimizer step; run the topology update due after it."""
        self.step_count += 1
        self.counter.check_total(self.step_count)
        if not self.is_update_step(self.step_count):
            return None
        step = self.step_count
        self.update_count += 1
        ems_official = self.options.ems and self.options.ems_mode == "official"
        context = UpdateContext(
            options=self.options,
            seed=self.seed,
            step=step,
            update_index=self.update_count,
            sparsity=self.scheduled_sparsity(step),
            zeta=self.zeta(step),
            temperature=self.temperature(step),
            targets=self.targets(step),
            cores=self.core_targets() if ems_official else None,
            grads=averaged_gradients(self.layers),
            optimizer=self.optimizer,
        )
        # an update inside the loop's autocast region still computes in fp32
        with torch.autocast(self.layers[0].mask.device.type, enabled=False):
            report = topology_update(context, self.layers, self.couplings)
        for layer in self.layers:
            layer.book.reset_gradients()
        self._switch_backends()
        self._watch.remember(self.layers)
        return report

    # ------------------------------------------------------------------ inspection
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Layer name → bool mask ``(out_features, in_features)`` (the live buffers)."""
        return {layer.name: layer.mask for layer in self.layers}

    def itop_rate(self) -> float:
        """Fraction of all sparsified positions that have ever been active (ITOP rate)."""
        return _fraction([layer.ever_active for layer in self.layers])

    def density(self) -> float:
        """Overall density of the sparsified layers."""
        return _fraction([layer.mask for layer in self.layers])

    def active_neurons(self) -> dict[str, tuple[float, float]]:
        """Layer name → (active input fraction, active output fraction)."""
        return {layer.name: active_neuron_fraction(layer.mask) for layer in self.layers}

    def summary(self) -> str:
        """Per-layer table: shape, target and actual density, active neurons, ITOP, frozen."""
        return summary_table(self)

    def __repr__(self) -> str:
        return (
            f"DynamicSparsity(method={self.method!r}, sparsity={self.sparsity}, "
            f"layers={len(self.layers)}, step={self.step_count})"
        )

    # ------------------------------------------------------------------ persistence
    def _run(self) -> dict[str, Any]:
        """What a state names about its run and the engine's counters (:data:`chtorch.dst.state.RUN_KEYS`)."""
        run = {key: getattr(self, key) for key in RUN_KEYS if key != "options"}
        options = self.options.to_dict()
        if callable(self.options.couplings):
            options["couplings"] = getattr(self, "_couplings_text", None)
        return {**run, "options": options}

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the masks (which are in ``model.state_dict()``) needed to resume exactly:
        counters, and each layer's book-keeping (:class:`chtorch.dst.book.LayerBook`: targets,
        early-stop flags, ITOP record, history weights, in-flight gradient sums) and backend."""
        return {
            "version": STATE_VERSION,
            **self._run(),
            "past_total_steps": self.past_total_steps,
            "layers": {layer.name: layer_state(layer) for layer in self.layers},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Validates every entry first (:func:`chtorch.dst.state.check_state`)
        and changes nothing on a mismatch: a state of another method, options, ``total_steps``,
        sparsity or model shape is refused with the difference named."""
        entries = check_state(state, self._run(), self.layers)
        self.step_count = int(state["step_count"])
        self.update_count = int(state["update_count"])
        self.counter.past_total_steps = bool(state.get("past_total_steps", self.step_count > self.total_steps))
        self.counter.reset()
        self._restore_backends(state["layers"])
        for layer in self.layers:
            layer.book.load(entries[layer.name], layer.mask.device, layer.parameter.dtype)
        self._watch.expect({name: entry["links"] for name, entry in entries.items()})

    def _restore_backends(self, saved: Mapping[str, Any]) -> None:
        """Put each layer on the backend it had when ``saved`` was written (an ``auto`` run may have
        switched it) with the same ``values`` length, so the optimizer state saved beside it fits.
        Works before or after ``model.load_state_dict`` and ``optimizer.load_state_dict``."""
        self._switch_backends({name: entry.get("backend") or self.backends[name] for name, entry in saved.items()})
        for layer in self.layers:
            capacity = saved[layer.name].get("capacity")
            if capacity is not None and layer.capacity() is not None:
                layer.set_capacity(int(capacity))

    def remove(self) -> None:
        """Detach the hooks (masks stay on the model); :meth:`step` refuses to run afterwards."""
        self._removed = True
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def parameters_count(self) -> tuple[int, int]:
        """(active links, total positions) over the sparsified layers."""
        return sum(int(torch.count_nonzero(l.mask)) for l in self.layers), sum(l.mask.numel() for l in self.layers)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def iter_layers(self) -> Iterable[tuple[str, nn.Module, torch.Tensor]]:
        for layer in self.layers:
            yield layer.name, layer.module, layer.mask


def _fraction(masks: Sequence[torch.Tensor]) -> float:
    """Set positions over all positions of ``masks``."""
    return sum(int(torch.count_nonzero(m)) for m in masks) / max(1, sum(m.numel() for m in masks))
