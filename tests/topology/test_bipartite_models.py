"""The bipartite network models of the initial topology: BRF (bipartite receptive field), BSW, BSF."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chtorch.masks import in_degree, out_degree
from chtorch.rng import make_generator
from chtorch.topology import (
    brf,
    brf_centres,
    brf_degree_side,
    brf_degrees,
    bsf,
    bsw,
    erdos_renyi,
)

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int = 0) -> torch.Generator:
    return make_generator(seed, "test-topology")


def ring_distance_to_centre(n_nodes: int, n_partners: int) -> torch.Tensor:
    centres = brf_centres(n_nodes, n_partners)
    offset = (torch.arange(n_partners)[None, :] - centres[:, None]) % n_partners
    return torch.minimum(offset, n_partners - offset)


# ----------------------------------------------------------------------------- BRF


def test_brf_degree_side_follows_the_code():
    assert brf_degree_side(8, 8) == "out"  # square: output side
    assert brf_degree_side(4, 8) == "out"  # smaller side
    assert brf_degree_side(8, 4) == "in"
    assert brf_degree_side(8, 4, "out") == "out"
    assert brf_degree_side(4, 8, "in") == "in"


def test_brf_r0_hand_worked_square_band():
    # 4x4, 8 links: every output neuron takes its centre (i) and the left neighbour (i-1, wrapping).
    expected = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(brf(4, 4, n_links=8, r=0.0), expected)
    # 5x5, 15 links (k=3): the symmetric band i-1, i, i+1.
    expected = torch.tensor(
        [[1, 1, 0, 0, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 0, 0, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(brf(5, 5, n_links=15, r=0.0), expected)


def test_brf_r0_hand_worked_rectangular():
    # (2, 6): the 2 output neurons get degree 3, centres (i * floor(6/2)) = 0 and 3.
    expected = torch.tensor([[1, 1, 0, 0, 0, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(brf(2, 6, n_links=6, r=0.0), expected)
    # (6, 2) is the same picture seen from the input side ("auto" picks the smaller side).
    assert torch.equal(brf(6, 2, n_links=6, r=0.0), expected.t())
    # (3, 8): floor(8/3) = 2, centres 0, 2, 4; degree 2 -> centre and its left neighbour.
    expected = torch.zeros(3, 8, dtype=torch.bool)
    expected[0, [7, 0]] = True
    expected[1, [1, 2]] = True
    expected[2, [3, 4]] = True
    assert torch.equal(brf(3, 8, n_links=6, r=0.0), expected)


@FAST
@given(n=st.integers(1, 30), fraction=st.floats(0.0, 1.0))
def test_brf_r0_equals_bsw_beta0_on_square_layers(n, fraction):
    # The paper: "r = 0 is equivalent to BSW with beta = 0".
    n_links = int(round(fraction * n * n))
    assert torch.equal(brf(n, n, n_links=n_links, r=0.0), bsw(n, n, n_links=n_links, beta=0.0))


@FAST
@given(
    n_out=st.integers(1, 30),
    n_in=st.integers(1, 30),
    fraction=st.floats(0.0, 1.0),
    r=st.sampled_from([0.0, 0.05, 0.25, 0.6, 1.0]),
    side=st.sampled_from(["auto", "out", "in"]),
    seed=st.integers(0, 2**16),
)
def test_brf_fixed_degrees_are_floor_or_ceil_of_the_mean(n_out, n_in, fraction, r, side, seed):
    n_links = int(round(fraction * n_out * n_in))
    mask = brf(n_out, n_in, n_links=n_links, r=r, degree="fixed", side=side, generator=gen(seed))
    chosen = brf_degree_side(n_out, n_in, side)
    degrees = out_degree(mask) if chosen == "out" else in_degree(mask)
    n_nodes = n_out if chosen == "out" else n_in
    assert int(degrees.sum()) == n_links
    assert int(degrees.min()) >= n_links // n_nodes
    assert int(degrees.max()) <= -(-n_links // n_nodes)


@FAST
@given(
    n_out=st.integers(1, 30),
    n_in=st.integers(1, 30),
    fraction=st.floats(0.0, 1.0),
    r=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    side=st.sampled_from(["auto", "out", "in"]),
    seed=st.integers(0, 2**16),
)
def test_brf_uniform_degree_sequence_is_conserved_exactly(n_out, n_in, fraction, r, side, seed):
    n_links = int(round(fraction * n_out * n_in))
    chosen = brf_degree_side(n_out, n_in, side)
    n_nodes, n_partners = (n_out, n_in) if chosen == "out" else (n_in, n_out)
    # brf draws its degree sequence first, so the same seed reproduces it.
    expected = brf_degrees(n_nodes, n_partners, n_links, "uniform", gen(seed))
    mask = brf(n_out, n_in, n_links=n_links, r=r, degree="uniform", side=side, generator=gen(seed))
    degrees = out_degree(mask) if chosen == "out" else in_degree(mask)
    assert torch.equal(degrees, expected)
    assert int(expected.max()) <= n_partners
    if n_links >= n_nodes:
        assert int(expected.min()) >= 1  # every node starts at 1 (BRFu)
    else:
        assert int(expected.max()) <= 1


@FAST
@given(
    n_out=st.integers(1, 25),
    n_in=st.integers(1, 25),
    r=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    side=st.sampled_from(["out", "in"]),
    data=st.data(),
)
def test_brf_explicit_degree_sequence_is_conserved_exactly(n_out, n_in, r, side, data):
    n_nodes, n_partners = (n_out, n_in) if side == "out" else (n_in, n_out)
    degrees = data.draw(st.lists(st.integers(0, n_partners), min_size=n_nodes, max_size=n_nodes))
    mask = brf(n_out, n_in, r=r, degree=degrees, side=side, generator=gen(1))
    got = out_degree(mask) if side == "out" else in_degree(mask)
    assert got.tolist() == degrees


def test_brf_uniform_degrees_are_spread_and_capped():
    # Dense enough that a plain multinomial would overflow some nodes: the cap must hold exactly.
    degrees = brf_degrees(10, 12, 115, "uniform", gen(2))
    assert int(degrees.sum()) == 115 and int(degrees.max()) <= 12 and int(degrees.min()) >= 1
    # Large sparse case: the spread is random (not all equal) and the mean is exact.
    degrees = brf_degrees(500, 1000, 10_000, "uniform", gen(3))
    assert int(degrees.sum()) == 10_000
    assert float(degrees.double().std()) > 2.0  # multinomial: std ~ sqrt(19) ~ 4.4; fixed would be 0


def test_brf_r1_column_degree_spread_matches_erdos_renyi():
    # 400x400 at 5% density: each of the 400 rows takes 20 uniformly random distinct columns, so a
    # column's degree is Binomial(400, 0.05) with variance 19. ER's hypergeometric variance is 18.95.
    # The sample variance of 400 column degrees has a standard error ~1.35 (7%); a 25% band is > 3.5 SE,
    # while the banded lattice (r=0) has variance 0 and local sampling (r=0.25) ~6: they must fail it.
    def spread(mask):
        return float(in_degree(mask).double().var())

    def within_band(value):
        return 0.75 * 19.0 <= value <= 1.25 * 19.0

    er = erdos_renyi(400, 400, 0.95, generator=gen(11))
    assert within_band(spread(er))
    assert within_band(spread(brf(400, 400, 0.95, r=1.0, generator=gen(11))))
    assert not within_band(spread(brf(400, 400, 0.95, r=0.0)))
    assert not within_band(spread(brf(400, 400, 0.95, r=0.25, generator=gen(11))))


def test_brf_r1_is_not_local_and_small_r_is():
    # Mean ring distance to the row's centre: uniform over a ring of 400 gives 40000/400 = 100.
    distance = ring_distance_to_centre(400, 400).double()
    mean_distance = {r: float(distance[brf(400, 400, 0.95, r=r, generator=gen(5))].mean()) for r in (1.0, 0.25, 0.0)}
    er_distance = float(distance[erdos_renyi(400, 400, 0.95, generator=gen(5))].mean())
    assert abs(mean_distance[1.0] - 100.0) < 4.0  # SE ~0.65
    assert abs(er_distance - 100.0) < 4.0
    assert mean_distance[0.25] < 20.0  # p ∝ (1+d)^-3 concentrates near the centre
    assert mean_distance[0.0] == pytest.approx(5.0)  # band of 20: distances 0,1,1,...,9,9,10


def test_brf_small_r_approaches_the_band():
    band = brf(64, 64, 0.9, r=0.0)
    nearly = brf(64, 64, 0.9, r=1e-4, generator=gen(0))
    # With exponent ~1e4 the only randomness left is the order of equal-distance partners.
    assert int((band & nearly).sum()) >= int(band.sum()) - 64


# ----------------------------------------------------------------------------- BSW, BSF


def test_bsw_beta0_hand_worked():
    # (6, 4): the 6 output neurons (larger side) take windows of the 4 inputs, degree 2 each,
    # centred at j*4/6: start = floor(j*2/3 + 1/2 - 1).
    expected = torch.tensor(
        [[1, 0, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(bsw(6, 4, n_links=12, beta=0.0), expected)
    assert torch.equal(bsw(4, 6, n_links=12, beta=0.0), expected.t())


def test_bsw_rewiring_moves_about_beta_of_the_links():
    lattice = bsw(200, 200, 0.9, beta=0.0)
    for beta in (0.25, 0.5):
        rewired = bsw(200, 200, 0.9, beta=beta, generator=gen(9))
        moved = 1.0 - float((lattice & rewired).sum()) / float(lattice.sum())
        # beta of the L = 4000 links are removed (SE 0.008) and re-added among the N - (1-beta)L zeros,
        # so a fraction beta*L / (N - (1-beta)L) of them lands back on a removed position.
        expected = beta * (1.0 - beta * 4000 / (40000 - (1.0 - beta) * 4000))
        assert abs(moved - expected) < 0.025
    random = bsw(200, 200, 0.9, beta=1.0, generator=gen(9))
    overlap = float((lattice & random).sum()) / float(lattice.sum())
    assert overlap < 0.15  # ER-like: ~density = 0.1 of the lattice survives by chance


def test_bsf_degrees_are_heavy_tailed_compared_with_er():
    # Coefficient of variation of the degrees: ER ~0.31 at this size; preferential attachment >0.6.
    def cv(degrees):
        degrees = degrees.double()
        return float(degrees.std() / degrees.mean())

    er = erdos_renyi(500, 500, 0.98, generator=gen(0))
    sf = bsf(500, 500, 0.98, generator=gen(0))
    assert cv(in_degree(er)) < 0.4 and cv(out_degree(er)) < 0.4
    assert cv(in_degree(sf)) > 0.6 and cv(out_degree(sf)) > 0.6
    assert int(in_degree(sf).max()) > 2 * int(in_degree(er).max())
