"""The run's own files that decide its results, covered by the checkpoint's digest.

A resume rebuilds the run from ``checkpoint.pt`` (which carries its own SHA-256), but some of what
decides the results lives beside it: the cached tokenizers (the vocabulary every token id refers
to) and the translation recipe's ``best_model.pt`` (whose weights give the final test BLEU). The
checkpoint records the SHA-256 of each such file (``files``: name relative to the run directory ->
``"sha256:<hex>"``); a resume and ``chtorch evaluate`` refuse a run whose files no longer match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError

__all__ = ["file_sha256", "result_digests", "verify_result_files"]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """``"sha256:<hex>"`` of the file at ``path`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _name(run_dir: Path, path: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def result_digests(run_dir: Path, paths: Iterable[Path]) -> dict[str, str]:
    """The SHA-256 of each existing file of ``paths`` (inside ``run_dir``), by its name in ``run_dir``."""
    return {_name(run_dir, p): file_sha256(p) for p in sorted(paths) if p.is_file()}


def verify_result_files(
    run_dir: Path,
    recorded: object,
    present: Iterable[Path],
    ahead: Callable[[Path], bool] = lambda path: False,
) -> None:
    """Raise :class:`CheckpointError` unless the files the checkpoint recorded (``recorded``, from
    :func:`result_digests`) are unchanged and no other result file (``present``) appeared. A file
    for which ``ahead(path)`` holds was written after the checkpoint by an attempt that did not reach
    its next checkpoint (the recipe ignores and replaces it), so it is no mismatch. A checkpoint
    that recorded nothing (written before checkpoints covered these files) is not checked."""
    if not isinstance(recorded, dict):
        return
    # only plain names inside the run directory: a forged entry must not make us read elsewhere
    recorded = {
        k: v
        for k, v in recorded.items()
        if isinstance(k, str) and isinstance(v, str) and k and not Path(k).is_absolute() and ".." not in Path(k).parts
    }
    checkpoint = run_dir / CHECKPOINT_NAME
    names = {_name(run_dir, p): p for p in present if p.is_file()}
    for name in sorted(set(recorded) | set(names)):
        path = run_dir / name
        if name not in recorded:
            if ahead(path):
                continue
            problem = "is not one the checkpoint recorded (it appeared after the checkpoint was written)"
        elif not path.is_file():
            problem = "is missing (the checkpoint recorded it)"
        elif file_sha256(path) == recorded[name]:
            continue
        elif ahead(path):
            continue
        else:
            problem = f"does not match the SHA-256 the checkpoint recorded ({recorded[name]})"
        raise CheckpointError(
            f"{path} {problem}: it decides this run's results, and was changed after {checkpoint} was written "
            "(an edit, a copy from another run). Put back the run's own file, or start a new run in another "
            "directory"
        )
