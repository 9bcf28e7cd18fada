"""``chtorch export RUN_DIR``: cut the dead neurons out of a trained sparse model and save it without pickle.

Percolation leaves hidden neurons without links (the paper's ANP; Zhang et al., NeurIPS 2025,
arXiv:2501.19107, App. F); :func:`chtorch.compaction.compact` removes them without changing the outputs.
This module connects that to a run directory: it rebuilds the run's model from its (verified)
checkpoint, compacts it along the recipe's chains, checks the outputs on one evaluation batch, and
saves it as two files that load without running any pickled code:

* ``compact.safetensors``: every tensor of the compacted model's ``state_dict`` (safetensors format);
* ``compact.json``: the description — the model class (from an allow-list) and its config, the shape
  and kind of every linear layer after compaction, the tensors' dtypes and shapes, the SHA-256 of the
  safetensors file and of the description itself, and the export report.

:func:`load_exported` verifies both digests, rebuilds the model from the description and loads the
tensors with ``safetensors`` (no ``torch.load``). Needs the ``safetensors`` package (``chtorch[cli]``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import chtorch.recipes.builtin  # noqa: F401  (registers the built-in recipes)
from chtorch._io import atomic_write_bytes
from chtorch.compaction import (
    attention_notes,
    compact,
    compact_gated,
    export_report,
    find_gated_blocks,
    layer_links,
    to_sparse_inference,
)
from chtorch.config import ConfigError, apply_overrides, build_config, parse_override
from chtorch.recipes.base import export_model_classes, get_recipe
from chtorch.sparse import SparseInferenceLinear
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_training_checkpoint
from chtorch.train.evaluation import load_weights

__all__ = [
    "EXPORT_FORMAT",
    "ExportFileError",
    "export_run",
    "save_exported",
    "load_exported",
    "read_export_description",
]

EXPORT_FORMAT = "chtorch-compact-model"
#: What ``chtorch export --set`` may change: where the run's data is (the measurement batch comes from it).
EXPORT_KEYS = frozenset({"data.dir", "data.download", "data.verify"})
EXPORT_VERSION = 1
_MAX_DESCRIPTION_BYTES = 64 << 20


class ExportFileError(CheckpointError):
    """An exported model's files are missing, damaged, or do not describe a model chtorch can build."""


def _model_classes() -> dict[str, tuple[type[nn.Module], type]]:
    """The model classes an export may name (never a class taken from the file itself): those the
    registered recipes declare (:class:`chtorch.recipes.base.RecipeSpec`)."""
    return export_model_classes()


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ExportFileError(
            "exported models are stored as safetensors, which is not "
            "installed: pip install safetensors (or 'chtorch[cli]')"
        ) from None
    return safetensors.torch


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _description_digest(description: dict[str, Any]) -> str:
    body = {k: v for k, v in description.items() if k != "description_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _layer_entry(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, SparseInferenceLinear):
        return {
            "kind": "csr",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if type(module) is nn.Linear:
        return {
            "kind": "linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
            "weight_mask": hasattr(module, "weight_mask"),
        }
    return None


def _description_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_exported(
    model: nn.Module, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Save ``model`` (a chtorch model whose linear layers may be compacted or CSR) as
    ``path`` (safetensors) and ``path.with_suffix('.json')`` (the description); returns both paths.
    Both files are written atomically, the tensors first."""
    st = _safetensors()
    config = getattr(model, "config", None)
    name = type(model).__name__
    if name not in _model_classes() or not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ExportFileError(
            f"cannot describe a {name} for export: only "
            f"{', '.join(_model_classes())} (with their .config) are supported"
        )
    path = Path(path)
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    data = st.save(tensors, metadata={"format": EXPORT_FORMAT})
    description: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": {"class": name, "config": json.loads(json.dumps(dataclasses.asdict(config)))},
        "layers": {n: e for n, m in model.named_modules() if n and (e := _layer_entry(m)) is not None},
        "tensors": {
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in tensors.items()
        },
        "weights": {"file": path.name, "sha256": _sha256(data), "bytes": len(data)},
        **(extra or {}),
    }
    description = json.loads(json.dumps(description, default=str))  # exactly what the file will hold
    description["description_sha256"] = _description_digest(description)
    json_path = _description_path(path)
    for target in (path, json_path):
        _check_replaceable(target)
    atomic_write_bytes(path, data)
    atomic_write_bytes(json_path, (json.dumps(description, indent=2, default=str) + "\n").encode("utf-8"))
    return path, json_path


def _ours(path: Path) -> bool:
    """Whether ``path`` is a file an export wrote (a description or safetensors of :data:`EXPORT_FORMAT`)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
        if path.suffix == ".json":
            return json.loads(head.decode("utf-8")).get("format") == EXPORT_FORMAT
        size = int.from_bytes(head[:8], "little")
        header = json.loads(head[8 : 8 + size].decode("utf-8"))
        return header.get("__metadata__", {}).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def _check_replaceable(path: Path) -> None:
    """Refuse to replace a file that no export wrote (a run's ``summary.json`` beside ``--out summary.safetensors``)."""
    if path.is_symlink() or (path.exists() and not (path.is_file() and _ours(path))):
        raise ExportFileError(
            f"{path} exists and was not written by chtorch export; it would be replaced: choose another --out"
        )


def read_export_description(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified description of an export (``path``: the ``.safetensors`` or the ``.json``)."""
    path = Path(path)
    json_path = path if path.suffix == ".json" else _description_path(path)
    if not json_path.is_file():
        raise ExportFileError(
            f"no export description at {json_path}: an exported model is a .safetensors file with its .json beside it"
        )
    size = json_path.stat().st_size
    if size > _MAX_DESCRIPTION_BYTES:
        raise ExportFileError(f"{json_path} is {size} bytes: not an export description (those are a few kB)")
    try:
        description = json.loads(json_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ExportFileError(
            f"{json_path} is not a valid export description "
            f"({type(exc).__name__}: {str(exc)[:100]}); export the run again"
        ) from None
    if not isinstance(description, dict) or description.get("format") != EXPORT_FORMAT:
        raise ExportFileError(f"{json_path} is not a chtorch export description (format {EXPORT_FORMAT!r})")
    if description.get("version") != EXPORT_VERSION:
        raise ExportFileError(
            f"{json_path} has export version {description.get('version')!r}; this chtorch reads {EXPORT_VERSION}"
        )
    if description.get("description_sha256") != _description_digest(description):
        raise ExportFileError(
            f"{json_path} fails its SHA-256 check: it was changed after it was written; export the run again"
        )
    return description


def load_exported(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported model on the CPU, in eval mode, without ``torch.load`` or pickle.

    ``path``: the ``.safetensors`` file (or its ``.json``). Both files' SHA-256 digests are verified
    first; any mismatch, a missing file, or tensors that do not fit the description raise
    :class:`ExportFileError` (a :class:`~chtorch.train.checkpoint.CheckpointError`)."""
    st = _safetensors()
    path = Path(path)
    description = read_export_description(path)
    try:
        weights_path = (path if path.suffix != ".json" else path.with_suffix(".safetensors")).with_name(
            description["weights"]["file"]
        )
        expected = description["weights"]["sha256"]
        class_name, config_values = description["model"]["class"], description["model"]["config"]
        layers = description["layers"]
    except (KeyError, TypeError):
        raise ExportFileError(
            f"{_description_path(path)} lacks the weights, model or layers entry; export the run again"
        ) from None
    if not weights_path.is_file():
        raise ExportFileError(f"the tensors of this export are missing: {weights_path} not found")
    data = weights_path.read_bytes()
    if _sha256(data) != expected:
        raise ExportFileError(
            f"{weights_path} fails its SHA-256 check (expected {expected}, "
            f"found {_sha256(data)}): the file is damaged or from "
            "another export; export the run again"
        )
    classes = _model_classes()
    if class_name not in classes:
        raise ExportFileError(
            f"{_description_path(path)} names model class {class_name!r}; chtorch builds only {', '.join(classes)}"
        )
    model_cls, config_cls = classes[class_name]
    try:
        model = model_cls(config_cls(**config_values))
        for name, entry in layers.items():
            model.get_submodule(name)  # the layer must exist in the architecture
            _replace(model, name, _build_layer(entry))
        tensors = st.load(data)
        model.load_state_dict(tensors, strict=True)
    except ExportFileError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise ExportFileError(
            f"{weights_path} and its description do not make a model "
            f"({type(exc).__name__}: {str(exc)[:200]}); export the run again"
        ) from None
    return model.eval()


def _build_layer(entry: dict[str, Any]) -> nn.Module:
    n_in, n_out, bias = int(entry["in_features"]), int(entry["out_features"]), bool(entry["bias"])
    if not 0 <= n_in <= 1 << 24 or not 0 <= n_out <= 1 << 24:
        raise ValueError(f"layer size {n_out} x {n_in} is out of range")
    if entry["kind"] == "csr":
        return SparseInferenceLinear(
            torch.zeros(n_out, n_in), torch.zeros(n_out) if bias else None, torch.zeros(n_out, n_in, dtype=torch.bool)
        )
    if entry["kind"] != "linear":
        raise ValueError(f"unknown layer kind {entry['kind']!r}")
    layer = nn.Linear(n_in, n_out, bias=bias)
    if entry.get("weight_mask"):
        layer.register_buffer("weight_mask", torch.zeros(n_out, n_in, dtype=torch.bool), persistent=True)
    return layer


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _checked_export_overrides(overrides: Sequence[str]) -> None:
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in EXPORT_KEYS:
            raise ConfigError(
                f"--set {key} cannot change in `chtorch export`: the model is the run's as trained; export may "
                f"change only where the data is ({', '.join(sorted(EXPORT_KEYS))})",
                key,
            )


def _model_from_checkpoint(run_dir: Path, overrides: Sequence[str] = ()) -> tuple[Any, nn.Module, list[str]]:
    _checked_export_overrides(overrides)
    state = load_training_checkpoint(run_dir / CHECKPOINT_NAME)
    config = build_config(apply_overrides(state["config"], overrides))
    config.run.dir = str(run_dir.resolve())
    recipe = get_recipe(config.run.recipe)(config, torch.device("cpu"))
    recipe.setup()
    torch.manual_seed(config.run.seed)
    model = recipe.build_model()
    sparse = load_weights(model, state["model"], f"the checkpoint in {run_dir}")
    return recipe, model.eval(), sparse


def describe_batch(example: Any) -> str:
    """The measurement batch in words: the shape of each input tensor."""
    tensors = (
        list(example)
        if isinstance(example, tuple)
        else list(example.values())
        if isinstance(example, dict)
        else [example]
    )
    return ", ".join(" x ".join(str(d) for d in t.shape) + f" {str(t.dtype).removeprefix('torch.')}" for t in tensors)


def export_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    sparse_storage: bool = False,
    overrides: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """Compact the model of ``run_dir`` and save it to ``out`` (default ``run_dir/compact.safetensors``)
    with its description beside it (``.json``); load it with :func:`load_exported`.
    With ``sparse_storage`` the remaining sparse layers are also stored in CSR for inference
    (:func:`chtorch.compaction.to_sparse_inference`). Returns the path and a summary (parameters, FLOPs,
    measured latency against the original model, largest output difference, and the Markdown table
    of :class:`chtorch.compaction.ExportReport`), the batch it was measured on (``batch``) and one line
    per part that could not be compacted (``notes``). ``overrides`` (``data.dir=...``, :data:`EXPORT_KEYS`)
    say where the run's data is now, when it moved since training.

    What is compacted: the recipe's chains (an MLP's hidden layers, a Transformer's ``w_1 → w_2``
    feed-forwards) and every gated feed-forward (LLaMA's ``gate|up → down``,
    :func:`chtorch.compaction.compact_gated`); attention projections keep their size."""
    _safetensors()  # before the work, not after it
    run_dir = Path(run_dir)
    path = Path(out) if out is not None else run_dir / "compact.safetensors"
    if path.suffix != ".safetensors":
        raise ExportFileError(
            f"--out {path}: an exported model is a .safetensors file (its description goes beside it as .json)"
        )
    recipe, model, sparse = _model_from_checkpoint(run_dir, overrides)
    chains, activation = recipe.export_chains(model, sparse)
    compacted = compact(model, chains, activation) if chains else copy.deepcopy(model)
    gated = find_gated_blocks(compacted)
    compacted = compact_gated(compacted, gated, inplace=True)
    tail = "; stored in CSR where density <= 20%" if sparse_storage else "; --sparse stores them in CSR"
    notes = [note + tail for note in attention_notes(compacted)]
    if sparse_storage:
        compacted = to_sparse_inference(compacted, inplace=True)
    example = recipe.example_input()
    report = export_report(model, compacted, example, repeats=20, warmup=2)
    names = [name for chain in chains for name in chain] + [name for block in gated for name in block]
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        found = layer_links(compacted.get_submodule(name))
        assert found is not None, f"compaction keeps {name!r} a linear layer"
        shapes[name] = tuple(found[0].shape)
    summary = {
        "shapes": shapes,
        "notes": notes,
        "batch": describe_batch(example),
        "params_before": report.original.params_stored,
        "params_after": report.exported.params_stored,
        "flops_before": report.original.flops,
        "flops_after": report.exported.flops,
        "max_abs_diff": report.max_abs_diff,
        "latency_before": report.original.latency_s,
        "latency_after": report.exported.latency_s,
        "table": report.to_markdown(),
    }
    report_entry = {k: v for k, v in summary.items() if k not in ("table", "shapes")}
    save_exported(compacted, path, extra={"report": report_entry, "source": {"run": run_dir.name}})
    return path, summary
