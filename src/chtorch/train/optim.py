"""Optimizers and learning-rate schedules of the paper's recipes.

- MLP (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 4): SGD, momentum 0.9, weight decay
  5e-4, LR linear from 0.025 to 2.5e-4.
- Transformer (Table 5): Adam with noam, times the iterative re-warm-up after every topology update
  ("inoam", w = 20; one function for it: :func:`chtorch.dst.rewarmup_factor`).
- LLaMA (Table 6 / the official LLaMA code): AdamW, warm-up then cosine to 0.1·lr, times the same re-warm-up.

Every schedule is a pure function of the optimizer step (:mod:`chtorch.train.lr_schedules`), wrapped in a
``LambdaLR`` whose only state is the step counter, so a resumed run reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from chtorch import dst
from chtorch.config import OptimConfig
from chtorch.train.lr_schedules import cosine_with_warmup, linear_decay, noam

__all__ = ["build_optimizer", "lr_multiplier", "build_scheduler"]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over all of ``model``'s parameters, with the
    implementation ``config.kernel`` asks for (:func:`_implementation`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = _implementation(config.kernel, params)
    try:
        return _make(config, params, kind)
    except (RuntimeError, ValueError):
        if config.kernel != "auto" or not kind:
            raise
        return _make(config, params, {})  # a torch without fused CPU kernels (before 2.4/2.5): its default


def _make(config: OptimConfig, params: list[nn.Parameter], kind: dict[str, bool]) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
            **kind,
        )
    betas = (float(config.betas[0]), float(config.betas[1]))
    if config.name == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay, **kind
        )
    if config.name == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay, **kind
        )
    raise ValueError(f"unknown optimizer {config.name!r}; choose sgd, adam or adamw")


# torch's fused optimizers (one kernel over all parameters) run on these devices and dtypes.
_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _implementation(kernel: str, params: list[nn.Parameter]) -> dict[str, bool]:
    """The keyword torch's optimizers take for ``kernel``: ``fused`` (one kernel for every parameter:
    measured 2.5x faster for SGD and 2.8x for AdamW on the paper MLP's parameters on CPU, which is
    10-15% of a truly sparse step at batch 32), ``foreach`` (a few kernels per group), ``loop`` (one
    parameter at a time). ``auto``: fused when every parameter is on a device and of a dtype that
    torch's fused kernels support, else torch's own default. The numbers agree with the other
    implementations to float rounding, and the state dict has the same keys, so a checkpoint moves
    between them."""
    if kernel == "auto":
        supported = bool(params) and all(p.device.type in _FUSED_DEVICES and p.dtype in _FUSED_DTYPES for p in params)
        return {"fused": True} if supported else {}
    if kernel == "fused":
        return {"fused": True}
    if kernel == "foreach":
        return {"foreach": True}
    if kernel == "loop":
        return {"foreach": False}
    raise ValueError(f"unknown optimizer kernel {kernel!r}; choose auto, fused, foreach or loop")


def lr_multiplier(
    config: OptimConfig,
    total_steps: int,
    update_interval: int | None = None,
    t_end: int | None = None,
    d_model: int | None = None,
) -> Callable[[int], float]:
    """``step -> factor`` applied to ``config.lr`` (for noam: the LR divided by nothing — ``lr`` is
    noam's scale). ``update_interval`` enables the iterative re-warm-up when ``config.rewarmup_steps > 0``
    (None: a dense run, no re-warm-up); it repeats every interval of the whole run (``rewarmup_until="end"``,
    both official codes) or only up to ``t_end``, the last step at which an update runs
    (:func:`chtorch.dst.update_limit`), with ``rewarmup_until="last_update"``.

    - constant: 1 (after an optional linear warm-up over ``warmup_steps``);
    - linear: from 1 to ``final_lr/lr`` at ``decay_fraction · total_steps`` (after the warm-up), then held;
    - cosine: :func:`~chtorch.train.lr_schedules.cosine_with_warmup` down to ``final_lr/lr`` at the same step, then
    held;
    - noam: :func:`~chtorch.train.lr_schedules.noam` at step + 1 (OpenNMT counts steps from 1).
    """
    lr, warmup = config.lr, config.warmup_steps
    end_ratio = config.final_lr / lr
    kind = config.schedule
    # linear and cosine reach final_lr after this many steps and hold it (the MLP code: 90% of training)
    decay_steps = max(1, int(round(config.decay_fraction * total_steps)))
    if kind == "noam":
        width = config.d_model or d_model
        if width is None:
            raise ValueError("optim.schedule=noam needs the model width: set optim.d_model")

        def base(step: int) -> float:
            return noam(step + 1, width, warmup)
    elif kind == "cosine":

        def base(step: int) -> float:
            return cosine_with_warmup(step, decay_steps, warmup, min_ratio=end_ratio)
    elif kind in ("linear", "constant"):

        def base(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if kind == "constant":
                return 1.0
            return linear_decay(step - warmup, max(0, decay_steps - warmup), 1.0, end_ratio)
    else:
        raise ValueError(f"unknown LR schedule {kind!r}; choose constant, linear, cosine or noam")

    if config.rewarmup_steps > 0 and update_interval is not None:
        w = config.rewarmup_steps
        limit = t_end if config.rewarmup_until == "last_update" else None

        def rewarmed(step: int) -> float:
            # LambdaLR's counter ``step`` is the number of finished optimizer steps, as the re-warm-up expects.
            return base(step) * dst.rewarmup_factor(step, update_interval, w, limit)

        return rewarmed
    return base


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: OptimConfig,
    total_steps: int,
    update_interval: int | None = None,
    t_end: int | None = None,
    d_model: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_multiplier`; call ``scheduler.step()`` after every optimizer
    step. Its state (the step counter) is all a checkpoint needs."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config, total_steps, update_interval, t_end, d_model)
    )
