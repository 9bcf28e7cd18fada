"""Rank agreement for ``torchrun`` / DDP training.

Every random choice is already identical on all ranks (counter-based generators, :mod:`chtorch.rng`)
and CH scores depend only on the masks, so ranks agree by construction. Two things still need
communication: dense gradients recorded by the tensor hooks are local (before DDP's reduction), so
they are averaged before they rank candidates; and after each topology update the masks are
broadcast from rank 0 and checked with a checksum, a cheap safety net against any divergence.
Outside an initialised process group every function here is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "all_reduce_mean", "sync_masks", "mask_checksum", "MaskDivergenceError"]


class MaskDivergenceError(RuntimeError):
    """Ranks held different masks after a topology update."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input when not distributed)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def mask_checksum(masks: list[torch.Tensor]) -> int:
    """An order-sensitive integer checksum of bool masks (positions weighted by a fixed hash)."""
    total = 0
    for i, mask in enumerate(masks):
        idx = torch.nonzero(mask.flatten()).flatten().to(torch.int64)
        # (idx * odd constant + layer) mod 2^31, summed: sensitive to any moved link.
        total += int(((idx * 2654435761 + i * 97) % 2147483647).sum())
    return total % (1 << 62)


def sync_masks(masks: list[torch.Tensor], check: bool = True) -> None:
    """Broadcast ``masks`` from rank 0 in place; with ``check``, first compare checksums and raise
    :class:`MaskDivergenceError` if any rank differs (which would be a bug: ranks decide the same)."""
    if not is_distributed():
        return
    if check:
        local = torch.tensor([mask_checksum(masks)], dtype=torch.int64, device=masks[0].device)
        gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        values = {int(t.item()) for t in gathered}
        if len(values) != 1:
            raise MaskDivergenceError(
                f"ranks hold different masks after a topology update (checksums {sorted(values)})"
            )
    for mask in masks:
        buffer = mask.to(torch.uint8)
        dist.broadcast(buffer, src=0)
        mask.copy_(buffer.bool())
