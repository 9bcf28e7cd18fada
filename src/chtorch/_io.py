"""Atomic file writes: a reader sees the old file or the new one, never half of either; no write leaves its directory.

Every file chtorch writes (configs, checkpoints, metrics, exports, vocabularies, plots) goes through
:func:`atomic_write`: the bytes go to a temporary file next to the target, which is flushed, fsynced
and renamed into place; appends (``metrics.jsonl``) go through :func:`append_bytes`, which cuts a
failed append back so no half line stays. Inside a :func:`sandbox` (a run directory, a ``compare``
output directory) every write is first checked by :func:`check_write_path`: no component below the
sandbox's root may be a symbolic link, so a planted ``metrics.jsonl -> ../victim`` or ``topology -> /etc``
is refused (``UnsafePathError``, an ``OSError`` with ``ELOOP``) instead of followed out of the directory.
:func:`os_error_message` words any ``OSError`` as one line with the path and the fix.
Part of the ground floor: imports nothing of chtorch.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "append_bytes",
    "open_append",
    "read_capped",
    "read_json",
    "UnreadableFileError",
    "truncate_file",
    "sandbox",
    "check_write_path",
    "UnsafePathError",
    "os_error_message",
]

_SANDBOX: contextvars.ContextVar[Path | None] = contextvars.ContextVar("chtorch_sandbox", default=None)


class UnsafePathError(OSError):
    """A write inside a sandbox would go through a symbolic link (``errno.ELOOP``)."""


@contextlib.contextmanager
def sandbox(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Within the block, every chtorch write below ``root`` is checked by :func:`check_write_path`
    (``root`` itself may be a link: the user chose it)."""
    token = _SANDBOX.set(Path(os.path.abspath(root)))
    try:
        yield Path(root)
    finally:
        _SANDBOX.reset(token)


def check_write_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """``path``, after checking that no component of it below ``root`` (default: the active
    :func:`sandbox`'s root) is a symbolic link; paths outside the root are not checked (caches,
    downloads). Raises :class:`UnsafePathError` naming the link and the fix."""
    base = Path(os.path.abspath(root)) if root is not None else _SANDBOX.get()
    target = Path(os.path.abspath(path))
    if base is None:
        return Path(path)
    try:
        parts = target.relative_to(base).parts
    except ValueError:
        return Path(path)
    current = base
    for part in parts:
        current = current / part
        if os.path.islink(current):
            raise UnsafePathError(
                errno.ELOOP,
                f"{current} is a symbolic link inside {base}; chtorch writes no file through a link (it could "
                "leave the directory): remove the link",
                str(current),
            )
    return Path(path)


def _umask() -> int:
    """The process's umask (read by setting and restoring it: os has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], suffix: str = ".part", *, root: str | os.PathLike[str] | None = None
) -> Iterator[tuple[BinaryIO, Path]]:
    """Open a temporary file ``.<name>.<random><suffix>`` next to ``path`` for binary writing; on
    normal exit it is flushed, fsynced and renamed to ``path`` (atomic on POSIX and Windows), and the
    rename is made durable by fsyncing the directory; on an exception it is removed.

    Yields ``(file_object, temporary_path)``. No component of ``path`` below ``root`` (default: the
    active :func:`sandbox`) may be a symbolic link.
    """
    path = Path(path)
    check_write_path(path.parent, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_write_path(path, root)
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


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, root: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + :func:`os.replace`)."""
    with atomic_write(path, root=root) as (handle, _):
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, root: str | os.PathLike[str] | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: readers see the old file or the new one."""
    return atomic_write_bytes(path, text.encode("utf-8"), root=root)


def _open_nofollow(path: Path, flags: int, root: str | os.PathLike[str] | None = None) -> int:
    check_write_path(path, root)
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                errno.ELOOP,
                f"{path} is a symbolic link; chtorch appends to no file through a link: remove it",
                str(path),
            ) from None
        raise


def append_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Append ``data`` to ``path`` (created when missing; never through a symbolic link). When the
    write fails (a full disk, the file-size limit) the file is cut back to its previous length, so no
    partial record stays, and the error is raised."""
    path = Path(path)
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def open_append(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> BinaryIO:
    """``path`` opened for appending bytes (created when missing; never through a symbolic link)."""
    target = Path(path)
    # the caller closes it
    return open(target, "ab", opener=lambda _, flags: _open_nofollow(target, flags, root))  # noqa: SIM115


def truncate_file(path: str | os.PathLike[str], size: int) -> None:
    """Cut ``path`` to ``size`` bytes (never through a symbolic link)."""
    fd = _open_nofollow(Path(path), os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


_FIXES = {
    errno.EROFS: "the file system is read-only: use a writable directory (copy the run there to resume it)",
    errno.ENOSPC: "no space left on the device: free space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or write to another disk",
    errno.EFBIG: "the file would exceed the file-size limit: raise it (`ulimit -f unlimited`) or write elsewhere",
    errno.ENAMETOOLONG: "the path is too long for the file system: choose a shorter name or directory",
    errno.EACCES: "permission denied: use a directory you can write (or fix its permissions)",
    errno.EPERM: "operation not permitted: use a directory you own",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "it is a directory: name a file",
    errno.EEXIST: "it exists already: choose another path",
    errno.ENOENT: "no such file or directory: check the path",
}


def os_error_message(exc: OSError) -> str:
    """One line for ``exc``: the path, what went wrong and the fix (``UnsafePathError`` says its own)."""
    if isinstance(exc, UnsafePathError):
        return str(exc.strerror)
    where = exc.filename if exc.filename is not None else "a file"
    fix = _FIXES.get(exc.errno or -1, exc.strerror or type(exc).__name__)
    where = str(where)
    if len(where) > 200:
        where = where[:100] + "…" + where[-60:]
    return f"cannot write or read {where}: {fix} [{errno.errorcode.get(exc.errno or -1, 'error')}]"


class UnreadableFileError(ValueError):
    """A file chtorch reads back (a run's records, a plan) is too large, not JSON, or not what it should hold."""


def read_capped(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused (:class:`UnreadableFileError`) when it holds more than ``limit``
    bytes: a planted or corrupted file never makes chtorch read without bound."""
    path = Path(path)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFileError(
            f"{path} is larger than a {what} can be ({limit} bytes); is it the right file? remove or replace it"
        )
    return data


def read_json(path: str | os.PathLike[str], limit: int = 16 << 20, what: str = "JSON file") -> Any:
    """``path`` parsed as JSON, at most ``limit`` bytes; anything else (not UTF-8, not JSON, nested
    deeper than Python can parse) is an :class:`UnreadableFileError` naming the file."""
    data = read_capped(path, limit, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
    except RecursionError:
        reason = "nested too deeply"
    raise UnreadableFileError(f"{path} is not a valid {what} ({reason}); remove or replace it")
