"""Tests of chtorch.linkpred: CH-L3n (node-based) and CH-L3p (path-based) link prediction.

Both fast predictors are checked against the slow loop references of
``chtorch.linkpred.reference`` (word-for-word definitions over neighbour sets), on a hand-worked
example and on many small random masks, plus invariants on larger ones.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chtorch.linkpred import _common, ch_l3n, ch_l3n_dense_reference, ch_l3p, choose_method, l3p, l3p_cost
from chtorch.linkpred.reference import ch_l3n_loops, ch_l3p_loops
from chtorch.sparse import native

pytestmark = pytest.mark.usefixtures("one_thread")


L3N = ("CH2", "CH3", "CH3.1")
L3P = ("CH3", "CH2", "CH3.1", "RA")
# "native" joins where the C++ kernels could be built (tests/sparse/test_native.py checks the fallback).
METHODS = ("dense", "sparse", "auto") + (("native",) if native.available() else ())


def random_mask(n_out: int, n_in: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_out, n_in, generator=g) < density


def assert_scores_valid(scores: torch.Tensor, mask: torch.Tensor) -> None:
    assert scores.dtype == torch.float32
    assert scores.shape == mask.shape
    assert scores.device == mask.device
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all()
    assert (scores[mask] == 0).all()


# ---------------------------------------------------------------------------------------------
# Hand-worked example
#
#        c0 c1 c2 c3           degrees: d(p0)=2 d(p1)=3 d(p2)=2
#   p0 [ 1  1  0  0 ]                   d(c0)=2 d(c1)=2 d(c2)=2 d(c3)=1
#   p1 [ 1  1  1  0 ]          N(p0)={c0,c1} N(p1)={c0,c1,c2} N(p2)={c2,c3}
#   p2 [ 0  0  1  1 ]          N(c0)=N(c1)={p0,p1} N(c2)={p1,p2} N(c3)={p2}
#
# CH-L3n, candidate (p0, c2):
#   outputs q in N(c2) \ {p0}: q=p1: C=|N(p0)∩N(p1)|=2, E=d(p1)-C-1=0 -> CH2 (1+2)/(1+0)=3, CH3 1
#                              q=p2: C=|{c0,c1}∩{c2,c3}|=0 -> no term
#   inputs b in N(p0):         b=c0: C=|N(c2)∩N(c0)|=|{p1}|=1, E=2-1-1=0 -> CH2 2/1=2, CH3 1
#                              b=c1: same as c0                              -> CH2 2,   CH3 1
#   CH2 = 3+2+2 = 7, CH3 = 3, CH3.1 = 7 (all E = 0).
# (p1, c3): q=p2: C=|{c0,c1,c2}∩{c2,c3}|=1, E=2-1-1=0 -> 2 (CH3 1); b=c2: C=|{p2}∩{p1,p2}|=1, E=0 -> 2;
#   b=c0,c1: C=0.  CH2 = 4, CH3 = 2, CH3.1 = 4.
# (p2, c0): q=p0: C=0; q=p1: C=|{c2,c3}∩{c0,c1,c2}|=1, E=3-1-1=1 -> CH2 2/2=1, CH3 1/2,
#   CH3.1 2/2^(1+1/2)=0.70710678; b=c2: C=|{p0,p1}∩{p1,p2}|=1, E=0 -> 2 (CH3 1); b=c3: C=0.
#   CH2 = 3, CH3 = 1.5, CH3.1 = 2.70710678.  (p2, c1) = (p2, c0) as N(c0) = N(c1).
# (p0, c3): no intermediate shares a neighbour -> 0.
#
# CH-L3p (paths p-b-q-c; di = paths through the node, de = d - links to the seeds - di):
# (p0, c2): paths p0-c0-p1-c2 and p0-c1-p1-c2. di(c0)=di(c1)=1, di(p1)=2;
#   de(c0)=2-1-1=0, de(c1)=0, de(p1)=3-1-2=0.
#   CH3: 2 x 1/sqrt(1*1) = 2;  CH2: 2 x sqrt(2*3)/1 = 2*sqrt(6);  CH3.1: 2 x 1/sqrt((1/2)(1/3)) = 2*sqrt(6);
#   RA: 2 x 1/sqrt(d(c0) d(p1)) = 2/sqrt(6).
# (p1, c3): path p1-c2-p2-c3. di=1 each, de(c2)=2-1-1=0, de(p2)=2-1-1=0.
#   CH3 1; CH2 sqrt(2*2)=2; CH3.1 1/sqrt(1/2*1/2)=2; RA 1/sqrt(2*2)=1/2.
# (p2, c0): path p2-c2-p1-c0. di=1 each, de(c2)=0, de(p1)=3-1-1=1.
#   CH3 1/sqrt(1*2); CH2 sqrt(2*2)/sqrt(1*2)=sqrt(2); CH3.1 1/sqrt((1/2)(1/2+1))=1/sqrt(0.75); RA 1/sqrt(2*3).
# ---------------------------------------------------------------------------------------------

HAND_MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)


def _hand(v02: float, v13: float, v20: float) -> torch.Tensor:
    return torch.tensor([[0, 0, v02, 0], [0, 0, 0, v13], [v20, v20, 0, 0]], dtype=torch.float64)


HAND_L3N = {
    "CH2": _hand(7, 4, 3),
    "CH3": _hand(3, 2, 1.5),
    "CH3.1": _hand(7, 4, 2 + 2 / 2**1.5),
}
HAND_L3P = {
    "CH3": _hand(2, 1, 1 / math.sqrt(2)),
    "CH2": _hand(2 * math.sqrt(6), 2, math.sqrt(2)),
    "CH3.1": _hand(2 * math.sqrt(6), 2, 1 / math.sqrt(0.75)),
    "RA": _hand(2 / math.sqrt(6), 0.5, 1 / math.sqrt(6)),
}


@pytest.mark.parametrize("variant", L3N)
@pytest.mark.parametrize("method", METHODS)
def test_l3n_hand_worked(variant: str, method: str) -> None:
    scores = ch_l3n(HAND_MASK, variant, method=method)
    assert_scores_valid(scores, HAND_MASK)
    torch.testing.assert_close(scores.double(), HAND_L3N[variant], rtol=1e-6, atol=1e-6)
    if variant != "CH3.1":  # integer and half-integer sums are exact in float32
        assert torch.equal(scores.double(), HAND_L3N[variant])
    torch.testing.assert_close(ch_l3n_loops(HAND_MASK, variant), HAND_L3N[variant])
    torch.testing.assert_close(ch_l3n_dense_reference(HAND_MASK, variant).double(), HAND_L3N[variant])


@pytest.mark.parametrize("variant", L3P)
def test_l3p_hand_worked(variant: str) -> None:
    scores = ch_l3p(HAND_MASK, variant)
    assert_scores_valid(scores, HAND_MASK)
    torch.testing.assert_close(scores.double(), HAND_L3P[variant], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ch_l3p_loops(HAND_MASK, variant), HAND_L3P[variant])


# ---------------------------------------------------------------------------------------------
# Property tests against the loop references on many small masks
# ---------------------------------------------------------------------------------------------


@st.composite
def small_masks(draw: st.DrawFn, max_side: int = 8) -> torch.Tensor:
    n_out = draw(st.integers(1, max_side))
    n_in = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["bits", "bits", "bits", "density", "empty", "full"]))
    if kind == "empty":
        mask = torch.zeros(n_out, n_in, dtype=torch.bool)
    elif kind == "full":
        mask = torch.ones(n_out, n_in, dtype=torch.bool)
    elif kind == "density":
        mask = random_mask(n_out, n_in, draw(st.floats(0.0, 1.0)), draw(st.integers(0, 2**31 - 1)))
    else:
        bits = draw(st.lists(st.booleans(), min_size=n_out * n_in, max_size=n_out * n_in))
        mask = torch.tensor(bits, dtype=torch.bool).view(n_out, n_in)
    # Sometimes force a full or an empty row / column (dead or saturated neurons).
    edit = draw(st.sampled_from(["none", "none", "full_row", "empty_row", "full_col", "empty_col"]))
    if edit == "full_row":
        mask[draw(st.integers(0, n_out - 1))] = True
    elif edit == "empty_row":
        mask[draw(st.integers(0, n_out - 1))] = False
    elif edit == "full_col":
        mask[:, draw(st.integers(0, n_in - 1))] = True
    elif edit == "empty_col":
        mask[:, draw(st.integers(0, n_in - 1))] = False
    return mask


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(mask=small_masks(), variant=st.sampled_from(L3N))
def test_l3n_matches_definition(mask: torch.Tensor, variant: str) -> None:
    expected = ch_l3n_loops(mask, variant)
    for method in METHODS:
        scores = ch_l3n(mask, variant, method=method)
        assert_scores_valid(scores, mask)
        torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)
    # The four-GEMM form of the official code equals the per-definition sum.
    reference = ch_l3n_dense_reference(mask, variant)
    assert_scores_valid(reference, mask)
    torch.testing.assert_close(reference.double(), expected, rtol=1e-5, atol=1e-5)


@PROPERTY
@given(mask=small_masks(), variant=st.sampled_from(L3P))
def test_l3p_matches_definition(mask: torch.Tensor, variant: str) -> None:
    scores = ch_l3p(mask, variant)
    assert_scores_valid(scores, mask)
    torch.testing.assert_close(scores.double(), ch_l3p_loops(mask, variant), rtol=1e-5, atol=1e-5)


@PROPERTY
@given(mask=small_masks(), seed=st.integers(0, 2**31 - 1))
def test_permutation_equivariance(mask: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(mask.shape[0], generator=g)
    cols = torch.randperm(mask.shape[1], generator=g)
    permuted = mask[rows][:, cols]
    for method in ("dense", "sparse"):
        torch.testing.assert_close(
            ch_l3n(permuted, "CH2", method=method), ch_l3n(mask, "CH2", method=method)[rows][:, cols]
        )
    torch.testing.assert_close(ch_l3p(permuted, "CH3"), ch_l3p(mask, "CH3")[rows][:, cols])


# ---------------------------------------------------------------------------------------------
# Larger masks: invariants, sparse == dense, blocked and batched code paths
# ---------------------------------------------------------------------------------------------

SHAPES_DENSITIES = [((40, 70), 0.05), ((70, 40), 0.2), ((64, 64), 0.5), ((33, 90), 0.9), ((50, 50), 0.01)]


@pytest.mark.parametrize(("shape", "density"), SHAPES_DENSITIES)
@pytest.mark.parametrize("variant", L3N)
def test_l3n_sparse_equals_dense(shape: tuple[int, int], density: float, variant: str) -> None:
    mask = random_mask(*shape, density, seed=7)
    dense = ch_l3n(mask, variant, method="dense")
    sparse = ch_l3n(mask, variant, method="sparse")
    assert_scores_valid(dense, mask)
    assert_scores_valid(sparse, mask)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ch_l3n_dense_reference(mask, variant), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ch_l3n(mask, variant), dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("shape", "density"), SHAPES_DENSITIES)
@pytest.mark.parametrize("variant", L3P)
def test_l3p_transpose_and_validity(shape: tuple[int, int], density: float, variant: str) -> None:
    mask = random_mask(*shape, density, seed=11)
    scores = ch_l3p(mask, variant)
    assert_scores_valid(scores, mask)
    # Paths read backwards: the score of the transposed layer is the transposed score.
    torch.testing.assert_close(ch_l3p(mask.T.contiguous(), variant), scores.T, rtol=1e-5, atol=1e-5)
    # Both loop orientations (over inputs, or over outputs on the transpose) agree.
    by_inputs = l3p._l3p_over_columns(mask, variant).masked_fill_(mask, 0)
    by_outputs = l3p._l3p_over_columns(mask.T.contiguous(), variant).T.masked_fill_(mask, 0)
    torch.testing.assert_close(by_inputs, by_outputs, rtol=1e-5, atol=1e-5)


def test_blocked_and_batched_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the CPU column blocks of the sparse L3n path and many small batches of L3p, which
    otherwise only appear on layers of several thousand neurons."""
    mask = random_mask(150, 230, 0.08, seed=3)
    expected_n = {v: ch_l3n(mask, v, method="dense") for v in L3N}
    expected_p = {v: ch_l3p(mask, v) for v in L3P}
    monkeypatch.setattr(_common, "_CPU_CHUNK_ABOVE", 1000)
    monkeypatch.setattr(_common, "_CPU_TABLE_CHUNK", 150 * 70)
    assert len(_common.blocks(230, 150, mask.device)) > 2
    monkeypatch.setattr(l3p, "_BATCH_ELEMENTS", 5000)
    for v in L3N:
        torch.testing.assert_close(ch_l3n(mask, v, method="sparse"), expected_n[v], rtol=1e-5, atol=1e-5)
    for v in L3P:
        torch.testing.assert_close(ch_l3p(mask, v), expected_p[v], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fill", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (12, 5)])
def test_density_zero_and_one(fill: bool, shape: tuple[int, int]) -> None:
    mask = torch.full(shape, fill, dtype=torch.bool)
    for method in METHODS:
        for v in L3N:
            assert torch.equal(ch_l3n(mask, v, method=method), torch.zeros(shape))
    for v in L3P:
        assert torch.equal(ch_l3p(mask, v), torch.zeros(shape))


def test_empty_layer_shape() -> None:
    for shape in [(0, 4), (4, 0), (0, 0)]:
        mask = torch.zeros(shape, dtype=torch.bool)
        assert ch_l3n(mask).shape == shape
        assert ch_l3p(mask).shape == shape


def test_dead_neurons_score_zero() -> None:
    mask = random_mask(30, 40, 0.3, seed=5)
    mask[4] = False  # dead output neuron
    mask[:, 9] = False  # dead input neuron
    for method in METHODS:
        scores = ch_l3n(mask, method=method)
        assert (scores[4] == 0).all() and (scores[:, 9] == 0).all()
        assert (scores > 0).any()
    scores = ch_l3p(mask)
    assert (scores[4] == 0).all() and (scores[:, 9] == 0).all()
    assert (scores > 0).any()


def test_high_counts_exact() -> None:
    """Counts far above bf16's integer range stay exact: in a complete bipartite block plus one
    extra output, every score is an exact integer sum."""
    n = 300
    mask = torch.zeros(n + 1, n, dtype=torch.bool)
    mask[:n, : n - 1] = True  # K_{n, n-1}
    mask[n, n - 1] = True  # output n links only the last input
    mask[0, n - 1] = True  # ... which output 0 also links
    # Candidate (n, c) for c < n-1: q in N(c) = outputs 0..n-1; only q=0 shares a neighbour with
    # output n (input n-1), C=1, d(0)=n -> CH2 term 2/(n-1). Inputs b in N(n) = {n-1}:
    # C=|N(c) ∩ N(n-1)| = |{0}| = 1, d(n-1)=2 -> 2/(2-1)=2.
    # Candidate (k, n-1) for 1 <= k < n: q=0 has C=|N(k) ∩ N(0)|=n-1 (above 256: not exact in
    # bf16), d(0)=n -> (1+n-1)/(n-(n-1)) = n; q=n has C=0; each of the n-1 inputs b in N(k) has
    # C=|{0,n} ∩ N(b)|=1, d(b)=n -> 2/(n-1). Total n + 2.
    for method in ("dense", "sparse"):
        scores = ch_l3n(mask, "CH2", method=method)
        torch.testing.assert_close(scores[n, : n - 1], torch.full((n - 1,), 2 + 2 / (n - 1)))
        torch.testing.assert_close(scores[1:n, n - 1], torch.full((n - 1,), float(n + 2)))


# ---------------------------------------------------------------------------------------------
# API: variants, methods, errors
# ---------------------------------------------------------------------------------------------


def test_variants_case_insensitive() -> None:
    mask = random_mask(20, 30, 0.2, seed=1)
    torch.testing.assert_close(ch_l3n(mask, "ch3.1"), ch_l3n(mask, "CH3.1"))
    torch.testing.assert_close(ch_l3n(mask, " Ch2 ", method="SPARSE"), ch_l3n(mask, "CH2", method="dense"))
    torch.testing.assert_close(ch_l3p(mask, "ra"), ch_l3p(mask, "RA"))
    # The variants differ from one another.
    assert not torch.allclose(ch_l3n(mask, "CH2"), ch_l3n(mask, "CH3"))
    assert not torch.allclose(ch_l3p(mask, "CH2"), ch_l3p(mask, "CH3"))


def test_bad_input_errors() -> None:
    mask = random_mask(5, 6, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"CH2, CH3, CH3\.1"):
        ch_l3n(mask, "CH4")
    with pytest.raises(ValueError, match="RA"):
        ch_l3p(mask, "L3")
    with pytest.raises(ValueError, match="auto, dense, sparse"):
        ch_l3n(mask, method="fast")
    with pytest.raises(ValueError, match="torch.bool"):
        ch_l3n(mask.float())
    with pytest.raises(ValueError, match="torch.bool"):
        ch_l3p(mask.int())
    with pytest.raises(ValueError, match="2-D"):
        ch_l3n(mask[0])
    with pytest.raises(ValueError, match="dense"):
        ch_l3p(mask.to_sparse())
    with pytest.raises(ValueError, match="Tensor"):
        ch_l3n([[True]])  # type: ignore[arg-type]


def test_auto_method_choice() -> None:
    assert choose_method(random_mask(1024, 1024, 0.01, seed=0)) == ("native" if native.available() else "sparse")
    assert choose_method(random_mask(1024, 1024, 0.05, seed=0)) == "sparse"  # above NATIVE_MAX_DENSITY
    assert choose_method(random_mask(1024, 1024, 0.2, seed=0)) == "sparse"
    assert (
        choose_method(random_mask(1024, 1024, 0.3, seed=0)) == "dense"
    )  # the dense form scales better with cores there
    assert choose_method(random_mask(1024, 1024, 0.5, seed=0)) == "dense"
    assert choose_method(random_mask(32, 32, 0.01, seed=0)) == "dense"  # overheads dominate
    assert choose_method(torch.zeros(0, 5, dtype=torch.bool)) == "dense"


def test_l3p_cost() -> None:
    # d_in = (2, 2, 2, 1): Σ d_b² · n_in = 13 · 4 = 52; d_out = (2, 3, 2): Σ d_q² · n_out = 17 · 3 = 51.
    assert l3p_cost(HAND_MASK) == (51, True)


def test_does_not_modify_input_or_track_grad() -> None:
    mask = random_mask(20, 25, 0.3, seed=2)
    before = mask.clone()
    for method in METHODS:
        assert not ch_l3n(mask, method=method).requires_grad
    assert not ch_l3p(mask).requires_grad
    assert torch.equal(mask, before)


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("shape", "density"), [((200, 300), 0.02), ((256, 128), 0.3)])
def test_cuda_matches_cpu(shape: tuple[int, int], density: float) -> None:
    mask = random_mask(*shape, density, seed=13)
    cuda_mask = mask.cuda()
    for v in L3N:
        cpu = ch_l3n(mask, v, method="dense")
        for method in METHODS:
            scores = ch_l3n(cuda_mask, v, method=method)
            assert_scores_valid(scores, cuda_mask)
            torch.testing.assert_close(scores.cpu(), cpu, rtol=1e-4, atol=1e-4)
    for v in L3P:
        scores = ch_l3p(cuda_mask, v)
        assert_scores_valid(scores, cuda_mask)
        torch.testing.assert_close(scores.cpu(), ch_l3p(mask, v), rtol=1e-4, atol=1e-4)
