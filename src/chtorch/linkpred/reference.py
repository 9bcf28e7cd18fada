"""SLOW REFERENCE implementations of the CH link predictors, for tests only.

Plain Python loops over neighbour sets that follow each definition word for word, with no matrix
identities: ``O(n_out·n_in·n²)`` and worse, so use them on masks of a few dozen nodes at most.
They return float64 tensors on the CPU. The fast versions are ``ch_l3n`` and ``ch_l3p``.

References: Zhang et al., NeurIPS 2025 (arXiv:2501.19107), Eq. 3 and App. K (CH-L3n); Zhang et
al., ICLR 2024, App. C and the official path-based scorer ``CH_scores_new_v2.cpp`` (CH-L3p).
"""

from __future__ import annotations

import math

import torch

from chtorch.linkpred._common import L3N_VARIANTS, L3P_VARIANTS, check_mask_input, parse_variant

__all__ = ["ch_l3n_loops", "ch_l3p_loops"]


def _neighbour_sets(mask: torch.Tensor) -> tuple[list[set[int]], list[set[int]]]:
    m = mask.detach().cpu().tolist()
    n_out, n_in = mask.shape
    out_nb = [{c for c in range(n_in) if m[p][c]} for p in range(n_out)]  # N(p): inputs of output p
    in_nb = [{p for p in range(n_out) if m[p][c]} for c in range(n_in)]  # N(c): outputs of input c
    return out_nb, in_nb


def _l3n_term(common: int, external: int, variant: str) -> float:
    if variant == "CH2":
        return (1 + common) / (1 + external)
    if variant == "CH3":
        return 1 / (1 + external)
    return (1 + common) / (1 + external) ** (1 + external / (1 + external))  # CH3.1


def ch_l3n_loops(mask: torch.Tensor, variant: str = "CH2") -> torch.Tensor:
    """CH-L3n by its definition: for each non-link (p, c), every output q in N(c) (q != p) with
    ``C = |N(p) ∩ N(q)| > 0`` and every input b in N(p) (b != c) with ``C = |N(c) ∩ N(b)| > 0``
    adds ``term(C, E)`` with ``E = d − C − 1`` (d the intermediate's degree). Float64, CPU."""
    check_mask_input(mask)
    key = parse_variant(variant, L3N_VARIANTS)
    out_nb, in_nb = _neighbour_sets(mask)
    n_out, n_in = mask.shape
    scores = torch.zeros(n_out, n_in, dtype=torch.float64)
    for p in range(n_out):
        for c in range(n_in):
            if c in out_nb[p]:
                continue
            total = 0.0
            for q in in_nb[c]:
                if q == p:
                    continue
                common = len(out_nb[p] & out_nb[q])
                if common > 0:
                    external = len(out_nb[q]) - common - 1
                    assert external >= 0, "q links c, which p does not link"
                    total += _l3n_term(common, external, key)
            for b in out_nb[p]:
                if b == c:
                    continue
                common = len(in_nb[c] & in_nb[b])
                if common > 0:
                    external = len(in_nb[b]) - common - 1
                    assert external >= 0, "b links p, which c does not link"
                    total += _l3n_term(common, external, key)
            scores[p, c] = total
    return scores


def ch_l3p_loops(mask: torch.Tensor, variant: str = "CH3") -> torch.Tensor:
    """CH-L3p by path enumeration, with the scorer's local-community bookkeeping: list the L3 paths
    p – b – q – c of each non-link (p, c) (all four nodes distinct); for every intermediate z,
    ``di(z)`` = number of those paths through z, ``de(z) = d(z) − |N(z) ∩ {p, c}| − di(z)``; sum the
    per-path geometric means (see ``ch_l3p``). Works on the graph as a set of nodes
    ``('o', p)`` / ``('i', c)`` without using the bipartite shortcuts. Float64, CPU."""
    check_mask_input(mask)
    key = parse_variant(variant, L3P_VARIANTS)
    out_nb, in_nb = _neighbour_sets(mask)
    n_out, n_in = mask.shape

    def nb(node: tuple[str, int]) -> set[tuple[str, int]]:
        side, k = node
        return {("i", c) for c in out_nb[k]} if side == "o" else {("o", p) for p in in_nb[k]}

    scores = torch.zeros(n_out, n_in, dtype=torch.float64)
    for p in range(n_out):
        for c in range(n_in):
            if c in out_nb[p]:
                continue
            u, v = ("o", p), ("i", c)
            paths = [(z1, z2) for z1 in nb(u) for z2 in nb(z1) if z2 not in (u, v) and z1 != v and v in nb(z2)]
            if not paths:
                continue
            di: dict[tuple[str, int], int] = {}
            for z1, z2 in paths:
                di[z1] = di.get(z1, 0) + 1
                di[z2] = di.get(z2, 0) + 1
            de = {z: len(nb(z)) - len(nb(z) & {u, v}) - di[z] for z in di}
            total = 0.0
            for z1, z2 in paths:
                if key == "CH3":
                    total += 1 / math.sqrt((1 + de[z1]) * (1 + de[z2]))
                elif key == "CH2":
                    total += math.sqrt((1 + di[z1]) * (1 + di[z2])) / math.sqrt((1 + de[z1]) * (1 + de[z2]))
                elif key == "CH3.1":
                    total += 1 / math.sqrt((1 / (1 + di[z1]) + de[z1]) * (1 / (1 + di[z2]) + de[z2]))
                else:  # RA
                    total += 1 / math.sqrt(len(nb(z1)) * len(nb(z2)))
            scores[p, c] = total
    return scores
