"""Language-model recipe (``run.recipe: lm``): the paper's LLaMA pre-training experiments.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §4.2 and Table 6 pre-train LLaMA-60M / 130M / 1B on
OpenWebText (sequence length 256, global batch 512, t5-base tokenizer) with Adam, a global warm-up
then cosine decay to 0.1·lr, times the iterative re-warm-up ``min(1, (t mod ΔT)/w)`` after every
topology update (ΔT = 100, w = 20), and report validation perplexity ``exp(mean token loss)``.
This recipe does the same at any scale:

* **data**: a local text corpus (``tinyshakespeare``, ``shakespeare-plays`` under ``data.dir`` or
  ``$CHTORCH_DATA``, or any ``.txt`` / ``.txt.gz`` path), or OpenWebText / C4 from Hugging Face
  ``datasets`` when it is installed and the network allows. Text is split contiguously (the last
  ``data.val_fraction`` is validation), or by documents for Hugging Face corpora;
* **tokenizer**: a file the user gives (``data.tokenizer: path``), or trained on the training text —
  ``bpe`` (byte-level BPE with ``tokenizers``) or ``char`` (one token per character, for tiny runs) —
  and saved in the run directory (``tokenizer/``), reloaded on resume;
* **batches**: ``data.batch_size`` random windows of ``data.seq_len`` tokens per step, drawn with a
  generator derived from ``(seed, step)`` (exact resume); an epoch is ``data.steps_per_epoch``
  steps followed by an evaluation;
* **model**: :class:`chtorch.models.LlamaLM` (``model.size``: the paper's ``60m``, ``130m``,
  ``1b``, or CPU-sized ``tiny`` / ``small``; any field can be overridden);
* **evaluation**: ``val_loss`` (mean next-token cross-entropy over every validation token, each
  predicted once) and ``val_ppl = exp(val_loss)``, the primary metric (lower is better);
* **percolation couplings** (docs/decisions.md, "percolation" and "q/k percolation with RoPE"): q/k rows and gate/up
rows are
  alive only together; ``v_proj → o_proj`` and ``gate_proj|up_proj → down_proj`` are chains.
  ``model.per_head_sparsity`` budgets, removes and regrows q/k/v rows per attention head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chtorch.config import (
    ConfigError,
    model_schema,
    model_values,
    setting,
)
from chtorch.data import (
    CharTokenizer,
    SequentialWindows,
    load_corpus,
    load_tokenizer,
    split_documents,
    tokenize_corpus,
    train_bpe,
)
from chtorch.data.text import load_hf_text, random_windows
from chtorch.dst import Coupling, infer_couplings
from chtorch.models import LlamaLM, causal_lm_loss, paper_llama_config
from chtorch.models.llama import PAPER_CONFIGS, LlamaConfig
from chtorch.recipes.base import Recipe, RecipeSpec, register_recipe_spec
from chtorch.recipes.common import PER_HEAD_SPARSITY, cached_tokenizer, run_dir
from chtorch.rng import make_generator

__all__ = ["LMDataConfig", "LlamaModelConfig", "LanguageModeling", "split_text"]

_HF_CORPORA = ("openwebtext", "c4")


@dataclass
class LMDataConfig:
    """A text corpus, its tokenizer and the batching of a token stream (paper Table 6)."""

    name: str = setting(
        "tinyshakespeare",
        "corpus: tinyshakespeare, shakespeare-plays, a .txt/.txt.gz path, or openwebtext / c4 (Hugging Face datasets)",
    )
    dir: str | None = setting(None, "data root holding the corpus (default: $CHTORCH_DATA, then ~/.cache/chtorch)")
    verify: bool = setting(True, "verify the corpus checksum before reading (named corpora)")
    max_documents: int = setting(100000, "Hugging Face corpora: documents read (streamed)", min=2)
    tokenizer: str = setting(
        "bpe",
        "bpe (trained on the training text), char (one token per character), or a path to a tokenizer file/directory",
    )
    vocab_size: int = setting(8192, "BPE vocabulary size (special tokens included; the paper: 32000 t5-base)", min=8)
    val_fraction: float = setting(
        0.1,
        "fraction of the text held out for validation (the paper: 5% of OpenWebText)",
        min=0.0,
        max=1.0,
        min_open=True,
        max_open=True,
    )
    seq_len: int = setting(256, "tokens per training window (the paper: 256)", min=1)
    batch_size: int = setting(32, "windows per optimizer step (the paper: 512)", min=1)
    steps_per_epoch: int = setting(100, "optimizer steps between evaluations", min=1)
    eval_batch_size: int = setting(32, "windows per evaluation batch", min=1)
    eval_tokens: int | None = setting(None, "evaluate on only the first N validation tokens (default: all)", min=2)


#: The ``model`` section of LLaMA: a named size (:data:`chtorch.models.llama.PAPER_CONFIGS`) whose
#: width, depth, heads and SwiGLU width :class:`~chtorch.models.LlamaConfig` fields may override.
LlamaModelConfig = model_schema(
    "llama",
    LlamaConfig,
    doc="A LLaMA-style decoder (RMSNorm, RoPE, SwiGLU); ``size`` picks the paper's config (Table 6).",
    before=[
        (
            "size",
            str,
            setting("60m", "60m, 130m, 1b (the paper), tiny or small (CPU-sized)", choices=tuple(PAPER_CONFIGS)),
        )
    ],
    exclude=("vocab_size", "max_seq_len", "rms_norm_eps", "rope_theta", "initializer_range"),
    overrides={
        "d_model": "override the size's width",
        "n_layers": "override the size's depth",
        "n_heads": "override the size's attention heads",
        "d_ff": "override the size's SwiGLU width",
    },
    extra=[
        PER_HEAD_SPARSITY,
    ],
)


# The official LLaMA code (docs/decisions.md) is the family's default, for every method: the model's own
# initialisation (not SWI); soft removal with T linear 1 -> 9 (its README/script); top-k CH regrowth even
# for its "soft" methods; no percolation (the README and script commands do not pass --chain_removal);
# CHT's early-stop flag is never set there; topology updates run through T_end (`self.step <= self.T_end`, where the
# MLP/Transformer code stops before it). The paper's text (soft regrowth, percolation) is one override away:
# sparsity.options: {regrowth_selection: soft, percolation: true}.
LLAMA_CODE_DEFAULTS = {
    "weight_init": "keep",
    "temperature_schedule": "linear",
    "temperature_start": 1.0,
    "temperature_end": 9.0,
    "regrowth_selection": "topk",
    "percolation": False,
    "early_stop": None,
    "final_update": "at_t_end",
}


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Contiguous split of ``text``: the last ``val_fraction`` (cut at a line start when there is one
    nearby) is validation, the rest training, so no validation window overlaps training text."""
    cut = int(round(len(text) * (1.0 - val_fraction)))
    if not 0 < cut < len(text):
        raise ValueError(f"a text of {len(text)} characters is too short to split with val_fraction={val_fraction}")
    newline = text.rfind("\n", 0, cut)
    if newline > 0 and cut - newline < 10000:
        cut = newline + 1
    return text[:cut], text[cut:]


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters at line ends (for parallel encoding; BPE
    pre-tokenization splits at whitespace, so cutting after a newline changes no token)."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", min(len(text), start + size))
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


class LanguageModeling(Recipe):
    """Causal language modelling; metrics ``train_loss``, ``train_ppl``, ``val_loss``, ``val_ppl``."""

    name = "lm"
    primary_metric = "val_ppl"
    higher_is_better = False

    # -- data -------------------------------------------------------------------------------------
    def _texts(self) -> tuple[list[str], list[str]]:
        """(training documents, validation documents)."""
        cfg = self.config.data
        if cfg.name in _HF_CORPORA:
            try:
                import datasets  # noqa: F401
            except ImportError:
                raise ConfigError(
                    f"data.name={cfg.name} comes from Hugging Face datasets, which is not installed: "
                    "pip install datasets (or give a local .txt file)",
                    "data.name",
                ) from None
            # Streamed from the Hugging Face cache, or downloaded when the network allows.
            docs = list(load_hf_text(cfg.name, "train", max_documents=cfg.max_documents))
            return split_documents(docs, cfg.val_fraction, seed=self.config.run.seed)

        text = load_corpus(cfg.name, cfg.dir, verify=cfg.verify)
        train, val = split_text(text, cfg.val_fraction)
        return [train], [val]

    def _tokenizer(self, train_docs: list[str], all_docs: list[str]) -> Any:
        cfg = self.config.data
        kind = cfg.tokenizer
        if kind not in ("bpe", "char"):
            return load_tokenizer(kind)
        meta = {
            "kind": kind,
            "corpus": cfg.name,
            "val_fraction": cfg.val_fraction,
            "vocab_size": cfg.vocab_size if kind == "bpe" else None,
        }
        save = bool(getattr(self, "is_main", True))  # under torchrun only rank 0 writes the run directory
        if kind == "char":
            # The alphabet of the whole corpus, so that validation text has no <unk>.
            return cached_tokenizer(
                run_dir(self.config), "tokenizer", meta, lambda: CharTokenizer.train(all_docs), save=save
            )
        texts = [piece for doc in train_docs for piece in _chunks(doc)]
        return cached_tokenizer(
            run_dir(self.config),
            "tokenizer",
            meta,
            lambda: train_bpe(texts, cfg.vocab_size, kind="bytelevel"),
            save=save,
        )

    def _encode(self, docs: list[str]) -> torch.Tensor:
        if len(docs) == 1:  # one contiguous text: no document separators
            return tokenize_corpus(_chunks(docs[0]), self.tokenizer, eos_between=False)
        return tokenize_corpus(docs, self.tokenizer, eos_between=True)

    def setup(self) -> None:
        cfg = self.config.data
        train_docs, val_docs = self._texts()
        self.tokenizer = self._tokenizer(train_docs, train_docs + val_docs)
        self.train_tokens = self._encode(train_docs)
        self.val_tokens = self._encode(val_docs)
        if cfg.eval_tokens is not None:
            self.val_tokens = self.val_tokens[: cfg.eval_tokens]
        for split, tokens in (("training", self.train_tokens), ("validation", self.val_tokens)):
            if len(tokens) < cfg.seq_len + 1:
                raise ConfigError(
                    f"the {split} text has {len(tokens)} tokens, fewer than data.seq_len + 1 = "
                    f"{cfg.seq_len + 1}: lower data.seq_len or use more text",
                    "data.seq_len",
                )

    # -- model ------------------------------------------------------------------------------------
    def llama_config(self) -> Any:
        values = model_values(self.config.model)
        try:
            return paper_llama_config(
                self.config.model.size,
                vocab_size=self.tokenizer.vocab_size,
                max_seq_len=self.config.data.seq_len,
                **values,
            )
        except ValueError as exc:
            raise ConfigError(f"model: {exc}", "model") from None

    def build_model(self) -> nn.Module:
        return LlamaLM(self.llama_config()).to(self.device)

    def model_dim(self) -> int | None:
        return self.llama_config().d_model

    def couplings(self, model: nn.Module, layer_names: list[str]) -> list[Coupling] | None:
        """q/k and gate/up rows; v→o and gate|up→down chains (the LLaMA code's ``qk_chain_removal`` /
        ``chain_removal``), restricted to the selected layers."""
        return infer_couplings(model, layer_names)

    def sparsity_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = dict(options)
        if self.config.model.per_head_sparsity and not options.get("head_groups"):
            heads = self.llama_config().n_heads
            options["head_groups"] = {"*.q_proj": heads, "*.k_proj": heads, "*.v_proj": heads}
        return options

    # -- training ---------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        # batches: data.steps_per_epoch optimizer steps of train.grad_accum micro-batches each
        return self.config.data.steps_per_epoch * self.config.train.grad_accum

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        cfg = self.config.data
        per_epoch = self.steps_per_epoch
        for index in range(start, per_epoch):
            step = epoch * per_epoch + index
            g = make_generator(self.config.run.seed, "lm-batch", step)
            x, y = random_windows(self.train_tokens, cfg.seq_len, cfg.batch_size, g)
            yield x.to(self.device), y.to(self.device)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        loss = causal_lm_loss(model(x), y)
        n = y.numel()
        return loss, {"loss_sum": loss.detach() * n, "tokens": n}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(1.0, float(sums.get("tokens", 0)))
        loss = float(sums.get("loss_sum", 0.0)) / n
        return {"train_loss": loss, "train_ppl": math.exp(min(loss, 50.0))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean cross-entropy over every validation token (each predicted once) and its exp."""
        import torch.nn.functional as F

        cfg = self.config.data
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for x, y in SequentialWindows(self.val_tokens, cfg.seq_len, cfg.eval_batch_size):
            x, y = x.to(self.device), y.to(self.device)
            logits = model(x)
            total += float(F.cross_entropy(logits.float().flatten(0, -2), y.flatten(), reduction="sum"))
            count += y.numel()
        model.train(was_training)
        loss = total / max(1, count)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    def export_chains(self, model: nn.Module, layer_names: list[str]) -> tuple[list[list[str]], Any]:
        """No plain chains: the SwiGLU feed-forwards are gated blocks, compacted by
        :func:`chtorch.compaction.compact_gated`."""
        return [], None

    def example_input(self) -> Any:
        """The first validation batch: ``data.eval_batch_size`` windows of ``data.seq_len`` tokens."""
        cfg = self.config.data
        x, _ = next(iter(SequentialWindows(self.val_tokens, cfg.seq_len, cfg.eval_batch_size)))
        return x.to(self.device)

    def describe(self) -> dict[str, Any]:
        cfg = self.config.data
        return {
            "corpus": cfg.name,
            "tokenizer": cfg.tokenizer,
            "vocab_size": self.tokenizer.vocab_size,
            "train_tokens": int(len(self.train_tokens)),
            "val_tokens": int(len(self.val_tokens)),
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
        }


register_recipe_spec(
    RecipeSpec(
        LanguageModeling,
        LMDataConfig,
        {"llama": LlamaModelConfig},
        export_classes={"LlamaLM": (LlamaLM, LlamaConfig)},
        # The LLaMA code also skips the optimizer step of an update iteration (a training-loop choice, so not part
        # of LLAMA_CODE_DEFAULTS, which users hand to the HF callback; docs/decisions.md).
        sparsity_defaults={**LLAMA_CODE_DEFAULTS, "skip_step_on_update": True},
    )
)
