"""Hand-worked cases for each removal rule, regrowth invariants and percolation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from chtorch.dst.percolation import chain, infer_couplings, percolate, rows
from chtorch.dst.regrowth import grow_links
from chtorch.dst.removal import keep_links, removal_scores


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


W = torch.tensor([[0.5, -0.1, 0.0, 2.0], [-3.0, 0.2, 0.05, -0.4]])
M = torch.tensor([[True, True, False, True], [True, True, True, True]])


def test_magnitude_keeps_largest():
    keep = keep_links(W, M, 4, "magnitude", "topk", gen())
    # active |W|: 0.5, 0.1, 2.0, 3.0, 0.2, 0.05, 0.4 -> top 4: 3.0, 2.0, 0.5, 0.4
    expected = torch.tensor([[True, False, False, True], [True, False, False, True]])
    assert torch.equal(keep, expected)


def test_set_removes_smallest_positive_and_largest_negative_separately():
    # positives (active): 0.5, 2.0, 0.2, 0.05 (4); negatives: -0.1, -3.0, -0.4 (3); remove 3 of 7
    # share: round(3*4/7)=2 positives (0.05, 0.2), 1 negative (largest: -0.1)
    keep = keep_links(W, M, 4, "set", "topk", gen())
    expected = torch.tensor([[True, False, False, True], [True, False, False, True]])
    assert torch.equal(keep, expected)
    # a case where SET and magnitude differ: many tiny negatives, a few big positives
    w = torch.tensor([[-0.01, -0.02, -0.03, -0.04, 5.0, 0.9]])
    m = torch.ones_like(w, dtype=torch.bool)
    set_keep = keep_links(w, m, 4, "set", "topk", gen())
    mag_keep = keep_links(w, m, 4, "magnitude", "topk", gen())
    # SET: remove round(2*2/6)=1 positive (0.9) and 1 negative (-0.01, the largest)
    assert set_keep.tolist() == [[False, True, True, True, True, False]]
    assert mag_keep.tolist() == [[False, False, True, True, True, True]]


def test_relative_importance_hand_computed():
    w = torch.tensor([[1.0, 3.0], [1.0, 0.0]])
    m = torch.tensor([[True, True], [True, False]])
    s = removal_scores(w, m, "ri")
    eps = 1e-5
    # RI_00 = 1/(1+1) [column 0 sum] + 1/(1+3) [row 0 sum]
    assert s[0, 0].item() == pytest.approx(1 / (2 + eps) + 1 / (4 + eps))
    assert s[0, 1].item() == pytest.approx(3 / (3 + eps) + 3 / (4 + eps))
    assert s[1, 0].item() == pytest.approx(1 / (2 + eps) + 1 / (1 + eps))
    # RI ranks (1,0) above (0,0) although both have |W| = 1: it is the only link of its row
    keep = keep_links(w, m, 2, "ri", "topk", gen())
    assert keep.tolist() == [[False, True], [True, False]]


def test_mest_adds_gradient_term():
    w = torch.tensor([[1.0, 1.1]])
    m = torch.ones_like(w, dtype=torch.bool)
    g = torch.tensor([[50.0, 0.0]])
    # |W| + 0.01 |g| = 1.5 vs 1.1 -> keeps the first although its weight is smaller
    keep = keep_links(w, m, 1, "mest", "topk", gen(), grad=g, mest_lambda=0.01)
    assert keep.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="dense gradient"):
        keep_links(w, m, 1, "mest", "topk", gen(), grad=None, mest_lambda=0.01)


def test_soft_removal_prefers_large_weights_statistically():
    w = torch.tensor([[0.1, 1.0]])
    m = torch.ones_like(w, dtype=torch.bool)
    kept_big = sum(bool(keep_links(w, m, 1, "magnitude", "soft", gen(s), temperature=1.0)[0, 1]) for s in range(2000))
    # p(keep 1.0) = 1.0 / 1.1 = 0.909
    assert abs(kept_big / 2000 - 1 / 1.1) < 0.03


@given(seed=st.integers(0, 1000), n_out=st.integers(1, 12), n_in=st.integers(1, 12), frac=st.floats(0, 1))
def test_keep_links_exact_count_and_subset(seed, n_out, n_in, frac):
    g = gen(seed)
    w = torch.randn(n_out, n_in, generator=g)
    m = torch.rand(n_out, n_in, generator=g) < 0.6
    n_keep = int(frac * int(m.sum()))
    for crit, sel in [("magnitude", "topk"), ("magnitude", "soft"), ("ri", "topk"), ("ri", "soft"), ("set", "topk")]:
        keep = keep_links(w, m, n_keep, crit, sel, gen(seed), temperature=3.0)
        assert int(keep.sum()) == n_keep
        assert not (keep & ~m).any()


@given(seed=st.integers(0, 1000), n_out=st.integers(1, 10), n_in=st.integers(1, 10), frac=st.floats(0, 1))
def test_regrowth_never_picks_existing_links(seed, n_out, n_in, frac):
    g = gen(seed)
    keep = torch.rand(n_out, n_in, generator=g) < 0.5
    free = int((~keep).sum())
    n_new = int(frac * free)
    grad = torch.randn(n_out, n_in, generator=g)
    for kind, sel in [("random", "topk"), ("random", "soft"), ("gradient", "topk"), ("gradient", "soft")]:
        new = grow_links(keep, n_new, kind, sel, gen(seed), grad=grad)
        assert int(new.sum()) == n_new
        assert not (new & keep).any()


def test_gradient_regrowth_picks_largest_gradients():
    keep = torch.tensor([[True, False, False], [False, False, True]])
    grad = torch.tensor([[100.0, -5.0, 0.1], [3.0, 0.2, 100.0]])
    new = grow_links(keep, 2, "gradient", "topk", gen(), grad=grad)
    assert new.tolist() == [[False, True, False], [True, False, False]]


def test_percolation_chain_fixpoint():
    # 3-layer chain 4 -> 3 -> 3 -> 2; hidden neuron 1 of the first hidden layer loses all outgoing links.
    a = torch.ones(3, 4, dtype=torch.bool)
    b = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)  # column 1 empty
    c = torch.tensor([[1, 0, 0], [1, 0, 0]], dtype=torch.bool)  # only hidden-2 neuron 0 feeds c
    out = percolate({"a": a, "b": b, "c": c}, [chain("a", "b", "c")])
    # hidden-1 neuron 1: no outgoing -> row 1 of a cleared
    assert not out["a"][1].any()
    # hidden-2 neurons 1, 2: no outgoing in c -> rows 1, 2 of b cleared; hidden-1 neuron 2 still
    # feeds hidden-2 neuron 0 through b[0, 2], so it stays alive
    assert out["b"].tolist() == [[True, False, True], [False, False, False], [False, False, False]]
    assert out["a"][0].all() and out["a"][2].all()
    assert out["c"].tolist() == c.tolist()
    # fixpoint: percolating again changes nothing, and inputs were not modified
    again = percolate(out, [chain("a", "b", "c")])
    assert all(torch.equal(again[k], out[k]) for k in out)
    assert b[1, 0]


@given(seed=st.integers(0, 10_000), density=st.floats(0.02, 0.5))
def test_percolation_leaves_no_dead_neuron_with_links(seed, density):
    g = gen(seed)
    sizes = [7, 9, 6, 8]
    masks = {f"l{i}": torch.rand(sizes[i + 1], sizes[i], generator=g) < density for i in range(3)}
    q = torch.rand(5, 6, generator=g) < density
    k = torch.rand(5, 6, generator=g) < density
    masks.update(q=q, k=k)
    couplings = [chain("l0", "l1", "l2"), rows("q", "k")]
    out = percolate(masks, couplings)
    for a, b in [("l0", "l1"), ("l1", "l2")]:
        alive = out[a].any(1) & out[b].any(0)
        assert not out[a][~alive].any() and not out[b][:, ~alive].any()
    alive = out["q"].any(1) & out["k"].any(1)
    assert not out["q"][~alive].any() and not out["k"][~alive].any()
    for name in masks:
        assert not (out[name] & ~masks[name]).any()  # only removes


def test_percolation_rejects_bad_couplings():
    with pytest.raises(ValueError, match="inputs"):
        percolate({"a": torch.ones(3, 4, dtype=torch.bool), "b": torch.ones(2, 5, dtype=torch.bool)}, [chain("a", "b")])
    with pytest.raises(ValueError, match="not a sparsified layer"):
        percolate({"a": torch.ones(3, 4, dtype=torch.bool)}, [chain("a", "zzz")])


def test_infer_couplings_mlp_and_attention():
    from torch import nn

    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert infer_couplings(mlp, ["0", "2"]) == [chain("0", "2")]

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attn()
            self.mlp = nn.Module()
            self.mlp.gate_proj, self.mlp.up_proj, self.mlp.down_proj = (
                nn.Linear(8, 16),
                nn.Linear(8, 16),
                nn.Linear(16, 8),
            )

    block = Block()
    names = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    found = set(infer_couplings(block, names))
    assert rows("attn.q_proj", "attn.k_proj") in found
    assert chain("attn.v_proj", "attn.o_proj") in found
    assert rows("mlp.gate_proj", "mlp.up_proj") in found
    assert chain("mlp.up_proj", "mlp.down_proj") in found and chain("mlp.gate_proj", "mlp.down_proj") in found


def test_percolation_cascades_through_the_chain():
    x = torch.ones(2, 1, dtype=torch.bool)
    y = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)
    z = torch.tensor([[0, 1]], dtype=torch.bool)
    # hidden-2 neuron 0 has no outgoing link -> y[0,0] goes -> hidden-1 neuron 0 loses its only
    # outgoing link -> x[0,0] goes; hidden-2 neuron 1 has no incoming link -> z[0,1] goes.
    out = percolate({"x": x, "y": y, "z": z}, [chain("x", "y", "z")])
    assert not any(out[n].any() for n in out)


def test_soft_regrowth_frequencies_follow_the_scores():
    # One new link among three candidates with scores 1, 2, 5 (p = 1/8, 2/8, 5/8); 8000 draws give a
    # standard error <= 0.0054, so a 0.025 tolerance is ~5 standard errors and cannot pass by chance
    # for a sampler that ignored the scores (uniform would be off by 0.29 on the last candidate).
    keep = torch.tensor([[True, False, False, False]])
    scores = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    counts = torch.zeros(4)
    for s in range(8000):
        counts += grow_links(keep, 1, "ch", "soft", gen(s), scores=scores).flatten().float()
    assert counts[0] == 0
    assert torch.allclose(counts[1:] / 8000, torch.tensor([1 / 8, 2 / 8, 5 / 8]), atol=0.025)


def test_ch_regrowth_gives_dead_neurons_no_links_and_meets_the_budget():
    from chtorch.linkpred import ch_l3n

    g = gen(3)
    keep = torch.rand(12, 10, generator=g) < 0.3
    keep[4] = False  # output neuron 4 is dead
    keep[:, 7] = False  # input neuron 7 is dead
    scores = ch_l3n(keep)
    assert float(scores[4].abs().sum()) == 0 and float(scores[:, 7].abs().sum()) == 0
    for selection in ("topk", "soft"):
        new = grow_links(keep, 15, "ch", selection, gen(1))
        assert int(new.sum()) == 15 and not (new & keep).any()
        assert not new[4].any() and not new[:, 7].any()
    # too few positive-score candidates: the 1e-5 floor still meets the budget, on live neurons only
    live_free = int((~keep)[[i for i in range(12) if i != 4]][:, [j for j in range(10) if j != 7]].sum())
    new = grow_links(keep, live_free, "ch", "soft", gen(2))
    assert int(new.sum()) == live_free and not new[4].any() and not new[:, 7].any()


def test_a_model_declares_its_percolation_pairs():
    """A model's ``percolation_pairs`` replaces the conventional names: here ``a`` feeds ``b`` and
    ``a``/``c`` share rows, names no convention knows; a malformed declaration is refused."""

    class Block(nn.Module):
        percolation_pairs = {"rows": (("a", "c"),), "chains": (("a", "b"),)}

        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(4, 6)

    found = infer_couplings(Block(), ["a", "b", "c"])
    assert found == [rows("a", "c"), chain("a", "b")]

    class Bad(Block):
        percolation_pairs = {"row": ()}

    with pytest.raises(ValueError, match="percolation_pairs must be"):
        infer_couplings(Bad(), ["a", "b"])
