"""Which layers of a Hugging Face model chtorch sparsifies, and their attention-head groups.

Shared by the Trainer callback (:mod:`chtorch.integrations.hf`) and the mask files
(:mod:`chtorch.integrations.hf_save`); needs no ``transformers`` import of its own.
"""

from __future__ import annotations

from torch import nn

from chtorch.dst import SUPPORTED_LAYERS, is_sparsifiable, select_layers

__all__ = ["default_layers", "head_groups_for"]


def default_layers(model: nn.Module) -> list[str]:
    """Every ``nn.Linear`` and GPT-2 ``Conv1D`` of ``model`` except its output embedding
    (``get_output_embeddings()``, the ``lm_head`` of a causal LM, kept dense as in the paper §4.1);
    without one, every such layer but the last ``nn.Linear``."""
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    head = get_output_embeddings() if get_output_embeddings is not None else None
    if isinstance(head, nn.Module) and is_sparsifiable(head):
        names = [n for n, m in model.named_modules() if n and is_sparsifiable(m) and m is not head]
        if not names:
            raise ValueError(
                f"the model has no layer chtorch can sparsify ({SUPPORTED_LAYERS}) besides its output embedding"
            )
        return names
    return select_layers(model)


def head_groups_for(model: nn.Module) -> dict[str, int]:
    """``head_groups`` for per-head removal/regrowth from a HF config: ``q_proj`` rows in
    ``num_attention_heads`` blocks, ``k_proj``/``v_proj`` rows in ``num_key_value_heads`` blocks."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        raise ValueError(
            "per_head=True needs model.config.num_attention_heads; pass head_groups={pattern: heads} instead"
        )
    kv = getattr(config, "num_key_value_heads", None) or heads
    return {"*.q_proj": int(heads), "*.k_proj": int(kv), "*.v_proj": int(kv)}
