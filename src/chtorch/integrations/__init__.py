"""Integrations with other training frameworks (optional extras, imported only when used).

- :mod:`chtorch.integrations.hf`: :class:`~chtorch.integrations.hf.ChtorchCallback`, a Hugging Face
  ``transformers.Trainer`` callback (``pip install 'chtorch[hf]'``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ChtorchCallback"]


def __getattr__(name: str) -> Any:
    # Lazy: importing chtorch.integrations must not import transformers.
    if name == "ChtorchCallback":
        from chtorch.integrations.hf import ChtorchCallback

        return ChtorchCallback
    raise AttributeError(f"module 'chtorch.integrations' has no attribute {name!r}")
