"""A native build that a killed process can never block or poison: an owner lock, a checksummed cache.

:func:`locked_build` runs a build (``torch.utils.cpp_extension.load``) in a cache directory shared by
processes:

- **one builder at a time**: a lock file ``chtorch-build.lock`` holds the owner's PID and host, written
  whole before it appears (a temporary file hard-linked into place, so a reader never sees it empty).
  A waiter polls it; a lock whose owner is dead (same host, no such PID) is taken over at once, and a
  lock held longer than ``$CHTORCH_BUILD_TIMEOUT`` seconds (default 900) makes the build fail, so the
  caller falls back to its PyTorch path instead of waiting forever. PyTorch's own ``lock`` file in the
  directory (left by a build that was killed, it would make ``cpp_extension.load`` wait forever) is
  stale whenever chtorch's lock is held, and is removed;
- **no corrupt library is loaded**: the library's SHA-256 is recorded beside it (``<name>.so.sha256``)
  after a build succeeds; a library without a matching record (a truncated ``.so`` of a killed link, a
  file changed since) is deleted with its intermediate files and built again, so a bad cache never
  kills the process with SIGBUS;
- one line on stderr when a build starts and one when it ends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "BuildLockTimeout", "build_lock", "locked_build", "library_ok", "record_library"]

LOCK_NAME = "chtorch-build.lock"
#: PyTorch's lock of ``cpp_extension`` (torch.utils.file_baton.FileBaton) inside the build directory.
TORCH_LOCK_NAME = "lock"
_POLL_S = 0.2


class BuildLockTimeout(RuntimeError):
    """Another live process held the build lock longer than the timeout."""


def _timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("CHTORCH_BUILD_TIMEOUT", "900")))
    except ValueError:
        return 900.0


def _owner(lock: Path) -> tuple[int, str] | None:
    """``(pid, host)`` written in ``lock``, None when it cannot be read or parsed (gone, or not ours)."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace")[:200]
        pid, host = text.split(None, 1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return True
    return True


def _stale(lock: Path) -> bool:
    """Whether ``lock`` belongs to a dead process of this host (or cannot be parsed and is old)."""
    owner = _owner(lock)
    if owner is None:
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime > 60.0
        return False
    pid, host = owner
    return host == socket.gethostname() and not _alive(pid)


def _try_create(lock: Path) -> bool:
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    try:
        os.link(tmp, lock)  # atomic, fails when the lock exists; the lock appears with its content
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def build_lock(directory: Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold ``directory/chtorch-build.lock`` (see the module docstring); raises :class:`BuildLockTimeout`."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    limit = _timeout() if timeout is None else timeout
    start = time.monotonic()
    said = False
    while not _try_create(lock):
        if _stale(lock):
            print(f"chtorch: taking over the native build lock {lock} of a process that is gone", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        if time.monotonic() - start > limit:
            owner = _owner(lock)
            raise BuildLockTimeout(
                f"the native build lock {lock} is held by {f'PID {owner[0]}' if owner else 'another process'} "
                f"for more than {limit:g} s; remove it if no build is running (or raise $CHTORCH_BUILD_TIMEOUT)"
            )
        if not said:
            print(f"chtorch: waiting for another process building the native kernels ({lock})", file=sys.stderr)
            said = True
        time.sleep(_POLL_S)
    try:
        with contextlib.suppress(FileNotFoundError):
            (directory / TORCH_LOCK_NAME).unlink()  # stale: no chtorch build runs here but ours
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _owner(lock) == (os.getpid(), socket.gethostname()):
                lock.unlink()


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _record(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def library_ok(library: Path) -> bool:
    """Whether ``library`` exists and matches the SHA-256 recorded beside it when it was built."""
    try:
        expected = _record(library).read_text(encoding="ascii").strip()
        return bool(expected) and _digest(library) == expected
    except (OSError, UnicodeDecodeError):
        return False


def record_library(library: Path) -> None:
    """Record ``library``'s SHA-256 beside it (written whole: temporary file + rename)."""
    record = _record(library)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(_digest(library) + "\n", encoding="ascii")
    os.replace(tmp, record)


def _clear(directory: Path) -> None:
    """Delete everything in ``directory`` but the lock: a build restarts from its sources."""
    for entry in directory.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def locked_build(directory: Path, library_name: str, build: Callable[[], Any], *, timeout: float | None = None) -> Any:
    """Run ``build()`` (which builds ``directory/library_name`` when missing and loads it) under the
    build lock; a library that fails its checksum is deleted with its intermediate files first. Prints
    one line when a build starts and one when it ends; returns what ``build`` returns."""
    library = directory / library_name
    with build_lock(directory, timeout):
        fresh = not library_ok(library)
        if fresh:
            if library.exists():
                print(f"chtorch: {library} is damaged or incomplete (checksum); rebuilding it", file=sys.stderr)
            _clear(directory)
            print(f"chtorch: building the native kernels in {directory} (once; about a minute)", file=sys.stderr)
            start = time.monotonic()
        try:
            result = build()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES):
                raise RuntimeError(f"cannot build in {directory}: {exc.strerror}; set $CHTORCH_EXTENSION_DIR") from exc
            raise
        if fresh or not library_ok(library):  # cpp_extension may rebuild on its own (a changed source or flags)
            record_library(library)
        if fresh:
            print(f"chtorch: native kernels built in {time.monotonic() - start:.0f} s", file=sys.stderr)
        return result
