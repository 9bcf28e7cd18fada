"""Statistics over seeds: the mean and the standard error of the mean (the paper's "±").

Shared by the table and the overlay plots of ``chtorch compare``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_stderr"]


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, standard error of the mean) — the error is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
