"""Tiny runs of every model family for the plot, logger and compare tests: a 4-block LLaMA (28 sparse
layers) on a toy text and a 2+2-layer Transformer (32 sparse layers) on a toy parallel corpus, each a
few seconds on one CPU thread, with no data from outside the test."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

VERSE = (
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n"
)
LEXICON = {
    "a": "ein",
    "dog": "hund",
    "cat": "katze",
    "runs": "rennt",
    "sleeps": "schläft",
    "big": "groß",
    "small": "klein",
    "red": "rot",
}
QUIET = {"plots": False, "report": False, "progress": "off", "tensorboard": False}


def _merge(raw: dict[str, Any], sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


@pytest.fixture(scope="session")
def toy_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy_text") / "verse.txt"
    path.write_text(VERSE * 12, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_parallel")
    rng = random.Random(0)
    words = sorted(LEXICON)
    for split, n in (("train", 160), ("val", 16), ("test", 8)):
        sentences = [[rng.choice(words) for _ in range(rng.randint(2, 6))] for _ in range(n)]
        (root / f"{split}.en").write_text("\n".join(" ".join(s) for s in sentences) + "\n", encoding="utf-8")
        (root / f"{split}.de").write_text(
            "\n".join(" ".join(LEXICON[w] for w in s) for s in sentences) + "\n", encoding="utf-8"
        )
    return root


@pytest.fixture(scope="session")
def llama_raw(toy_text: Path):
    """Builds the raw config of a tiny LLaMA run; keyword sections update the defaults."""
    return lambda **sections: _llama_raw(toy_text, **sections)


@pytest.fixture(scope="session")
def transformer_raw(toy_corpus: Path):
    """Builds the raw config of a tiny Transformer run (needs tokenizers and sacrebleu)."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("sacrebleu")
    return lambda **sections: _transformer_raw(toy_corpus, **sections)


def _llama_raw(text: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A 4-block LLaMA (q, k, v, o, gate, up, down sparse in each: 28 layers), CHTss to 90%."""
    raw = {
        "run": {"name": "tiny-llama", "recipe": "lm", "seed": 0, "device": "cpu", "threads": 1},
        "model": {"name": "llama", "size": "tiny", "d_model": 16, "n_layers": 4, "n_heads": 2, "d_ff": 24},
        "data": {
            "name": str(text),
            "tokenizer": "char",
            "val_fraction": 0.2,
            "seq_len": 16,
            "batch_size": 4,
            "steps_per_epoch": 4,
            "eval_batch_size": 8,
        },
        "optim": {
            "name": "adamw",
            "lr": 3e-3,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "final_lr": 3e-4,
            "warmup_steps": 2,
            "rewarmup_steps": 2,
        },
        "sparsity": {"method": "chtss", "sparsity": 0.9, "update_interval": 2, "update_unit": "step"},
        "train": {"epochs": 3, "log_every": 1, **QUIET},
    }
    return _merge(raw, sections)


def _transformer_raw(corpus: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A 2+2-layer Transformer (self-attention, cross-attention and FFN sparse: 32 layers), CHTss to 90%."""
    raw = {
        "run": {"name": "tiny-transformer", "recipe": "translation", "seed": 0, "device": "cpu", "threads": 1},
        "model": {"name": "transformer", "d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "max_len": 32},
        "data": {
            "name": "parallel",
            "dir": str(corpus),
            "vocab_size": 40,
            "min_frequency": 1,
            "batch_tokens": 96,
            "steps_per_epoch": 4,
            "max_decode_len": 8,
            "eval_batch_size": 8,
        },
        "optim": {
            "name": "adam",
            "lr": 1.0,
            "betas": [0.9, 0.98],
            "weight_decay": 0.0,
            "schedule": "noam",
            "warmup_steps": 4,
            "rewarmup_steps": 2,
        },
        "sparsity": {"method": "chtss", "sparsity": 0.9, "update_interval": 2, "update_unit": "step"},
        "train": {"epochs": 3, "log_every": 1, **QUIET},
    }
    return _merge(raw, sections)
