"""The dynamic sparse training engine and the parts a method is made of.

:class:`~chtorch.dst.engine.DynamicSparsity` runs one topology update as Algorithm 1 of Zhang et al.,
"Brain network science modelling of sparse neural networks enables Transformers and LLMs to perform as
fully connected", NeurIPS 2025 (arXiv:2501.19107); removal, regrowth, sampling, schedules and
percolation are the registered parts it composes. Depends on torch (and numpy) only.
"""
