"""Tests for chtorch.topology: initial topologies, per-layer budgets and sparse weight init."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chtorch.masks import check_mask, link_budget
from chtorch.rng import make_generator
from chtorch.topology import (
    INITIALIZERS,
    allocate_budgets,
    brf,
    bsf,
    bsw,
    csti,
    csti_scores,
    erdos_renyi,
    erk_densities,
    get_initializer,
    pearson_correlation,
    swi_,
    swi_std,
)

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int = 0) -> torch.Generator:
    return make_generator(seed, "test-topology")


def random_correlation(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(50, n, generator=gen(seed))
    return pearson_correlation(x)


# ----------------------------------------------------------------------------- exact counts


def _all_initialisers(n_out: int, n_in: int, n_links: int, seed: int):
    """(label, mask) for every initialiser and its main options at one budget."""
    yield "er", erdos_renyi(n_out, n_in, n_links=n_links, generator=gen(seed))
    for beta in (0.0, 0.25, 1.0):
        yield f"bsw{beta}", bsw(n_out, n_in, n_links=n_links, beta=beta, generator=gen(seed))
    for r in (0.0, 0.1, 0.25, 1.0):
        for degree in ("fixed", "uniform"):
            for side in ("auto", "out", "in"):
                mask = brf(n_out, n_in, n_links=n_links, r=r, degree=degree, side=side, generator=gen(seed))
                yield f"brf r={r} {degree} {side}", mask
    yield "bsf", bsf(n_out, n_in, n_links=n_links, generator=gen(seed))
    corr = random_correlation(n_in, seed)
    yield "csti", csti(n_out, n_in, n_links=n_links, correlation=corr)
    yield "csti-random-ties", csti(n_out, n_in, n_links=n_links, correlation=corr, generator=gen(seed))


@FAST
@given(
    n_out=st.integers(1, 24),
    n_in=st.integers(1, 24),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_every_initialiser_places_exactly_n_links(n_out, n_in, fraction, seed):
    n_links = int(round(fraction * n_out * n_in))
    for label, mask in _all_initialisers(n_out, n_in, n_links, seed):
        check_mask(mask, (n_out, n_in), n_links)  # raises with the count in the message
        assert mask.dtype == torch.bool, label


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 12), (12, 5), (16, 16)])
def test_empty_and_full_budgets(shape):
    n_out, n_in = shape
    total = n_out * n_in
    for n_links in (0, total):
        for label, mask in _all_initialisers(n_out, n_in, n_links, seed=3):
            check_mask(mask, shape, n_links)
            assert bool(mask.all()) == (n_links == total), label


@pytest.mark.parametrize("name", ["erdos_renyi", "bsw", "brf", "bsf"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_sparsity_argument_uses_link_budget(name, sparsity):
    mask = get_initializer(name)(37, 53, sparsity, generator=gen(1))
    check_mask(mask, (37, 53), link_budget(37, 53, sparsity))


def test_csti_sparsity_argument_uses_link_budget():
    mask = csti(40, 20, 0.9, correlation=random_correlation(20))
    check_mask(mask, (40, 20), link_budget(40, 20, 0.9))


@pytest.mark.parametrize("name", ["erdos_renyi", "bsw", "brf", "bsf"])
def test_same_seed_same_mask_and_different_seed_different_mask(name):
    init = get_initializer(name)
    a = init(64, 96, 0.9, generator=gen(7))
    b = init(64, 96, 0.9, generator=gen(7))
    c = init(64, 96, 0.9, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_brf_uniform_degrees_are_deterministic_per_seed():
    a = brf(50, 80, 0.8, r=0.3, degree="uniform", generator=gen(4))
    b = brf(50, 80, 0.8, r=0.3, degree="uniform", generator=gen(4))
    assert torch.equal(a, b)


def test_initialisers_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for _label, _mask in _all_initialisers(20, 30, 100, seed=0):
        pass
    swi_(torch.empty(20, 30), erdos_renyi(20, 30, 0.5, generator=gen(0)), generator=gen(1))
    assert torch.equal(before, torch.get_rng_state())


# ----------------------------------------------------------------------------- argument errors


def test_clear_errors_for_bad_arguments():
    with pytest.raises(ValueError, match="sparsity .* or an exact n_links"):
        erdos_renyi(4, 4, generator=gen())
    with pytest.raises(ValueError, match=r"n_links must be an integer in \[0, 16\].*got 17"):
        erdos_renyi(4, 4, n_links=17, generator=gen())
    with pytest.raises(ValueError, match=r"n_links must be an integer in \[0, 16\].*got -1"):
        bsw(4, 4, n_links=-1)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\]"):
        brf(4, 4, 1.5, generator=gen())
    with pytest.raises(ValueError, match="n_out must be an integer >= 1"):
        erdos_renyi(0, 4, 0.5, generator=gen())
    with pytest.raises(ValueError, match="n_in must be an integer >= 1"):
        brf(4, 2.5, 0.5, generator=gen())
    with pytest.raises(ValueError, match="needs generator"):
        erdos_renyi(4, 4, 0.5)
    with pytest.raises(ValueError, match="needs generator"):
        brf(4, 4, 0.5, r=0.25)
    with pytest.raises(ValueError, match="needs generator"):
        brf(4, 4, 0.5, r=0.0, degree="uniform")
    with pytest.raises(ValueError, match="needs generator"):
        bsw(4, 4, 0.5, beta=0.1)
    with pytest.raises(ValueError, match="needs generator"):
        bsf(4, 4, 0.5)
    with pytest.raises(ValueError, match="r must be"):
        brf(4, 4, 0.5, r=1.5, generator=gen())
    with pytest.raises(ValueError, match="beta must be"):
        bsw(4, 4, 0.5, beta=-0.1, generator=gen())
    with pytest.raises(ValueError, match="degree must be one of"):
        brf(4, 4, 0.5, degree="powerlaw", generator=gen())
    with pytest.raises(ValueError, match="side must be one of"):
        brf(4, 4, 0.5, side="rows", generator=gen())
    with pytest.raises(ValueError, match="needs 4 entries"):
        brf(4, 6, r=0.0, degree=[1, 2, 3])
    with pytest.raises(ValueError, match=r"lie in \[0, 6\]"):
        brf(4, 6, r=0.0, degree=[1, 2, 3, 7])
    with pytest.raises(ValueError, match="sums to 6 links but"):
        brf(4, 6, n_links=5, r=0.0, degree=[1, 2, 3, 0])
    with pytest.raises(ValueError, match="must be a torch.Generator"):
        erdos_renyi(4, 4, 0.5, generator=0)


# ----------------------------------------------------------------------------- CSTI


def test_pearson_correlation_matches_numpy():
    x = torch.randn(200, 7, generator=gen(0)) @ torch.randn(7, 7, generator=gen(1))
    expected = np.corrcoef(x.numpy(), rowvar=False)
    np.testing.assert_allclose(pearson_correlation(x).numpy(), expected, atol=1e-6)


def test_pearson_correlation_constant_feature_is_nan_and_errors():
    x = torch.randn(30, 3, generator=gen(0))
    x[:, 1] = 2.0
    corr = pearson_correlation(x)
    assert torch.isnan(corr[1]).all() and torch.isnan(corr[:, 1]).all()
    assert not torch.isnan(corr[0, 2])
    with pytest.raises(ValueError, match="2-D"):
        pearson_correlation(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        pearson_correlation(torch.zeros(1, 3))


CORR = torch.tensor([[1.0, 0.9, -0.2], [0.9, 1.0, float("nan")], [-0.2, float("nan"), 1.0]])


def test_csti_hand_worked():
    # |corr| without diagonal/NaN: (0,1)=(1,0)=0.9, (0,2)=(2,0)=0.2, everything else 0.
    two = csti(3, 3, n_links=2, correlation=CORR)
    assert two.nonzero().tolist() == [[0, 1], [1, 0]]
    three = csti(3, 3, n_links=3, correlation=CORR)  # the 0.2 tie goes to the lower flat index
    assert three.nonzero().tolist() == [[0, 1], [0, 2], [1, 0]]
    four = csti(3, 3, n_links=4, correlation=CORR)
    assert four.nonzero().tolist() == [[0, 1], [0, 2], [1, 0], [2, 0]]


def test_csti_tiles_for_twice_the_input_width():
    scores = csti_scores(6, 3, CORR)  # hidden = 2x input: rows tile
    assert torch.equal(scores[:3], scores[3:])
    mask = csti(6, 3, n_links=4, correlation=CORR)
    assert mask.nonzero().tolist() == [[0, 1], [1, 0], [3, 1], [4, 0]]
    square = csti_scores(6, 6, CORR)  # (2c, 2c) hidden layer: 2x2 tiling
    assert torch.equal(square[:3, :3], square[3:, 3:]) and torch.equal(square[:3, :3], square[:3, 3:])
    assert float(square[0, 3]) == 0.0  # same feature in another tile: the diagonal rule applies
    cropped = csti_scores(4, 3, CORR)  # rows that are not a multiple: tile and crop
    assert torch.equal(cropped[3], cropped[0])


def test_csti_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="multiple of"):
        csti(4, 4, 0.5, correlation=CORR)
    with pytest.raises(ValueError, match="square"):
        csti(4, 3, 0.5, correlation=torch.zeros(3, 2))


def test_csti_random_tie_break_is_exact_seeded_and_unbiased():
    zeros = torch.zeros(10, 10)  # all scores tie
    a = csti(10, 10, n_links=30, correlation=zeros, generator=gen(1))
    b = csti(10, 10, n_links=30, correlation=zeros, generator=gen(1))
    assert torch.equal(a, b) and int(a.sum()) == 30
    assert int(a[:3].sum()) < 30  # not simply the first three rows
    assert csti(10, 10, n_links=30, correlation=zeros)[:3].all()  # deterministic: flat order


def test_csti_keeps_the_most_correlated_pairs():
    base = torch.randn(500, 4, generator=gen(2))
    x = torch.cat([base, base + 0.05 * torch.randn(500, 4, generator=gen(3))], dim=1)  # 8 features
    mask = csti(8, 8, n_links=8, correlation=pearson_correlation(x))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for i in range(4):
        expected[i, i + 4] = expected[i + 4, i] = True
    assert torch.equal(mask, expected)


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_aliases():
    assert {"erdos_renyi", "er", "random", "bsw", "brf", "bsf", "csti"} <= set(INITIALIZERS)
    assert get_initializer("er") is erdos_renyi and get_initializer("random") is erdos_renyi
    assert get_initializer("BRF") is brf and get_initializer("erdos-renyi") is erdos_renyi
    with pytest.raises(ValueError, match="unknown topology initialiser 'ws'.*brf.*bsw"):
        get_initializer("ws")


# ----------------------------------------------------------------------------- budgets


def test_uniform_budgets_are_link_budget_per_layer():
    shapes = [(100, 784), (100, 100), (10, 100), (3, 7)]
    assert allocate_budgets(shapes, 0.9) == [link_budget(o, i, 0.9) for o, i in shapes]
    assert allocate_budgets(shapes, 0.9, "UNIFORM") == [link_budget(o, i, 0.9) for o, i in shapes]


def test_erk_hand_worked():
    # raw densities 20/100 = 0.2 and 200/10000 = 0.02; eps = 1010 / (0.2*100 + 0.02*10000) = 4.5909;
    # exact counts 91.82 and 918.18 sum to 1010 -> floors 91 + 918 = 1009, the larger remainder (.82) +1.
    assert allocate_budgets([(10, 10), (100, 100)], 0.9, "erk") == [92, 918]
    # At 50% the small layer would need density 0.5*24.08 > 1: it becomes dense (16) and the big layer
    # takes the rest: 0.5 * 10016 - 16 = 4992.
    assert allocate_budgets([(4, 4), (100, 100)], 0.5, "erk") == [16, 4992]
    assert erk_densities([(4, 4), (100, 100)], 0.5) == pytest.approx([1.0, 0.4992])


@settings(max_examples=100, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=8),
    sparsity=st.floats(0.0, 1.0),
    power=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_erk_sums_exactly_and_respects_layer_sizes(shapes, sparsity, power):
    counts = allocate_budgets(shapes, sparsity, "erk", erk_power_scale=power)
    sizes = [o * i for o, i in shapes]
    assert sum(counts) == int(round((1.0 - sparsity) * sum(sizes)))
    assert all(0 <= c <= s for c, s in zip(counts, sizes))
    densities = erk_densities(shapes, sparsity, power)
    assert all(0.0 <= d <= 1.0 for d in densities)
    # Rounding moves each layer by less than one link (plus float noise) from its real ERK share.
    for count, density, size in zip(counts, densities, sizes):
        assert abs(count - density * size) < 1.0 + 1e-6 * size


def test_erk_gives_thin_layers_higher_density():
    shapes = [(1000, 1000), (1000, 100), (10, 100)]
    densities = erk_densities(shapes, 0.95)
    assert densities[0] < densities[1] < densities[2]
    # Not clipped: the ratio follows (n_in + n_out) / (n_in * n_out).
    ratio = (1100 / 100000) / (2000 / 1000000)
    assert densities[1] / densities[0] == pytest.approx(ratio)


def test_erk_power_zero_is_uniform_density():
    counts = allocate_budgets([(10, 10), (100, 100)], 0.9, "erk", erk_power_scale=0.0)
    assert counts == [10, 1000]


def test_budget_errors():
    with pytest.raises(ValueError, match="distribution must be one of"):
        allocate_budgets([(2, 2)], 0.5, "snip")
    with pytest.raises(ValueError, match="sparsity must be"):
        allocate_budgets([(2, 2)], 1.5)
    with pytest.raises(ValueError, match="positive integers"):
        allocate_budgets([(2, 0)], 0.5)
    with pytest.raises(ValueError, match="pair"):
        allocate_budgets([(2, 3, 4)], 0.5)
    assert allocate_budgets([], 0.5, "erk") == []


# ----------------------------------------------------------------------------- SWI


def test_swi_std_matches_the_formula_on_a_large_layer():
    mask = erdos_renyi(1000, 500, 0.9, generator=gen(0))
    weight = torch.full((1000, 500), 7.0)
    swi_(weight, mask, generator=gen(1))
    on = weight[mask]
    expected = math.sqrt(2.0 / (0.1 * 500))  # 0.2: density * fan_in
    assert float(on.std()) == pytest.approx(expected, rel=0.02)  # 50000 samples: SE of std ~0.3%
    assert abs(float(on.mean())) < 0.01
    assert torch.count_nonzero(weight[~mask]) == 0
    weight_out = torch.empty(1000, 500)
    swi_(weight_out, mask, generator=gen(1), fan="out")
    assert float(weight_out[mask].std()) == pytest.approx(math.sqrt(2.0 / (0.1 * 1000)), rel=0.02)
    assert swi_std((1000, 500), 0.1, "in") == pytest.approx(0.2)


def test_swi_is_seeded_in_place_and_checks_arguments():
    mask = erdos_renyi(20, 30, 0.5, generator=gen(0))
    a, b = torch.empty(20, 30), torch.empty(20, 30)
    assert swi_(a, mask, generator=gen(3)) is a
    swi_(b, mask, generator=gen(3))
    assert torch.equal(a, b)
    empty = torch.ones(4, 4)
    swi_(empty, torch.zeros(4, 4, dtype=torch.bool), generator=gen(0))
    assert torch.count_nonzero(empty) == 0
    with pytest.raises(ValueError, match="needs generator"):
        swi_(a, mask)
    with pytest.raises(ValueError, match="mask shape"):
        swi_(a, mask.t(), generator=gen(0))
    with pytest.raises(ValueError, match="fan must be"):
        swi_(a, mask, generator=gen(0), fan="avg")
    param = torch.nn.Parameter(torch.empty(20, 30))
    swi_(param, mask, generator=gen(0))  # works on parameters that require grad
    assert torch.count_nonzero(param.detach()[~mask]) == 0


# ----------------------------------------------------------------------------- devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_follow_a_cuda_generator():
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    for name in ("erdos_renyi", "bsw", "brf", "bsf"):
        mask = get_initializer(name)(48, 80, 0.9, generator=g)
        assert mask.device.type == "cuda"
        check_mask(mask, (48, 80), link_budget(48, 80, 0.9))
    weight = torch.empty(48, 80, device="cuda")
    swi_(weight, mask, generator=gen(0))  # a CPU generator for a CUDA weight: drawn on CPU, copied
    assert torch.count_nonzero(weight[~mask]) == 0
