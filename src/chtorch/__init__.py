"""chtorch: brain-inspired dynamic sparse training for PyTorch.

Reference: Y. Zhang et al., "Brain network science modelling of sparse neural networks enables
Transformers and LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107).
"""

__version__ = "0.1.0"
