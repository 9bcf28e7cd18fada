"""The entry points of a run: :func:`train` starts one in a new directory, :func:`resume` continues
one from its checkpoint with exactly the configuration it was started with."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from chtorch._io import sandbox
from chtorch.config import Config, ConfigError, apply_overrides, build_config, parse_override
from chtorch.train import distributed as ddp
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_training_checkpoint
from chtorch.train.lifecycle import RESUME_OVERRIDABLE, RunResult, new_run_dir
from chtorch.train.rundir import RunLock, check_device, check_out_dir
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
    check_device(config.run.device)
    ctx = ddp.init_distributed(config.run.device)
    decision: tuple[str, str | None] | None = None
    lock = RunLock(".")  # rank 0 locks the run directory; the others only follow
    if ctx.is_main:  # rank 0 names the directory (a time stamp) and the others follow
        target = (
            Path(run_dir) if run_dir is not None else (Path(config.run.dir) if config.run.dir else new_run_dir(config))
        )
        error = None
        if (target / CHECKPOINT_NAME).exists():
            error = (
                f"{target} already holds a run (checkpoint.pt); continue it with `chtorch train --resume {target}` "
                "or choose another --out directory"
            )
        else:
            try:
                check_out_dir(target)
                lock = RunLock(target, create=True).acquire()
            except ConfigError as exc:
                error = str(exc)
        decision = (str(target.resolve()), error)
    agreed = ctx.broadcast(decision)
    assert agreed is not None  # rank 0 always decides
    target_name, error = agreed
    if error is not None:
        raise ConfigError(error, "run.dir")
    config.run.dir = target_name
    try:
        with sandbox(target_name):  # no write of the run leaves its directory
            return Trainer(config, out=out, callbacks=callbacks).fit()
    finally:
        lock.release()


def resume(
    run_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    out: TextIO | None = None,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
) -> RunResult:
    """Continue the run in ``run_dir`` from its checkpoint with the configuration it was started
    with. ``overrides`` may change only :data:`RESUME_OVERRIDABLE` keys (device, data location,
    logging), so the continuation computes exactly what the uninterrupted run would have. A run
    that another process is training is refused (:class:`~chtorch.train.rundir.RunLock`)."""
    path = Path(run_dir)
    with RunLock(path if path.is_dir() else path.parent) if ddp.env_rank() == 0 else contextlib.nullcontext():
        return _resume(path, overrides, out=out, callbacks=callbacks)


def _resume(
    path: Path, overrides: Sequence[str], *, out: TextIO | None, callbacks: Sequence[Callable[[Trainer], None]]
) -> RunResult:
    run_dir = path if path.is_dir() else path.parent
    state = load_training_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
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
    check_device(config.run.device)
    with sandbox(config.run.dir or run_dir):
        return Trainer(config, resume_state=state, out=out, callbacks=callbacks).fit()
