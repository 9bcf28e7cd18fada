"""Decoding and scoring for translation: beam-search translations of encoded sentences and corpus
BLEU (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 5 reports BLEU of beam search, beam 2)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from chtorch.models import beam_search

__all__ = ["corpus_bleu", "translate"]


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
    out: list[list[int]] = [[] for _ in sources]
    order = sorted((i for i, s in enumerate(sources) if len(s) > 0), key=lambda i: len(sources[i]))
    limit = getattr(getattr(model, "config", None), "max_len", None)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sources[i]) for i in chunk)
        src = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            src[row, : len(sources[i])] = torch.as_tensor(list(sources[i]), dtype=torch.long)
        steps = max_len if limit is None else min(max_len, limit - 1)
        decoded = beam_search(
            model,  # type: ignore[arg-type]  # any encoder-decoder (encode/decode), e.g. Seq2SeqTransformer
            src.to(device),
            beam_size=beam_size,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            max_len=steps,
            alpha=alpha,
            penalty=penalty,
            min_len=min_len,
        )
        for row, i in enumerate(chunk):
            ids = decoded.tokens[row].tolist()
            cut = [t for t in itertools.takewhile(lambda t: t != eos_id, ids) if t != pad_id]
            out[i] = cut
    return out
