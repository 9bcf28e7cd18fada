"""The dynamic sparse training engine and the parts a method is made of.

- :mod:`~chtorch.dst.engine`: :class:`DynamicSparsity` (set-up, hooks, ``step``, schedules, state);
- :mod:`~chtorch.dst.update`: one topology update, Algorithm 1 of Zhang et al., "Brain network science
  modelling of sparse neural networks enables Transformers and LLMs to perform as fully connected",
  NeurIPS 2025 (arXiv:2501.19107): density pruning → removal → percolation → regrowth → install;
- :mod:`~chtorch.dst.layer`: a masked and a truly sparse layer behind one interface;
- :mod:`~chtorch.dst.initial`: initial topology and weights;
- :mod:`~chtorch.dst.options`, :mod:`~chtorch.dst.methods`: the options record and the presets;
- :mod:`~chtorch.dst.registry`: the registered parts (removal, regrowth, sampling, schedules, ...),
  each declaring what it needs;
- :mod:`~chtorch.dst.percolation`, :mod:`~chtorch.dst.scope` (layer selection),
  :mod:`~chtorch.dst.ranks` (DDP agreement), :mod:`~chtorch.dst.report`.

Depends on torch (and numpy) only. Where chtorch chooses between the paper and the official code:
docs/decisions.md.
"""
