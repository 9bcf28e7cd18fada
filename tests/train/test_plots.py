"""Figures of a tiny LLaMA (28 sparse layers) and a tiny Transformer (32 sparse layers): every
figure renders with no matplotlib warning, every layer is drawn (no silent cap), layers are labelled
by block and role, metrics of different kinds get their own panels, and report.md lists them all."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from chtorch.config import build_config  # noqa: E402
from chtorch.train import train  # noqa: E402
from chtorch.train.metrics import load_topology, read_metrics  # noqa: E402
from chtorch.train.plot_kit import layer_block, layer_label, layer_role, run_title  # noqa: E402
from chtorch.train.plots import HISTOGRAM_LAYERS, _families, adjacency_files, degree_matrix, make_plots  # noqa: E402
from chtorch.train.run_report import rebuild  # noqa: E402

RUN_FIGURES = ["curves.png", "topology.png", "updates.png", "degrees.png"]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.fixture(scope="module", params=["llama", "transformer"])
def trained_run(request, tmp_path_factory) -> Path:
    raw = request.getfixturevalue(f"{request.param}_raw")()
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    train(build_config(raw), run_dir, out=io.StringIO())
    return run_dir


def test_every_figure_renders_without_warnings_covers_every_layer_and_is_in_the_report(trained_run: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied" fails the test
        written, report, skipped = rebuild(trained_run)
    assert skipped is None
    names = list(load_topology(trained_run / "topology" / "init.npz")[0])
    assert len(names) >= 28
    expected = RUN_FIGURES + adjacency_files(names)
    assert sorted(p.name for p in written) == sorted(expected)
    for name in expected:
        width, height = _png_size(trained_run / name)
        assert width >= 400 and height >= 300, name  # no collapsed one-pixel strip
    # The per-layer heatmaps grow with the layer count, so 30 rows keep a readable height.
    assert _png_size(trained_run / "topology.png")[1] >= 100 * (3.0 + 0.17 * len(names))
    text = report.read_text(encoding="utf-8")
    for name in expected:
        assert f"]({name})" in text, name
    assert "<details>" in text  # 28+ adjacency images are folded
    assert (trained_run / "steps.csv").is_file() and (trained_run / "updates.csv").is_file()


def test_metric_families_keep_bleu_and_perplexity_apart(trained_run: Path) -> None:
    epochs = [r for r in read_metrics(trained_run) if r["kind"] == "epoch"]
    families = _families(epochs)
    assert list(families)[0] == "loss"
    assert "ppl" in families
    if "bleu" in families:  # the translation run
        assert families["bleu"] == ["test_bleu"] and families["ppl"] == ["val_ppl"]
    for keys in families.values():  # one metric per panel: every key of a panel measures the same thing
        assert len({k.partition("_")[2] for k in keys}) == 1


def test_layer_labels_by_block_and_role() -> None:
    assert layer_role("model.layers.3.mlp.gate_proj") == "gate"
    assert layer_role("decoder.layers.1.context_attn.q_proj") == "cross q"
    assert layer_role("encoder.layers.0.ffn.w_1") == "fc1"
    assert layer_role("layers.0") == "0"  # an MLP's layers have no role: the label keeps the whole name
    assert layer_block("decoder.layers.1.context_attn.q_proj") == "decoder.layers.1"
    assert layer_block("layers.2") is None  # an MLP layer is not a block
    assert layer_label("decoder.layers.1.context_attn.q_proj") == "dec 1 · cross q"
    assert layer_label("model.layers.3.self_attn.o_proj") == "3 · o"
    assert layer_label("layers.2") == "layers.2"


def test_run_title_names_run_method_and_sparsity() -> None:
    config = {
        "run": {"name": "r", "recipe": "lm"},
        "model": {"name": "llama"},
        "sparsity": {"method": "chtss", "sparsity": 0.9},
    }
    assert run_title(config, "x") == "r — chtss, sparsity 0.9 — lm / llama"
    assert "dense (fully connected)" in run_title({"sparsity": {"method": "dense"}}, "x")
    assert run_title({}, "fallback").startswith("fallback")


def test_degree_matrix_rows_are_percentages_per_degree() -> None:
    matrix, edges = degree_matrix([np.array([0, 1, 1, 3]), np.array([2, 2])])
    assert matrix.shape == (2, 4) and np.allclose(edges, [-0.5, 0.5, 1.5, 2.5, 3.5])
    assert np.allclose(matrix[0], [25, 50, 0, 25]) and np.allclose(matrix[1], [0, 0, 100, 0])
    wide, edges = degree_matrix([np.arange(200)], max_bins=50)
    assert wide.shape == (1, 50) and wide.sum() == pytest.approx(100.0)


def test_few_layers_get_histograms(tmp_path: Path, llama_raw) -> None:
    raw = llama_raw(model={"n_layers": 1}, train={"epochs": 1, "log_every": 0})
    run_dir = tmp_path / "run"
    train(build_config(raw), run_dir, out=io.StringIO())
    assert len(load_topology(run_dir / "topology" / "init.npz")[0]) <= HISTOGRAM_LAYERS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = {p.name for p in make_plots(run_dir)}
    assert set(RUN_FIGURES) <= written  # with no step records the LR panel uses the epoch records


def test_step_unit_runs_are_drawn_over_every_logged_step(trained_run: Path, monkeypatch) -> None:
    """LM and translation runs: the loss of every step record, the density at every update record,
    and a marker at every topology update, all placed at their optimizer step."""
    import chtorch.train.plots_steps as plots_steps

    drawn: dict[str, object] = {}

    def keep(fig, path):  # noqa: ANN001, ANN202
        drawn[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr(plots_steps, "save", keep)
    make_plots(trained_run)
    records = read_metrics(trained_run)
    steps = [r["step"] for r in records if r["kind"] == "step"]
    updates = [r["step"] for r in records if r["kind"] == "update" and not r.get("skipped")]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) > 2 * len(epochs) and len(updates) >= 3  # finer than the epochs
    loss_panel = drawn["curves.png"].axes[0]
    assert loss_panel.get_xlabel() == "optimizer step"
    assert list(loss_panel.lines[0].get_xdata()) == steps  # the training loss of every step record
    marked = {float(line.get_xdata()[0]) for line in loss_panel.lines[1:] if line.get_linestyle() == ":"}
    assert marked == {float(s) for s in updates}  # a marker at each topology update
    density_panel = drawn["topology.png"].axes[0]
    assert set(updates) <= set(density_panel.lines[0].get_xdata())  # the density at every update, not per epoch
