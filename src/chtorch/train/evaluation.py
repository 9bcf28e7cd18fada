"""``chtorch evaluate RUN_DIR``: score a trained (or interrupted) run again, with the current code and
evaluation options, without training.

The run's configuration comes from its verified ``checkpoint.pt``; ``--set`` may change only what
decides how the trained model is scored (the recipe's :attr:`~chtorch.recipes.base.Recipe.evaluation_keys`,
e.g. the translation recipe's ``data.replace_unk`` or ``data.beam_size``) and where it runs (device,
threads, data location). The weights are those the recipe reports its test metric from: the
translation recipe's best validation checkpoint (``best_model.pt``), else the run's last checkpoint.
The result goes to new files, ``evaluation-<name>.json`` (metrics, weights, options, versions) and
``evaluation-<name>.txt`` (one output per test example, e.g. the translations); the training records
(``metrics.jsonl``, ``summary.json``, ``test_translations.txt``, checkpoints) are never touched. A new
evaluation of the same name replaces the earlier one.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import chtorch
from chtorch._io import atomic_write_text
from chtorch.config import ConfigError, apply_overrides, build_config, parse_override
from chtorch.recipes.base import get_recipe
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_training_checkpoint
from chtorch.train.distributed import resolve_device
from chtorch.train.run_files import verify_result_files
from chtorch.train.rundir import check_device

__all__ = ["Evaluation", "evaluate_run", "evaluation_name", "load_weights", "COMMON_EVALUATION_KEYS"]

#: Keys every recipe's evaluation may change: where it runs and where its data is.
COMMON_EVALUATION_KEYS = frozenset(
    {"run.device", "run.threads", "data.dir", "data.download", "data.verify", "data.eval_batch_size"}
)
#: Of those, the keys that say only where it runs: left out of an evaluation's default name.
_PLACEMENT_KEYS = COMMON_EVALUATION_KEYS - {"data.eval_batch_size"}
_NAME = re.compile(r"[A-Za-z0-9._=+-]{1,100}")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_run` measured: ``metrics`` of the ``weights`` (in words), and the files written."""

    metrics: dict[str, float]
    weights: str
    path: Path
    outputs: Path | None


def evaluation_name(overrides: Sequence[str]) -> str:
    """The default name of an evaluation: the overrides joined by ``+`` (``data.`` dropped, other
    characters than letters, digits and ``._=+-`` as ``_``), those that only place the run (device,
    threads, data location) left out; ``default`` when none is left."""
    kept = [o.strip() for o in overrides if ".".join(parse_override(o)[0]) not in _PLACEMENT_KEYS]
    if not kept:
        return "default"
    text = "+".join(o.removeprefix("data.") for o in kept)
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)[:100]


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load a trained ``state_dict`` into a freshly built ``model``: a sparse layer's ``weight_mask``
    buffer is registered first (a new model has none). Returns the sparse layers' names; raises
    :class:`CheckpointError` naming ``source`` when the weights do not fit the model."""
    sparse = []
    for key, value in weights.items():
        if key.endswith(".weight_mask"):
            name = key[: -len(".weight_mask")]
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(f"{source} has a mask for {name!r}, which the model lacks") from None
            layer.register_buffer("weight_mask", value.clone(), persistent=True)
            sparse.append(name)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{source} does not fit its own config's model: {detail}") from None
    return sparse


def _checked_overrides(recipe_name: str, overrides: Sequence[str]) -> None:
    allowed = COMMON_EVALUATION_KEYS | get_recipe(recipe_name).evaluation_keys
    for text in overrides:
        parts, _ = parse_override(text)
        key = ".".join(parts)
        if key not in allowed:
            raise ConfigError(
                f"--set {key} cannot change in `chtorch evaluate`: it would score another model than the run "
                f"trained. The {recipe_name} recipe's evaluation may change: {', '.join(sorted(allowed))}; to "
                "change anything else train a new run",
                key,
            )


def evaluate_run(run_dir: str | os.PathLike[str], overrides: Sequence[str] = (), name: str | None = None) -> Evaluation:
    """Score the run in ``run_dir`` with the current code and ``overrides`` (module docstring); write
    ``evaluation-<name>.json`` (and ``.txt``) in it. ``name`` defaults to :func:`evaluation_name`."""
    started = time.perf_counter()
    folder = Path(run_dir)
    name = evaluation_name(overrides) if name is None else name
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r}: use 1 to 100 letters, digits or ._=+- (it names evaluation-<name>.json)")
    if not (folder / CHECKPOINT_NAME).is_file():
        raise CheckpointError(f"{folder} holds no {CHECKPOINT_NAME}: is it a chtorch run directory?")
    state = load_training_checkpoint(folder / CHECKPOINT_NAME)
    try:
        saved = build_config(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"the configuration stored in {folder} is no longer valid: {exc}") from None
    _checked_overrides(saved.run.recipe, overrides)
    config = build_config(apply_overrides(state["config"], overrides)) if overrides else saved
    config.run.dir = str(folder.resolve())
    check_device(config.run.device)
    device = resolve_device(config.run.device)
    threads = torch.get_num_threads()
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    try:
        recipe = get_recipe(config.run.recipe)(config, device)
        recipe.setup()
        verify_result_files(folder.resolve(), state.get("files"), recipe.result_files(), lambda p: False)
        with torch.random.fork_rng(devices=[]):  # the weights are loaded; leave the caller's RNG alone
            model = recipe.build_model()
        try:
            chosen = recipe.evaluation_weights()
        except FileNotFoundError as exc:
            raise CheckpointError(str(exc)) from None
        if chosen is None:
            chosen = (
                state["model"],
                f"last checkpoint {CHECKPOINT_NAME} (epoch {state['epoch']}, step {state['step']})",
            )
        weights, what = chosen
        load_weights(model, weights, f"the {what} of {folder}")
        metrics, outputs = recipe.score(model.eval())
    finally:
        torch.set_num_threads(threads)
    path = folder / f"evaluation-{name}.json"
    lines_path = folder / f"evaluation-{name}.txt" if outputs else None
    record = {
        "name": name,
        "metrics": metrics,
        "weights": what,
        "overrides": list(overrides),
        "run_finished": bool(state.get("finished", False)),
        "run_step": int(state["step"]),
        "device": str(device),
        "chtorch": chtorch.__version__,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 3),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "outputs": None if lines_path is None else lines_path.name,
    }
    if lines_path is not None:
        atomic_write_text(lines_path, "".join(line.replace("\n", " ") + "\n" for line in outputs))
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return Evaluation(metrics, what, path, lines_path)
