"""Compaction and sparse export of a trained sparse network.

Dynamic sparse training with percolation leaves many hidden neurons *dead*: no incoming or no
outgoing links (the paper's "active neuron percentage", ANP; Zhang et al., NeurIPS 2025,
arXiv:2501.19107, Fig. 1 c and App. F). Such neurons can be cut out of the network without changing
what it computes:

* a neuron with no outgoing links influences nothing: drop it (and its incoming links);
* a neuron with no incoming links outputs the constant ``act(bias)``: fold
  ``W_next[:, j] * act(bias_j)`` into the next layer's bias, then drop it.

Removing one neuron can kill others (its neighbours lose links), so both rules run to a fixed point
along each *chain* of consecutive linear layers (layer ``i``'s outputs feed layer ``i+1``'s inputs
through an elementwise activation; an MLP's chain ends with its dense classifier, whose input columns
of dead neurons are dropped too). The chain's first inputs and last outputs are never removed.

* :func:`compact` returns a model with smaller dense ``nn.Linear`` layers and identical outputs
  (``chains``); :func:`compact_gated` does the same for gated feed-forward blocks (``blocks``).
* :func:`to_sparse_inference` stores linear layers as CSR (:class:`~chtorch.sparse.SparseInferenceLinear`;
  ``sparse_export``).
* :func:`export_report` counts parameters and FLOPs (only links for sparse layers) and measures latency
  (``report``).

What the modules share (reading a layer's links, replacing a submodule) is in ``_common``.

Links are the topology: a layer's ``weight_mask`` buffer (masked backend), a
:class:`~chtorch.sparse.SparseLinear`'s links, or ``weight != 0`` for a plain dense layer.
"""

from __future__ import annotations

from chtorch.compaction._common import layer_links
from chtorch.compaction.blocks import attention_notes, compact_gated, find_gated_blocks
from chtorch.compaction.chains import compact, find_dead_neurons
from chtorch.compaction.report import ExportReport, ModelStats, export_report
from chtorch.compaction.sparse_export import to_sparse_inference

__all__ = [
    # dead-neuron removal
    "compact",
    "find_dead_neurons",
    "compact_gated",
    "find_gated_blocks",
    "attention_notes",
    # sparse storage and the report
    "to_sparse_inference",
    "export_report",
    "ExportReport",
    "ModelStats",
    # reading a layer's links
    "layer_links",
]
