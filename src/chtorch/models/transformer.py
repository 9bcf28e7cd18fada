"""Encoder-decoder Transformer for machine translation (the paper's Multi30k / IWSLT14 / WMT17 model).

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §4 and Table 5, train OpenNMT-py's Transformer
(Vaswani et al., 2017): 6 encoder and 6 decoder layers, 8 heads, d_model 512, FFN 1024 (Multi30k) or
2048 (IWSLT14, WMT17), dropout and attention dropout 0.1, label smoothing 0.1, Glorot initialisation,
sinusoidal positions, embeddings scaled by sqrt(d_model). This module is a plain ``nn.Module`` with no
sparsity code; ``chtorch.sparsify`` selects its layers by name:

* every attention block has four separate ``nn.Linear`` projections ``q_proj``, ``k_proj``,
  ``v_proj``, ``o_proj`` (no fused in-projection, so each one can carry its own mask, and percolation
  can pair ``(k_proj, q_proj)`` and ``(v_proj, o_proj)`` as OpenNMT's ``(linear_keys, linear_query)``
  and ``(linear_values, final_linear)``);
* every feed-forward block has ``w_1`` (d_model -> d_ff) and ``w_2`` (d_ff -> d_model), OpenNMT's names;
* the output layer ``generator`` stays dense (paper §4.1: all linear layers except embeddings and the
  generator are sparsified); it is listed in :attr:`Seq2SeqTransformer.dense_layers`.

Module paths: ``encoder.layers.N.{self_attn,ffn}``, ``decoder.layers.N.{self_attn,context_attn,ffn}``
(``context_attn`` is OpenNMT's name for encoder-decoder attention).

Normalisation: pre-norm by default (LayerNorm before each sub-layer, plus a final LayerNorm after each
stack), which is what OpenNMT-py's Transformer does; ``pre_norm=False`` gives the post-norm layer of
the original paper (``LayerNorm(x + sublayer(x))``, no final norm).

Randomness: parameters are initialised from the ``generator`` passed to the constructor (or to
:meth:`Seq2SeqTransformer.reset_parameters`), without touching the global RNG. Dropout, like every
``nn.Dropout``, draws from torch's global RNG: the training loop seeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chtorch._fields import setting
from chtorch.models._config import DictConfig
from chtorch.models.checkpointing import run_block

__all__ = [
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "MultiHeadAttention",
    "PositionwiseFeedForward",
    "label_smoothed_cross_entropy",
    "paper_config",
    "paper_transformer_config",
    "PAPER_CONFIGS",
]


@dataclass(frozen=True)
class Seq2SeqConfig(DictConfig):
    """Hyper-parameters of :class:`Seq2SeqTransformer` (defaults: the paper's Multi30k model, Table 5).

    ``n_layers`` is the depth of the encoder and of the decoder (each). ``share_embeddings`` makes the
    source and target embeddings one matrix (needs ``src_vocab == tgt_vocab``, i.e. a joint
    vocabulary); ``tie_generator`` makes the output layer's weight the target embedding matrix.
    ``max_len`` bounds the sequence length (the size of the sinusoidal position table).
    """

    src_vocab: int = setting(help="source vocabulary size", min=1)
    tgt_vocab: int = setting(help="target vocabulary size", min=1)
    d_model: int = setting(512, "model width (the paper: 512)", min=1)
    n_heads: int = setting(8, "attention heads (the paper: 8)", min=1)
    n_layers: int = setting(6, "encoder layers and decoder layers, each (the paper: 6)", min=1)
    d_ff: int = setting(1024, "feed-forward width (the paper: 1024 for Multi30k, 2048 for IWSLT14/WMT17)", min=1)
    dropout: float = setting(0.1, "dropout (the paper: 0.1)", min=0.0, max=1.0, max_open=True)
    attn_dropout: float = setting(0.1, "attention dropout (the paper: 0.1)", min=0.0, max=1.0, max_open=True)
    max_len: int = setting(512, "longest sequence the position table covers", min=2)
    share_embeddings: bool = setting(False, "one embedding matrix for both languages (needs a joint vocabulary)")
    tie_generator: bool = setting(False, "the output layer reuses the target embedding matrix")
    pad_id: int = setting(0, "id of the padding token", min=0)
    pre_norm: bool = setting(True, "LayerNorm before each sub-layer (OpenNMT) instead of after")
    layer_norm_eps: float = setting(1e-6, "epsilon of every LayerNorm", min=0.0, min_open=True)
    checkpointing: bool = setting(
        False, "activation checkpointing of every encoder and decoder layer (less memory, one more forward pass)"
    )

    def __post_init__(self) -> None:
        for name in ("src_vocab", "tgt_vocab", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Seq2SeqConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"Seq2SeqConfig: d_model={self.d_model} is not divisible by "
                f"n_heads={self.n_heads}; choose n_heads that divides d_model"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Seq2SeqConfig.{name} must be in [0, 1), got {value!r}")
        if not 0 <= self.pad_id < min(self.src_vocab, self.tgt_vocab):
            raise ValueError(
                f"Seq2SeqConfig.pad_id={self.pad_id} must be a valid id of both vocabularies "
                f"(src_vocab={self.src_vocab}, tgt_vocab={self.tgt_vocab})"
            )
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(
                f"Seq2SeqConfig.share_embeddings needs one joint vocabulary, but src_vocab="
                f"{self.src_vocab} != tgt_vocab={self.tgt_vocab}; train a joint tokenizer or set "
                "share_embeddings=False"
            )
        if self.layer_norm_eps <= 0:
            raise ValueError(f"Seq2SeqConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


#: Table 5 of the paper (the architecture part; batch size, steps and LR belong to the recipe), plus
#: ``tiny``, a CPU-sized model for tests and smoke runs.
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "multi30k": dict(d_model=512, n_heads=8, n_layers=6, d_ff=1024, dropout=0.1, attn_dropout=0.1),
    "iwslt14": dict(d_model=512, n_heads=8, n_layers=6, d_ff=2048, dropout=0.1, attn_dropout=0.1),
    "wmt17": dict(d_model=512, n_heads=8, n_layers=6, d_ff=2048, dropout=0.1, attn_dropout=0.1),
    "tiny": dict(d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.1, attn_dropout=0.1, max_len=128),
}


def paper_config(name: str, src_vocab: int, tgt_vocab: int, **overrides: Any) -> Seq2SeqConfig:
    """The paper's Transformer for ``name`` in ``multi30k | iwslt14 | wmt17`` (Table 5), or ``tiny``.

    The vocabulary sizes depend on the tokenizer, so they are arguments; ``overrides`` replace any
    other field (e.g. ``share_embeddings=True``).
    """
    key = name.lower()
    if key not in PAPER_CONFIGS:
        raise ValueError(f"unknown Transformer config {name!r}; choose one of {sorted(PAPER_CONFIGS)}")
    return Seq2SeqConfig(src_vocab=src_vocab, tgt_vocab=tgt_vocab, **{**PAPER_CONFIGS[key], **overrides})


#: Package-level name (``chtorch.models`` also has ``paper_mlp_config`` and ``paper_llama_config``).
paper_transformer_config = paper_config


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` projections.

    Shapes: ``query`` (B, Lq, D), ``key_value`` (B, Lk, D), ``attn_mask`` bool broadcastable to
    (B, H, Lq, Lk) with True where attention is allowed; returns (B, Lq, D).
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.attn_dropout = attn_dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        b, lq, d = query.shape
        lk = key_value.shape[1]
        # (B, L, D) -> (B, H, L, hd)
        q = self.q_proj(query).view(b, lq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key_value).view(b, lk, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(key_value).view(b, lk, self.n_heads, self.head_dim).transpose(1, 2)
        dropout_p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
        )  # (B, H, Lq, hd)
        return self.o_proj(out.transpose(1, 2).reshape(b, lq, d))

    def weights(
        self, query: torch.Tensor, key_value: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention probabilities (B, H, Lq, Lk) that :meth:`forward` applies (before attention
        dropout, as OpenNMT's ``MultiHeadedAttention`` returns them); 0 where ``attn_mask`` is False.
        Computed apart from :meth:`forward`, whose fused kernel does not return them, so asking for
        them leaves the outputs bit for bit unchanged. No causal mask: for cross-attention."""
        b, lq, _ = query.shape
        lk = key_value.shape[1]
        q = self.q_proj(query).view(b, lq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key_value).view(b, lk, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(dim=-1)


class PositionwiseFeedForward(nn.Module):
    """``w_2(dropout(relu(w_1(x))))``; ``w_1``: (d_ff, d_model) weight, ``w_2``: (d_model, d_ff)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model) table of Vaswani et al.: sin on even, cos on odd dimensions."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return table


class _Sublayer(nn.Module):
    """Residual wrapper: pre-norm ``x + drop(f(norm(x)))`` or post-norm ``norm(x + drop(f(x)))``."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:  # noqa: ANN001 - a closure
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.self_attn_block = _Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm, cfg.layer_norm_eps)
        self.ffn_block = _Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_block(x, lambda h: self.self_attn(h, h, attn_mask=src_mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.context_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        args = (cfg.d_model, cfg.dropout, cfg.pre_norm, cfg.layer_norm_eps)
        self.self_attn_block = _Sublayer(*args)
        self.context_attn_block = _Sublayer(*args)
        self.ffn_block = _Sublayer(*args)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        attention: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``attention``: a list that receives this layer's cross-attention probabilities (B, H, T, S)."""
        # Causal self-attention only: targets are right-padded, so a real position never sees a pad,
        # and pad positions are ignored by the loss.
        x = self.self_attn_block(x, lambda h: self.self_attn(h, h, is_causal=True))

        def context(h: torch.Tensor) -> torch.Tensor:
            if attention is not None:
                attention.append(self.context_attn.weights(h, memory, memory_mask))
            return self.context_attn(h, memory, attn_mask=memory_mask)

        x = self.context_attn_block(x, context)
        return self.ffn_block(x, self.ffn)


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # Pre-norm leaves the residual stream unnormalised, hence the final LayerNorm (OpenNMT does
        # the same); post-norm layers already end with one.
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer; ``forward(src, tgt_in)`` returns logits (B, T, tgt_vocab).

    ``src``: (B, S) source ids, right-padded with ``pad_id``. ``tgt_in``: (B, T) decoder input, i.e.
    ``<bos> y_1 .. y_{T-1}`` (teacher forcing; see :func:`chtorch.data.translation.token_batches`).
    For decoding, :meth:`encode` runs once and :meth:`decode` reuses its output
    (:mod:`chtorch.models.generation`).
    """

    #: Layers that dynamic sparse training keeps dense (paper §4.1).
    dense_layers: tuple[str, ...] = ("generator",)
    #: Percolation couplings by child name inside one block (paper §4.3, OpenNMT's pairs): q/k share
    #: their output rows; v feeds o, w_1 feeds w_2 (read by :func:`chtorch.dst.infer_couplings`).
    percolation_pairs: dict[str, tuple[tuple[str, str], ...]] = {
        "rows": (("q_proj", "k_proj"),),
        "chains": (("v_proj", "o_proj"), ("w_1", "w_2")),
    }

    positions: torch.Tensor

    def __init__(self, config: Seq2SeqConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        cfg = config
        # Build under a forked global RNG so that the default initialisers nn.Linear runs on
        # construction do not advance the user's global stream; reset_parameters sets every value.
        with torch.random.fork_rng(devices=[]):
            self.src_embed = nn.Embedding(cfg.src_vocab, cfg.d_model, padding_idx=cfg.pad_id)
            self.tgt_embed = (
                self.src_embed
                if cfg.share_embeddings
                else nn.Embedding(cfg.tgt_vocab, cfg.d_model, padding_idx=cfg.pad_id)
            )
            self.encoder = _Stack([EncoderLayer(cfg) for _ in range(cfg.n_layers)], cfg)
            self.decoder = _Stack([DecoderLayer(cfg) for _ in range(cfg.n_layers)], cfg)
            self.generator = nn.Linear(cfg.d_model, cfg.tgt_vocab)
        if cfg.tie_generator:
            self.generator.weight = self.tgt_embed.weight
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform for every matrix (OpenNMT ``-param_init_glorot``), zero biases, unit
        LayerNorms, zero embedding row for ``pad_id``. Draws only from ``generator`` when given."""
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for param in self.parameters():  # unique parameters: a tied matrix is drawn once
            if param.dim() > 1:
                nn.init.xavier_uniform_(param, generator=generator)
        self.src_embed.weight[self.config.pad_id].zero_()
        self.tgt_embed.weight[self.config.pad_id].zero_()

    # -- pieces ------------------------------------------------------------------------------------

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if length > self.config.max_len:
            raise ValueError(
                f"sequence length {length} exceeds max_len={self.config.max_len}; filter long "
                "sentences or build the model with a larger max_len"
            )
        x = embedding(ids) * math.sqrt(self.config.d_model) + self.positions[:length].to(embedding.weight.dtype)
        return self.embed_dropout(x)

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, S) bool, True at real (non-pad) source tokens."""
        mask = (src != self.config.pad_id)[:, None, None, :]
        if not bool(mask.any(dim=-1).all()):
            # SDPA turns a fully masked row into NaN; say so instead of training on NaNs.
            raise ValueError("a source sequence consists only of padding; drop empty sentences before batching")
        return mask

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, S, D) and the source mask (B, 1, 1, S) that :meth:`decode` needs."""
        mask = self.source_mask(src)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder.layers:
            x = run_block(layer, x, mask, checkpointing=self.config.checkpointing)
        return self.encoder.norm(x), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, tgt_vocab) for decoder input ``tgt_in`` (B, T) given the encoder output."""
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder.layers:
            x = run_block(layer, x, memory, memory_mask, checkpointing=self.config.checkpointing)
        return self.generator(self.decoder.norm(x))

    def decode_with_attention(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode`'s logits (B, T, tgt_vocab), unchanged, and the source alignment (B, T, S): the
        cross-attention probabilities of the last decoder layer's first head, the attention OpenNMT-py's
        Transformer decoder returns as ``attns["std"]`` and ``-replace_unk`` reads (``top_attn =
        attns[:, 0]`` of the last layer in ``onmt/decoders/transformer.py``). 0 at padded sources."""
        x = self._embed(self.tgt_embed, tgt_in)
        last: list[torch.Tensor] = []
        layers = list(self.decoder.layers)
        for i, layer in enumerate(layers):
            x = layer(x, memory, memory_mask, last if i == len(layers) - 1 else None)
        return self.generator(self.decoder.norm(x)), last[0][:, 0]

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    smoothing: float = 0.1,
    pad_id: int | None = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy against ``(1 - smoothing) * one_hot(target) + smoothing * uniform``.

    ``logits`` (..., V), ``target`` (...). Positions whose target is ``pad_id`` are ignored, and the
    smoothing mass is spread over the V - 1 non-pad classes (the pad token is never a valid output,
    as in OpenNMT's ``LabelSmoothingLoss``). With ``pad_id=None`` nothing is ignored and the mass is
    spread over all V classes, which equals ``F.cross_entropy(..., label_smoothing=smoothing)``.
    ``reduction``: ``"mean"`` over counted tokens, ``"sum"``, or ``"none"`` (per position, 0 at pads).
    Computed in float32 whatever the logits' dtype. Paper Table 5: smoothing 0.1.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree")
    logp = F.log_softmax(logits.float(), dim=-1)
    n_classes = logp.shape[-1]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    total = logp.sum(dim=-1)
    if pad_id is None:
        smooth = -total / n_classes
        keep = torch.ones_like(target, dtype=torch.bool)
    else:
        smooth = -(total - logp[..., pad_id]) / (n_classes - 1)
        keep = target != pad_id
    loss = ((1.0 - smoothing) * nll + smoothing * smooth) * keep
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum().clamp_min(1)
