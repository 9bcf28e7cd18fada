"""What the ``chtorch`` command suggests after a run or a data error: the next commands to type and
the command-line way out of a missing-data error (config keys rather than library arguments)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chtorch.data.files import DataNotFoundError

__all__ = ["data_hint", "next_hints"]


def data_hint(exc: BaseException, overrides: Sequence[str] = ()) -> str:
    """The command-line way out of a missing-data error: ``--set data.dir=...`` (and
    ``--set data.download=true`` where the recipe can download). The library's own message speaks
    of ``root=``/``CHTORCH_DATA``; on the command line the config keys are what a user can type."""
    if not isinstance(exc, DataNotFoundError) and ("not found" not in str(exc) or str(exc).startswith("config file")):
        return ""
    hint = " On the command line: --set data.dir=<folder holding the files>"
    if "download=True" in str(exc) or "download" in " ".join(overrides):
        hint += " or --set data.download=true (checksum-verified download)"
    return hint + "."


def next_hints(result: object, config: object | None, config_path: str | None) -> list[str]:
    """What to run after ``chtorch train``, following what just ran: the report it wrote, an export
    of a sparse run, a comparison of this config's method with the baselines, and, after the
    offline demo, a real dataset."""
    run = result.run_dir  # type: ignore[attr-defined]
    cwd = Path.cwd()
    shown = run.relative_to(cwd) if run.is_relative_to(cwd) else run
    lines = []
    if (run / "report.md").is_file():
        lines.append(f"open {shown / 'report.md'}   # plots and per-layer topology")
    else:
        lines.append(f"chtorch report {shown}   # write plots and report.md (this run had train.report=false)")
    method = getattr(getattr(config, "sparsity", None), "method", None)
    sparse_method: str | None = method if method is not None and method != "dense" else None
    if sparse_method is not None:
        lines.append(f"chtorch export {shown}   # drop dead neurons; size, FLOPs and latency")
    if config_path is not None:
        others = ",".join(
            dict.fromkeys(["dense", "set", "rigl", sparse_method if sparse_method is not None else "chts"])
        )
        lines.append(
            f"chtorch compare {config_path} --methods {others} --seeds 0,1,2   # this config, method by method"
        )
    else:
        lines.append("chtorch compare digits_chts --methods dense,set,rigl,chts --seeds 0,1,2")
        lines.append("chtorch train mlp_mnist_cpu --set data.dir=/path/to/mnist   # a real dataset (`chtorch configs`)")
    return lines
