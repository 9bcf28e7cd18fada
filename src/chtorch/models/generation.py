"""Greedy and beam-search decoding for encoder-decoder models (paper Table 5: beam size 2).

Works with any model that has ``encode(src) -> (memory, memory_mask)`` and
``decode(tgt_in, memory, memory_mask) -> logits`` (:class:`chtorch.models.transformer.Seq2SeqTransformer`).
The encoder runs once per batch; its output is repeated ``beam_size`` times and reused at every
step. The decoder re-reads the whole prefix at each step (no incremental key/value cache): simple and
exact, at O(L^2) decoder cost, which is small for sentence-length outputs.

Scores are sums of token log-probabilities. Beam search ranks hypotheses by ``score / lp(|Y|)``,
with OpenNMT-py's length penalties (``-length_penalty``, ``onmt/translate/penalties.py``):
``none`` (lp = 1: the raw sum, and then ``beam_size=1`` is exactly greedy decoding), ``wu`` (GNMT,
Wu et al. 2016: ``lp = ((5 + |Y|) / 6) ** alpha``, so ``alpha = 0``, the default, is ``none``; the
paper's evaluation script uses ``-length_penalty wu -alpha 1``) and ``avg`` (``lp = |Y|``). As in
OpenNMT's ``BeamSearch.advance``,
``|Y|`` counts the ``<bos>`` token as well as the generated ones (``<eos>`` included): a hypothesis
of n generated tokens has ``|Y| = n + 1``. ``min_len`` bans ``<eos>`` until that many tokens were
generated (OpenNMT ``-min_length``). ``<pad>`` and ``<bos>`` are never generated.

With ``return_attention=True`` beam search also returns each best hypothesis' source alignment: for
every generated token, the attention over the source that the decoder computed at the step that
produced it (the model's ``decode_with_attention``), carried along each beam's history and reordered
with the beams, as OpenNMT's ``BeamSearch.alive_attn``. ``-replace_unk`` reads it
(:func:`chtorch.recipes.decoding.replace_unknown`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Decoded",
    "EncoderDecoder",
    "AttentionalDecoder",
    "greedy_decode",
    "beam_search",
    "length_penalty",
    "LENGTH_PENALTIES",
]

#: Length penalties of beam search (OpenNMT ``-length_penalty``).
LENGTH_PENALTIES = ("none", "wu", "avg")


class EncoderDecoder(Protocol):
    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor: ...


class AttentionalDecoder(EncoderDecoder, Protocol):
    """An :class:`EncoderDecoder` that can also return its source alignment (B, T, S) with the logits."""

    def decode_with_attention(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class Decoded(NamedTuple):
    """Decoder output. ``tokens``: (B, L) generated ids without ``<bos>``, ending with ``<eos>`` when
    one was produced, right-padded with ``pad_id``. ``scores``: (B,) float32 ranking score (sum of
    log-probs divided by the length penalty). ``lengths``: (B,) number of generated tokens.
    ``attention``: (B, L, S) float32 source alignment of each generated token (zero rows past the
    length), or None when it was not asked for."""

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    attention: torch.Tensor | None = None


def length_penalty(length: int, alpha: float, kind: str = "wu") -> float:
    """Length penalty ``lp(length)`` that divides a hypothesis' log-probability: ``wu`` (GNMT)
    ``((5 + length) / 6) ** alpha``, ``avg`` ``length``, ``none`` 1 (OpenNMT's ``PenaltyBuilder``)."""
    if kind == "wu":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "avg":
        return float(length)
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown length penalty {kind!r}; choose one of {LENGTH_PENALTIES}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Decode without dropout, then restore the caller's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _check(src: torch.Tensor, max_len: int, ids: dict[str, int]) -> None:
    if src.dim() != 2:
        raise ValueError(f"src must be (batch, length) token ids, got shape {tuple(src.shape)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"bos_id, eos_id and pad_id must be distinct, got {ids}")


def _next_log_probs(
    model: EncoderDecoder, seq: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, banned: tuple[int, ...]
) -> torch.Tensor:
    """(N, V) float32 log-probabilities of the next token after prefix ``seq`` (N, t)."""
    logp = F.log_softmax(model.decode(seq, memory, mask)[:, -1].float(), dim=-1)
    logp[:, list(banned)] = float("-inf")
    return logp


def _next_with_attention(
    model: AttentionalDecoder, seq: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, banned: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_next_log_probs` and the (N, S) float32 source attention of the step that predicts it."""
    logits, attention = model.decode_with_attention(seq, memory, mask)
    logp = F.log_softmax(logits[:, -1].float(), dim=-1)
    logp[:, list(banned)] = float("-inf")
    return logp, attention[:, -1].float()


def greedy_decode(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int = 100,
) -> Decoded:
    """Batched greedy decoding of ``src`` (B, S): the most likely token at each step, at most
    ``max_len`` tokens per sentence. Runs in eval mode without gradients."""
    _check(src, max_len, {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id})
    with _eval_mode(model):  # type: ignore[arg-type]
        memory, mask = model.encode(src)
        b = src.shape[0]
        seq = torch.full((b, 1), bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(b, dtype=torch.bool, device=src.device)
        scores = torch.zeros(b, dtype=torch.float32, device=src.device)
        lengths = torch.zeros(b, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            best, token = _next_log_probs(model, seq, memory, mask, (pad_id, bos_id)).max(dim=-1)
            token = token.masked_fill(finished, pad_id)
            scores += best.masked_fill(finished, 0.0)
            lengths += (~finished).long()
            seq = torch.cat([seq, token[:, None]], dim=1)
            finished |= token == eos_id
            if bool(finished.all()):
                break
    return Decoded(seq[:, 1:], scores, lengths)


def beam_search(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int = 100,
    alpha: float = 0.0,
    penalty: str = "wu",
    min_len: int = 0,
    return_attention: bool = False,
) -> Decoded:
    """Batched beam search over ``src`` (B, S); returns the best hypothesis of each sentence.

    At each step the ``2 * beam_size`` best extensions of the live beams are ranked; those ending in
    ``<eos>`` among the top ``beam_size`` become finished hypotheses, and the best ``beam_size``
    others continue. A sentence is done once it has ``beam_size`` finished hypotheses and no live
    beam can still beat the worst of them (exact: log-probs only decrease, and for a growing
    penalty the bound uses the penalty at ``max_len``). Live beams left at ``max_len`` count as
    finished (without ``<eos>``). ``penalty``: ``none``, ``wu`` or ``avg`` (module docstring);
    ``alpha`` is the ``wu`` exponent (>= 0; with ``wu``, 0 is ``none``). ``min_len``: no ``<eos>``
    before that many generated tokens. ``return_attention``: also return the best hypotheses' source
    alignments (``Decoded.attention``; the model needs ``decode_with_attention``).
    """
    _check(src, max_len, {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id})
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if alpha < 0:
        raise ValueError(f"alpha (length-penalty exponent) must be >= 0, got {alpha}")
    if penalty not in LENGTH_PENALTIES:
        raise ValueError(f"unknown length penalty {penalty!r}; choose one of {LENGTH_PENALTIES}")
    if min_len < 0:
        raise ValueError(f"min_len must be >= 0, got {min_len}")
    if return_attention and not callable(getattr(model, "decode_with_attention", None)):
        raise ValueError(
            f"return_attention needs a model with decode_with_attention(tgt_in, memory, memory_mask), "
            f"which {type(model).__name__} lacks"
        )
    growing = penalty == "avg" or (penalty == "wu" and alpha > 0)

    def lp(n_generated: int) -> float:
        return length_penalty(n_generated + 1, alpha, penalty)  # OpenNMT's |Y| counts <bos>

    k = beam_size
    device = src.device
    b = src.shape[0]
    with _eval_mode(model):  # type: ignore[arg-type]
        memory, mask = model.encode(src)
        memory = memory.repeat_interleave(k, dim=0)  # (B*K, S, D): reuse the encoder output
        mask = mask.repeat_interleave(k, dim=0)
        seq = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)
        # Only beam 0 is live at the start, so the first step does not expand K copies of <bos>.
        beam_scores = torch.full((b, k), float("-inf"), device=device)
        beam_scores[:, 0] = 0.0
        # The source attention of every generated token of every live beam: (B*K, t, S).
        history = torch.zeros(b * k, 0, memory.shape[1], device=device) if return_attention else None
        # Finished hypotheses: (score, tokens, their (n, S) attention or None).
        finished: list[list[tuple[float, list[int], torch.Tensor | None]]] = [[] for _ in range(b)]
        done = [False] * b
        rank = torch.arange(2 * k, device=device)
        base = (torch.arange(b, device=device) * k)[:, None]

        for step in range(max_len):
            n_generated = step + 1
            banned = (pad_id, bos_id) if n_generated > min_len else (pad_id, bos_id, eos_id)
            if history is None:
                logp = _next_log_probs(model, seq, memory, mask, banned)  # (B*K, V)
            else:
                logp, step_attention = _next_with_attention(model, seq, memory, mask, banned)  # type: ignore[arg-type]
            vocab = logp.shape[-1]
            cand = (beam_scores.reshape(-1, 1) + logp).view(b, k * vocab)
            top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (B, 2K)
            top_beam, top_token = top_idx // vocab, top_idx % vocab
            is_eos = top_token == eos_id

            # Finished hypotheses: <eos> extensions ranked in the top K.
            eos_hits = (is_eos[:, :k] & torch.isfinite(top_scores[:, :k])).nonzero().tolist()
            if eos_hits:
                divisor = lp(n_generated)
                for bi, r in eos_hits:
                    if done[bi]:
                        continue
                    row = bi * k + int(top_beam[bi, r])
                    tokens = seq[row, 1:].tolist() + [eos_id]
                    aligned = None if history is None else torch.cat([history[row], step_attention[row, None]])
                    finished[bi].append((float(top_scores[bi, r]) / divisor, tokens, aligned))

            # Live beams: the first K candidates that do not end in <eos> (at most K of the 2K do,
            # one per beam, so K others always exist).
            order = torch.argsort(is_eos.long() * (2 * k) + rank[: is_eos.shape[1]], dim=1)[:, :k]
            beam_scores = top_scores.gather(1, order)
            rows = (base + top_beam.gather(1, order)).reshape(-1)
            seq = torch.cat([seq[rows], top_token.gather(1, order).reshape(-1, 1)], dim=1)
            if history is not None:  # each survivor inherits its parent's history plus this step
                history = torch.cat([history[rows], step_attention[rows, None]], dim=1)

            best_live = beam_scores[:, 0].tolist()
            bound_penalty = lp(max_len if growing else n_generated)
            for bi in range(b):
                if done[bi] or len(finished[bi]) < k:
                    continue
                finished[bi].sort(key=lambda h: h[0], reverse=True)
                del finished[bi][k:]
                if best_live[bi] / bound_penalty <= finished[bi][-1][0]:
                    done[bi] = True
            if all(done):
                break

        # Sentences still open at max_len: their live beams end unterminated.
        divisor = lp(seq.shape[1] - 1)
        for bi in range(b):
            if done[bi]:
                continue
            for j in range(k):
                score = float(beam_scores[bi, j])
                if score != float("-inf"):
                    row = bi * k + j
                    aligned = None if history is None else history[row]
                    finished[bi].append((score / divisor, seq[row, 1:].tolist(), aligned))

    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    width = max(len(tokens) for _, tokens, _ in best)
    out = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros(b, width, src.shape[1], device=device) if return_attention else None
    for bi, (_, tokens, aligned) in enumerate(best):
        out[bi, : len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=device)
        if attention is not None and aligned is not None:
            attention[bi, : len(tokens)] = aligned
    scores = torch.tensor([s for s, _, _ in best], dtype=torch.float32, device=device)
    lengths = torch.tensor([len(t) for _, t, _ in best], dtype=torch.long, device=device)
    return Decoded(out, scores, lengths, attention)
