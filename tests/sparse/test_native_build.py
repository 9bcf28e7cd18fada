"""The native build under faults: a stale lock of a killed build, a truncated library, a live owner.

The lock and checksum logic is tested with a stand-in build (writes a file) so no compiler runs; one test
loads the real kernels from a cache copy holding both stale locks (a killed chtorch and a killed torch build).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chtorch.sparse import native
from chtorch.sparse.build import LOCK_NAME, BuildLockTimeout, build_lock, library_ok, locked_build


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class FakeBuild:
    """Writes ``lib.so`` when it is missing (as ninja would) and counts the calls that wrote it."""

    def __init__(self, directory: Path) -> None:
        self.library = directory / "lib.so"
        self.built = 0

    def __call__(self) -> str:
        if not self.library.exists():
            self.library.write_bytes(b"\x7fELF" + b"x" * 4096)
            self.built += 1
        return "ops"


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path: Path, capsys) -> None:
    (tmp_path / LOCK_NAME).write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    (tmp_path / "lock").write_text("")  # torch's FileBaton of a killed build: cpp_extension would wait forever
    build = FakeBuild(tmp_path)
    assert locked_build(tmp_path, "lib.so", build, timeout=5) == "ops"
    assert build.built == 1 and library_ok(build.library)
    assert not (tmp_path / LOCK_NAME).exists() and not (tmp_path / "lock").exists()
    err = capsys.readouterr().err
    assert "taking over" in err and "building the native kernels" in err and "built in" in err


def test_a_live_owner_times_out_instead_of_hanging(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")  # alive: this process
    start = time.monotonic()
    with pytest.raises(BuildLockTimeout, match=r"held by PID \d+ .*remove it if no build is running"):
        with build_lock(tmp_path, timeout=0.5):
            pass
    assert time.monotonic() - start < 30
    assert (tmp_path / LOCK_NAME).exists()  # another's lock is never deleted


def test_a_truncated_library_is_rebuilt(tmp_path: Path, capsys) -> None:
    build = FakeBuild(tmp_path)
    locked_build(tmp_path, "lib.so", build)
    (tmp_path / "lib.o").write_bytes(b"half")  # an intermediate file of the killed build
    with build.library.open("r+b") as handle:
        handle.truncate(100)
    assert not library_ok(build.library)
    locked_build(tmp_path, "lib.so", build)
    assert build.built == 2 and library_ok(build.library)
    assert not (tmp_path / "lib.o").exists()
    assert "damaged or incomplete" in capsys.readouterr().err


def test_a_cached_library_without_a_checksum_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "lib.so").write_bytes(b"left by an older version or a killed link")
    build = FakeBuild(tmp_path)
    locked_build(tmp_path, "lib.so", build)
    assert build.built == 1 and library_ok(build.library)


def test_a_good_library_is_loaded_without_a_build(tmp_path: Path, capsys) -> None:
    build = FakeBuild(tmp_path)
    locked_build(tmp_path, "lib.so", build)
    capsys.readouterr()
    locked_build(tmp_path, "lib.so", build)
    assert build.built == 1 and capsys.readouterr().err == ""


def test_a_failing_load_falls_back_with_one_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(native, "_state", {"tried": False, "ops": None, "reason": None})

    def broken() -> None:
        raise OSError("chtorch_native.so: file too short")

    monkeypatch.setattr(native, "_build", broken)
    with caplog.at_level("WARNING", logger="chtorch.sparse.native"):
        assert native.load() is None and native.load() is None and not native.available()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "file too short" in caplog.records[0].getMessage() and "pure-PyTorch" in caplog.records[0].getMessage()


@pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.reason_unavailable()}")
def test_real_kernels_load_from_a_cache_with_stale_locks(tmp_path: Path) -> None:
    """A killed first build left chtorch's lock and torch's: the next process loads, without waiting."""
    tag_dir = next(p.parent for p in native.cache_dir().glob("*/chtorch_native_*.so.sha256"))
    copy = tmp_path / "ext" / tag_dir.name
    shutil.copytree(tag_dir, copy, ignore=shutil.ignore_patterns(LOCK_NAME, "lock"))
    (copy / LOCK_NAME).write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    (copy / "lock").write_text("")
    env = {**os.environ, "CHTORCH_EXTENSION_DIR": str(tmp_path / "ext"), "CHTORCH_BUILD_TIMEOUT": "60"}
    code = "from chtorch.sparse import native; print(native.available(), native.reason_unavailable())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "None"], proc.stderr
    assert "building" not in proc.stderr and not (copy / LOCK_NAME).exists()
