"""LLaMA-style decoder-only language model (the paper's LLaMA-60M / 130M / 1B).

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §4.2 and Table 6, pre-train LLaMA models in the GaLore
setup (Zhao et al., 2024): RMSNorm before each sub-layer, rotary position embeddings (RoPE, Su et al.,
2021) on queries and keys, a SwiGLU feed-forward ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no
biases, untied input/output embeddings, vocabulary 32000 (t5-base tokenizer), sequence length 256.

Module names mirror Hugging Face's ``LlamaForCausalLM`` exactly
(``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``model.layers.N.mlp.{gate,up,down}_proj``, ``model.layers.N.{input,post_attention}_layernorm``,
``model.norm``, ``lm_head``), so ``state_dict`` keys are identical in both directions, and so are the
outputs (tested). The layers that dynamic sparse training selects are the seven projections; the
embeddings, norms and ``lm_head`` stay dense (paper §4.1; the LLaMA code's ``TARGET_MODULE_NAMES``).

RoPE uses the "rotate half" layout of HF: dimension i of a head is paired with dimension
i + head_dim/2 (this is what couples q/k rows i and i + head_dim/2 for percolation, docs/decisions.md, "q/k percolation
with RoPE").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chtorch._fields import setting
from chtorch.models._config import DictConfig
from chtorch.models.checkpointing import run_block

__all__ = [
    "LlamaConfig",
    "LlamaLM",
    "LlamaModel",
    "LlamaDecoderLayer",
    "LlamaAttention",
    "LlamaMLP",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "causal_lm_loss",
    "count_parameters",
    "paper_config",
    "paper_llama_config",
    "PAPER_CONFIGS",
    "to_hf_config",
]


@dataclass(frozen=True)
class LlamaConfig(DictConfig):
    """Hyper-parameters of :class:`LlamaLM`; defaults are the paper's LLaMA-60M (Table 6).

    ``max_seq_len`` is the longest sequence the RoPE table covers (the paper trains with 256).
    ``initializer_range`` is the std of the normal initialisation (HF/GaLore: 0.02).
    """

    vocab_size: int = setting(32000, "vocabulary size (the paper: 32000, t5-base)", min=1)
    d_model: int = setting(512, "width", min=1)
    n_layers: int = setting(8, "depth", min=1)
    n_heads: int = setting(8, "attention heads", min=1)
    d_ff: int = setting(1376, "SwiGLU width", min=1)
    max_seq_len: int = setting(256, "longest sequence the RoPE table covers (the paper trains with 256)", min=1)
    rms_norm_eps: float = setting(1e-6, "epsilon of every RMSNorm", min=0.0, min_open=True)
    rope_theta: float = setting(10000.0, "RoPE base", min=0.0, min_open=True)
    tie_embeddings: bool = setting(False, "lm_head reuses the token embedding matrix (the paper: untied)")
    initializer_range: float = setting(
        0.02, "std of the normal initialisation (HF/GaLore: 0.02)", min=0.0, min_open=True
    )
    checkpointing: bool = setting(
        False, "activation checkpointing of every decoder layer (less memory, one more forward pass)"
    )

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"LlamaConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: RoPE needs an even head_dim, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LlamaConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of :class:`LlamaLM` built from this config (tied matrices once).
        ``include_embeddings=False`` leaves out the token embedding and ``lm_head`` matrices."""
        d, f = self.d_model, self.d_ff
        per_layer = 4 * d * d + 3 * d * f + 2 * d  # attention, SwiGLU, two RMSNorm weights
        body = self.n_layers * per_layer + d  # + final norm
        if not include_embeddings:
            return body
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return body + embeddings


#: Table 6 of the paper (GaLore configs ``llama_{60m,130m,1b}.json``), plus CPU-sized models.
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "60m": dict(d_model=512, d_ff=1376, n_layers=8, n_heads=8),
    "130m": dict(d_model=768, d_ff=2048, n_layers=12, n_heads=12),
    "1b": dict(d_model=2048, d_ff=5461, n_layers=24, n_heads=32),
    # CPU-sized: for tests, smoke runs and character-level corpora (set vocab_size to the tokenizer's).
    "tiny": dict(vocab_size=256, d_model=64, d_ff=172, n_layers=2, n_heads=4, max_seq_len=128),
    "small": dict(vocab_size=8192, d_model=256, d_ff=688, n_layers=4, n_heads=4, max_seq_len=256),
}


def paper_config(name: str, **overrides: Any) -> LlamaConfig:
    """LLaMA config ``60m | 130m | 1b`` (paper Table 6: vocab 32000, sequence 256) or ``tiny | small``;
    ``overrides`` replace fields (e.g. ``vocab_size=tokenizer.vocab_size``)."""
    key = name.lower().removeprefix("llama-").removeprefix("llama_")
    if key not in PAPER_CONFIGS:
        raise ValueError(f"unknown LLaMA config {name!r}; choose one of {sorted(PAPER_CONFIGS)}")
    return LlamaConfig(**{**PAPER_CONFIGS[key], **overrides})


#: Package-level name (``chtorch.models`` also has ``paper_mlp_config`` and ``paper_transformer_config``).
paper_llama_config = paper_config


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in float32 and cast back (as HF does)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of RoPE for positions ``0 .. max_seq_len-1``: each (max_seq_len, head_dim),
    frequencies ``theta ** (-2i / head_dim)`` repeated for both halves (non-persistent buffers, so
    they are not in the state dict and follow ``.to(device)``)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.arange(max_seq_len, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if length > self.cos.shape[0]:
            raise ValueError(
                f"sequence length {length} exceeds max_seq_len={self.cos.shape[0]}; use shorter "
                "windows or build the model with a larger max_seq_len"
            )
        return self.cos[:length].to(dtype), self.sin[:length].to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, hd) by position: pair (i, i + hd/2) turns by angle ``t * freq_i``."""
    return x * cos + _rotate_half(x) * sin


class LlamaAttention(nn.Module):
    """Causal multi-head self-attention with RoPE; (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class LlamaMLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``; gate/up (d_ff, D), down (D, d_ff)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and final norm: token ids (B, T) -> hidden states (B, T, D)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.checkpointing = cfg.checkpointing
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(input_ids.shape[1], x.dtype)
        for layer in self.layers:
            x = run_block(layer, x, cos, sin, checkpointing=self.checkpointing)
        return self.norm(x)


# --------------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------------


class LlamaLM(nn.Module):
    """Causal LM: ``forward(input_ids)`` with ids (B, T) returns next-token logits (B, T, vocab).

    Position t's logits depend only on tokens 0..t (causal attention). There is no padding mask:
    language-model batches are packed windows of a token stream (:mod:`chtorch.data.text`).
    """

    #: Layers that dynamic sparse training keeps dense (paper §4.1).
    dense_layers: tuple[str, ...] = ("lm_head",)
    #: Percolation couplings by child name inside one block (the LLaMA code's ``qk_chain_removal`` and
    #: ``chain_removal``; read by :func:`chtorch.dst.infer_couplings`).
    percolation_pairs: dict[str, tuple[tuple[str, str], ...]] = {
        "rows": (("q_proj", "k_proj"), ("gate_proj", "up_proj")),
        "chains": (("v_proj", "o_proj"), ("gate_proj", "down_proj"), ("up_proj", "down_proj")),
    }

    def __init__(self, config: LlamaConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        # Forked global RNG: nn.Linear's constructor-time init must not advance the user's stream;
        # reset_parameters sets every value.
        with torch.random.fork_rng(devices=[]):
            self.model = LlamaModel(config)
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, ``initializer_range``) for every matrix and unit RMSNorm weights (HF's
        ``LlamaPreTrainedModel`` init). Draws only from ``generator`` when given."""
        for param in self.parameters():  # unique: a tied matrix is drawn once
            if param.dim() > 1:
                nn.init.normal_(param, mean=0.0, std=self.config.initializer_range, generator=generator)
            else:
                nn.init.ones_(param)  # RMSNorm weights: the only vectors (no biases)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        return self.lm_head(self.model(input_ids))


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy (float32). ``logits`` (B, T, V); ``targets`` (B, T) are the inputs
    shifted left by one (:mod:`chtorch.data.text` yields such ``(x, y)`` pairs). ``exp`` of it is the
    perplexity the paper reports."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters of ``module`` (a tied matrix counts once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def to_hf_config(config: LlamaConfig, **extra: Any) -> Any:
    """An equivalent ``transformers.LlamaConfig`` (needs the ``chtorch[hf]`` extra); a
    ``transformers.LlamaForCausalLM`` built from it accepts :class:`LlamaLM`'s ``state_dict``.
    ``extra`` is passed on (e.g. ``bos_token_id``)."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("to_hf_config needs Hugging Face transformers: pip install 'chtorch[hf]'") from exc
    return transformers.LlamaConfig(  # type: ignore[call-arg]
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.initializer_range,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        **extra,
    )
