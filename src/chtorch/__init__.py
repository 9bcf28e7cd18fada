"""chtorch: brain-inspired dynamic sparse training for PyTorch.

Reference: Y. Zhang et al., "Brain network science modelling of sparse neural networks enables
Transformers and LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107).
"""

from chtorch import compaction, linkpred, sparse, topology
from chtorch.api import sparsify
from chtorch.dst import (  # modules kept as chtorch.percolation / chtorch.schedules
    DynamicSparsity,
    LayerUpdate,
    MethodPreset,
    OptionError,
    SparsityOptions,
    UpdateReport,
    all_methods,
    get_method,
    get_part,
    is_dense,
    method_table,
    part_names,
    percolation,
    register_backend,
    register_method,
    register_part,
    schedules,
    select_layers,
)
from chtorch.dst import method_names as methods
from chtorch.portable import load_sparse, strip
from chtorch.sparse import register_kernel

__version__ = "0.1.0"

__all__ = [
    "sparsify",
    "load_sparse",
    "strip",
    "DynamicSparsity",
    "SparsityOptions",
    "OptionError",
    "UpdateReport",
    "LayerUpdate",
    "MethodPreset",
    "register_method",
    "get_method",
    "methods",
    "all_methods",
    "is_dense",
    "method_table",
    "register_part",
    "get_part",
    "part_names",
    "register_backend",
    "register_kernel",
    "select_layers",
    "compaction",
    "sparse",
    "linkpred",
    "percolation",
    "schedules",
    "topology",
]
