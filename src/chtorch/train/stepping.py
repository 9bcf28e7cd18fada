"""One optimizer step of the trainer: its micro-batches, their precision and a non-finite loss.

An optimizer step runs ``train.grad_accum`` micro-batches (gradient accumulation: the paper's global
batch of 512 sequences on fewer devices), each forward under ``torch.autocast`` for
``train.precision: bf16 | fp16``, each backward of ``loss / grad_accum`` (so the accumulated gradient
is the mean over the global batch, as one large batch gives). Under DDP only the last micro-batch
synchronises gradients (``no_sync`` for the others). With fp16 a ``torch.amp.GradScaler`` scales the
loss; a step it skips (inf/NaN gradients) is not counted by the sparsity engine, which hooks the
optimizer's own step events. The weights, the optimizer state and every topology update stay fp32
(docs/decisions.md, "precision and accumulation").
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from chtorch.config import ConfigError

if TYPE_CHECKING:
    from chtorch.dst import UpdateReport
    from chtorch.train.trainer import Trainer

__all__ = ["Precision", "AUTOCAST_DTYPES", "optimizer_step", "micro_groups"]

#: ``train.precision`` -> the autocast dtype (None: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and loss scaling for ``train.precision`` on ``device``; fp16 is refused off CUDA."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"train.precision must be one of {list(AUTOCAST_DTYPES)}, got {precision!r}", "train.precision"
            )
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"train.precision=fp16 needs a CUDA device (this run is on {device.type}): fp16 autocast with a "
                "GradScaler is a GPU feature; use train.precision=bf16 (runs on CPU) or fp32",
                "train.precision",
            )
        self.name = precision
        self.device_type = device.type
        self.dtype = AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients before clipping (fp16)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skips optimizer.step() on inf/NaN gradients
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def optimizer_step(self: Trainer, group: Sequence[Any]) -> tuple[torch.Tensor | None, UpdateReport | None]:
    """Train on the micro-batches of ``group`` and take one optimizer step (see the module docs).
    Returns the mean loss (None when the step was skipped for a non-finite loss) and the engine's
    update report. Counts the step, the running sums and the non-finite losses on ``self``."""
    cfg = self.config
    precision: Precision = self.precision
    n = len(group)
    losses: list[torch.Tensor] = []
    sums: dict[str, Any] = {}
    for i, batch in enumerate(group):
        with _no_sync(self.train_model, last=i == n - 1):
            with precision.autocast():
                loss, stats = self.recipe.train_step(self.train_model, batch)
            # Under DDP a step is skipped on every rank when the loss is not finite on one of them:
            # a rank that skipped backward() would leave the others waiting in DDP's all-reduce.
            if self.dist.any(not bool(torch.isfinite(loss.detach()))):
                self.nonfinite += 1
                if self.is_main:
                    warnings.warn(
                        f"chtorch: non-finite loss at step {self.step + 1}; the step and any topology update "
                        f"due are skipped ({self.nonfinite}/{cfg.train.max_nonfinite})",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                self.optimizer.zero_grad(set_to_none=True)
                return None, None
            precision.backward(loss / n if n > 1 else loss)
        losses.append(loss.detach().float())
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
    if cfg.optim.grad_clip > 0:
        precision.unscale(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
    # The LR this step trains with (the scheduler moves it after the step; just after a topology
    # update that is the first value of a re-warm-up): step and epoch records report this one.
    self.lr_used = self.optimizer.param_groups[0]["lr"]
    if self.sparsity is None or not self.sparsity.skips_optimizer_step():
        precision.step(self.optimizer)
    report = self.sparsity.step() if self.sparsity is not None else None
    self.scheduler.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.step += 1
    for key, value in sums.items():
        self.sums[key] = self.sums.get(key, 0.0) + value
    return torch.stack(losses).mean(), report


def _no_sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` for every micro-batch but the last (gradients all-reduced once per step)."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if (not last and no_sync is not None) else contextlib.nullcontext()


def micro_groups(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """``batches`` in consecutive lists of ``size`` (a last, shorter list is dropped)."""
    while True:
        group = [b for _, b in zip(range(size), batches)]
        if len(group) < size:
            return
        yield group
