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
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chtorch.data.files import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "chtorch-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the run it is loaded into."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` (plus format tags) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_write(path, suffix=".tmp") as (handle, _):
        torch.save(payload, handle)
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


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing, truncated or foreign file
    raises :class:`CheckpointError` saying so."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run has not finished an epoch yet, or this is not a run directory")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one loses its directory
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (not a complete PyTorch archive); it cannot be resumed — "
            "start a new run (checkpoints are written atomically, so this file was damaged after it was written)"
        )
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
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}; this chtorch reads version {VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (torch CPU and CUDA, numpy, python)."""
    np_state = np.random.get_state()
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
