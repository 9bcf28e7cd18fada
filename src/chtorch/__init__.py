"""chtorch: brain-inspired dynamic sparse training for PyTorch.

Reference: Y. Zhang et al., "Brain network science modelling of sparse neural networks enables
Transformers and LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107).
"""

from chtorch import compaction, linkpred, sparse, topology
from chtorch.api import sparsify
from chtorch.dst import percolation, schedules
from chtorch.dst.engine import DynamicSparsity
from chtorch.dst.methods import MethodPreset, all_methods, get_method, is_dense, method_table, methods, register_method
from chtorch.dst.options import OptionError, SparsityOptions
from chtorch.dst.registry import get_part, part_names, register_part
from chtorch.dst.report import LayerUpdate, UpdateReport
from chtorch.dst.scope import select_layers

__version__ = "0.1.0"

__all__ = [
    "sparsify",
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
    "select_layers",
    "compaction",
    "sparse",
    "linkpred",
    "percolation",
    "schedules",
    "topology",
]
