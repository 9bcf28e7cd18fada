"""Cannistraci-Hebb link prediction on bipartite layers.

* ``ch_l3n(mask, variant="CH2")``: node-based CH-L3n (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
  Eq. 3 and App. K), the score CHTs/CHTss regrow with; exact, sparse-aware on sparse layers.
* ``ch_l3p(mask, variant="CH3")``: path-based CH-L3p of the original CHT (ICLR 2024, App. C).

Both take a ``(n_out, n_in)`` bool mask and return float32 scores of the same shape and device,
0 at existing links. ``reference`` holds slow loop implementations used by the tests. The CH-L3n
evaluations (dense, sparse, native) are registered kernels (:data:`L3N_KERNELS`, the registry class
of :mod:`chtorch.sparse.kernels`). Never imports :mod:`chtorch.dst`.
"""

from chtorch.linkpred.l3n import L3N_KERNELS, L3nKernel, ch_l3n, ch_l3n_dense_reference, choose_method
from chtorch.linkpred.l3p import ch_l3p, l3p_cost

__all__ = [
    # the scores
    "ch_l3n",
    "ch_l3p",
    # how they are computed
    "choose_method",
    "l3p_cost",
    "L3nKernel",
    "L3N_KERNELS",
    # the baseline the tests and benchmarks compare with
    "ch_l3n_dense_reference",
]
