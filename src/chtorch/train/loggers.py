"""Logging sinks of a run: one small interface, four implementations.

Every record the trainer writes (``kind`` = ``"epoch"``, ``"update"`` or ``"step"``, see
:mod:`chtorch.train.metrics`) goes to ``metrics.jsonl`` — the run's source of truth, which plots,
reports, resume and ``chtorch compare`` read — and, flattened to scalars by :func:`record_scalars`,
to every logger named in ``run.loggers``:

- ``jsonl``: ``metrics.jsonl`` itself (always on: the other files are derived from it);
- ``csv``: ``metrics.csv``, ``updates.csv`` and ``steps.csv``, flat tables re-derived from the JSONL
  after every epoch and at the end (so a resumed run's tables never hold records it rewound);
- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``pip install tensorboard``, in
  ``chtorch[tensorboard]`` and ``[all]``); a resumed run purges the events after its checkpoint;
- ``wandb``: Weights & Biases (``pip install chtorch[wandb]``); the project is ``$WANDB_PROJECT``
  (default ``chtorch``), and ``WANDB_MODE=offline`` keeps everything in ``RUN_DIR/wandb`` with no
  network (``wandb sync`` uploads it later). A resumed run continues the same W&B run (its id is kept
  in ``RUN_DIR/wandb-run-id``); W&B cannot rewind, so steps logged between the checkpoint and an
  interruption stay in W&B's history.

Each logger receives the same scalars, named ``<kind>/<key>`` (``epoch/val_ppl``, ``epoch/lr``,
``epoch/active_neurons``, ``epoch/layers/<layer>/density``, ``update/layers/<layer>/overlap``, ...)
at the optimizer step of the record.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Logger",
    "LOGGERS",
    "record_scalars",
    "check_logger_names",
    "build_loggers",
    "CsvLogger",
    "TensorBoardLogger",
    "WandbLogger",
]

#: The names ``run.loggers`` accepts.
LOGGERS = ("jsonl", "csv", "tensorboard", "wandb")

WANDB_ID_NAME = "wandb-run-id"


@runtime_checkable
class Logger(Protocol):
    """A sink for a run's scalars (``step`` = optimizer steps done) and texts (e.g. the config)."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None  # text, lists (a layer's shape), None (no value) and the "inf" strings of non-finite values


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one record, ``{"<kind>/<key>": value}``; nested mappings (per-layer state)
    become ``<kind>/layers/<layer>/<key>``. ``kind``, ``step`` and ``epoch`` are the record's
    coordinates, not scalars; booleans become 0/1; lists and texts are left out."""
    kind = str(record.get("kind", "log"))
    out: dict[str, float] = {}

    def walk(prefix: str, mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                walk(f"{prefix}/{key}", value)
                continue
            number = _number(value)
            if number is not None:
                out[f"{prefix}/{key}"] = number

    walk(kind, {k: v for k, v in record.items() if k not in ("kind", "step", "epoch")})
    return out


def check_logger_names(names: Sequence[str]) -> list[str]:
    """Validate ``run.loggers``: known names, no repeats, ``jsonl`` present. Raises ConfigError."""
    from chtorch._checks import closest
    from chtorch.config import ConfigError

    names = [str(n).strip().lower() for n in names]
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(
                f"run.loggers: unknown logger {name!r}{closest(name, LOGGERS)}; known: {', '.join(LOGGERS)}",
                "run.loggers",
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"run.loggers names a logger twice: {names}", "run.loggers")
    if "jsonl" not in names:
        raise ConfigError(
            "run.loggers must include jsonl: metrics.jsonl is the run's record that plots, reports, resume and "
            "`chtorch compare` read (add the others beside it, e.g. [jsonl, csv, tensorboard])",
            "run.loggers",
        )
    return names


class CsvLogger:
    """``metrics.csv`` (epoch records), ``updates.csv`` and ``steps.csv``, re-derived from
    ``metrics.jsonl`` after every epoch record and at :meth:`close`."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if any(key.startswith("epoch/") for key in scalars):
            self.flush()

    def log_text(self, step: int, tag: str, text: str) -> None:
        pass  # tables hold scalars; config.yaml and report.md hold the texts

    def flush(self) -> None:
        from chtorch.train.metrics import read_metrics, write_csv

        records = read_metrics(self.run_dir)
        for kind, name in (("epoch", "metrics.csv"), ("update", "updates.csv"), ("step", "steps.csv")):
            rows = [r for r in records if r.get("kind") == kind]
            if rows:
                write_csv(rows, self.run_dir / name)

    def close(self) -> None:
        self.flush()


class TensorBoardLogger:
    """TensorBoard event files in ``RUN_DIR/tensorboard``; events at ``purge_step`` and later (on a
    resume: those an interrupted session wrote after its checkpoint) are discarded."""

    def __init__(self, run_dir: str | os.PathLike[str], purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        # TensorBoard renders text as Markdown: indent it so YAML keeps its layout.
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run (``wandb.init`` / ``run.log`` / ``run.finish``): offline with
    ``WANDB_MODE=offline``; the id in ``RUN_DIR/wandb-run-id`` lets a resumed run continue it."""

    def __init__(self, run_dir: str | os.PathLike[str], name: str, config: Mapping[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        run_dir = Path(run_dir)
        id_path = run_dir / WANDB_ID_NAME
        if id_path.is_file():
            run_id = id_path.read_text(encoding="utf-8").strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            id_path.write_text(run_id + "\n", encoding="utf-8")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "chtorch"),
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=dict(config or {}),
        )
        self._wandb = wandb

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: self._wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


def _missing(logger: str, package: str) -> Exception:
    from chtorch.config import ConfigError

    return ConfigError(
        f"run.loggers names {logger}, which needs the {package} package: pip install {package} (or chtorch[{logger}]), "
        f"or leave {logger} out of run.loggers",
        "run.loggers",
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_loggers(
    run_dir: str | os.PathLike[str],
    names: Sequence[str],
    *,
    run_name: str = "run",
    config: Mapping[str, Any] | None = None,
    resume_step: int | None = None,
    tensorboard_if_installed: bool = False,
) -> list[Logger]:
    """The scalar loggers of ``names`` (``jsonl`` is the metrics log itself and is not built here).
    ``tensorboard_if_installed`` adds TensorBoard when its package is present (``train.tensorboard``)."""
    names = check_logger_names(names)
    if tensorboard_if_installed and "tensorboard" not in names:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is not None:
            names = [*names, "tensorboard"]
    loggers: list[Logger] = []
    try:
        for name in names:
            if name == "csv":
                loggers.append(CsvLogger(run_dir))
            elif name == "tensorboard":
                # Records at the checkpoint's own step are in the checkpoint's metrics.jsonl; later ones are rewound.
                loggers.append(TensorBoardLogger(run_dir, purge_step=0 if resume_step is None else resume_step + 1))
            elif name == "wandb":
                loggers.append(WandbLogger(run_dir, run_name, json.loads(json.dumps(config or {}, default=str))))
    except BaseException:
        for logger in loggers:
            logger.close()
        raise
    return loggers
