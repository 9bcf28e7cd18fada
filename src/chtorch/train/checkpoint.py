"""Atomic, self-describing training checkpoints.

One file, ``checkpoint.pt`` in the run directory, holds everything an exact resume needs: the model
(its ``weight_mask`` buffers included), optimizer, sparsity engine state, LR scheduler, the RNG
states (torch CPU/CUDA, numpy, python), the position in training (epoch, batch, step), the epoch's
running sums, the byte length of the metrics log at that moment, and the resolved config.

It is written to a temporary file in the same directory, flushed and fsynced, then renamed over the
previous checkpoint with :func:`os.replace` (atomic on POSIX and Windows): a crash, a SIGKILL or a
full disk while writing leaves the previous checkpoint intact (the temporary file a killed writer
leaves behind, ``.checkpoint.pt.*.tmp``, is removed by the next resume). Under ``torchrun`` only
rank 0 writes; the file then also holds every rank's RNG state and running sums (``ranks``) and the
number of processes (``world_size``). Only tensors and plain Python values are
stored, so it loads with ``torch.load(weights_only=True)`` (no arbitrary code runs on load).

Integrity: the file carries the SHA-256 digest of its content (``sha256``: every tensor's dtype,
shape and bytes and every plain value, in order; see :func:`content_digest`), and
:func:`load_checkpoint` recomputes it before anything uses the state, so a flipped bit or an edit
is refused. The digest lives inside the one file (not in a second file beside it) so that the
single atomic rename keeps a kill at any moment safe and a checkpoint copied elsewhere stays
verifiable. :func:`check_training_state` then checks the keys and types a resume needs. A write
that fails (a full disk: ``ENOSPC``) raises :class:`CheckpointWriteError` and leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chtorch._io import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "save_checkpoint",
    "load_checkpoint",
    "load_training_checkpoint",
    "check_training_state",
    "check_optimizer_state",
    "content_digest",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "chtorch-checkpoint"
VERSION = 2  # 2: the file carries a SHA-256 content digest
DIGEST_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the run it is loaded into."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (e.g. the disk is full); the previous checkpoint is intact."""


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` into ``h`` canonically: a type tag, then the value (see :func:`content_digest`)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:  # sparse tensors: hash their dense value
            t = t.to_dense()
        t = t.cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(b"D%d|" % len(obj))
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(b"%s%d|" % (b"L" if isinstance(obj, list) else b"U", len(obj)))
        for value in obj:
            _feed(h, value)
    elif obj is None or isinstance(obj, bool):
        h.update(b"N|" if obj is None else b"B%d|" % obj)
    elif isinstance(obj, int):
        h.update(b"I%d|" % obj)
    elif isinstance(obj, float):
        h.update(b"F" + obj.hex().encode() + b"|")
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d|" % len(data) + data)
    elif isinstance(obj, bytes):
        h.update(b"Y%d|" % len(obj) + obj)
    else:  # torch.dtype, torch.device, ...: what weights_only loading admits besides the above
        h.update(f"O{type(obj).__qualname__}:{obj}|".encode())


def content_digest(state: Any) -> str:
    """``"sha256:<hex>"`` of ``state``: every tensor's dtype, shape and bytes and every plain value,
    with the nesting and order of dicts and lists. Equal for a state and its ``torch.load`` copy."""
    h = hashlib.sha256()
    _feed(h, state)
    return "sha256:" + h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` (plus format tags and its SHA-256 content digest) to ``path`` atomically;
    returns ``path``. A failed write (e.g. ``ENOSPC``) raises :class:`CheckpointWriteError` with the
    previous file at ``path`` untouched and no temporary file left."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    payload[DIGEST_KEY] = content_digest(payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, suffix=".tmp") as (handle, _):
            torch.save(payload, handle)
    except OSError as exc:
        cause = errno.errorcode.get(exc.errno or 0, "")
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{exc.strerror or exc}"
        kept = (
            f"the previous checkpoint {path} is intact" if path.is_file() else f"no earlier checkpoint exists at {path}"
        )
        error = CheckpointWriteError(
            f"could not write the checkpoint {path}: {why} "
            f"({cause + ': ' if cause else ''}{exc}); {kept} and no temporary "
            f"file is left. Free space (or fix the cause) and continue with `chtorch train --resume {path.parent}`"
        )
        error.errno = exc.errno
        raise error from exc
    return path


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`save_checkpoint` writers of ``path`` left when they
    were killed mid-write; returns what was removed. Call it only when no writer runs (on resume)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _check_archive(path: Path) -> None:
    """Refuse an archive with compressed entries before anything is inflated: ``torch.save`` stores its
    entries uncompressed, so a compressed one (a small file that inflates to gigabytes) is foreign."""
    try:
        with zipfile.ZipFile(path) as archive:
            packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
            total = sum(i.file_size for i in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({exc}); start a new run") from None
    if packed or total > path.stat().st_size:
        raise CheckpointError(
            f"checkpoint {path} holds compressed entries ({', '.join(packed[:3]) or 'sizes beyond the file'}), which "
            "torch.save never writes: it was not written by chtorch's trainer; take an earlier copy or start a new run"
        )


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing, truncated or foreign file
    raises :class:`CheckpointError` saying so."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run has not finished an epoch yet, or this is not a run directory"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one loses its directory
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (not a complete PyTorch archive); it cannot be resumed — "
            "start a new run (checkpoints are written atomically, so this file was damaged after it was written)"
        )
    _check_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values, so it was not written by "
                "chtorch's trainer (which loads checkpoints safely, without running pickled code)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); start a new run or use an earlier copy") from None
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, zipfile errors...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "it cannot be resumed — start a new run (checkpoints are written atomically, so this file was "
            "damaged after it was written)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a chtorch training checkpoint")
    if state.get("version") != VERSION:
        older = " (written before checkpoints carried a SHA-256 digest)" if state.get("version") == 1 else ""
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')!r}{older}; "
            f"this chtorch reads version {VERSION}: start a new run"
        )
    stored = state.pop(DIGEST_KEY, None)
    try:
        actual = content_digest(state)
    except RecursionError:
        raise CheckpointError(
            f"checkpoint {path} holds values nested too deeply for a chtorch checkpoint; it was not written by "
            "chtorch's trainer: take an earlier copy or start a new run"
        ) from None
    if stored != actual:
        raise CheckpointError(
            f"checkpoint {path} fails its SHA-256 check (stored "
            f"{stored}, content {actual}): it was changed after it was "
            "written (a flipped bit on disk, an edit); it cannot be used — take an earlier copy or start a new run"
        )
    return state


def load_training_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` plus :func:`check_training_state`: what ``--resume`` and ``export`` read."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state = load_checkpoint(path, map_location)
    check_training_state(state, path)
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# key -> (check, what it must be)
_TRAINING_KEYS: dict[str, tuple[Any, str]] = {
    "epoch": (_is_int, "a non-negative integer"),
    "batch": (_is_int, "a non-negative integer"),
    "step": (_is_int, "a non-negative integer"),
    "nonfinite": (_is_int, "a non-negative integer"),
    "metrics_offset": (_is_int, "a non-negative integer"),
    "world_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "finished": (lambda v: isinstance(v, bool), "true or false"),
    "elapsed": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
        "seconds >= 0",
    ),
    "model": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
        "a state_dict",
    ),
    "optimizer": (
        lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list),
        "a state_dict",
    ),
    "scheduler": (lambda v: isinstance(v, dict), "a state_dict"),
    "sparsity": (lambda v: v is None or isinstance(v, dict), "a state_dict or None"),
    "rng": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("torch"), torch.Tensor)
            and v["torch"].dtype == torch.uint8
            and isinstance(v.get("numpy"), dict)
            and isinstance(v.get("python"), dict)
        ),
        "the RNG states (torch, numpy, python)",
    ),
    "config": (
        lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
        "a mapping of config sections",
    ),
    "sums": (
        lambda v: isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()),
        "a mapping of numbers",
    ),
}


def check_training_state(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has every key a resume needs, each of the
    right type (see ``_TRAINING_KEYS``); tensor shapes are checked against the model on load."""
    missing = [key for key in _TRAINING_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(repr(k) for k in missing)}: it is not a complete chtorch training "
            "checkpoint (edited, or written by another program); use the run's own checkpoint or start a new run"
        )
    for key, (ok, what) in _TRAINING_KEYS.items():
        if not ok(state[key]):
            value = state[key]
            shown = type(value).__name__ if isinstance(value, (dict, list, torch.Tensor)) else repr(value)[:60]
            raise CheckpointError(
                f"checkpoint {path}: {key!r} must be {what}, found {shown}; the file was edited or written by another "
                "program — use the run's own checkpoint or start a new run"
            )


def check_optimizer_state(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """After ``optimizer.load_state_dict``: every per-parameter tensor of the loaded state (momentum,
    Adam moments) must have its parameter's shape — torch does not check it, and a wrong one fails
    or broadcasts silently at the next step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(
                        f"checkpoint {path}: optimizer state {name!r} has "
                        f"shape {tuple(value.shape)} for a parameter of shape "
                        f"{tuple(param.shape)}; the file does not belong to this model — use the run's own checkpoint"
                    )


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (torch CPU and CUDA, numpy, python)."""
    np_state = np.random.get_state(legacy=True)
    # The global RandomState is an MT19937, whose legacy state is always the 5-tuple.
    assert isinstance(np_state, tuple), type(np_state)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
