"""Shared pieces of the Cannistraci-Hebb link predictors: input checks, variant names, the
neighbour-list (CSR) view of a bipartite mask, and the co-occurrence matrices ``A·Aᵀ`` and ``Aᵀ·A``.

A layer's mask ``A`` has shape ``(n_out, n_in)`` (rows = output neurons, columns = input neurons).
Both predictors need the common-neighbour counts of every pair of nodes on the same side:

* ``C_o = A·Aᵀ`` (n_out, n_out): ``C_o[p, q] = |N(p) ∩ N(q)|``, inputs shared by outputs p and q;
* ``C_i = Aᵀ·A`` (n_in, n_in):   ``C_i[b, c] = |N(b) ∩ N(c)|``, outputs shared by inputs b and c.

Two ways to compute them, with identical results (float32 holds these integer counts exactly up to
2**24): a dense GEMM, which costs ``n_out·n_in·n`` multiply-adds whatever the density, or a sum over
neighbour lists ("bags" of rows, ``torch.nn.functional.embedding_bag``), which costs ``nnz(A)·n``
additions and is much faster on a sparse layer. The same bag sum computes the ``F·A`` products of
CH-L3n (see ``l3n.py``), so the whole predictor follows the layer's sparsity.

Reference: Zhang et al., NeurIPS 2025 (arXiv:2501.19107), App. K, Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "L3N_VARIANTS",
    "L3P_VARIANTS",
    "METHODS",
    "Neighbours",
    "bag_sum",
    "blocks",
    "check_mask_input",
    "cooccurrence",
    "neighbours",
    "parse_method",
    "parse_variant",
    "prefer_sparse",
    "scatter_block",
]

L3N_VARIANTS = ("CH2", "CH3", "CH3.1")
L3P_VARIANTS = ("CH3", "CH2", "CH3.1", "RA")
METHODS = ("auto", "dense", "sparse", "native")

# Column blocks of the table a bag sum reads, on CPU. Every bag re-reads random rows of the table,
# so a block that fits in the per-core L2 cache (1 MiB = 2**18 floats here) is summed several times
# faster than a table streamed from L3 or memory, while narrower blocks pay the per-index overhead
# of embedding_bag more often. Measured (CPU time, one thread, CH2-L3n sparse path; unblocked vs
# blocks of 2**17 / 2**18 / 2**19 elements): 2048x2048 at 5% 157 / 61 / 59 / 75 ms, at 1% 42 / 29 /
# 25 / 29 ms; 1568x1568 at 1% 21 / 21 / 14 / 15 ms; 1024x1024 at 1% 6.8 / 7.6 / 5.4 / 8.6 ms.
# On CUDA blocks would only add launches.
_CPU_CHUNK_ABOVE = 1 << 18
_CPU_TABLE_CHUNK = 1 << 18
_MIN_BLOCK_WIDTH = 64


# When the neighbour-list (bag-sum) evaluation beats dense GEMMs: density at most the threshold of
# the layer's size class (first class whose minimum size n_out·n_in the layer reaches). CPU:
# measured in CPU time on one core of an AMD EPYC (benchmarks/linkpred.py, results in
# benchmarks/results/linkpred-cpu-*.md): the crossover is ~15% at 128x128, ~25% at 256x256 and
# ~40% from 512x512 up (sparse 1.8x faster at 30% on 1024..4096); below 128x128 fixed overheads
# dominate either way. Layers of a few hundred neurons take ~1 ms either way and their timings
# swing with machine load (256x256 at 10%: 2.2x faster in one run, 0.7x in another), so their
# thresholds keep a wide margin; all thresholds stay off round densities (30%) where a random mask
# would fall on either side by chance.
# CUDA: not measured (no GPU on the development machine). Estimate: the bag sums are memory-bound
# (~4·nnz·n bytes gathered) while fp32 GEMMs run near peak, so the break-even is ~1-3% density on
# layers large enough to leave launch overheads behind.
# On a quiet CPU at 30% density the sparse evaluation runs 1.1-1.4x as fast as the dense form at one
# thread but 0.9x at 1568² with two threads (the dense GEMMs scale with cores better; benchmarks/linkpred.py),
# so the large-layer threshold is 22%: "never slower than dense".
_SPARSE_RULES = {  # device type -> ((min n_out·n_in, max density), ...)
    "cpu": ((512 * 512, 0.22), (256 * 256, 0.08), (128 * 128, 0.05)),
    "cuda": ((1024 * 1024, 0.01),),
}


def prefer_sparse(mask: torch.Tensor) -> bool:
    """Whether the neighbour-list evaluation is expected to be faster than dense GEMMs for
    ``mask`` (by device type, size and density; see ``_SPARSE_RULES``)."""
    numel = mask.numel()
    rules = _SPARSE_RULES.get(mask.device.type, _SPARSE_RULES["cuda"])
    for min_numel, max_density in rules:
        if numel >= min_numel:
            return int(mask.count_nonzero()) <= max_density * numel
    return False


def check_mask_input(mask: torch.Tensor, name: str = "mask") -> None:
    """Raise ``ValueError`` unless ``mask`` is a dense 2-D ``torch.bool`` tensor."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}")
    if mask.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {mask.layout}; pass mask.to_dense()")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"{name} must have dtype torch.bool, got {mask.dtype}; pass `{name} != 0` (or `weight != 0`) instead"
        )
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {tuple(mask.shape)}")


def parse_variant(variant: str, valid: tuple[str, ...]) -> str:
    """Canonical (upper-case) variant name; ``ValueError`` listing ``valid`` otherwise."""
    key = variant.strip().upper() if isinstance(variant, str) else None
    if key not in valid:
        raise ValueError(f"unknown CH variant {variant!r}; valid variants (case-insensitive): {', '.join(valid)}")
    return key


def parse_method(method: str) -> str:
    """Canonical method name among ``METHODS``; ``ValueError`` otherwise."""
    key = method.strip().lower() if isinstance(method, str) else None
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return key


@dataclass(frozen=True)
class Neighbours:
    """Neighbour lists of one side of a bipartite mask, in the form ``embedding_bag`` takes.

    ``index[offsets[r] : offsets[r + 1]]`` are the neighbours of node ``r`` (increasing), with
    ``offsets`` of length ``n_nodes`` (the end of the last bag is ``len(index)``);
    ``owner[j]`` is the node whose list holds entry ``j``.
    """

    index: torch.Tensor  # (nnz,) int64
    owner: torch.Tensor  # (nnz,) int64, non-decreasing
    offsets: torch.Tensor  # (n_nodes,) int64
    degree: torch.Tensor  # (n_nodes,) int64

    def span(self, start: int, stop: int) -> slice:
        """Entries of the lists of nodes ``start .. stop - 1``."""
        n_nodes = self.offsets.numel()
        first = int(self.offsets[start]) if start < n_nodes else self.index.numel()
        last = int(self.offsets[stop]) if stop < n_nodes else self.index.numel()
        return slice(first, last)


def neighbours(mask: torch.Tensor) -> tuple[Neighbours, Neighbours]:
    """Neighbour lists of both sides of ``mask`` (R, K): ``(rows, cols)`` where ``rows`` lists, for
    each row node, the columns it links, and ``cols``, for each column node, the rows it links.
    One ``nonzero`` pass over the mask; the column lists come from a stable sort of the nnz entries
    (cheaper than a second pass over a transposed copy)."""
    r_idx, c_idx = mask.nonzero(as_tuple=True)  # row-major order: sorted by row, then column
    n_rows, n_cols = mask.shape
    by_col = torch.sort(c_idx, stable=True).indices  # rows stay increasing within a column
    return _lists(c_idx, r_idx, n_rows), _lists(r_idx[by_col], c_idx[by_col], n_cols)


def _lists(index: torch.Tensor, owner: torch.Tensor, n_nodes: int) -> Neighbours:
    # bincount over the nnz owners: a bool row-sum with dtype=int64 would first convert all R·K
    # entries to int64, which costs more than everything else here.
    degree = torch.bincount(owner, minlength=n_nodes)
    offsets = torch.zeros_like(degree)
    if n_nodes > 1:
        offsets[1:] = degree.cumsum(0)[:-1]
    return Neighbours(index=index, owner=owner, offsets=offsets, degree=degree)


def scatter_block(lists: Neighbours, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` (n_other, stop - start) the 0/1 incidence of the owners ``start ..
    stop - 1`` of ``lists``: ``out[j, k] = 1`` iff owner ``start + k`` lists node ``j``.

    For the column lists this is the column block ``A[:, start:stop]``; for the row lists the
    transposed block ``A[start:stop].T``. Costs a memset plus one write per link, instead of a
    bool-to-float conversion (and a transpose) of the whole block."""
    out.zero_()
    span = lists.span(start, stop)
    flat = lists.index[span] * (stop - start) + (lists.owner[span] - start)
    out.view(-1)[flat] = 1.0
    return out


def blocks(n: int, n_table_rows: int, device: torch.device) -> list[tuple[int, int]]:
    """Column blocks ``[(start, stop), ...]`` covering ``range(n)`` for bag sums whose tables have
    ``n_table_rows`` rows: one block unless the table is large and on CPU (see ``_CPU_CHUNK_ABOVE``)."""
    if device.type == "cpu" and n_table_rows * n > _CPU_CHUNK_ABOVE:
        width = max(_MIN_BLOCK_WIDTH, _CPU_TABLE_CHUNK // max(1, n_table_rows))
    else:
        width = max(1, n)
    return [(start, min(n, start + width)) for start in range(0, n, width)]


def bag_sum(bags: Neighbours, table: torch.Tensor) -> torch.Tensor:
    """``out[r, :] = Σ_{j in bags[r]} table[j, :]``: shape (n_bags, table.shape[1]), float32; empty
    bags give zero rows. Cost ``nnz · table.shape[1]`` additions."""
    return F.embedding_bag(bags.index, table, bags.offsets, mode="sum")


def cooccurrence(mask: torch.Tensor, sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Common-neighbour counts ``(C_o, C_i) = (A·Aᵀ, Aᵀ·A)`` as float32, shapes (n_out, n_out) and
    (n_in, n_in). ``sparse`` picks bag sums over neighbour lists instead of dense GEMMs; both give
    the same exact integer counts."""
    if not sparse:
        a = mask.to(torch.float32)
        return a @ a.T, a.T @ a
    n_out, n_in = mask.shape
    rows, cols = neighbours(mask)
    out_blocks = blocks(n_out, n_in, mask.device)
    in_blocks = blocks(n_in, n_out, mask.device)
    size = max([n_in * (e - s) for s, e in out_blocks] + [n_out * (e - s) for s, e in in_blocks] + [1])
    table = torch.empty(size, dtype=torch.float32, device=mask.device)
    c_o = torch.empty(n_out, n_out, dtype=torch.float32, device=mask.device)
    for start, stop in out_blocks:
        # C_o[:, block] = Σ_{b in N(p)} Aᵀ[b, block]
        block = scatter_block(rows, start, stop, table[: n_in * (stop - start)].view(n_in, stop - start))
        c_o[:, start:stop] = bag_sum(rows, block)
    c_i = torch.empty(n_in, n_in, dtype=torch.float32, device=mask.device)
    for start, stop in in_blocks:
        # C_i[:, block] = Σ_{q in N(c)} A[q, block]
        block = scatter_block(cols, start, stop, table[: n_out * (stop - start)].view(n_out, stop - start))
        c_i[:, start:stop] = bag_sum(cols, block)
    return c_o, c_i
