"""Counter-based randomness.

Every random choice chtorch makes (initial topologies, soft sampling, random regrowth) draws from a
private ``torch.Generator`` whose seed is a pure function of ``(seed, *keys)`` — for a topology update
the keys are ``(purpose, update_index, layer_index)``. A resumed run and every ``torchrun`` rank
therefore make exactly the same choices without pickling any RNG state, and the global RNG of the
user's program is never touched.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "make_generator"]


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` with BLAKE2b (stable across processes and
    Python versions, unlike ``hash()``)."""
    text = "/".join(str(part) for part in (int(seed), *keys))
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *keys))
    return generator
