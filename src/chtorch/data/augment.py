"""Image augmentation for the paper's CIFAR-10 runs: random crop with padding and horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["random_crop_flip"]


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
    fill: Sequence[float] | float = 0.0,
) -> torch.Tensor:
    """Batched random crop with padding and random horizontal flip, as the paper's code uses for
    CIFAR-10 (the official MLP code's ``load_data.py``: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``).

    ``images``: ``(B, C, H, W)``. Each image is padded by ``padding`` pixels of value ``fill`` (one
    value or one per channel: for normalised images use ``(0 - mean) / std`` to match padding the
    raw image with black), cropped back to ``H×W`` at a random offset, and mirrored with
    probability 1/2. All randomness comes from ``generator``. Returns a new ``(B, C, H, W)`` tensor.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = images.shape
    fill_t = torch.as_tensor(fill, dtype=images.dtype).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill must be one value or {c} (one per channel), got {fill_t.numel()}")
    padded = images.new_empty(b, c, h + 2 * padding, w + 2 * padding)
    padded[:] = fill_t.to(images.device).view(1, -1, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = images
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flipped = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    rows = oy[:, None] + torch.arange(h)  # (B, H)
    col_offsets = torch.where(flipped[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))
    cols = ox[:, None] + col_offsets  # (B, W)
    dev = images.device
    out = padded[
        torch.arange(b, device=dev)[:, None, None], :, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]
    ]  # advanced indexing puts the indexed dims first: (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
