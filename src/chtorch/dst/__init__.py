"""The dynamic sparse training engine and the parts a method is made of.

- :mod:`~chtorch.dst.engine`: :class:`DynamicSparsity` (set-up, hooks, ``step``, state);
  :mod:`~chtorch.dst.timeline`: the run's schedules; :mod:`~chtorch.dst.book`: a layer's book-keeping;
- :mod:`~chtorch.dst.update`: one topology update, Algorithm 1 of Zhang et al., "Brain network science
  modelling of sparse neural networks enables Transformers and LLMs to perform as fully connected",
  NeurIPS 2025 (arXiv:2501.19107): density pruning → removal → percolation → regrowth → install;
- :mod:`~chtorch.dst.layer`: the registered backends (masked, truly sparse, ...) behind one interface;
- :mod:`~chtorch.dst.initial`: initial topology and weights;
- :mod:`~chtorch.dst.options`, :mod:`~chtorch.dst.methods`: the options record and the presets;
  :mod:`~chtorch.dst.reads`: which options a resolved method reads (setting another is an error);
- :mod:`~chtorch.dst.registry`: the registered parts (removal, regrowth, sampling, schedules, ...),
  each declaring what it needs;
- :mod:`~chtorch.dst.percolation`, :mod:`~chtorch.dst.scope` (layer selection),
  :mod:`~chtorch.dst.ranks` (DDP agreement), :mod:`~chtorch.dst.report`.

Depends on torch (and numpy) only. Where chtorch chooses between the paper and the official code:
docs/decisions.md.

The application (config, recipes, train, integrations, cli) imports this face only, never a
submodule: what is exported here is the engine's public vocabulary.
"""

# The engine and its layer selection
from chtorch.dst.engine import DynamicSparsity
from chtorch.dst.layer import BACKENDS, Backend, Layer, MaskedLayer, TrulySparseLayer, backend_names, register_backend
from chtorch.dst.methods import (
    MethodPreset,
    all_methods,
    get_method,
    is_dense,
    merge_overrides,
    method_table,
    register_method,
    resolve_options,
)
from chtorch.dst.methods import methods as method_names  # not ``methods``: that is the submodule's name
from chtorch.dst.options import OptionError, SparsityOptions
from chtorch.dst.percolation import (
    ANP_COUNTS,
    CONVENTIONAL_PAIRS,
    BlockPairs,
    Coupling,
    active_neuron_count,
    active_neuron_fraction,
    chain,
    infer_couplings,
    rows,
)
from chtorch.dst.reads import UnreadOptionError, options_read, unread_options
from chtorch.dst.registry import get_part, part_names, parts, register_part
from chtorch.dst.report import LayerUpdate, UpdateReport
from chtorch.dst.schedules import rewarmup_factor, update_limit
from chtorch.dst.scope import (
    SUPPORTED_LAYERS,
    LayerSelectionError,
    LayerSelector,
    is_sparsifiable,
    layer_shape,
    logical_weight,
    select_layers,
)

__all__ = [
    # the engine
    "DynamicSparsity",
    "UpdateReport",
    "LayerUpdate",
    # methods (presets) and options
    "MethodPreset",
    "register_method",
    "get_method",
    "method_names",
    "all_methods",
    "is_dense",
    "method_table",
    "merge_overrides",
    "resolve_options",
    "SparsityOptions",
    "OptionError",
    "UnreadOptionError",
    "options_read",
    "unread_options",
    # parts
    "register_part",
    "get_part",
    "part_names",
    "parts",
    # backends
    "BACKENDS",
    "Backend",
    "Layer",
    "MaskedLayer",
    "TrulySparseLayer",
    "register_backend",
    "backend_names",
    # layer selection
    "LayerSelector",
    "LayerSelectionError",
    "SUPPORTED_LAYERS",
    "select_layers",
    "is_sparsifiable",
    "layer_shape",
    "logical_weight",
    # percolation: couplings and active neurons
    "Coupling",
    "chain",
    "rows",
    "infer_couplings",
    "BlockPairs",
    "CONVENTIONAL_PAIRS",
    "active_neuron_count",
    "active_neuron_fraction",
    "ANP_COUNTS",
    # schedules the training loop shares
    "rewarmup_factor",
    "update_limit",
]
