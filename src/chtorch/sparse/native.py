"""Native CPU kernels (C++/OpenMP), built at first use, with a clean fallback to pure PyTorch.

Each wing keeps its C++ beside its Python: ``chtorch/sparse/csrc/kernels.cpp`` (the sparse layer's
products) and ``chtorch/linkpred/csrc/ch_l3n.cpp`` (CH-L3n, a fragment of the same operator namespace).
Both are compiled into one library (one build, one cache entry, one fallback decision), registered as
``torch.ops.chtorch_native.*``:

* ``to_panels(src)``: the feature-major panel layout ``(n_panels, features, width)`` of a batch-major
  ``(batch, features)`` activation: panels of 256 bytes of batch entries (64 floats), each a
  contiguous ``(features, width)`` matrix, the last zero-padded (one panel of width ``batch`` when the
  batch fits one; then it is the plain transpose). The products below read it;
* ``spmm(crow, index, perm, values, src, bias, n_rows, batch)``: ``(W @ src)ᵀ`` ``(batch, n_rows)``
  for a CSR weight and a panel operand (forward and input gradient of ``SparseLinear``);
* ``sddmm(crow, cols, a, b)``: ``(a @ bᵀ)`` at the links only, ``a`` and ``b`` panel operands of one
  batch (the weight gradient);
* ``ch_l3n(row_ptr, row_idx, col_ptr, col_idx, variant, counting)`` and ``ch_l3n_mask(mask, variant,
  counting)``: CH-L3n scores by sparse row products; ``neighbour_lists(mask)``: the CSR/CSC lists.

They are compiled once per (source, torch, Python, CPU) combination with
``torch.utils.cpp_extension.load`` into a cache directory (``$CHTORCH_EXTENSION_DIR``, else
``~/.cache/chtorch/native``); later processes load the cached library in milliseconds. Where there is
no C++ compiler, no ninja, or the build fails, :func:`load` logs one warning naming the reason and
returns ``None``, and callers use their pure-PyTorch path (same numbers; the tests compare both).
The build runs under an owner lock in the cache and its library is checksummed
(:mod:`chtorch.sparse.build`): a killed build never blocks or poisons a later process.
``CHTORCH_NATIVE=0`` disables the native kernels.

``-march=native`` is safe with a shared cache: the CPU's model and flags are part of the cache key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from chtorch.sparse.build import locked_build

__all__ = ["load", "available", "reason_unavailable", "cache_dir"]

_log = logging.getLogger("chtorch.sparse.native")
_SOURCES = (
    Path(__file__).with_name("csrc") / "kernels.cpp",
    Path(__file__).parents[1] / "linkpred" / "csrc" / "ch_l3n.cpp",
)
_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "ops": None, "reason": None}


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$CHTORCH_EXTENSION_DIR`` or ``~/.cache/chtorch/native``."""
    env = os.environ.get("CHTORCH_EXTENSION_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chtorch" / "native"


def _cpu_signature() -> str:
    """CPU model and instruction-set flags (Linux), so that a ``-march=native`` build is reused only
    on a CPU that runs it."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [line for line in fh if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build_tag(source: bytes) -> str:
    key = b"|".join(
        [
            source,
            torch.__version__.encode(),
            sys.version.encode(),
            _cpu_signature().encode(),
            platform.machine().encode(),
        ]
    )
    return hashlib.sha256(key).hexdigest()[:16]


def _missing_toolchain() -> str | None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not on PATH; set CXX or install g++/clang++)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (`pip install ninja`)"
    return None


def _build() -> Any:
    if os.environ.get("CHTORCH_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise RuntimeError("disabled by CHTORCH_NATIVE=0")
    if platform.system() != "Linux":
        raise RuntimeError(f"native kernels are built on Linux only (this is {platform.system()})")
    missing = _missing_toolchain()
    if missing:
        raise RuntimeError(missing)
    from torch.utils import cpp_extension

    source = b"\0".join(path.read_bytes() for path in _SOURCES)
    tag = _build_tag(source)
    build_dir = cache_dir() / tag
    name = f"chtorch_native_{tag}"
    locked_build(
        build_dir,
        f"{name}.so",
        lambda: cpp_extension.load(
            name=name,
            sources=[str(path) for path in _SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-DNDEBUG"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        ),
    )
    return torch.ops.chtorch_native


def load() -> Any:
    """The native operators (``torch.ops.chtorch_native``), building them on first use; ``None``
    when they cannot be built here (the reason is logged once and kept in
    :func:`reason_unavailable`)."""
    if _state["tried"]:
        return _state["ops"]
    with _lock:
        if not _state["tried"]:
            try:
                _state["ops"] = _build()
            except Exception as error:  # any build or load failure means: use the PyTorch path
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                _state["reason"] = reason
                _log.warning("chtorch native kernels unavailable (%s); using the pure-PyTorch kernels", reason)
            _state["tried"] = True
    return _state["ops"]


def available() -> bool:
    """Whether the native kernels are (or can be) loaded in this process."""
    return load() is not None


def reason_unavailable() -> str | None:
    """Why :func:`load` returned ``None`` (``None`` when the kernels are loaded or not yet tried)."""
    return _state["reason"]
