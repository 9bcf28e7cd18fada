"""Bipartite Receptive Field (BRF) initial topology (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
§3.2 and App. D; docs/decisions.md for where it follows the official code).

Nodes of one side (the *degree side*) receive a degree sequence; node ``i`` then picks that many
distinct partners on the other side, preferring partners close to its centre on a ring:
``p_j ∝ (1 + d_ij) ** (-(1 - r) / r)``. ``r = 0`` is the nearest-neighbour (banded) limit, ``r = 1``
is uniform random (Erdős–Rényi-like, with the degree sequence kept). The degree sequence is conserved
exactly, unlike BSW rewiring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from chtorch.topology._args import check_unit_interval, layer_budget, mask_device, require_generator
from chtorch.topology._degrees import even_degrees, uniform_degrees
from chtorch.topology.registry import register_initializer

__all__ = ["brf", "brf_degree_side", "brf_degrees", "brf_centres"]

_SIDES = ("auto", "out", "in")
_DEGREES = ("fixed", "uniform")
# Rows of the (degree side, other side) score matrix processed at once: bounds the float64 work
# buffers to ~2**22 entries. It depends only on the shape, so results do not depend on memory.
_CHUNK_ELEMENTS = 1 << 22


def brf_degree_side(n_out: int, n_in: int, side: str = "auto") -> str:
    """Which side gets the degree sequence: ``"out"`` (rows pick columns) or ``"in"`` (columns pick rows).

    ``"auto"`` follows the official code: the **smaller** side, and the output side for square layers
    (docs/decisions.md; the paper speaks of the output layer, which is the same for square layers).
    """
    if side not in _SIDES:
        raise ValueError(f"side must be one of {_SIDES}, got {side!r}")
    if side == "auto":
        return "out" if n_out <= n_in else "in"
    return side


def brf_centres(n_nodes: int, n_partners: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Ring centre of every degree-side node on the partner side, int64 ``(n_nodes,)``.

    When the degree side is the smaller one (the default) this is the official
    ``c_i = (i · floor(b / a)) mod b``; when a caller forces the larger side (``a > b``), ``floor(b/a)``
    would be 0 and put every centre at 0, so ``c_i = floor(i · b / a)`` is used instead.
    """
    i = torch.arange(n_nodes, dtype=torch.int64, device=device)
    if n_nodes <= n_partners:
        return torch.remainder(i * (n_partners // n_nodes), n_partners)
    return (i * n_partners) // n_nodes


def brf_degrees(
    n_nodes: int,
    n_partners: int,
    n_links: int,
    degree: str = "fixed",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The degree sequence of the degree side, int64 ``(n_nodes,)`` summing exactly to ``n_links``,
    each at most ``n_partners``.

    - ``"fixed"`` (BRFf): ``floor`` or ``ceil`` of the mean, ceil-nodes spread evenly (deterministic).
    - ``"uniform"`` (BRFu, the official default): every node starts at 1 and the rest are spread by a
      uniform multinomial (the official code; *not* a U[a, b] draw). Needs ``generator``.
    """
    if degree == "fixed":
        return even_degrees(n_links, n_nodes, mask_device(generator))
    if degree == "uniform":
        generator = require_generator(generator, 'brf with degree="uniform"')
        return uniform_degrees(n_links, n_nodes, n_partners, generator)
    raise ValueError(f"degree must be one of {_DEGREES} or a sequence of node degrees, got {degree!r}")


@register_initializer(
    "brf", summary="bipartite receptive field: links near each node's ring centre, randomness r (CHTs, CHTss)"
)
def brf(
    n_out: int,
    n_in: int,
    sparsity: float | None = None,
    *,
    n_links: int | None = None,
    r: float = 0.25,
    degree: str | Sequence[int] | torch.Tensor = "fixed",
    side: str = "auto",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bipartite receptive field bool mask ``(n_out, n_in)`` with exactly ``n_links`` ones.

    Args:
        n_out, n_in: layer shape (``out_features``, ``in_features``).
        sparsity / n_links: the budget; ``n_links`` wins, else ``link_budget(n_out, n_in, sparsity)``.
        r: randomness in ``[0, 1]``. ``0``: each node takes its ``k_i`` nearest partners on the ring
            (ties: the centre, then left before right at each distance, i.e. the window
            ``[c − floor(k/2), c + ceil(k/2))`` — equal to ``bsw(beta=0)`` on square layers);
            ``1``: uniformly random distinct partners; otherwise distinct partners drawn by successive
            sampling with ``p ∝ (1 + d)^(−(1−r)/r)`` (``d`` = ring distance to the centre), the same
            law as ``numpy.random.choice(replace=False, p=…)`` in the official code, computed with the
            Gumbel-top-k trick in log space (no underflow for small ``r``).
        degree: ``"fixed"``, ``"uniform"`` (see :func:`brf_degrees`) or an explicit integer sequence of
            length = size of the degree side, each in ``[0, other side]``; its sum is the link count
            (``n_links``/``sparsity``, when given, must agree).
        side: ``"auto"`` (smaller side; output side when square), ``"out"`` (each output neuron gets a
            degree and picks inputs) or ``"in"`` (each input neuron gets a degree and picks outputs).
        generator: private ``torch.Generator``; required unless ``r == 0`` and ``degree`` is not
            ``"uniform"`` (the nearest-neighbour lattice is deterministic).

    The degree side's degrees equal the degree sequence exactly (row sums for ``"out"``, column sums
    for ``"in"``). The mask is built on the generator's device.
    """
    n_out, n_in, expected = layer_budget(n_out, n_in, sparsity, n_links, required=isinstance(degree, str))
    r = check_unit_interval("r", r)
    chosen_side = brf_degree_side(n_out, n_in, side)
    n_nodes, n_partners = (n_out, n_in) if chosen_side == "out" else (n_in, n_out)

    if isinstance(degree, str):
        assert expected is not None  # layer_budget requires the budget when the degrees are a named law
        links = int(expected)
        if degree == "uniform" or r > 0.0:
            generator = require_generator(generator, f"brf with r={r}, degree={degree!r}")
        degrees = brf_degrees(n_nodes, n_partners, links, degree, generator)
    else:
        if r > 0.0:
            generator = require_generator(generator, f"brf with r={r}")
        degrees = _explicit_degrees(degree, n_nodes, n_partners, chosen_side, mask_device(generator))
        links = int(degrees.sum())
        if expected is not None and int(expected) != links:
            raise ValueError(
                f"the degree sequence sums to {links} links but n_links/sparsity asks for {expected}; "
                "pass only the degree sequence, or make them agree"
            )

    device = mask_device(generator)
    mask = _receptive_field(n_nodes, n_partners, degrees.to(device), r, generator, device)
    return mask if chosen_side == "out" else mask.t().contiguous()


def _explicit_degrees(
    degree: Sequence[int] | torch.Tensor, n_nodes: int, n_partners: int, side: str, device: torch.device
) -> torch.Tensor:
    degrees = torch.as_tensor(degree, device=device)
    if degrees.dim() != 1 or degrees.numel() != n_nodes:
        raise ValueError(
            f"an explicit degree sequence for side={side!r} needs {n_nodes} "
            f"entries (one per node), got shape {tuple(degrees.shape)}"
        )
    if degrees.is_floating_point() or degrees.dtype == torch.bool or degrees.is_complex():
        raise ValueError(f"degrees must be integers, got dtype {degrees.dtype}")
    degrees = degrees.to(torch.int64)
    if n_nodes and (int(degrees.min()) < 0 or int(degrees.max()) > n_partners):
        raise ValueError(f"every degree must lie in [0, {n_partners}] (the other side's size)")
    return degrees


def _receptive_field(
    n_nodes: int,
    n_partners: int,
    degrees: torch.Tensor,
    r: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(n_nodes, n_partners) bool: row i holds exactly degrees[i] ones chosen as described in brf()."""
    centres = brf_centres(n_nodes, n_partners, device)
    partners = torch.arange(n_partners, dtype=torch.int64, device=device)
    mask = torch.zeros(n_nodes, n_partners, dtype=torch.bool, device=device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n_partners)
    exponent = 0.0 if r == 0.0 else (1.0 - r) / r
    for begin in range(0, n_nodes, rows_per_chunk):
        end = min(n_nodes, begin + rows_per_chunk)
        offset = torch.remainder(partners[None, :] - centres[begin:end, None], n_partners)
        left = offset > n_partners - offset  # the partner lies to the left of the centre on the ring
        distance = torch.where(left, n_partners - offset, offset)
        if r == 0.0:
            # Unique integer rank: centre 0, then left d -> 2d-1, right d -> 2d.
            priority = -(2 * distance - left.to(torch.int64)).to(torch.float64)
        else:
            priority = -exponent * torch.log1p(distance.to(torch.float64))
            priority = priority + _gumbel(priority.shape, generator, device)
        chunk_degrees = degrees[begin:end]
        k_max = int(chunk_degrees.max())
        if k_max == 0:
            continue
        # Priorities are distinct (r = 0) or continuous (r > 0), so top-k has no ties to resolve.
        order = torch.topk(priority, k_max, dim=1, sorted=True).indices
        take = torch.arange(k_max, device=device)[None, :] < chunk_degrees[:, None]
        mask[begin:end].scatter_(1, order, take)
    return mask


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    tiny = math.ldexp(1.0, -60)
    return -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - tiny)))
