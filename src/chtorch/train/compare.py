"""``chtorch compare``: several methods × seeds on one budget, tabulated like the paper's tables.

Every run uses the same config — epochs, batch size, optimizer and schedule, sparsity — and differs
only in ``sparsity.method`` (``dense`` = no sparsification) and ``run.seed``; per-method extras come
from ``sparsity.method_options``. Runs live in ``OUT/<method>-seed<s>/``; the table (mean ± SE over
seeds at the last epoch, at the epoch selected on validation and, as the paper's protocol, at the best
test epoch after T_end; ANP, density, the paper's cell where ``run.paper_table`` names one) and the
overlay plots are written by :mod:`chtorch.train.compare_table` from the runs' records.

``jobs > 1`` trains that many runs at once, each a ``chtorch train`` subprocess with one torch
thread (``run.threads=1``, ``OMP_NUM_THREADS=1``), its console output in ``OUT/logs/``. The same
command again skips the finished runs and resumes the interrupted ones from their checkpoints
(exactly, see :func:`chtorch.train.resume`); a run directory trained with another configuration
is refused rather than mixed into the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from chtorch._checks import closest
from chtorch._io import atomic_write_text, check_write_path, open_append, read_json
from chtorch.config import (
    Config,
    ConfigError,
    build_config,
    config_to_dict,
    default_recipe,
    save_config,
    sparsity_options_for,
)
from chtorch.config.registry import recipe_schema
from chtorch.dst import all_methods, is_dense, merge_overrides
from chtorch.train.checkpoint import CHECKPOINT_NAME
from chtorch.train.compare_table import OUTPUT_NAMES, PLAN_NAME, format_table, write_compare
from chtorch.train.lifecycle import RESUME_OVERRIDABLE, SUMMARY_NAME, TrainingError
from chtorch.train.loggers import check_logger_names
from chtorch.train.paper_tables import paper_row
from chtorch.train.runs import resume, train
from chtorch.train.seed_stats import mean_stderr

__all__ = ["compare", "CompareResult", "mean_stderr", "format_table"]


@dataclass
class CompareResult:
    """Per-method rows (aggregated over seeds), per-run entries, the rendered table and plots."""

    out_dir: Path
    metric: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    plots: list[Path] = field(default_factory=list)


@dataclass
class _Run:
    method: str
    seed: int
    config: Config

    @property
    def dir(self) -> Path:
        return Path(str(self.config.run.dir))

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"


def _run_config(base: Config, method: str, seed: int, run_dir: Path, threads: int | None) -> Config:
    raw = config_to_dict(base)
    raw["sparsity"]["method"] = method
    raw["run"]["seed"] = seed
    raw["run"]["name"] = f"{base.run.name}-{method}-seed{seed}"
    raw["run"]["dir"] = str(run_dir.resolve())
    if threads is not None:
        raw["run"]["threads"] = threads
    return build_config(raw)


def _flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {prefix: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _recipe_defaults(recipe: Any) -> dict[str, Any]:
    """The sparsity defaults of ``recipe`` (a run's ``run.recipe``; none: the default recipe), or none
    for a recipe no longer registered (the comparison then tells the configurations apart)."""
    try:
        return dict(recipe_schema(recipe if isinstance(recipe, str) else default_recipe()).sparsity_defaults)
    except ConfigError:
        return {}


def _comparable(raw: dict[str, Any], method: str) -> dict[str, Any]:
    """``raw`` flattened, with ``sparsity.options`` and ``sparsity.method_options`` replaced by the
    options ``method`` resolves to: the same setting given either way is the same run, and another
    method's options cannot change this run (a config that tunes one method leaves the finished runs
    of the others valid)."""
    sparsity = dict(raw.get("sparsity") or {})
    # The recipe's defaults under the user's options: the same run whether a config.yaml lists them
    # in sparsity.options (as earlier versions saved it) or not.
    defaults = _recipe_defaults((raw.get("run") or {}).get("recipe"))
    options = merge_overrides(
        defaults, sparsity.pop("options", None), (sparsity.pop("method_options", None) or {}).get(method)
    )
    flat = _flatten({**raw, "sparsity": sparsity})
    flat.update({f"sparsity options of {method}.{key}": value for key, value in _flatten(options).items()})
    return flat


def _check_same_config(run: _Run) -> None:
    """Refuse a run directory trained with another configuration than this comparison's (run names,
    directories and the settings a resume may change aside)."""
    path = run.dir / "config.yaml"
    if not path.is_file():
        return
    import yaml

    from chtorch.config.safe_yaml import safe_load_file

    try:
        loaded = safe_load_file(path)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{path} is not a readable run config ({reason}); remove that run to retrain it, or compare into "
            "another --out directory"
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} is not a run config (not a mapping); remove that run to retrain it")
    saved = _comparable(json.loads(json.dumps(loaded, default=str)), run.method)
    planned = _comparable(json.loads(json.dumps(config_to_dict(run.config), default=str)), run.method)
    # Where the data is, unlike the other settings a resume may change, decides the result: a run
    # trained on other data is never reused.
    ignore = {k for k in RESUME_OVERRIDABLE if not k.startswith("data.")} | {"run.dir", "run.name"}
    differ = sorted(k for k in saved.keys() | planned.keys() if k not in ignore and saved.get(k) != planned.get(k))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {planned.get(k)!r} now" for k in differ[:3])
        raise ConfigError(
            f"{run.dir} was trained with another configuration ({shown}{' ...' if len(differ) > 3 else ''}); "
            "compare into another --out directory, or remove that run to retrain it"
        )


def _finished(run: _Run) -> bool:
    path = run.dir / SUMMARY_NAME
    if not path.is_file():
        return False
    summary = read_json(path, what="run summary")
    return isinstance(summary, dict) and bool(summary.get("finished"))


def _plan(config: Config, methods: Sequence[str], seeds: Sequence[int], out_dir: Path, jobs: int) -> list[_Run]:
    known = all_methods()
    if not methods:
        raise ConfigError("--methods is empty: give a comma-separated list, e.g. dense,set,rigl,chts")
    for m in methods:
        if m not in known:
            raise ConfigError(
                f"unknown method {m!r}{closest(m, known)}; known methods: {', '.join(known)}", "sparsity.method"
            )
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {', '.join(methods)}")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct non-negative integers, got {list(seeds)}")
    check_logger_names(config.run.loggers)
    threads = 1 if jobs > 1 else None
    plan = [_Run(m, s, _run_config(config, m, s, out_dir / f"{m}-seed{s}", threads)) for m in methods for s in seeds]
    for run in plan:
        _check_same_config(run)
    return plan


def _write_plan(config: Config, plan: list[_Run], methods: Sequence[str], seeds: Sequence[int], out_dir: Path) -> None:
    rows = {}
    for m in methods:
        options = None if is_dense(m) else sparsity_options_for(config, m)
        rows[m] = paper_row(m, options)
    data = {
        "name": config.run.name,
        "methods": list(methods),
        "seeds": list(seeds),
        "sparsity": config.sparsity.sparsity,
        "paper_table": config.run.paper_table,
        "paper_rows": rows,
        "runs": [{"method": r.method, "seed": r.seed, "dir": r.dir.name} for r in plan],
    }
    atomic_write_text(out_dir / PLAN_NAME, json.dumps(data, indent=2), root=out_dir)


def check_compare_dir(out_dir: Path) -> None:
    """Refuse an ``--out`` that is a file, or a directory holding compare outputs that no
    ``chtorch compare`` wrote there (no plan beside them): they are a user's files, never replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; compare writes a directory of runs: choose another --out")
    if out_dir.is_dir() and not (out_dir / PLAN_NAME).exists():
        theirs = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
        if theirs:
            raise ConfigError(
                f"--out {out_dir} holds {', '.join(theirs)} that chtorch compare did not write (no {PLAN_NAME}); "
                "they would be replaced: choose another --out directory"
            )


def _run_here(plan: list[_Run], out: TextIO) -> None:
    for i, run in enumerate(plan, start=1):
        print(f"[{i}/{len(plan)}] {run.method}, seed {run.seed} -> {run.dir}", file=out, flush=True)
        if _finished(run):
            print("  finished earlier; reusing its result", file=out)
        elif (run.dir / CHECKPOINT_NAME).is_file():
            resume(run.dir, out=out)
        else:
            train(run.config, run.dir, out=out)


def _command(run: _Run, config_path: Path) -> list[str]:
    base = [sys.executable, "-m", "chtorch.cli", "train"]
    quiet = ["--set", "run.threads=1", "train.progress=lines"]
    if (run.dir / CHECKPOINT_NAME).is_file():
        return [*base, "--resume", str(run.dir), *quiet]
    return [*base, str(config_path), "--out", str(run.dir), *quiet]


def _run_parallel(plan: list[_Run], jobs: int, out_dir: Path, out: TextIO) -> list[str]:
    """Train the unfinished runs of ``plan``, ``jobs`` at a time, as subprocesses; returns the
    failures (one line each)."""
    logs, configs = out_dir / "logs", out_dir / "configs"
    for folder in (logs, configs):
        check_write_path(folder, out_dir)  # no link out of the compare directory
        folder.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo = []
    for i, run in enumerate(plan, start=1):
        if _finished(run):
            print(f"[{i}/{len(plan)}] {run.name}: finished earlier; reusing its result", file=out, flush=True)
        else:
            todo.append((i, run))
    running: dict[subprocess.Popen, tuple[int, _Run, float, Any]] = {}
    failures: list[str] = []
    try:
        while todo or running:
            while todo and len(running) < jobs:
                i, run = todo.pop(0)
                config_path = configs / f"{run.name}.yaml"
                check_write_path(config_path, out_dir)
                save_config(run.config, config_path)
                command = _command(run, config_path)
                log = open_append(logs / f"{run.name}.log", out_dir)  # closed when the run ends
                verb = "resuming" if "--resume" in command else "training"
                print(f"[{i}/{len(plan)}] {verb} {run.name} (log: {log.name})", file=out, flush=True)
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[proc] = (i, run, time.perf_counter(), log)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                i, run, t0, log = running.pop(proc)
                log.close()
                seconds = time.perf_counter() - t0
                if proc.returncode == 0 and _finished(run):
                    print(f"[{i}/{len(plan)}] finished {run.name} in {seconds:.0f} s", file=out, flush=True)
                else:
                    failures.append(f"{run.name} (exit status {proc.returncode}; see {log.name})")
                    print(
                        f"[{i}/{len(plan)}] FAILED {run.name} (exit status {proc.returncode}); see {log.name}",
                        file=out,
                        flush=True,
                    )
    except KeyboardInterrupt:
        # The runs got the Ctrl-C too (same process group): each saves a checkpoint and exits.
        for proc, (_, _, _, log) in running.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        print(
            "\nchtorch: compare interrupted; run the same command again to resume the unfinished runs",
            file=out,
            flush=True,
        )
        raise
    return failures


def compare(
    config: Config,
    methods: Sequence[str],
    seeds: Sequence[int] = (0,),
    out_dir: str | os.PathLike[str] | None = None,
    *,
    out: TextIO | None = None,
    jobs: int = 1,
) -> CompareResult:
    """Train every ``method`` with every seed in ``out_dir/<method>-seed<s>`` (``jobs`` at a time)
    and write ``compare.md``, ``compare.csv``, ``compare.json`` and the overlay plots there. Runs
    finished earlier are reused and interrupted ones resumed."""
    out = out or sys.stdout
    methods = [m.strip().lower() for m in methods if m.strip()]
    seeds = [int(s) for s in seeds]
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if out_dir is None:
        out_dir = Path("runs") / f"compare-{config.run.name}-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir = Path(out_dir)
    check_compare_dir(out_dir)
    plan = _plan(config, methods, seeds, out_dir, jobs)  # every run's config is checked before anything trains
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_plan(config, plan, methods, seeds, out_dir)
    failures: list[str] = []
    if jobs == 1:
        _run_here(plan, out)
    else:
        failures = _run_parallel(plan, jobs, out_dir, out)
    table, rows, runs, plots = write_compare(out_dir)
    result = CompareResult(
        out_dir, metric=rows[0]["metric"] if rows else "", rows=rows, runs=runs, table=table, plots=plots
    )
    print("", file=out)
    print(table, file=out)
    print(
        f"\nsaved {out_dir / 'compare.md'}, compare.csv" + (" and the overlay plots" if plots else ""),
        file=out,
        flush=True,
    )
    if failures:
        raise TrainingError(
            f"{len(failures)} of {len(plan)} runs failed: {'; '.join(failures)}. The table holds the others; "
            "fix the cause and run the same command again (finished runs are reused)"
        )
    return result
