"""chtorch: brain-inspired dynamic sparse training for PyTorch.

Reference: Y. Zhang et al., "Brain network science modelling of sparse neural networks enables
Transformers and LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107).
"""

from . import export, kernels, linkpred, percolation, schedules, topology
from .api import sparsify
from .methods import MethodPreset, get_method, method_table, methods, register_method
from .options import OptionError, SparsityOptions
from .report import LayerUpdate, UpdateReport
from .selection import select_layers
from .sparsity import DynamicSparsity

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
    "method_table",
    "select_layers",
    "export",
    "kernels",
    "linkpred",
    "percolation",
    "schedules",
    "topology",
]
