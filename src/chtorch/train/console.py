"""The one-line epoch summary printed during training.

    epoch 3/8 | train loss 2.7625 | val loss 1.8605 ppl 6.4272 | test bleu 12.3400 | density 0.1008 | active 92.1% | lr
    0.0693 | 0.1s eta 0:02

Metrics are grouped by the split they were measured on — ``train_*``, ``val_*`` (validation, used for
model selection) and ``test_*`` — and each group is named as such, so validation numbers are never
called "test". ``lr`` is the learning rate of the epoch's last optimizer step (the record's ``lr``):
with iterative re-warm-up the optimizer's current value right after a topology update would be the
first, tiny step of the next warm-up, which is not what trained the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chtorch.train.progress import format_duration

__all__ = ["epoch_line", "SPLITS"]

#: Record-key prefixes, in the order they are printed, and how the line names them.
SPLITS = (("train_", "train"), ("val_", "val"), ("test_", "test"))


def epoch_line(record: Mapping[str, Any], epochs: int, eta: float | None = None) -> str:
    """The console line of an ``"epoch"`` record (see :mod:`chtorch.train.metrics`)."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for prefix, label in SPLITS:
        values = [
            f"{key.removeprefix(prefix)} {value:.4f}"
            for key, value in record.items()
            if key.startswith(prefix) and isinstance(value, float)
        ]
        if values:
            parts.append(f"{label} " + " ".join(values))
    parts.append(f"density {record.get('density', 1.0):.4f}")
    parts.append(f"active {100 * record.get('active_neurons', 1.0):.1f}%")
    if isinstance(record.get("lr"), (int, float)):
        parts.append(f"lr {record['lr']:.3g}")
    seconds = record.get("seconds")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.1f}s" + (f" eta {format_duration(eta)}" if eta is not None else ""))
    return " | ".join(parts)
