"""The native (C++) CH-L3n kernel against the pure-PyTorch evaluations, both counting modes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chtorch.linkpred import ch_l3n, ch_l3n_dense_reference
from chtorch.linkpred.l3n import _l3n_native
from chtorch.sparse import native
from helpers import torch_threads

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.reason_unavailable()}"),
]


@st.composite
def masks(draw: st.DrawFn) -> torch.Tensor:
    n_out = draw(st.integers(1, 150))
    n_in = draw(st.integers(1, 150))
    density = draw(st.sampled_from([0.0, 0.01, 0.03, 0.1, 0.3, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.rand(n_out, n_in, generator=torch.Generator().manual_seed(seed)) < density


@settings(max_examples=40, deadline=None)
@given(
    mask=masks(),
    variant=st.sampled_from(["CH2", "CH3", "CH3.1"]),
    counting=st.sampled_from(["auto", "gustavson", "bags"]),
)
def test_native_matches_pytorch(mask: torch.Tensor, variant: str, counting: str) -> None:
    expected = ch_l3n(mask, variant, method="dense")
    scores = _l3n_native(mask, variant, counting)
    assert scores.dtype == torch.float32 and scores.shape == mask.shape
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert (scores[mask] == 0).all() and torch.isfinite(scores).all() and (scores >= 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_native_threads_agree(threads: int) -> None:
    """Blocks are shared among threads; the result must not depend on how many."""
    mask = torch.rand(300, 200, generator=torch.Generator().manual_seed(3)) < 0.05
    with torch_threads(threads):
        scores = ch_l3n(mask, method="native")
    torch.testing.assert_close(scores, ch_l3n_dense_reference(mask), rtol=1e-5, atol=1e-5)


def test_native_rejects_cuda_tensor_cleanly() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(RuntimeError, match="CPU only"):
        ch_l3n(torch.ones(4, 4, dtype=torch.bool, device="cuda"), method="native")


@settings(max_examples=40, deadline=None)
@given(mask=masks(), threads=st.sampled_from([1, 2]))
def test_native_neighbour_lists_match_pytorch(mask: torch.Tensor, threads: int) -> None:
    """The native CSR/CSC lists (eight mask bytes at a time, rows in parallel) equal the PyTorch
    ones, whatever the width (tails of fewer than eight columns) and the thread count."""
    from chtorch.linkpred._common import neighbours

    with torch_threads(threads):
        row_ptr, row_idx, col_ptr, col_idx = native.load().neighbour_lists(mask)
    rows, cols = neighbours(mask)
    nnz = torch.tensor([int(mask.sum())])
    assert torch.equal(row_ptr, torch.cat([rows.offsets, nnz])) and torch.equal(row_idx, rows.index)
    assert torch.equal(col_ptr, torch.cat([cols.offsets, nnz])) and torch.equal(col_idx, cols.index)


def test_native_neighbour_lists_of_a_large_mask_in_parallel() -> None:
    """Above 2^18 entries the rows are split among threads."""
    mask = torch.rand(700, 600, generator=torch.Generator().manual_seed(5)) < 0.02
    with torch_threads(2):
        lists = native.load().neighbour_lists(mask)
    assert torch.equal(lists[1], mask.nonzero()[:, 1]) and torch.equal(lists[3], mask.t().nonzero()[:, 1])
