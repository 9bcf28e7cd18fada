"""Parallel corpora for machine translation, and token-count batching with teacher forcing.

Paper setups (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 5): Multi30k en-de (batches of 1024
tokens), IWSLT14 en-de (10240) and WMT17 en-de (12000).

* Multi30k is read from its raw distribution files, ``{train,val,test_2016_flickr}.{en,de}.gz``
  (gzip UTF-8, one sentence per line, line i of ``X.en`` aligned with line i of ``X.de``):
  :func:`read_parallel` for any directory of such files, :func:`read_multi30k` to find them under a
  data root (``root`` argument, ``$CHTORCH_DATA``, or the user cache) and verify their checksums.
* IWSLT14 and WMT17 come from Hugging Face ``datasets`` (:func:`load_hf_translation`), imported only
  when called; install it with ``pip install datasets``.
* :func:`token_batches` groups encoded pairs into batches of at most ``max_tokens`` padded tokens,
  pads them, and builds the decoder input/output pair of teacher forcing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chtorch.data.files import (
    Checksums,
    DataFormatError,
    DataNotFoundError,
    find_file,
    maybe_decompress,
    read_verified,
    search_dirs,
)

__all__ = [
    "MULTI30K_SPLITS",
    "MULTI30K_LINES",
    "MULTI30K_CHECKSUMS",
    "HF_TRANSLATION_DATASETS",
    "read_lines",
    "read_parallel",
    "read_multi30k",
    "load_hf_translation",
    "encode_pairs",
    "filter_pairs",
    "TranslationBatch",
    "token_batch_indices",
    "collate_pairs",
    "token_batches",
]

#: Split aliases -> Multi30k file stem.
MULTI30K_SPLITS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test_2016_flickr",
    "test_2016_flickr": "test_2016_flickr",
}
#: Sentences per split (README of github.com/multi30k/dataset, task 1).
MULTI30K_LINES: dict[str, int] = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}

# sha256 of each file as distributed (multi30k/dataset data/task1/raw, commit a3d2e0d) and of its
# decompressed text, so a re-compressed copy of the same text is accepted too.
_MULTI30K_SHA256: dict[str, tuple[str, str]] = {
    "train.en": (
        "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    ),
    "train.de": (
        "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    ),
    "val.en": (
        "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    ),
    "val.de": (
        "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    ),
    "test_2016_flickr.en": (
        "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
        "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    ),
    "test_2016_flickr.de": (
        "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    ),
}
MULTI30K_CHECKSUMS: dict[str, Checksums] = {
    stem: Checksums(file=(f"sha256:{f}",), content=(f"sha256:{c}",)) for stem, (f, c) in _MULTI30K_SHA256.items()
}
_MULTI30K_HINT = (
    "Multi30k task 1 raw files are at https://github.com/multi30k/dataset/tree/master/data/task1/raw; "
    "put them in <data root>/multi30k/ and pass root=<data root> or set CHTORCH_DATA."
)

#: Default Hugging Face dataset (path, config) per corpus name. IWSLT14 has no official Hub copy;
#: the default is a community upload of the fairseq-preprocessed de-en data: check it suits you, or
#: pass ``path=``/``config=`` to :func:`load_hf_translation`.
HF_TRANSLATION_DATASETS: dict[str, tuple[str, str | None]] = {
    "iwslt14": ("bbaaaa/iwslt14-de-en-preprocess", "de-en"),
    "wmt17": ("wmt/wmt17", "de-en"),
}


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _decode_lines(data: bytes, source: str | os.PathLike[str]) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{source}: not valid UTF-8 text ({exc}); expected one sentence per line") from exc
    # Split on "\n" only: str.splitlines() would also split at U+2028, U+0085 ..., which can occur
    # inside a sentence and would break the line alignment of the two sides.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r").strip() for line in lines]


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 text file, gzip-compressed or not (decided by content), without line
    endings and surrounding whitespace."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"{path}: file not found") from exc
    return _decode_lines(maybe_decompress(raw, path), path)


def _resolve_stems(split: str) -> list[str]:
    stems = [split]
    alias = MULTI30K_SPLITS.get(split)
    if alias and alias != split:
        stems.append(alias)
    return stems


def _find_side(dirs: Sequence[Path], stems: Sequence[str], lang: str) -> Path:
    names = [f"{stem}.{lang}{ext}" for stem in stems for ext in (".gz", "")]
    found = find_file(dirs, names)
    if found is None:
        tried = ", ".join(str(d / n) for d in dirs for n in names)
        raise DataNotFoundError(f"no file for split {stems[0]!r}, language {lang!r}; looked for {tried}")
    return found


def _pair_up(src_path: Path, src_lines: list[str], tgt_path: Path, tgt_lines: list[str]) -> list[tuple[str, str]]:
    if len(src_lines) != len(tgt_lines):
        raise DataFormatError(
            f"parallel files have different line counts: {src_path} has {len(src_lines)} lines, "
            f"{tgt_path} has {len(tgt_lines)}; line i of one must translate line i of the other "
            "(a truncated download or files from different splits/versions?)"
        )
    return list(zip(src_lines, tgt_lines))


def read_parallel(root: str | os.PathLike[str], split: str, src: str = "en", tgt: str = "de") -> list[tuple[str, str]]:
    """Sentence pairs ``(src_sentence, tgt_sentence)`` from ``root/{split}.{src}[.gz]`` and
    ``root/{split}.{tgt}[.gz]``.

    ``split`` is a file stem (``train``, ``val``, ``test_2016_flickr``) or a Multi30k alias (``test``
    -> ``test_2016_flickr``, ``valid`` -> ``val``). Raises :class:`~chtorch.data.files.DataNotFoundError`
    naming the paths tried when a file is missing and :class:`~chtorch.data.files.DataFormatError`
    naming both files and their line counts when they are not aligned.
    """
    if src == tgt:
        raise ValueError(f"src and tgt languages must differ, got {src!r} twice")
    dirs = [Path(root).expanduser()]
    stems = _resolve_stems(split)
    src_path, tgt_path = _find_side(dirs, stems, src), _find_side(dirs, stems, tgt)
    return _pair_up(src_path, read_lines(src_path), tgt_path, read_lines(tgt_path))


def read_multi30k(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    src: str = "en",
    tgt: str = "de",
    verify: bool = True,
) -> list[tuple[str, str]]:
    """Multi30k task-1 pairs of ``split`` (``train`` 29000, ``val`` 1014, ``test`` = test_2016_flickr
    1000), found under ``root``, ``$CHTORCH_DATA`` or the user cache (``<dir>/multi30k/`` or
    ``<dir>/`` directly) and checked against the known sha256 digests unless ``verify=False``."""
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; choose one of {sorted(MULTI30K_SPLITS)}")
    stem = MULTI30K_SPLITS[split]
    dirs = search_dirs("multi30k", root)
    sides = []
    for lang in (src, tgt):
        try:
            path = _find_side(dirs, [stem], lang)
        except DataNotFoundError as exc:
            raise DataNotFoundError(f"{exc}. {_MULTI30K_HINT}") from None
        checksums = MULTI30K_CHECKSUMS.get(f"{stem}.{lang}")
        data = read_verified(path, checksums, verify=verify, hint=_MULTI30K_HINT)
        sides.append((path, _decode_lines(data, path)))
    (src_path, src_lines), (tgt_path, tgt_lines) = sides
    return _pair_up(src_path, src_lines, tgt_path, tgt_lines)


def load_hf_translation(
    name: str,
    split: str = "train",
    *,
    src: str = "en",
    tgt: str = "de",
    path: str | None = None,
    config: str | None = None,
    **load_kwargs: Any,
) -> list[tuple[str, str]]:
    """Pairs from a Hugging Face translation dataset (``translation`` column of ``{lang: text}``
    dicts): ``name`` in :data:`HF_TRANSLATION_DATASETS` (``iwslt14``, ``wmt17``), or any ``path``.

    Needs the ``datasets`` package (``pip install datasets``) and network access or a populated HF
    cache; ``load_kwargs`` go to ``datasets.load_dataset``. ``split``: ``val`` means ``validation``.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "load_hf_translation needs Hugging Face `datasets`: pip "
            "install datasets (or use read_parallel on local text files)"
        ) from exc
    if path is None:
        if name not in HF_TRANSLATION_DATASETS:
            raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(HF_TRANSLATION_DATASETS)} or pass path=")
        path, default_config = HF_TRANSLATION_DATASETS[name]
        config = config if config is not None else default_config
    hf_split = {"val": "validation", "valid": "validation"}.get(split, split)
    dataset = datasets.load_dataset(path, config, split=hf_split, **load_kwargs)
    return [(row["translation"][src], row["translation"][tgt]) for row in dataset]


# --------------------------------------------------------------------------------------------------
# Encoding and batching
# --------------------------------------------------------------------------------------------------


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    if hasattr(tokenizer, "encode_batch"):
        return lambda texts: tokenizer.encode_batch(texts)
    return lambda texts: [tokenizer.encode(t) for t in texts]


def encode_pairs(
    pairs: Sequence[tuple[str, str]], src_tokenizer: Any, tgt_tokenizer: Any | None = None
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each pair, without special tokens (:func:`token_batches` adds ``<bos>``/``<eos>``).
    ``tgt_tokenizer`` defaults to ``src_tokenizer`` (a joint vocabulary)."""
    tgt_tokenizer = tgt_tokenizer or src_tokenizer
    src_ids = _encoder(src_tokenizer)([s for s, _ in pairs])
    tgt_ids = _encoder(tgt_tokenizer)([t for _, t in pairs])
    return [(list(s), list(t)) for s, t in zip(src_ids, tgt_ids)]


def filter_pairs(
    pairs_ids: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int, min_len: int = 1
) -> list[tuple[Sequence[int], Sequence[int]]]:
    """Training pairs whose two sides both have ``min_len <= length <= max_len`` tokens (OpenNMT
    drops longer training sentences; empty sources cannot be encoded). Do not filter test sets."""
    return [(s, t) for s, t in pairs_ids if min_len <= len(s) <= max_len and min_len <= len(t) <= max_len]


@dataclass
class TranslationBatch:
    """One padded batch. ``src`` (B, S); ``tgt_in`` (B, T) = ``<bos> y_1 .. y_n``; ``tgt_out`` (B, T)
    = ``y_1 .. y_n <eos>`` (the next token at each decoder position), all right-padded with
    ``pad_id``; ``indices`` (B,) the pairs' positions in the input list; ``n_tokens`` the number of
    non-pad target tokens (the loss normaliser)."""

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    indices: torch.Tensor
    n_tokens: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TranslationBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return TranslationBatch(move(self.src), move(self.tgt_in), move(self.tgt_out), self.indices, self.n_tokens)


def _cost(src: Sequence[int], tgt: Sequence[int]) -> int:
    # Padded width a pair needs: the longer of its source and its target plus <bos>/<eos>.
    return max(len(src), len(tgt) + 1)


def token_batch_indices(
    pairs_ids: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_tokens: int,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Group pair indices into batches of at most ``max_tokens`` padded tokens
    (``batch size * widest pair``), each pair exactly once.

    Pairs are sorted by length so that a batch holds similar lengths (little padding). With a
    ``generator`` the order of equal-length pairs and the order of the batches are shuffled
    (a new epoch: pass a new generator); without one the result is deterministic (evaluation). A
    pair wider than ``max_tokens`` forms a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    n = len(pairs_ids)
    costs = torch.tensor([_cost(s, t) for s, t in pairs_ids], dtype=torch.long)
    base = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    # Stable sort of a shuffled order: lengths ascend, ties keep the random order.
    order = base[torch.sort(costs[base], stable=True).indices].tolist()
    sorted_costs = costs[order].tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index, cost in zip(order, sorted_costs):
        if current and (len(current) + 1) * max(width, cost) > max_tokens:
            batches.append(current)
            current, width = [], 0
        current.append(index)
        width = max(width, cost)
    if current:
        batches.append(current)
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate_pairs(
    pairs_ids: Sequence[tuple[Sequence[int], Sequence[int]]],
    indices: Sequence[int],
    *,
    pad_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
) -> TranslationBatch:
    """Pad the pairs at ``indices`` into a :class:`TranslationBatch` (teacher-forcing shift)."""
    chosen = [pairs_ids[i] for i in indices]
    if any(len(s) == 0 for s, _ in chosen):
        raise ValueError("a source sentence has no tokens; drop empty pairs (filter_pairs) before batching")
    src = _pad([s for s, _ in chosen], pad_id)
    tgt_in = _pad([[bos_id, *t] for _, t in chosen], pad_id)
    tgt_out = _pad([[*t, eos_id] for _, t in chosen], pad_id)
    n_tokens = sum(len(t) + 1 for _, t in chosen)
    return TranslationBatch(src, tgt_in, tgt_out, torch.as_tensor(list(indices), dtype=torch.long), n_tokens)


def token_batches(
    pairs_ids: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_tokens: int,
    generator: torch.Generator | None = None,
    *,
    pad_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
) -> Iterator[TranslationBatch]:
    """Padded teacher-forcing batches of at most ``max_tokens`` padded tokens (paper: 1024 for
    Multi30k); see :func:`token_batch_indices` for the grouping and :class:`TranslationBatch` for
    the tensors. Pairs hold token ids without special tokens (:func:`encode_pairs`)."""
    for indices in token_batch_indices(pairs_ids, max_tokens, generator):
        yield collate_pairs(pairs_ids, indices, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
