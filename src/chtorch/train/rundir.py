"""Run directories: where a run may be written, by one process at a time, and what it must hold.

* :func:`check_out_dir`: ``--out`` (or ``run.dir``) must be a new or empty directory, or a chtorch
  run; a regular file, a path under a file, an unwritable place, and a non-empty directory that is
  not a chtorch run are refused (chtorch would overwrite its ``config.yaml``, ``report.md``...).
* :class:`RunLock`: an exclusive ``fcntl.flock`` on the run directory itself (no lock file, so a
  refused ``--resume`` changes no byte of the run), held while a process trains the run; a second
  ``train``/``--resume`` of the same run is refused instead of interleaving ``metrics.jsonl``. The
  kernel drops the lock when the process dies, so a killed run never leaves a stale lock.
* :func:`check_device`: ``run.device`` against what this torch build and machine offer.
* :func:`defer_sigint`: a second Ctrl-C while the interrupt checkpoint is written waits for it.
* :func:`check_run_records`: ``chtorch report`` reads ``metrics.jsonl``, ``summary.json`` and
  ``config.yaml``; a file that is not UTF-8, not JSON, absurdly large or holds absurd records is
  refused with one line naming the file and the line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from chtorch.config import ConfigError

__all__ = [
    "RunDirError",
    "RunRecordsError",
    "RunLock",
    "is_run_dir",
    "check_out_dir",
    "check_device",
    "defer_sigint",
    "check_run_records",
    "MAX_RECORDS_BYTES",
]

#: Files a chtorch run directory holds; one of them marks a directory as a run.
CONFIG_HEADER = "# Resolved chtorch configuration"
#: The largest ``metrics.jsonl`` / ``summary.json`` that ``chtorch report`` reads.
MAX_RECORDS_BYTES = 1 << 30
_MAX_LINE = 64 << 20
_MAX_COUNT = 10**15  # epochs, steps: beyond any real run


class RunDirError(ConfigError):
    """A run directory cannot be used: not writable, not a run, or in use by another process."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "run.dir")


class RunRecordsError(ValueError):
    """A run's saved records (``metrics.jsonl``, ``summary.json``, ``config.yaml``) are unreadable."""


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a chtorch run (a checkpoint, or the ``config.yaml`` chtorch writes)."""
    if (path / "checkpoint.pt").is_file():
        return True
    config = path / "config.yaml"
    try:
        with config.open("rb") as handle:
            return handle.read(len(CONFIG_HEADER)).decode("utf-8", "replace") == CONFIG_HEADER
    except OSError:
        return False


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_out_dir(path: str | os.PathLike[str]) -> None:
    """Raise :class:`RunDirError` unless a run may be written to ``path`` (see the module docstring)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory: choose a directory (a new one is created)")
    if not path.exists():
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise RunDirError(
                f"--out {path}: {ancestor} is a file, so no directory can be created under it; choose another path"
            )
        if not _writable(ancestor):
            raise RunDirError(
                f"--out {path}: cannot create it, {ancestor} is not writable (permission denied); choose another path"
            )
        return
    if not _writable(path):
        raise RunDirError(f"--out {path} is not writable (permission denied); choose another directory")
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise RunDirError(f"--out {path} cannot be listed ({exc.strerror or exc}); choose another directory") from None
    if entries and not is_run_dir(path):
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise RunDirError(
            f"--out {path} is a non-empty directory that is not a chtorch run (it holds {shown}); a run writes "
            "config.yaml, metrics.jsonl, report.md... there and would overwrite them: choose a new or empty directory"
        )


class RunLock:
    """Exclusive lock of one run directory (see the module docstring); use as a context manager or
    :meth:`acquire` / :meth:`release`. With ``create`` the directory (and missing parents) is made
    and removed again on release if it is still empty — a run that fails before writing anything
    leaves no directory behind."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        self.create = create
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        if self.create:
            missing = []
            p = self.path
            while not p.exists():
                missing.append(p)
                p = p.parent
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunDirError(f"cannot create the run directory {self.path}: {exc.strerror or exc}") from None
            self._created = missing  # deepest first
        elif not self.path.is_dir():
            return self  # nothing to lock: the caller reports the missing run
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._remove_created()
            raise RunDirError(
                f"{self.path} is being trained by another chtorch process "
                "right now (it holds the run's lock): wait for it "
                "to finish, or stop it (Ctrl-C saves a checkpoint) and then `chtorch train --resume` it; "
                "two processes training one run would interleave its records"
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts): train unlocked, say so
            os.close(fd)
            warnings.warn(
                f"chtorch: cannot lock {self.path} ({exc.strerror or exc}); make sure no other process trains it",
                stacklevel=2,
            )
            return self
        self._fd = fd
        return self

    def _remove_created(self) -> None:
        for p in self._created:
            with contextlib.suppress(OSError):
                p.rmdir()  # only when empty
        self._created = []

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        self._remove_created()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_device(name: str) -> None:
    """Raise :class:`ConfigError` (key ``run.device``) unless this torch build and machine offer
    ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    if name in ("auto", "cpu"):
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"run.device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps", "run.device"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"run.device={name!r} but {built}; use run.device=cpu or auto", "run.device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"run.device={name!r} but this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})", "run.device"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            why = (
                "this PyTorch is built without MPS"
                if mps is None or not mps.is_built()
                else "MPS is not available on this machine"
            )
            raise ConfigError(
                f"run.device={name!r} but {why} (Apple GPUs only); use run.device=cpu or auto", "run.device"
            )
    else:
        raise ConfigError(f"run.device={name!r}: chtorch trains on auto, cpu, cuda, cuda:N or mps", "run.device")


@contextlib.contextmanager
def defer_sigint(out: Any = None) -> Iterator[None]:
    """Hold Ctrl-C while the block runs (the interrupt checkpoint is being written): a second
    Ctrl-C prints that the save goes on instead of aborting it. Outside the main thread a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def waiting(signum: int, frame: Any) -> None:
        print(
            "\nchtorch: still writing the checkpoint (a few seconds at most); the run stops right after",
            file=out or sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, waiting)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------- records


def _read_text(path: Path, what: str) -> str:
    size = path.stat().st_size
    if size > MAX_RECORDS_BYTES:
        raise RunRecordsError(
            f"{path} is {size} bytes, more than chtorch reads as {what} ({MAX_RECORDS_BYTES}); is it a chtorch file?"
        )
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RunRecordsError(
            f"{path} is not UTF-8 text (line {line}, byte {exc.start}): it is damaged or not a chtorch {what}"
        ) from None


def _absurd(record: dict[str, Any]) -> str | None:
    """Why a metrics record cannot be one chtorch wrote, or None."""
    kind = record.get("kind")
    if kind is not None and not isinstance(kind, str):
        return f"'kind' is {kind!r}"
    for key in ("epoch", "step", "update"):
        value = record.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT
        ):
            return f"{key!r} is {str(value)[:40]!r}, not a count"
    for key, value in record.items():
        if isinstance(value, float) and math.isinf(value) and key in ("density", "seconds", "lr"):
            return f"{key!r} is {value}"
    layers = record.get("layers")
    if layers is not None and not (isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())):
        return "'layers' is not a mapping of layer records"
    return None


def check_run_records(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`RunRecordsError` naming the file and line unless ``run_dir``'s
    ``metrics.jsonl`` (one JSON object per line; a last line cut by a crash is allowed),
    ``summary.json`` and ``config.yaml`` (when present) are what chtorch writes."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    lines = _read_text(path, "metrics log").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path} line {i + 1}"
        if len(line) > _MAX_LINE:
            raise RunRecordsError(
                f"{where} is {len(line)} characters long: not a record chtorch wrote (damaged or edited file)"
            )
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                continue  # cut by a crash while it was written
            raise RunRecordsError(
                f"{where} is not JSON: the file is damaged or was edited; restore it or remove that line"
            ) from None
        except (ValueError, RecursionError) as exc:  # an int of 5000 digits, nesting 10**5 deep
            raise RunRecordsError(
                f"{where} is not a record chtorch wrote ({type(exc).__name__}: {str(exc)[:80]})"
            ) from None
        if not isinstance(record, dict):
            raise RunRecordsError(
                f"{where} is a JSON {type(record).__name__}, not a record (an object); the file was edited"
            )
        why = _absurd(record)
        if why is not None:
            raise RunRecordsError(f"{where}: {why}: not a record chtorch wrote; restore the file or remove that line")
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            if not isinstance(json.loads(_read_text(summary, "summary")), dict):
                raise RunRecordsError(f"{summary} is not a JSON object; delete it (`chtorch report` works without it)")
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, RunRecordsError):
                raise
            raise RunRecordsError(
                f"{summary} is not valid JSON ({str(exc)[:80]}); delete it (`chtorch report` works without it)"
            ) from None
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        from chtorch.config.safe_yaml import safe_load_file

        try:
            raw = safe_load_file(config)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RunRecordsError(
                f"{config} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); restore it or move it away"
            ) from None
        if raw is not None and not isinstance(raw, dict):
            raise RunRecordsError(f"{config} is not a mapping of config sections; restore it or move it away")
