"""Activation checkpointing of a model's blocks (``model.checkpointing``).

A checkpointed block keeps only its inputs in the forward pass and recomputes its activations in
the backward pass (``torch.utils.checkpoint``, non-reentrant, RNG state preserved so dropout draws
the same): memory for the paper's global batch on fewer devices, at about one more forward pass.
Gradients are the same; the engine's gradient hooks on the weights see them as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["run_block"]


def run_block(block: nn.Module, *args: Any, checkpointing: bool = False) -> Any:
    """``block(*args)``, checkpointed when ``checkpointing`` is on and gradients are being taken."""
    if checkpointing and block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
