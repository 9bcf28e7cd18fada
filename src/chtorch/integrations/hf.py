"""Dynamic sparse training inside a Hugging Face ``transformers.Trainer``, in one line.

    from chtorch.integrations.hf import ChtorchCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[ChtorchCallback("chtss", sparsity=0.9)])
    trainer.train()                          # and trainer.train(resume_from_checkpoint=True) resumes exactly

The callback builds :func:`chtorch.sparsify` at ``on_train_begin`` from the Trainer's model and
optimizer with ``total_steps = state.max_steps``; calls ``sp.step()`` after every optimizer step
(``on_optimizer_step``: after ``optimizer.step()``, before the LR scheduler and ``zero_grad``, which
is where the engine expects it); adds ``chtorch/density``, ``chtorch/itop`` and
``chtorch/active_neurons`` (the paper's ANP) to the Trainer's logs, ahead of the reporting
callbacks (TensorBoard, W&B, ...: see :meth:`ChtorchCallback.on_init_end`); and writes ``chtorch_sparsity.pt``
(the masks and the engine state) into every checkpoint directory. A resumed run builds the engine
from those masks (``sparsify(..., masks=...)``), which keeps the weights and optimizer moments the
Trainer loaded, and restores the engine's counters. The layers are every ``nn.Linear`` and GPT-2
``Conv1D`` but the output embedding (``lm_head``), with percolation couplings inferred from the
child names (q/k and gate/up rows, v→o, gate|up→down and c_fc→c_proj chains; Zhang et al.,
NeurIPS 2025, arXiv:2501.19107, §4.3 / App. F).

:func:`save_pretrained_sparse` saves a trained model without its ``weight_mask`` buffers (so
``from_pretrained`` loads it cleanly) plus a small bit-packed mask file; :func:`restore_masks` gives
the masks back (exactly from that file, or from the zero weights) to continue sparse training.

``transformers`` is an optional dependency: ``pip install 'chtorch[hf]'``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "chtorch.integrations.hf needs Hugging Face transformers "
        "(and accelerate for its Trainer): pip install 'chtorch[hf]'"
    ) from exc

import chtorch
from chtorch import dst
from chtorch._checks import check_number
from chtorch._io import atomic_write
from chtorch.dst import active_neuron_count, get_method, infer_couplings, resolve_options, update_limit
from chtorch.integrations.hf_layers import default_layers, head_groups_for  # noqa: E402
from chtorch.integrations.hf_save import MASKS_NAME, restore_masks, save_pretrained_sparse  # noqa: E402

__all__ = [
    "ChtorchCallback",
    "MASKS_NAME",
    "STATE_NAME",
    "default_layers",
    "head_groups_for",
    "restore_masks",
    "save_pretrained_sparse",
]

log = logging.getLogger("chtorch.integrations.hf")

#: File written into every Trainer checkpoint directory.
STATE_NAME = "chtorch_sparsity.pt"
_HAS_OPTIMIZER_STEP = hasattr(TrainerCallback, "on_optimizer_step")


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    # accelerate wraps the optimizer (AcceleratedOptimizer.optimizer): the engine's step post-hook
    # must sit on the optimizer whose step() really runs.
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"ChtorchCallback needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return inner


class ChtorchCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that runs dynamic sparse training (see the module docs).

    Args:
        method: a registered method (``chtorch.methods()``): ``set``, ``rigl``, ``chts``, ``chtss``, ...
        sparsity: final fraction of zeros per sparse layer.
        layers: names or glob patterns of the Linear layers to sparsify (default :func:`default_layers`).
        exclude: patterns kept dense.
        seed: root of every topology choice (default: the Trainer's ``args.seed``).
        update_interval: optimizer steps between topology updates (default: the method's, 100).
        per_head: budget, remove and regrow q/k/v rows per attention head (``head_groups`` from the
            model config, see :func:`head_groups_for`).
        rewarmup_steps: the paper's iterative LR re-warm-up after every topology update
            (:func:`chtorch.dst.rewarmup_factor`), applied on top of the Trainer's ``LambdaLR``
            schedule (0 = off; paper: 20).
        rewarmup_until: ``"end"`` (the default): the ramp repeats every ``update_interval`` steps of the
            whole run, after T_end too, as both official codes; ``"last_update"``: only after the
            topology updates that run (docs/decisions.md, "LR re-warm-up").
        **options: overrides of the method's parts (:class:`chtorch.dst.options.SparsityOptions`), e.g.
            ``zeta=0.1``, or a part you registered (``removal="my_score"``). The model family of a
            Trainer is usually a pretrained or HF-initialised Transformer, whose official code keeps the
            model's own initialisation: ``weight_init`` defaults to ``"keep"`` here (pass ``"swi"`` to
            redraw the weights at the links, as the MLP code does). The removal temperature follows
            the preset (linear T 1 → 3, the official MLP/Transformer code); to train a LLaMA as the
            official LLaMA code does, pass ``option_defaults=chtorch.recipes.lm.LLAMA_CODE_DEFAULTS``
            (T 1 → 9, top-k regrowth, no percolation, no early stop; docs/decisions.md). Every option
            given here must be read by the method (``delta_start`` needs a δ temperature schedule):
            one it would ignore raises :class:`chtorch.dst.OptionError` naming the parts that read it.
        option_defaults: option values under ``options`` that the method uses where it reads them
            and that are never an error (``weight_init="keep"`` is one unless given).
        masks: start from these topologies (layer name → bool ``(out_features, in_features)``), e.g.
            :func:`restore_masks` of a model saved with :func:`save_pretrained_sparse`; ``layers``
            defaults to their names. A resumed Trainer checkpoint takes precedence.

    Attributes: ``sparsity`` (the :class:`~chtorch.DynamicSparsity`, after train begin) and
    ``last_report`` (the last :class:`~chtorch.UpdateReport`).

    Logging: the Trainer places its reporting integrations (TensorBoard, W&B, ...) before user
    callbacks and hands every callback the same ``logs`` dict in list order, so a callback that adds
    values in ``on_log`` normally adds them too late. This callback therefore moves itself to the
    front of the Trainer's ``CallbackHandler.callbacks`` when the Trainer announces it
    (``on_init_end``, or ``on_train_begin`` for a callback added later with ``trainer.add_callback``):
    the ``chtorch/*`` values reach every integration, the console and ``state.log_history``.
    """

    def __init__(
        self,
        method: str = "chts",
        sparsity: float = 0.9,
        *,
        layers: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        seed: int | None = None,
        update_interval: int | None = None,
        per_head: bool = False,
        rewarmup_steps: int = 0,
        rewarmup_until: str = "end",
        masks: Mapping[str, torch.Tensor] | None = None,
        option_defaults: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        preset = get_method(method)  # unknown names fail now, not at train begin
        if update_interval is not None:
            options["update_interval"] = update_interval
        option_defaults = {"weight_init": "keep", **(option_defaults or {})}
        if options.get("skip_step_on_update"):
            raise ValueError(
                "skip_step_on_update=True cannot be honoured by a "
                "Trainer callback (the Trainer's optimizer step cannot be "
                "left out from one); drop it: the update iteration then trains as in the official Transformer code"
            )
        # Validate the overrides now: a dense method, or an option the method does not read, is refused here.
        resolve_options(preset.name, options, defaults=option_defaults)
        check_number("rewarmup_steps", rewarmup_steps, 0, integer=True)
        if rewarmup_until not in ("end", "last_update"):
            raise ValueError(f"rewarmup_until must be 'end' or 'last_update', got {rewarmup_until!r}")
        self.method = preset.name
        self.target_sparsity = float(sparsity)
        self.layers = layers
        self.exclude = exclude
        self.seed = seed
        self.per_head = per_head
        self.rewarmup_steps = rewarmup_steps
        self.rewarmup_until = rewarmup_until
        self.options = options
        self.option_defaults = option_defaults
        self.initial_masks = None if masks is None else dict(masks)
        if self.initial_masks is not None and layers is None:
            self.layers = list(self.initial_masks)
        self.sparsity: Any = None
        self.last_report: Any = None
        self._pending: dict[str, float] = {}

    # -- set-up -----------------------------------------------------------------------------------
    def _build(self, args: Any, state: Any, model: nn.Module, optimizer: Any) -> None:
        if optimizer is None:
            raise RuntimeError("ChtorchCallback: the Trainer passed no optimizer to on_train_begin")
        if not state.max_steps or state.max_steps <= 0:
            raise RuntimeError(
                "ChtorchCallback needs state.max_steps (set max_steps or num_train_epochs with a sized dataset)"
            )
        options = dict(self.options)
        if self.per_head and "head_groups" not in options:
            options["head_groups"] = head_groups_for(model)
        layers = self.layers if self.layers is not None else default_layers(model)
        seed = self.seed if self.seed is not None else int(getattr(args, "seed", 0))
        inner = _unwrap_optimizer(optimizer)
        resume_dir = self._resume_dir(args, state)
        # On resume the Trainer has already loaded the checkpoint's weights and optimizer state:
        # building the engine from the saved masks keeps both as they are.
        payload = None if resume_dir is None else self._load_payload(resume_dir)
        self.sparsity = chtorch.sparsify(
            model,
            inner,
            method=self.method,
            sparsity=self.target_sparsity,
            total_steps=int(state.max_steps),
            seed=seed,
            layers=layers,
            exclude=self.exclude,
            masks=self.initial_masks if payload is None else payload["masks"],
            option_defaults=self.option_defaults,
            **options,
        )
        if payload is not None:
            self.sparsity.load_state_dict(payload["engine"])
            sp = self.sparsity
            log.info(
                "chtorch: restored masks and sparsity state from %s (step %d, %d updates)",
                resume_dir,
                sp.step_count,
                sp.update_count,
            )

    def _resume_dir(self, args: Any, state: Any) -> Path | None:
        """The checkpoint the Trainer resumed from (``None`` for a fresh run): the directory named by
        ``args.resume_from_checkpoint``, else ``output_dir/checkpoint-<global_step>``."""
        if not state.global_step:
            return None
        candidates = []
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        for path in candidates:
            if (path / STATE_NAME).is_file():
                return path
        raise RuntimeError(
            f"ChtorchCallback: the Trainer resumed at step {state.global_step}, but no {STATE_NAME} was found in "
            f"{' or '.join(str(p) for p in candidates)}; the masks cannot be restored. Resume from a checkpoint "
            "written with ChtorchCallback, or set args.resume_from_checkpoint to its directory"
        )

    def _load_payload(self, path: Path) -> dict[str, Any]:
        payload = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
        if payload.get("method") != self.method:
            raise RuntimeError(
                f"ChtorchCallback: {path / STATE_NAME} was written by method "
                f"{payload.get('method')!r}, this run uses {self.method!r}"
            )
        return payload

    def _wrap_schedule(self, lr_scheduler: Any) -> None:
        if not self.rewarmup_steps:
            return
        if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise TypeError(
                f"rewarmup_steps needs the Trainer's LR scheduler to be a LambdaLR (HF's get_scheduler "
                f"schedules are), got {type(lr_scheduler).__name__}; set rewarmup_steps=0"
            )

        opts = self.sparsity.options
        interval, w = opts.update_interval, self.rewarmup_steps
        last = update_limit(self.sparsity.t_end, opts.final_update)
        t_end = last if self.rewarmup_until == "last_update" else None

        def rewarmed(base: Any) -> Any:
            def factor(step: int) -> float:
                return base(step) * dst.rewarmup_factor(step, interval, w, t_end)

            return factor

        lr_scheduler.lr_lambdas = [rewarmed(f) for f in lr_scheduler.lr_lambdas]
        step = lr_scheduler.last_epoch
        for group, base_lr, f in zip(
            lr_scheduler.optimizer.param_groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas
        ):
            group["lr"] = base_lr * f(step)

    # -- events -----------------------------------------------------------------------------------
    def _move_to_front(self) -> None:
        """Put this callback first in the calling ``CallbackHandler`` so its ``on_log`` adds the
        ``chtorch/*`` values before the reporting integrations read the logs. The handler is the
        ``self`` of the ``call_event`` frame that is calling us (transformers has no public hook that
        hands a callback its handler); moving an element to the front while ``call_event`` iterates
        keeps every later callback at its index, so none is skipped or called twice."""
        from transformers.trainer_callback import CallbackHandler

        frame: FrameType | None = sys._getframe(1)
        for _ in range(8):
            if frame is None:
                break
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler):
                if self in handler.callbacks and handler.callbacks[0] is not self:
                    handler.callbacks.remove(self)
                    handler.callbacks.insert(0, self)
                return
            frame = frame.f_back
        log.warning(
            "chtorch: Trainer callback handler not found; chtorch/* values may reach TensorBoard/W&B one log late"
        )

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._move_to_front()

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: nn.Module | None = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        self._move_to_front()
        if self.sparsity is not None:
            return  # a second train() call on the same Trainer keeps the engine
        if model is None:
            raise RuntimeError("ChtorchCallback: the Trainer passed no model to on_train_begin")
        self._build(args, state, model, optimizer)
        self._wrap_schedule(lr_scheduler)
        assert self.sparsity is not None  # _build made the engine
        log.info("%s", self.sparsity.summary())

    def _after_optimizer_step(self) -> None:
        if self.sparsity is None:
            return
        report = self.sparsity.step()
        if report is not None:
            self.last_report = report
            self._pending.update(
                {
                    "chtorch/removed": float(report.removed),
                    "chtorch/regrown": float(report.regrown),
                    "chtorch/update_ms": 1000.0 * report.seconds,
                }
            )
            log.info("%s", report if report.skipped else str(report).splitlines()[0])

    if _HAS_OPTIMIZER_STEP:

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._after_optimizer_step()
    else:  # pragma: no cover - transformers < 4.38 has no on_optimizer_step

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._after_optimizer_step()

    def metrics(self) -> dict[str, float]:
        """``chtorch/density``, ``chtorch/itop`` and ``chtorch/active_neurons`` now."""
        if self.sparsity is None:
            return {}
        sp = self.sparsity
        chains = sp.couplings or infer_couplings(sp.model, sp.layer_names)
        active, total = active_neuron_count(sp.masks, chains)
        return {
            "chtorch/density": sp.density(),
            "chtorch/itop": sp.itop_rate(),
            "chtorch/active_neurons": active / max(1, total),
        }

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.sparsity is None or logs is None:
            return
        values = {**self.metrics(), **self._pending}
        self._pending = {}
        logs.update(values)
        if state.log_history and isinstance(state.log_history[-1], dict):
            state.log_history[-1].update(values)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.sparsity is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            log.warning("chtorch: checkpoint folder %s not found; %s not written", folder, STATE_NAME)
            return
        payload = {
            "format": "chtorch-hf-sparsity",
            "version": 1,
            "method": self.method,
            "masks": {name: mask.detach().cpu().clone() for name, _, mask in self.sparsity.iter_layers()},
            "engine": self.sparsity.state_dict(),
        }
        target = folder / STATE_NAME

        with atomic_write(target) as (handle, _):
            torch.save(payload, handle)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.sparsity is not None:
            log.info("%s", self.sparsity.summary())
