"""Correlated sparse topological initialisation (CSTI): links where input features are most
correlated (Zhang et al., ICLR 2024 (CHT), App. D). Only meaningful for a layer that
sees the raw inputs (or a layer whose inputs are tiled copies of them)."""

from __future__ import annotations

import torch

from chtorch.topology._args import check_shape, layer_budget
from chtorch.topology.registry import register_initializer

__all__ = ["csti", "pearson_correlation", "csti_scores"]


def pearson_correlation(x: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the columns of ``x`` ``(N, n_in)`` -> float32 ``(n_in, n_in)``.

    Computed in float64. Constant features have no defined correlation: their rows and columns are NaN,
    as in ``numpy.corrcoef`` (``csti`` maps NaN to 0). No file I/O: pass a tensor of training inputs,
    flattened to ``(N, n_in)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("x must be a 2-D tensor (N samples, n_in features); flatten images first")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to compute a correlation, got {x.shape[0]}")
    data = x.detach().to(torch.float64)
    centred = data - data.mean(dim=0, keepdim=True)
    covariance = centred.t() @ centred
    std = covariance.diagonal().sqrt()
    corr = covariance / (std[:, None] * std[None, :])
    # A zero-variance feature divides 0 by 0 -> NaN already; make it explicit for the whole row/column.
    constant = std == 0
    corr[constant, :] = float("nan")
    corr[:, constant] = float("nan")
    return corr.clamp(-1.0, 1.0).to(torch.float32)


def csti_scores(n_out: int, n_in: int, correlation: torch.Tensor) -> torch.Tensor:
    """The ``(n_out, n_in)`` float32 score ``|corr|`` that CSTI ranks (NaN -> 0, self-correlation -> 0).

    ``correlation`` is ``(c, c)`` over the ``c`` raw input features. Columns: ``n_in`` must equal ``c``,
    or be a multiple of it (a hidden layer whose inputs are tiled copies, e.g. width 2× the input);
    column ``j`` is feature ``j mod c``. Rows (output neurons have no feature identity): row ``i`` uses
    feature ``i mod c``, i.e. the matrix is tiled down and cropped. So ``n_out = 2·c`` gives the code's
    2× tiling and a square ``(2c, 2c)`` layer its 2×2 tiling. Entries whose row and column map to the
    same feature are 0 (the diagonal rule, applied to every tile).
    """
    n_out, n_in = check_shape(n_out, n_in)
    if (
        not isinstance(correlation, torch.Tensor)
        or correlation.dim() != 2
        or (correlation.shape[0] != correlation.shape[1])
    ):
        raise ValueError("correlation must be a square (n_features, n_features) tensor, e.g. pearson_correlation(x)")
    c = correlation.shape[0]
    if c == 0 or n_in % c != 0:
        raise ValueError(
            f"CSTI needs n_in ({n_in}) equal to, or a multiple of, the number of correlated input "
            f"features ({c}); use another initialiser (brf, bsw) for layers that do not see the inputs"
        )
    score = torch.nan_to_num(correlation.detach().to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0).abs()
    score.fill_diagonal_(0.0)
    rows = torch.arange(n_out, device=score.device) % c
    cols = torch.arange(n_in, device=score.device) % c
    return score[rows][:, cols]


@register_initializer(
    "csti",
    summary="correlated sparse topological initialisation: links where input features correlate most",
    needs=("input_correlation",),
)
def csti(
    n_out: int,
    n_in: int,
    sparsity: float | None = None,
    *,
    n_links: int | None = None,
    correlation: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CSTI bool mask ``(n_out, n_in)`` with exactly ``n_links`` ones: the largest entries of
    :func:`csti_scores` (see there for how shapes are mapped onto the correlation matrix).

    Equal scores at the cut (tiling repeats every value, and NaN/diagonal/constant features give 0) are
    broken by flat index order (deterministic) or, when ``generator`` is given, uniformly at random.
    The mask lives on ``correlation``'s device.
    """
    n_out, n_in, links = layer_budget(n_out, n_in, sparsity, n_links)
    score = csti_scores(n_out, n_in, correlation).flatten()
    if generator is not None:
        # Shuffle first, then a stable sort: equal scores keep the random order.
        perm = torch.randperm(score.numel(), generator=generator, device=generator.device).to(score.device)
        order = perm[torch.argsort(score[perm], descending=True, stable=True)]
    else:
        order = torch.argsort(score, descending=True, stable=True)
    flat = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    flat[order[:links]] = True
    return flat.view(n_out, n_in)
