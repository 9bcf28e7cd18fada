"""CH-L3n: node-based Cannistraci-Hebb link prediction on a bipartite layer (matrix form).

Reference: Zhang et al., "Brain network science modelling of sparse neural networks enables
Transformers and LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107), Eq. 3 and
App. K, Algorithm 1.

For a non-link (p, c) of the mask ``A`` (n_out, n_in), with ``N(.)`` neighbour sets and ``d(.)``
degrees, every intermediate node adjacent to one seed that shares at least one neighbour with the
other seed adds its local-community term ``(1 + iLCL) / (1 + eLCL)``::

    S[p, c] = Σ_{q in N(c), q != p, C=|N(p)∩N(q)| > 0}  (1 + C) / (d(q) − C)        # output intermediates
            + Σ_{b in N(p), b != c, C=|N(c)∩N(b)| > 0}  (1 + C) / (d(b) − C)        # input intermediates

Here ``iLCL = C`` and ``eLCL = E = d − C − 1`` (the −1 removes the link to the other seed), so
``d − C = 1 + E``. Variants: CH2 ``(1 + C)/(1 + E)``; CH3 ``1/(1 + E)``; CH3.1
``(1 + C)/(1 + E)^(1 + E/(1 + E))``.

As matrices (the paper's Algorithm 1): ``C_o = A·Aᵀ``, ``C_i = Aᵀ·A``, ``F = f(C, d)`` elementwise
(0 where ``C = 0``), ``S = F_o·A + (F_i·Aᵀ)ᵀ``, then 0 at existing links. ``E`` is clamped at 0:
for candidates ``E >= 0`` always (q links c, which p does not), but for pairs that only meet
existing links or the diagonal ``E`` can be −1, and ``1/0`` there would turn into NaN inside the
products.

Two exact evaluations of the same formula:

* ``dense``: four GEMMs, ``2·n_out·n_in·(n_out + n_in)`` multiply-adds whatever the density;
* ``sparse``: every product has the 0/1 mask ``A`` as one factor, so each is a sum over neighbour
  lists (``embedding_bag``): ``2·nnz(A)·(n_out + n_in)`` additions, i.e. ``density ×`` the dense
  work. ``auto`` picks ``sparse`` below a density threshold that depends on the layer's size
  and device (measured on CPU, estimated for CUDA; see ``_common.prefer_sparse``).
* ``native``: the same sums in C++/OpenMP (``chtorch/linkpred/csrc/ch_l3n.cpp``, CPU only, built at
  first use): the common-neighbour counts by Gustavson's sparse row products on sparse layers
  (``Σ d²`` work instead of ``nnz·n``), the ``F·A`` sums by L2-sized column blocks with the
  accumulators in registers, and no ``n × n`` temporaries. ``auto`` picks it on CPU wherever it
  would pick ``sparse`` and the density is at most ``NATIVE_MAX_DENSITY`` (above, the bag sums of
  ``sparse`` are as fast), when the native kernels could be built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from chtorch.linkpred._common import (
    L3N_VARIANTS,
    bag_sum,
    blocks,
    check_mask_input,
    cooccurrence,
    neighbours,
    parse_method,
    parse_variant,
    prefer_sparse,
    scatter_block,
)
from chtorch.sparse import native
from chtorch.sparse.kernels import KernelRegistry

__all__ = ["ch_l3n", "ch_l3n_dense_reference", "choose_method", "NATIVE_MAX_DENSITY", "L3nKernel", "L3N_KERNELS"]

# Above this density the native kernel's Gustavson counting stops paying and the embedding_bag sums
# of method "sparse" are faster: on CPU (CH2, 1024² and 1568² layers) native takes about 0.6-0.8× the
# bag sums' time at 2% density and 1.1-1.4× from 3-5% on (benchmarks/profile_step.py and
# benchmarks/linkpred.py; figures in benchmarks/results/); both stay far below the dense four-GEMM form
# (0.05-0.25×) there. The cut is 2.5%, so that a random "2%" mask (a few links above 2% by chance) still
# gets the native kernel.
NATIVE_MAX_DENSITY = 0.025
_VARIANT_CODE = {"CH2": 0, "CH3": 1, "CH3.1": 2}


def choose_method(mask: torch.Tensor) -> str:
    """The evaluation ``ch_l3n(method="auto")`` uses for ``mask``: ``"native"``, ``"sparse"`` or
    ``"dense"`` (see ``prefer_sparse`` and ``NATIVE_MAX_DENSITY``)."""
    if not prefer_sparse(mask):
        return "dense"
    if (
        mask.device.type == "cpu"
        and int(mask.count_nonzero()) <= NATIVE_MAX_DENSITY * mask.numel()
        and native.available()
    ):
        return "native"
    return "sparse"


_COUNTING_CODE = {"auto": 0, "gustavson": 1, "bags": 2}


def _l3n_native(mask: torch.Tensor, variant: str, counting: str = "auto") -> torch.Tensor:
    """CH-L3n by the native kernel. ``counting``: how the common neighbours are counted, ``"auto"``
    (by cost, per side), ``"gustavson"`` (sparse row products) or ``"bags"`` (vectorised bag sums);
    the tests force each."""
    # the neighbour lists are built natively too (a third of the time at 2% when built in PyTorch)
    return native.load().ch_l3n_mask(mask.contiguous(), _VARIANT_CODE[variant], _COUNTING_CODE[counting])


def _factor(
    common: torch.Tensor,
    degree: torch.Tensor,
    variant: str,
    work: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Local-community factor ``F = f(C, d)`` of an intermediate node, elementwise.

    ``common`` holds ``C`` (non-negative integer counts, float32, any strides), ``degree`` the
    intermediate node's degree broadcastable against it. Returns a contiguous float32 tensor, 0
    where ``C = 0``, finite everywhere (``1 + E = max(d − C, 1)``). ``work``: two contiguous
    buffers of ``common``'s shape to compute in (the result is the first); fresh ones otherwise.
    """
    if work is None:
        shape = torch.broadcast_shapes(common.shape, degree.shape)
        work = (
            torch.empty(shape, dtype=torch.float32, device=common.device),
            torch.empty(shape, dtype=torch.float32, device=common.device),
        )
    out, one_plus_e = work
    torch.sub(degree, common, out=one_plus_e).clamp_min_(1)  # 1 + max(d − C − 1, 0)
    torch.clamp(common, max=1, out=out)  # [C > 0] for integer-valued C >= 0
    if variant == "CH3":
        return out.div_(one_plus_e)
    out.add_(common)  # C + [C > 0]: 1 + C where C > 0, else 0
    if variant == "CH2":
        return out.div_(one_plus_e)
    # CH3.1: (1 + C) / (1 + E)^(1 + E/(1 + E)), and 1 + E/(1 + E) = 2 − 1/(1 + E)
    exponent = torch.reciprocal(one_plus_e).neg_().add_(2)
    return out.div_(one_plus_e.pow_(exponent))


def _l3n_dense(mask: torch.Tensor, variant: str) -> torch.Tensor:
    a = mask.to(torch.float32)
    d_out = a.sum(dim=1)
    d_in = a.sum(dim=0)
    c_o, c_i = cooccurrence(mask, sparse=False)
    f_o = _factor(c_o, d_out[None, :], variant)  # F_o[p, q] = f(C_o[p, q], d(q))
    del c_o
    f_i_t = _factor(c_i, d_in[:, None], variant)  # F_iᵀ[b, c] = f(C_i[b, c], d(b)), C_i symmetric
    del c_i
    # S = F_o·A + (F_i·Aᵀ)ᵀ = F_o·A + A·F_iᵀ
    scores = torch.addmm(f_o @ a, a, f_i_t)
    return scores.masked_fill_(mask, 0.0)


def _l3n_sparse(mask: torch.Tensor, variant: str) -> torch.Tensor:
    # Every product of Algorithm 1 has the 0/1 mask as one factor, so each is a sum over neighbour
    # lists. Work goes by column blocks of C (and F), computed on the fly, so besides the scores only
    # block-sized temporaries exist, and each block's table stays in cache (see _common.blocks).
    n_out, n_in = mask.shape
    device = mask.device
    rows, cols = neighbours(mask)  # rows: N(p) for outputs p; cols: N(c) for inputs c
    d_out = rows.degree.to(torch.float32)[:, None]
    d_in = cols.degree.to(torch.float32)[:, None]
    in_blocks = blocks(n_in, max(n_out, n_in), device)
    out_blocks = blocks(n_out, max(n_out, n_in), device)
    width = max([stop - start for start, stop in in_blocks + out_blocks] + [1])
    # Two block buffers, reused: fresh n x n float buffers cost page faults comparable to the sums.
    # Buffer 0 holds the 0/1 table, then (once the bag sum has read it) 1 + E, then a transposed
    # block; buffer 1 holds F.
    work = torch.empty(2, max(n_out, n_in) * width, dtype=torch.float32, device=device)

    def buffer(k: int, n_rows: int, w: int) -> torch.Tensor:
        return work[k, : n_rows * w].view(n_rows, w)

    # Input intermediates: (F_i·Aᵀ)ᵀ = A·F_iᵀ, by column blocks of inputs c.
    scores = None if len(in_blocks) == 1 else torch.empty(n_out, n_in, dtype=torch.float32, device=device)
    for start, stop in in_blocks:
        w = stop - start
        # C_i[:, block] = Σ_{q in N(c)} A[q, block]   (n_in, w)
        c_i = bag_sum(cols, scatter_block(cols, start, stop, buffer(0, n_out, w)))
        # F_iᵀ[b, c] = f(C_i[b, c], d(b)), as C_i is symmetric
        f_i_t = _factor(c_i, d_in, variant, (buffer(1, n_in, w), buffer(0, n_in, w)))
        block = bag_sum(rows, f_i_t)  # Σ_{b in N(p)} F_iᵀ[b, c]   (n_out, w)
        if scores is None:
            scores = block
        else:
            scores[:, start:stop] = block
    assert scores is not None
    # Output intermediates: F_o·A, by row blocks of outputs p (its transpose is a bag sum).
    for start, stop in out_blocks:
        w = stop - start
        # C_o[:, block] = Σ_{b in N(p)} Aᵀ[b, block]   (n_out, w)
        c_o = bag_sum(rows, scatter_block(rows, start, stop, buffer(0, n_in, w)))
        # F_oᵀ[q, p] = f(C_o[q, p], d(q)), as C_o is symmetric
        f_o_t = _factor(c_o, d_out, variant, (buffer(1, n_out, w), buffer(0, n_out, w)))
        s_out_t = bag_sum(cols, f_o_t)  # (F_o·A)ᵀ[c, p] = Σ_{q in N(c)} F_oᵀ[q, p]   (n_in, w)
        # A transposed add reads with stride n (slow); copy through torch's blocked transpose first.
        scores[start:stop] += buffer(0, w, n_in).copy_(s_out_t.T)
    # Zero the existing links: one write per link rather than a pass over the whole matrix.
    scores.view(-1)[rows.owner * n_in + rows.index] = 0.0
    return scores


@dataclass(frozen=True)
class L3nKernel:
    """One evaluation of CH-L3n: ``fn(mask, variant) -> scores`` (``(n_out, n_in)`` bool → float32,
    0 at the links; ``variant`` canonical, e.g. ``"CH2"``); ``supports(dtype, device)`` returns None
    where it runs, else why not. ``method="auto"`` picks by density (:func:`choose_method`), so
    ``auto`` stays False here: a registered kernel runs when named."""

    name: str
    fn: Callable[[torch.Tensor, str], torch.Tensor]
    supports: Callable[[torch.dtype, torch.device], str | None]
    auto: bool = False

    def unsupported(self, dtype: torch.dtype, device: torch.device) -> str | None:
        return self.supports(dtype, device)


def _anywhere(dtype: torch.dtype, device: torch.device) -> str | None:
    return None


def _native_l3n_supports(dtype: torch.dtype, device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"method='native' runs on CPU only (mask is on {device})"
    if not native.available():
        return f"method='native' is unavailable here ({native.reason_unavailable()})"
    return None


#: The CH-L3n evaluations by name (``ch_l3n(method=...)``); all give the same scores.
L3N_KERNELS: KernelRegistry[L3nKernel] = KernelRegistry("CH-L3n")
L3N_KERNELS.register(L3nKernel("dense", lambda mask, key: _l3n_dense(mask, key), _anywhere))
L3N_KERNELS.register(L3nKernel("sparse", lambda mask, key: _l3n_sparse(mask, key), _anywhere))
L3N_KERNELS.register(L3nKernel("native", lambda mask, key: _l3n_native(mask, key), _native_l3n_supports))


def ch_l3n(mask: torch.Tensor, variant: str = "CH2", method: str = "auto") -> torch.Tensor:
    """Node-based Cannistraci-Hebb scores (CH-L3n) of every non-link of a bipartite layer.

    Zhang et al., NeurIPS 2025 (arXiv:2501.19107), Eq. 3 and App. K, Algorithm 1; see the module
    docstring for the formula.

    Args:
        mask: ``(n_out, n_in)`` bool tensor, rows = output neurons, columns = input neurons, on any
            device.
        variant: ``"CH2"`` (paper default), ``"CH3"`` or ``"CH3.1"``, case-insensitive.
        method: ``"auto"`` (by density, see ``choose_method``), ``"dense"`` (four GEMMs),
            ``"sparse"`` (sums over neighbour lists) or ``"native"`` (the C++ kernel, CPU only;
            ``RuntimeError`` where it cannot be built). All give the same scores up to float32
            rounding of the sums.

    Returns:
        ``(n_out, n_in)`` float32 scores on ``mask.device``: exactly 0 at existing links, finite and
        ``>= 0`` everywhere. Nodes without links score 0 (the rule never regrows dead neurons).
        Memory: ``O(n_out² + n_in² + n_out·n_in)``.

    Note:
        Co-occurrence counts are exact in float32 (integers < 2**24). On CUDA with
        ``torch.backends.cuda.matmul.allow_tf32 = True`` the dense method's ``F·A`` products lose
        precision (TF32 inputs), the counts stay exact.
    """
    check_mask_input(mask)
    key = parse_variant(variant, L3N_VARIANTS)
    how = method.strip().lower() if isinstance(method, str) else method
    if how not in L3N_KERNELS.names():
        how = parse_method(method)  # raises, naming the valid methods
    if how == "auto":
        how = choose_method(mask)
    kernel = L3N_KERNELS.resolve(how, mask.dtype, mask.device)
    with torch.no_grad():
        if mask.numel() == 0:
            return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        return kernel.fn(mask, key)


def ch_l3n_dense_reference(mask: torch.Tensor, variant: str = "CH2") -> torch.Tensor:
    """The plain dense four-GEMM formulation, written as in the official code's ``"l3n"`` branch
    (the dense matrix form of the official code; docs/decisions.md, "CH2-L3n arithmetic"): ``B = [C > 0]``,
    ``E = clamp(B·(d − C), min=1) − 1``, ``F = (C + B)/(E + 1)`` (CH2), ``B/(E + 1)`` (CH3),
    ``(C + B)/(E + 1)^(1 + E/(1 + E))`` (CH3.1), ``S = (F_o·A + (F_i·Aᵀ)ᵀ) ⊙ (1 − A)``.

    Kept as the baseline the benchmark measures ``ch_l3n`` against and as an independent check of
    it in the tests. Same inputs and outputs as ``ch_l3n``.
    """
    check_mask_input(mask)
    key = parse_variant(variant, L3N_VARIANTS)
    with torch.no_grad():
        a = mask.to(torch.float32)
        d_out = a.sum(dim=1)
        d_in = a.sum(dim=0)
        c_o = a @ a.T
        c_i = a.T @ a
        b_o = (c_o > 0).to(torch.float32)
        b_i = (c_i > 0).to(torch.float32)
        e_o = torch.clamp(b_o * (d_out[None, :] - c_o), min=1) - 1
        e_i = torch.clamp(b_i * (d_in[None, :] - c_i), min=1) - 1
        if key == "CH2":
            f_o = (c_o + b_o) / (e_o + 1)
            f_i = (c_i + b_i) / (e_i + 1)
        elif key == "CH3":
            f_o = b_o / (e_o + 1)
            f_i = b_i / (e_i + 1)
        else:
            f_o = (c_o + b_o) / (e_o + 1) ** (1 + e_o / (1 + e_o))
            f_i = (c_i + b_i) / (e_i + 1) ** (1 + e_i / (1 + e_i))
        scores = f_o @ a + (f_i @ a.T).T
        return scores * (1 - a)
