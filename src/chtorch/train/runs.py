"""The entry points of a run: :func:`train` starts one in a new directory, :func:`resume` continues
one from its checkpoint with exactly the configuration it was started with."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from chtorch.config import Config, ConfigError, apply_overrides, build_config, parse_override
from chtorch.train import distributed as ddp
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from chtorch.train.lifecycle import RESUME_OVERRIDABLE, RunResult, new_run_dir
from chtorch.train.trainer import Trainer

__all__ = ["train", "resume"]


def train(
    config: Config,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    out: TextIO | None = None,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
) -> RunResult:
    """Train ``config`` in ``run_dir`` (default ``config.run.dir``, else ``runs/<name>-<time>``).
    A directory that already holds a checkpoint is refused: resume it or pick another."""
    config = dataclasses.replace(config, run=dataclasses.replace(config.run))
    ctx = ddp.init_distributed(config.run.device)
    decision: tuple[str, str | None] | None = None
    if ctx.is_main:  # rank 0 names the directory (a time stamp) and the others follow
        target = Path(run_dir) if run_dir is not None else (Path(config.run.dir) if config.run.dir else new_run_dir(config))
        error = None
        if (target / CHECKPOINT_NAME).exists():
            error = (
                f"{target} already holds a run (checkpoint.pt); continue it with `chtorch train --resume {target}` "
                "or choose another --out directory"
            )
        decision = (str(target.resolve()), error)
    agreed = ctx.broadcast(decision)
    assert agreed is not None  # rank 0 always decides
    target_name, error = agreed
    if error is not None:
        raise ConfigError(error, "run.dir")
    config.run.dir = target_name
    return Trainer(config, out=out, callbacks=callbacks).fit()


def resume(
    run_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    out: TextIO | None = None,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
) -> RunResult:
    """Continue the run in ``run_dir`` from its checkpoint with the configuration it was started
    with. ``overrides`` may change only :data:`RESUME_OVERRIDABLE` keys (device, data location,
    logging), so the continuation computes exactly what the uninterrupted run would have."""
    path = Path(run_dir)
    run_dir = path if path.is_dir() else path.parent
    state = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
    for text in overrides:
        parts, _ = parse_override(text)
        key = ".".join(parts)
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(
                f"--set {key} cannot change on --resume: a resumed run continues its saved configuration exactly. "
                f"Changeable keys: {', '.join(sorted(RESUME_OVERRIDABLE))}; to change anything else start a new run "
                f"(e.g. chtorch train {run_dir / 'config.yaml'} --set {text})",
                key,
            )
    try:
        config = build_config(apply_overrides(state["config"], overrides))
    except ConfigError as exc:
        raise CheckpointError(f"the configuration stored in {run_dir} is no longer valid: {exc}") from None
    config.run.dir = str(run_dir.resolve())
    return Trainer(config, resume_state=state, out=out, callbacks=callbacks).fit()
