"""`chtorch export` on a translation and an LM run: the feed-forwards are compacted with identical
outputs, attention is accounted for in one line, the table names the batch it measured, and the
export loads back (tiny runs of tests/train/conftest.py's configs)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")

from chtorch.cli import main  # noqa: E402
from chtorch.config import build_config  # noqa: E402
from chtorch.train import train  # noqa: E402
from chtorch.train.export import _model_from_checkpoint, load_exported  # noqa: E402
from train.conftest import LEXICON, VERSE, _llama_raw, _transformer_raw  # noqa: E402


def _corpus(root: Path) -> Path:
    rng = random.Random(0)
    words = sorted(LEXICON)
    for split, n in (("train", 160), ("val", 16), ("test", 8)):
        sentences = [[rng.choice(words) for _ in range(rng.randint(2, 6))] for _ in range(n)]
        (root / f"{split}.en").write_text("\n".join(" ".join(s) for s in sentences) + "\n", encoding="utf-8")
        (root / f"{split}.de").write_text(
            "\n".join(" ".join(LEXICON[w] for w in s) for s in sentences) + "\n", encoding="utf-8"
        )
    return root


@pytest.fixture(scope="module", params=["lm", "translation"])
def trained(request, tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    if request.param == "lm":
        text = root / "verse.txt"
        text.write_text(VERSE * 12, encoding="utf-8")
        raw = _llama_raw(text, train={"epochs": 2})
    else:
        pytest.importorskip("tokenizers")
        pytest.importorskip("sacrebleu")
        raw = _transformer_raw(_corpus(root), train={"epochs": 2})
    result = train(build_config(raw), root / "run", out=io.StringIO())
    assert result.finished
    return request.param, result.run_dir


def test_export_compacts_feed_forwards_reports_the_rest_and_loads_back(trained, capsys, tmp_path) -> None:
    recipe, run_dir = trained
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run_dir), "--out", str(out), "--sparse"]) == 0
    stdout = capsys.readouterr().out
    assert "measured on one evaluation batch:" in stdout and "| latency (median) |" in stdout
    attention = [line for line in stdout.splitlines() if line.strip().startswith("attention (")]
    assert len(attention) == 1 and "not compacted" in attention[0]
    _, original, _ = _model_from_checkpoint(run_dir)
    exported = load_exported(out)
    ffn = ("mlp.gate_proj", "mlp.down_proj") if recipe == "lm" else ("ffn.w_1", "ffn.w_2")
    hidden_before = sum(m.out_features for n, m in original.named_modules() if n.endswith(ffn[0]))
    shapes = {
        n: tuple(map(int, line.split(":")[1].split(" x ")))
        for line in stdout.splitlines()
        if (n := line.strip().split(":")[0]).endswith(ffn)
    }
    assert shapes, stdout
    hidden_after = sum(rows for n, (rows, _) in shapes.items() if n.endswith(ffn[0]))
    assert hidden_after < hidden_before  # percolation at 90% sparsity freed feed-forward neurons
    g = torch.Generator().manual_seed(0)
    if recipe == "lm":
        args = (torch.randint(0, original.config.vocab_size, (2, 16), generator=g),)
    else:
        vocab = original.config.src_vocab
        args = (torch.randint(4, vocab, (2, 7), generator=g), torch.randint(4, vocab, (2, 5), generator=g))
    with torch.no_grad():
        torch.testing.assert_close(exported(*args), original(*args), rtol=1e-4, atol=1e-4)


def test_export_reads_moved_data_from_set_data_dir(capsys, tmp_path) -> None:
    """The missing-data error says `--set data.dir=`; export accepts it (and nothing that changes the model)."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("sacrebleu")
    (tmp_path / "corpus").mkdir()
    corpus = _corpus(tmp_path / "corpus")
    result = train(build_config(_transformer_raw(corpus, train={"epochs": 1})), tmp_path / "run", out=io.StringIO())
    moved = corpus.rename(tmp_path / "moved")
    assert main(["export", str(result.run_dir)]) == 2
    assert "--set data.dir=" in capsys.readouterr().err
    assert main(["export", str(result.run_dir), "--set", f"data.dir={moved}"]) == 0
    assert (result.run_dir / "compact.safetensors").is_file()
    assert main(["export", str(result.run_dir), "--set", "model.d_model=8"]) == 2
    assert "cannot change in `chtorch export`" in capsys.readouterr().err
