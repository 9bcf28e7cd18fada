"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file chtorch writes (configs, checkpoints, metrics, exports, vocabularies, plots) goes through
:func:`atomic_write`: the bytes go to a temporary file next to the target, which is flushed, fsynced
and renamed into place. Part of the ground floor: imports nothing of chtorch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _umask() -> int:
    """The process's umask (read by setting and restoring it: os has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], suffix: str = ".part") -> Iterator[tuple[BinaryIO, Path]]:
    """Open a temporary file ``.<name>.<random><suffix>`` next to ``path`` for binary writing; on
    normal exit it is flushed, fsynced and renamed to ``path`` (atomic on POSIX and Windows), and the
    rename is made durable by fsyncing the directory; on an exception it is removed.

    Yields ``(file_object, temporary_path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file owner-only (0600); the final file gets what open() would give
        # it, 0666 less the user's umask, like every other file a run writes.
        with contextlib.suppress(OSError, NotImplementedError):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # POSIX; a no-op where directories cannot be opened
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + :func:`os.replace`)."""
    with atomic_write(path) as (handle, _):
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: readers see the old file or the new one."""
    return atomic_write_bytes(path, text.encode("utf-8"))
