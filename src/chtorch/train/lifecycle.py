"""The life of a run outside the loop: its directory, what ``--resume`` may change, the check that
a checkpoint belongs to its run, the result, and the errors a run reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import chtorch
from chtorch.config import Config, ConfigError
from chtorch.data import DataError
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError

__all__ = [
    "RESUME_OVERRIDABLE",
    "SUMMARY_NAME",
    "TrainingError",
    "RunResult",
    "new_run_dir",
    "settings_errors",
    "launch_hint",
    "chtorch_version",
    "check_same_run",
    "nonfinite_error",
    "interrupted_message",
]

#: Keys that ``--resume`` may change: they do not affect what is computed.
RESUME_OVERRIDABLE = frozenset(
    {
        "run.device",
        "run.threads",
        "run.loggers",
        "data.dir",
        "data.download",
        "data.verify",
        "data.eval_batch_size",
        "train.progress",
        "train.plots",
        "train.report",
        "train.tensorboard",
        "train.checkpoint",
        "train.max_nonfinite",
    }
)

SUMMARY_NAME = "summary.json"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""


@dataclasses.dataclass
class RunResult:
    """What a run produced: its directory, the last epoch's record, and whether it completed."""

    run_dir: Path
    record: dict[str, Any]
    finished: bool
    interrupted: bool
    epochs: int
    steps: int
    primary_metric: str
    summary: dict[str, Any]

    @property
    def value(self) -> float | None:
        return self.record.get(self.primary_metric)


def new_run_dir(config: Config, base: str | os.PathLike[str] = "runs") -> Path:
    """``base/<name>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... when taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{config.run.name}-{stamp}"
    n = 2
    while path.exists():
        path = Path(base) / f"{config.run.name}-{stamp}-{n}"
        n += 1
    return path


@contextlib.contextmanager
def settings_errors(section: str) -> Iterator[None]:
    """A ValueError from building the data or model is a setting the schema could not check (e.g.
    ``model.hidden=[32, -4]``): report it as a :class:`ConfigError` of ``section``. Data-file errors
    keep their own type and message."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"the {section} settings ({section}.* in the config) do not work: {exc}", section) from None


def launch_hint(world_size: int) -> str:
    if world_size <= 1:
        return "a plain `chtorch train --resume RUN_DIR`, without torchrun"
    return (
        f"`torchrun --nproc_per_node {world_size} -m chtorch.cli train "
        f"--resume RUN_DIR` (over all nodes: {world_size} processes)"
    )


def chtorch_version() -> str:
    return chtorch.__version__


def _flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {prefix: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and name.count(".") < 1:  # sections; option dicts compare whole
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def check_same_run(run_dir: Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint that belongs to another run than ``run_dir/config.yaml`` (e.g. a
    checkpoint.pt copied over from another run): resuming it would continue that other run — another
    model or sparsity — and cut this run's metrics log at that run's offset."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        from chtorch.config.safe_yaml import safe_load_file

        saved = safe_load_file(path)
    except Exception as exc:  # an unreadable config.yaml is not what a resume needs; say so
        raise CheckpointError(
            f"{path} is unreadable ({type(exc).__name__}: {exc}); the checkpoint holds the "
            "configuration, so move config.yaml away and resume again"
        ) from None
    if not isinstance(saved, dict):
        return
    a, b = _flatten(state.get("config", {})), _flatten(saved)
    ignore = RESUME_OVERRIDABLE | {"run.dir"}
    differ = sorted(k for k in a.keys() | b.keys() if k not in ignore and a.get(k) != b.get(k))
    if differ:
        shown = "; ".join(f"{k}: checkpoint {a.get(k)!r}, config.yaml {b.get(k)!r}" for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise CheckpointError(
            f"{run_dir / CHECKPOINT_NAME} is from another run than {path} ({shown}{more}): it holds another model or "
            "sparsity. Put back this run's own checkpoint, or resume "
            "the run the checkpoint came from in its own directory"
        )


def nonfinite_error(run_dir: Path, count: int, limit: int) -> TrainingError:
    """The error that stops a run after more than ``limit`` steps with a NaN/inf loss."""
    if (run_dir / CHECKPOINT_NAME).is_file():
        kept = f"the checkpoint in {run_dir} (the last finished epoch) is intact"
    else:
        kept = f"no epoch finished, so {run_dir} holds no checkpoint"
    return TrainingError(
        f"the loss was NaN/inf in {count} steps (train.max_nonfinite={limit}); "
        f"training stopped and {kept}. Lower optim.lr or set optim.grad_clip and start a new run"
    )


def interrupted_message(
    run_dir: Path, epoch: int, epochs: int, step: int, total_steps: int, world_size: int, distributed: bool
) -> str:
    """What an interrupted run prints: where it stopped and the command that resumes it."""
    resume_cmd = f"chtorch train --resume {run_dir}"
    if distributed:
        resume_cmd = f"torchrun --nproc_per_node {world_size} -m chtorch.cli train --resume {run_dir}"
    return (
        f"chtorch: interrupted at epoch {epoch + 1}/{epochs}, step "
        f"{step}/{total_steps}; checkpoint saved.\nresume with:  {resume_cmd}"
    )
