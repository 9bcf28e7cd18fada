"""``chtorch export RUN_DIR``: cut the dead neurons out of a trained sparse model and save it.

Percolation leaves hidden neurons without links (the paper's ANP; Zhang et al., NeurIPS 2025,
arXiv:2501.19107, App. F); :func:`chtorch.compaction.compact` removes them without changing the outputs.
This module only connects that to a run directory: it rebuilds the run's model from its checkpoint,
compacts it along the recipe's chains, checks the outputs on one evaluation batch, and saves it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chtorch.config import build_config
from chtorch.recipes.base import get_recipe
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_training_checkpoint

__all__ = ["export_run"]


def _model_from_checkpoint(run_dir: Path) -> tuple[Any, nn.Module, list[str]]:
    state = load_training_checkpoint(run_dir / CHECKPOINT_NAME)
    config = build_config(state["config"])
    config.run.dir = str(run_dir.resolve())
    recipe = get_recipe(config.run.recipe)(config, torch.device("cpu"))
    recipe.setup()
    torch.manual_seed(config.run.seed)
    model = recipe.build_model()
    sparse = []
    for key, value in state["model"].items():
        if key.endswith(".weight_mask"):
            name = key[: -len(".weight_mask")]
            model.get_submodule(name).register_buffer("weight_mask", value.clone(), persistent=True)
            sparse.append(name)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint in {run_dir} does not fit its own config's model: {exc}") from None
    return recipe, model.eval(), sparse


def export_run(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, sparse_storage: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Compact the model of ``run_dir`` and save it (a whole module: load with
    ``torch.load(path, weights_only=False)``) to ``out`` (default ``run_dir/compact.pt``).
    With ``sparse_storage`` the remaining sparse layers are also stored in CSR for inference
    (:func:`chtorch.compaction.to_sparse_inference`). Returns the path and a summary (parameters, FLOPs,
    measured latency against the original model, largest output difference, and the Markdown table
    of :class:`chtorch.compaction.ExportReport`)."""
    from chtorch.compaction import compact, export_report, to_sparse_inference

    run_dir = Path(run_dir)
    recipe, model, sparse = _model_from_checkpoint(run_dir)
    chains, activation = recipe.export_chains(model, sparse)
    compacted = compact(model, chains, activation)
    if sparse_storage:
        compacted = to_sparse_inference(compacted, inplace=True)
    report = export_report(model, compacted, recipe.example_input(), repeats=20, warmup=2)
    path = Path(out) if out is not None else run_dir / "compact.pt"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(compacted, tmp)
    os.replace(tmp, path)
    shapes = {
        name: (compacted.get_submodule(name).out_features, compacted.get_submodule(name).in_features) for chain in chains for name in chain
    }
    summary = {
        "shapes": shapes,
        "params_before": report.original.params_stored,
        "params_after": report.exported.params_stored,
        "flops_before": report.original.flops,
        "flops_after": report.exported.flops,
        "max_abs_diff": report.max_abs_diff,
        "latency_before": report.original.latency_s,
        "latency_after": report.exported.latency_s,
        "table": report.to_markdown(),
    }
    return path, summary
