"""A validation split held out from a training set of ``n`` examples (images), for model selection.

The paper's MLP code (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 7) trains on the whole
training set and keeps the best *test* epoch; chtorch's image recipe instead holds out
``data.val_fraction`` of the training images and chooses the epoch on them (docs/decisions.md,
"model selection"). The split is a function of ``n``, the fraction and a fixed split seed only — not
of the run's seed or method — so every run of a comparison trains and selects on the same images.
"""

from __future__ import annotations

import torch

from chtorch.rng import make_generator

__all__ = ["SPLIT_SEED", "holdout_indices"]

#: The seed of the validation permutation: fixed, so the split is the same for every run seed and method.
SPLIT_SEED = 0


def holdout_indices(n: int, val_fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: sorted int64 indices into ``range(n)``, disjoint, together all of it.

    ``round(val_fraction · n)`` indices (at least 1) are the first of a permutation drawn from
    ``make_generator(seed, "image-validation")``; ``val_fraction = 0`` holds out nothing (``val``
    empty). E.g. ``holdout_indices(10, 0.2)`` holds out 2 of the 10 indices, the same 2 every call.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    n_val = max(1, int(round(n * float(val_fraction))))
    if n_val >= n:
        raise ValueError(
            f"{n} training examples are too few to hold out val_fraction={val_fraction} for validation "
            "and still train; use more training data or a smaller data.val_fraction (0 holds out nothing)"
        )
    perm = torch.randperm(n, generator=make_generator(seed, "image-validation"))
    val = perm[:n_val].sort().values
    train = perm[n_val:].sort().values
    return train, val
