"""One sparsified layer's book-keeping, in one record.

:class:`LayerBook` is the only list of the per-layer fields the engine keeps between steps: the engine's
``state_dict`` writes them from it, :func:`chtorch.dst.state.check_state` checks a saved entry by each
field's declared ``kind``, ``load_state_dict`` restores them through it, and a backend switch
(:func:`chtorch.dst.layer.switch_backend`) hands the whole record to the new layer. A field added
here is saved, checked, restored and carried everywhere at once.

Tensors are ``(out_features, in_features)`` like every engine tensor (rows = output neurons).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LayerBook", "KINDS"]

#: What a field's ``metadata["kind"]`` may say (how a saved value is checked):
#: ``count`` an int >= 0 (``target`` at most the layer's positions), ``flag`` a bool, ``fraction``
#: None or a number in [0, 1], ``mask`` a bool tensor of the layer's shape, ``floats`` None or a
#: floating tensor of the layer's shape (``history`` must be present exactly when the run keeps it).
KINDS = ("count", "flag", "fraction", "mask", "floats")


def _kind(kind: str, absent: Any = dataclasses.MISSING) -> dict[str, Any]:
    """Field metadata: the check ``kind`` and, for fields older states lack, the value when absent."""
    return {"kind": kind, "absent": absent}


@dataclass
class LayerBook:
    """A layer's book-keeping (Zhang et al., NeurIPS 2025, arXiv:2501.19107):

    ``target``: exact link budget; ``ever_active``: positions ever active (the ITOP record);
    ``frozen``: the early stop froze the topology; ``history``: weights at their removal (GMP's
    moving threshold, App. J's history init); ``grad_sum``/``grad_count``: dense gradients recorded
    before an update (RigL, GraNet, MEST); ``last_overlap``: |removed ∩ regrown| / |regrown| at the last
    update; ``early_stop_flag``: the overlap passed the early-stop threshold once (network-wide stop).
    """

    target: int = field(metadata=_kind("count"))
    ever_active: torch.Tensor = field(metadata=_kind("mask"))
    frozen: bool = field(default=False, metadata=_kind("flag"))
    history: torch.Tensor | None = field(default=None, metadata=_kind("floats"))
    grad_sum: torch.Tensor | None = field(default=None, metadata=_kind("floats"))
    grad_count: int = field(default=0, metadata=_kind("count"))
    last_overlap: float | None = field(default=None, metadata=_kind("fraction"))
    early_stop_flag: bool = field(default=False, metadata=_kind("flag", absent=False))

    def to_state(self) -> dict[str, Any]:
        """Every field, tensors cloned (a state never aliases live buffers)."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def load(self, entry: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
        """Set every field from a checked ``entry`` (:func:`chtorch.dst.state.check_state`): tensors
        cloned onto ``device``; ``history`` in the weights' ``dtype``, other floats stay float32."""
        for f in dataclasses.fields(self):
            value = entry[f.name]
            if torch.is_tensor(value):
                value = value.to(device=device, dtype=dtype if f.name == "history" else value.dtype).clone()
            setattr(self, f.name, value)

    def reset_gradients(self) -> None:
        """Drop the recorded dense gradients (after an update used them)."""
        self.grad_sum = None
        self.grad_count = 0


def _copy(value: Any) -> Any:
    return value.clone() if torch.is_tensor(value) else value
