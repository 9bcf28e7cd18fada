"""Plain ``nn.Module`` models with dataclass configs; no sparsity code (it is applied from outside)."""

from torch import nn

from chtorch.models.generation import Decoded, beam_search, greedy_decode
from chtorch.models.llama import LlamaConfig, LlamaLM, causal_lm_loss, count_parameters, paper_llama_config
from chtorch.models.mlp import MLP, MLPConfig, paper_mlp_config
from chtorch.models.transformer import (
    Seq2SeqConfig,
    Seq2SeqTransformer,
    label_smoothed_cross_entropy,
    paper_transformer_config,
)

__all__ = [
    "MLP",
    "MLPConfig",
    "paper_mlp_config",
    "linear_layer_names",
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "label_smoothed_cross_entropy",
    "paper_transformer_config",
    "LlamaConfig",
    "LlamaLM",
    "causal_lm_loss",
    "count_parameters",
    "paper_llama_config",
    "beam_search",
    "greedy_decode",
    "Decoded",
]


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of ``model``'s ``nn.Linear`` modules in registration order (for the models
    here, forward order): ``["layers.0", "layers.1", "layers.2", "classifier"]`` for an MLP."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
