"""Decoding and scoring for translation: beam-search translations of encoded sentences and corpus
BLEU (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 5 reports BLEU of beam search, beam 2)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from chtorch.models import beam_search

__all__ = ["corpus_bleu", "translate", "translate_aligned", "replace_unknown"]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) of detokenized ``hypotheses`` against one reference each, computed by
    ``sacrebleu`` (Post, 2018) with its ``tokenize`` scheme. Needs the ``chtorch[nlp]`` extra."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    try:
        import sacrebleu
    except ImportError as exc:
        raise ImportError("BLEU needs sacrebleu, part of the chtorch[nlp] extra: pip install 'chtorch[nlp]'") from exc
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


@torch.no_grad()
def translate(
    model: nn.Module,
    sources: Sequence[Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 2,
    batch_size: int = 64,
    max_len: int = 100,
    alpha: float = 0.0,
    penalty: str = "wu",
    min_len: int = 0,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Beam-search translations (token ids, ``<eos>`` and padding removed) of encoded ``sources``,
    in input order. Sentences are decoded ``batch_size`` at a time, sorted by length so a batch
    holds little padding; an empty source yields an empty translation. ``penalty``, ``alpha`` and
    ``min_len``: the length penalty and minimum length of :func:`chtorch.models.beam_search`."""
    options = dict(beam_size=beam_size, max_len=max_len, alpha=alpha, penalty=penalty, min_len=min_len)
    found = _translate(model, sources, bos_id, eos_id, pad_id, batch_size, device, False, options)
    return [ids for ids, _ in found]


@torch.no_grad()
def translate_aligned(
    model: nn.Module,
    sources: Sequence[Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 2,
    batch_size: int = 64,
    max_len: int = 100,
    alpha: float = 0.0,
    penalty: str = "wu",
    min_len: int = 0,
    device: torch.device | str = "cpu",
) -> list[tuple[list[int], list[int]]]:
    """:func:`translate`, each translation with its alignment: for every output token, the source
    position of the largest attention weight at the step that produced it (the beam search's
    ``return_attention``; the model needs ``decode_with_attention``)."""
    options = dict(beam_size=beam_size, max_len=max_len, alpha=alpha, penalty=penalty, min_len=min_len)
    found = _translate(model, sources, bos_id, eos_id, pad_id, batch_size, device, True, options)
    return [(ids, aligned or []) for ids, aligned in found]


def _translate(
    model: nn.Module,
    sources: Sequence[Sequence[int]],
    bos_id: int,
    eos_id: int,
    pad_id: int,
    batch_size: int,
    device: torch.device | str,
    aligned: bool,
    options: dict[str, Any],
) -> list[tuple[list[int], list[int] | None]]:
    out: list[tuple[list[int], list[int] | None]] = [([], [] if aligned else None) for _ in sources]
    order = sorted((i for i, s in enumerate(sources) if len(s) > 0), key=lambda i: len(sources[i]))
    limit = getattr(getattr(model, "config", None), "max_len", None)
    steps = options["max_len"] if limit is None else min(options["max_len"], limit - 1)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sources[i]) for i in chunk)
        src = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            src[row, : len(sources[i])] = torch.as_tensor(list(sources[i]), dtype=torch.long)
        decoded = beam_search(
            model,  # type: ignore[arg-type]  # any encoder-decoder (encode/decode), e.g. Seq2SeqTransformer
            src.to(device),
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            **{**options, "max_len": steps},
            return_attention=aligned,
        )
        for row, i in enumerate(chunk):
            ids = decoded.tokens[row].tolist()
            n = len(list(itertools.takewhile(lambda t: t != eos_id, ids)))
            cut = [t for t in ids[:n] if t != pad_id]
            positions = None
            if decoded.attention is not None:
                # Argmax over the sentence's own (unpadded) positions; ties go to the first.
                weights = decoded.attention[row, :n, : len(sources[i])]
                positions = [p for t, p in zip(ids[:n], weights.argmax(dim=-1).tolist()) if t != pad_id]
            out[i] = (cut, positions)
    return out


def replace_unknown(ids: Sequence[int], alignment: Sequence[int], source_words: Sequence[str], tokenizer: Any) -> str:
    """The detokenized translation ``ids`` with each ``<unk>`` (``tokenizer.unk_id``) replaced by the
    source word it attends to most (``alignment[i]``: the source position aligned with ``ids[i]``),
    as OpenNMT-py's ``-replace_unk`` (``TranslationBuilder._build_target_tokens``, Luong et al., 2015).
    For word vocabularies, where one token is one whitespace-separated word: the other tokens are
    decoded by ``tokenizer`` and the pieces joined by single spaces, which is the tokenizer's own
    decoding when there is no ``<unk>``."""
    if len(alignment) != len(ids):
        raise ValueError(f"{len(ids)} tokens but {len(alignment)} alignment positions")
    unk = tokenizer.unk_id
    pieces: list[str] = []
    run: list[int] = []
    for token, position in zip(ids, alignment):
        if token != unk:
            run.append(token)
            continue
        pieces.append(tokenizer.decode(run))
        run = []
        if not 0 <= position < len(source_words):
            raise ValueError(f"alignment position {position} outside the {len(source_words)} source words")
        pieces.append(source_words[position])
    pieces.append(tokenizer.decode(run))
    return " ".join(p for p in pieces if p)
