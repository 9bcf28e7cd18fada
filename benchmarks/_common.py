"""The benchmark protocol, shared by every script in ``benchmarks/`` (run them from the repository root
as modules: ``python -m benchmarks.sparse_training``).

A speed figure counts only when it was measured on a quiet machine (docs: DESIGN.md, "Benchmarks, not
timed tests"). Every script therefore:

* records the 1-minute load average before and after the run (:class:`Session`);
* refuses to write a results file when the 1-minute load at the start is above ``MAX_LOAD`` (1.0),
  unless ``--allow-load`` is given, and then the file carries a warning that its figures are not
  claims (:meth:`Session.check_quiet`, :meth:`Session.header`);
* interleaves the variants it compares, so that drifting load hits all alike (:func:`interleave`);
* prints CPU time beside wall time (:class:`Timing`);
* writes the hardware (lscpu model), torch version, thread count and date into the file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "MAX_LOAD",
    "Session",
    "Timing",
    "add_protocol_args",
    "cpu_model",
    "interleave",
    "load1",
    "measure",
    "sync",
]

MAX_LOAD = 1.0


def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (or what ``platform`` knows)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def load1() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def add_protocol_args(parser: argparse.ArgumentParser, threads: int | None = None) -> None:
    """``--out``, ``--allow-load`` and ``--threads`` (default ``threads`` or all cores)."""
    parser.add_argument("--out", help="write the results as Markdown to this file (refused on a loaded machine)")
    parser.add_argument(
        "--allow-load",
        action="store_true",
        help="write --out even when the 1-minute load at the start "
        f"is above {MAX_LOAD} (the file then carries a warning)",
    )
    parser.add_argument("--threads", type=int, default=threads or os.cpu_count(), help="torch intra-op threads")


class Session:
    """One benchmark run: load before/after, the quiet-machine rule, the results file header."""

    def __init__(self, args: argparse.Namespace, title: str, measuring: bool = True) -> None:
        """``measuring=False``: the run measures nothing (e.g. no device to measure on), so the quiet
        rule does not apply and the header carries no load warning."""
        self.args = args
        self.measuring = measuring
        self.title = title
        self.started = datetime.datetime.now()
        self.load_before = os.getloadavg()
        self.load_after: tuple[float, float, float] | None = None
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        self.check_quiet()

    @property
    def loaded(self) -> bool:
        return self.measuring and self.load_before[0] > MAX_LOAD

    def check_quiet(self) -> None:
        """Stop before measuring anything when a results file was asked for on a loaded machine."""
        print(f"[{self.title}] 1-minute load at start: {self.load_before[0]:.2f}", flush=True)
        if self.args.out and self.loaded and not self.args.allow_load:
            sys.exit(
                f"refusing to write {self.args.out}: the 1-minute load "
                f"average is {self.load_before[0]:.2f} > {MAX_LOAD} "
                "(other jobs would skew the figures). Wait for a quiet machine, or pass --allow-load to write a file "
                "marked as measured under load."
            )

    def finish(self) -> None:
        self.load_after = os.getloadavg()
        print(
            f"[{self.title}] 1-minute load before / after: {self.load_before[0]:.2f} / {self.load_after[0]:.2f}",
            flush=True,
        )

    def header(self, extra: list[str] | None = None, device: torch.device | None = None) -> list[str]:
        """Markdown lines: title, warning if loaded, date, hardware, versions, threads, load, command."""
        if self.load_after is None:
            self.finish()
        assert self.load_after is not None
        lines = [f"# {self.title}", ""]
        if self.loaded:
            lines += [
                "> **WARNING: measured under load** (1-minute load "
                f"{self.load_before[0]:.2f} > {MAX_LOAD} at the start, "
                "written with --allow-load). These figures are not speed claims.",
                "",
            ]
        hardware = f"{cpu_model()}, {os.cpu_count()} CPU(s) visible"
        if device is not None and device.type == "cuda":
            hardware = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host {hardware}"
        lines += [
            f"- date: {self.started.isoformat(timespec='seconds')}",
            f"- hardware: {hardware}",
            f"- torch {torch.__version__}, python {platform.python_version()}, "
            f"torch threads: {torch.get_num_threads()}",
            f"- 1-minute load average before / after: {self.load_before[0]:.2f} / {self.load_after[0]:.2f} "
            f"(a figure counts only when the start load is below {MAX_LOAD})",
            f"- command: `{_environment()}python -m {_module_name()} {' '.join(sys.argv[1:])}`",
        ]
        return lines + (extra or [])

    def write(self, lines: list[str]) -> None:
        """Write ``lines`` (header included by the caller) to ``--out``, if given."""
        if not self.args.out:
            return
        path = Path(self.args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {path}")


# Environment variables that change what a benchmark measures (allocator, threading); the command line
# in a results file shows those that were set.
_RECORDED_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CHTORCH_NATIVE",
)


def _environment() -> str:
    return "".join(f"{name}={os.environ[name]} " for name in _RECORDED_ENV if name in os.environ)


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return Path(sys.argv[0]).stem


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Median wall and CPU seconds per call (CPU time of the whole process: with several threads it
    can exceed wall time; on a loaded machine wall time grows while CPU time stays closer to the work)."""

    wall: float
    cpu: float

    def ms(self) -> str:
        return f"{self.wall * 1e3:.2f} ms (cpu {self.cpu * 1e3:.2f})"


def measure(fn: Callable[[], object], calls: int = 1, device: torch.device | None = None) -> tuple[float, float]:
    """Wall and CPU seconds per call of ``calls`` calls of ``fn``."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def interleave(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    calls: int = 1,
    warmup: int = 2,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time the variants round robin (``repeats`` rounds of ``calls`` calls each, after ``warmup``
    calls of every variant) and return the median wall and CPU seconds per call of each."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(measure(fn, calls, device))
    return {
        name: Timing(statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
        for name, s in samples.items()
    }
