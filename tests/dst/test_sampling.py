"""Top-k and soft (Gumbel-top-k) selection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chtorch.dst.sampling import select, select_soft, select_topk


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(n=st.integers(1, 60), k=st.integers(0, 70), seed=st.integers(0, 10_000), zeros=st.floats(0, 1))
def test_soft_returns_k_distinct_indices(n, k, seed, zeros):
    scores = torch.rand(n, generator=gen(seed))
    scores[torch.rand(n, generator=gen(seed + 1)) < zeros] = 0
    idx = select_soft(scores, k, gen(seed))
    assert idx.numel() == min(k, n)
    assert idx.unique().numel() == idx.numel()
    # positive entries always come before zero-probability ones
    if 0 < k < n:
        n_pos = int((scores > 0).sum())
        picked_pos = int((scores[idx] > 0).sum())
        assert picked_pos == min(k, n_pos)


def test_topk_picks_largest_and_breaks_ties_randomly():
    scores = torch.tensor([0.1, 5.0, 3.0, 5.0, -1.0])
    assert set(select_topk(scores, 2, gen()).tolist()) == {1, 3}
    flat = torch.zeros(100)
    picks = {tuple(sorted(select_topk(flat, 3, gen(s)).tolist())) for s in range(5)}
    assert len(picks) > 1  # not always the lowest indices


def test_soft_single_draw_frequencies_match_probabilities():
    # one draw without replacement = a categorical draw with p ∝ score
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = scores / scores.sum()
    trials = 20_000
    g = gen(123)
    counts = torch.zeros(4)
    for _ in range(trials):
        counts[select_soft(scores, 1, g)] += 1
    freq = counts / trials
    # 5 standard errors: sqrt(p(1-p)/n) <= 0.0036, so 0.018 is a loose-but-meaningful bound
    assert torch.all((freq - p).abs() < 0.018), freq


def test_soft_two_draws_follow_successive_sampling():
    # inclusion probability of item i when drawing 2 without replacement, p ∝ w:
    # P(i) = p_i + sum_{j != i} p_j * p_i / (1 - p_j)
    w = torch.tensor([1.0, 2.0, 3.0, 10.0])
    p = w / w.sum()
    expected = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)])
    trials = 20_000
    g = gen(7)
    counts = torch.zeros(4)
    for _ in range(trials):
        counts[select_soft(w, 2, g)] += 1
    assert torch.allclose(counts / trials, expected, atol=0.02)
    # and clearly not the naive "inclusion ∝ w" (which would give 2*p, exceeding 1 for the last item)
    assert expected[3] < 2 * p[3]


def test_temperature_sharpens():
    w = torch.tensor([1.0, 2.0])
    trials = 5000
    g = gen(1)
    hits = sum(int(select_soft(w, 1, g, temperature=9.0)) == 1 for _ in range(trials))
    # p(1) = 2^9 / (1 + 2^9) ≈ 0.998
    assert hits / trials > 0.99


def test_floor_makes_zero_scores_reachable():
    scores = torch.tensor([0.0, 0.0, 0.0, 1.0])
    idx = select_soft(scores, 3, gen(), floor=1e-5)
    assert 3 in idx.tolist() and idx.numel() == 3


def test_select_rejects_unknown_selection():
    with pytest.raises(ValueError, match="unknown selection"):
        select(torch.ones(3), 1, "greedy", gen())
