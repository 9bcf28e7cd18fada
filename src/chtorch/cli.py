"""The ``chtorch`` command.

    chtorch train [CONFIG.yaml] [--set key=value ...] [--out DIR]   train (no config: the offline demo)
    chtorch train CONFIG.yaml --import my_parts.py                  with your own registered parts, recipes, ...
    chtorch train --resume RUN_DIR                                  continue a run exactly
    chtorch methods                                                 the registered methods
    chtorch compare CONFIG.yaml --methods dense,set,rigl,chts [--seeds 0,1,2] [--jobs N]
    chtorch report RUN_DIR|COMPARE_DIR                              re-create plots and report.md / compare.md
    chtorch config [CONFIG.yaml] [--set ...] [--reference]          show the resolved config / all keys
    chtorch export RUN_DIR                                          compact a trained sparse model
    chtorch evaluate RUN_DIR [--set key=value ...] [--name NAME]   score a run again (e.g. other decoding)
    chtorch configs [copy NAME [DEST]]                              the shipped configs; copy one to edit

User mistakes (config, data files, checkpoints) print one ``chtorch: error: ...`` line that names the
problem and the fix, and exit with status 2; an interrupted run exits with 130 after saving.

Several processes: ``torchrun --nproc_per_node N -m chtorch.cli train CONFIG`` (or the ``chtorch``
script in place of ``-m chtorch.cli``) trains with DistributedDataParallel; only rank 0 prints and
writes (see :mod:`chtorch.train.distributed`). ``python -m chtorch`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chtorch import __version__
from chtorch.cli_configs import add_configs_parser, cmd_configs

if TYPE_CHECKING:
    from chtorch.config import Config

__all__ = ["main", "build_parser"]

DEMO_HINT = "a CHTs-sparsified MLP on scikit-learn's handwritten digits (offline, under a minute on 2 CPU cores)"


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.01 model.hidden=[512,512] sparsity.options.zeta=0.2 "
        "(types are checked; `chtorch config --reference` lists every key)",
    )
    _add_import(parser)


def _add_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (a name on sys.path or a .py file) that registers your own parts, methods, recipes, "
        "kernels or backends before the config is read; recorded in run.imports (docs/extending.md)",
    )


def _imported(entries: Sequence[str]) -> list[str]:
    """Import ``--import`` entries now (file paths made absolute, so the saved config finds them again)."""
    from chtorch.config.imports import import_modules

    absolute = [str(Path(e).resolve()) if e.endswith(".py") or "/" in e else e for e in entries]
    import_modules(absolute, key="--import")
    return absolute


def _record_imports(config: Config, imports: Sequence[str]) -> Config:
    config.run.imports = list(dict.fromkeys([*config.run.imports, *imports]))
    return config


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover - chtorch cannot import without torch
        torch_version = "not installed"
    return f"chtorch {__version__} (torch {torch_version}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chtorch",
        description="Brain-inspired dynamic sparse training for PyTorch: Cannistraci-Hebb training (CHT, CHTs, CHTss) "
        "and the SET, RigL, MEST, GMP, GraNet baselines.",
        epilog="Start with `chtorch train` (no arguments): " + DEMO_HINT + ". Data files are looked for in "
        "--set data.dir=... or $CHTORCH_DATA.",
    )
    parser.add_argument(
        "--version", action="version", version=_version(), help="print chtorch's and torch's versions and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model (no config: the offline demo)",
        description="Train a model with dynamic sparse training. Without CONFIG: " + DEMO_HINT + ".",
    )
    p.add_argument(
        "config", nargs="?", help="YAML config or a shipped name (`chtorch configs`); default: the digits demo"
    )
    _add_set(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint, exactly")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<run.name>-<date>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines (train.progress=off)")

    p = sub.add_parser(
        "methods", help="list the registered methods", description="List the dynamic sparse training methods."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show each method's paper and preset options")
    _add_import(p)

    p = sub.add_parser(
        "compare",
        help="train several methods on the same budget and tabulate",
        description="Train each method (and seed) with the same config and budget, then print and save "
        "a table (mean ± standard error over seeds of the last- and best-epoch metric, active neurons, density, and "
        "the paper's cell where run.paper_table names one) and overlay plots. The same command again reuses "
        "finished runs and resumes interrupted ones.",
    )
    p.add_argument("config", help="YAML config shared by every run")
    p.add_argument(
        "--methods", required=True, help="comma-separated, e.g. dense,set,rigl,chts,chtss (dense = no sparsification)"
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/compare-<name>-<date>-<time>)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once, each a subprocess with one torch "
        "thread (default 1: one after another, in this process)",
    )
    _add_set(p)

    p = sub.add_parser(
        "report",
        help="re-create a run's plots and report.md (or a compare directory's table and plots)",
        description="Re-create the plots and report.md of RUN_DIR from its metrics.jsonl and topology snapshots; for a "
        "directory written by `chtorch compare`, re-create compare.md/.csv/.json and the overlay plots from its runs.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR|COMPARE_DIR")

    p = sub.add_parser(
        "config",
        help="print the resolved config, or the reference of every key",
        description="Print the configuration that `chtorch train CONFIG --set ...` would use.",
    )
    p.add_argument("config", nargs="?")
    _add_set(p)
    p.add_argument(
        "--reference", action="store_true", help="print every config key with its type, default and meaning (Markdown)"
    )

    p = sub.add_parser(
        "export",
        help="compact a trained sparse model (drops dead neurons)",
        description="Compact the model of RUN_DIR: remove inactive neurons and store the sparse layers compactly.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="output .safetensors file, its description beside it as .json (default: RUN_DIR/compact.safetensors)",
    )
    p.add_argument(
        "--sparse",
        action="store_true",
        help="also store the remaining sparse layers in CSR (SparseInferenceLinear) for inference",
    )
    _add_set(p)  # where the data is now (data.dir=...): the measurement batch comes from it
    _add_evaluate(sub)
    add_configs_parser(sub)
    return parser


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained or interrupted run again with the current code and evaluation options",
        description="Recompute the test metric of RUN_DIR without training: its best validation checkpoint "
        "(translation) or last checkpoint, with the current code and --set evaluation options (e.g. "
        "data.replace_unk=true, data.beam_size=5). Writes RUN_DIR/evaluation-NAME.json (and .txt: the outputs); "
        "the training records are left as they are.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_set(p)
    p.add_argument(
        "--name", help="names the files evaluation-NAME.json/.txt (default: the overrides, or 'default' without)"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from chtorch.train.evaluation import evaluate_run

    _check_overrides(args.overrides)
    result = evaluate_run(args.run_dir, args.overrides, args.name)
    print(f"{result.weights}:")
    for key, value in result.metrics.items():
        print(f"  {key} = {value:.4f}" if isinstance(value, float) else f"  {key} = {value}")
    for path in (result.path, result.outputs):
        if path is not None:
            print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise), without touching the process group."""
    from chtorch.train.distributed import env_rank

    try:
        return env_rank()
    except ValueError:
        return 0


def _fail(message: str) -> int:
    rank = _rank()
    where = f"[rank {rank}] " if rank else ""  # under torchrun every rank reports; rank 0 plainly
    print(f"chtorch: {where}error: {message}", file=sys.stderr, flush=True)
    return 2


def _warning_printer(default):  # noqa: ANN001, ANN202
    """A ``warnings.showwarning`` for the command: chtorch's warnings (their text starts with
    ``chtorch:``) print as one ``chtorch: warning: ...`` line, without the source line; others as
    ``default`` does."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = str(message)
        if text.startswith("chtorch: "):
            print("chtorch: warning: " + text[len("chtorch: ") :], file=file or sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _check_overrides(overrides: Sequence[str]) -> None:
    from chtorch.config import ConfigError

    for text in overrides:
        if "=" not in text:
            hint = " (put the config file before --set)" if text.endswith((".yaml", ".yml")) else ""
            raise ConfigError(f"--set expects key=value, got {text!r}{hint}")


def _cmd_train(args: argparse.Namespace) -> int:
    from chtorch.config import load_config
    from chtorch.train import resume, train

    _check_overrides(args.overrides)
    overrides = list(args.overrides) + (["train.progress=off"] if args.quiet else [])
    if args.resume:
        if args.config:
            return _fail("give either CONFIG or --resume RUN_DIR, not both (a resumed run uses its saved config)")
        if args.out:
            return _fail("--out does not apply to --resume: the run continues in RUN_DIR")
        result = resume(args.resume, overrides)
        config = None
    else:
        config = _record_imports(load_config(args.config, overrides), args.imports)
        if args.config is None and not args.quiet and _rank() == 0:
            print(
                f"chtorch: no config given: using the built-in demo config, {DEMO_HINT}.\n"
                "         (`chtorch configs` lists the shipped configs, the paper's settings among them)",
                flush=True,
            )
        result = train(config, args.out)
    if result.interrupted:
        return 130
    if not args.quiet and _rank() == 0:
        if config is None:  # resumed: the run's own config
            config = _saved_config(result.run_dir)
        from chtorch.cli_hints import next_hints

        print("\nnext:")
        for line in next_hints(
            result, config, args.config or (str(result.run_dir / "config.yaml") if args.resume else None)
        ):
            print(f"  {line}")
    return 0


def _saved_config(run_dir: Path) -> Config | None:
    try:
        from chtorch.config import load_config

        return load_config(str(run_dir / "config.yaml"), [])
    except Exception:  # noqa: BLE001 - hints only; the run itself succeeded
        return None


def _cmd_methods(args: argparse.Namespace) -> int:
    from chtorch.dst import get_method, is_dense, method_table, parts

    rows = method_table(include_dense=True)
    width = max(len(name) for name, _ in rows)
    for name, summary in rows:
        print(f"{name.ljust(width)}  {summary}")
        if args.verbose and not is_dense(name):
            preset = get_method(name)
            print(f"{' ' * width}  paper: {preset.reference}")
            base = f"{preset.based_on} plus " if preset.based_on else ""
            print(f"{' ' * width}  parts: {base}{', '.join(f'{k}={v!r}' for k, v in preset.differences().items())}")
            if preset.decisions:
                print(f"{' ' * width}  decisions: {preset.decisions}")
    if args.verbose:
        print("\nparts (choose with sparsity.options.<option>=<name>; register your own with chtorch.register_part):")
        for kind, registered in parts().items():
            print(f"  {kind}:")
            for part in registered:
                needs = "depends on the options" if callable(part.needs) else ", ".join(sorted(part.needs))
                extra = f"  [needs: {needs}]" if needs else ""
                print(f"    {part.name:<12} {part.summary}{extra}")
    return 0


def _parse_list(text: str, what: str) -> list[str]:
    from chtorch.config import ConfigError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    return items


def _cmd_compare(args: argparse.Namespace) -> int:
    from chtorch.config import ConfigError, load_config
    from chtorch.train import compare
    from chtorch.train.distributed import env_world_size

    if env_world_size() > 1:
        raise ConfigError(
            "`chtorch compare` runs one process; under torchrun train each method with "
            "`torchrun ... -m chtorch.cli train CONFIG --set sparsity.method=M --out DIR`, then compare "
            "the runs' summary.json"
        )
    _check_overrides(args.overrides)
    methods = _parse_list(args.methods, "--methods")
    try:
        seeds = [int(s) for s in _parse_list(args.seeds, "--seeds")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    config = _record_imports(load_config(args.config, args.overrides), args.imports)
    compare(config, methods, seeds, args.out, jobs=args.jobs)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from chtorch.train.compare_table import is_compare_dir, write_compare
    from chtorch.train.run_report import rebuild
    from chtorch.train.rundir import check_run_records

    run_dir = Path(args.run_dir)
    if is_compare_dir(run_dir):
        table, _, _, plots = write_compare(run_dir)
        print(table)
        for path in plots:
            print(f"wrote {path}")
        print(f"wrote {run_dir / 'compare.md'}")
        return 0
    if not (run_dir / "metrics.jsonl").is_file():
        return _fail(
            f"{run_dir} is not a chtorch run directory (no metrics.jsonl), "
            "nor a compare directory (no compare-plan.json)"
        )
    check_run_records(run_dir)  # not UTF-8, not JSON, absurd records: one line naming the file and line
    try:
        plots, report, skipped = rebuild(run_dir)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:  # a damaged topology snapshot, summary...
        return _fail(
            f"cannot rebuild the report of {run_dir} from its files "
            f"({type(exc).__name__}: {str(exc)[:200]}); a file was damaged or edited"
        )
    for path in plots:
        print(f"wrote {path}")
    if skipped:
        print(f"chtorch: no plots: {skipped}", file=sys.stderr)
    print(f"wrote {report}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import chtorch.recipes.builtin  # noqa: F401  (registers the built-in recipes' schemas)
    from chtorch.config import config_reference, config_to_yaml, load_config

    if args.reference:
        print(config_reference())
        return 0
    _check_overrides(args.overrides)
    print(config_to_yaml(_record_imports(load_config(args.config, args.overrides), args.imports)), end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from chtorch.train.export import export_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        return _fail(f"{run_dir} holds no checkpoint.pt: is it a chtorch run directory?")
    _check_overrides(args.overrides)
    path, summary = export_run(run_dir, args.out, sparse_storage=args.sparse, overrides=args.overrides)
    for name, shape in summary["shapes"].items():
        print(f"  {name}: {shape[0]} x {shape[1]}")
    for note in summary["notes"]:
        print(f"  {note}")
    print(f"measured on one evaluation batch: {summary['batch']}")
    print(summary["table"])
    print(
        f"wrote {path} and {path.with_suffix('.json')}  (load with chtorch.train.export.load_exported(path); no pickle)"
    )
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "methods": _cmd_methods,
    "compare": _cmd_compare,
    "report": _cmd_report,
    "config": _cmd_config,
    "export": _cmd_export,
    "evaluate": _cmd_evaluate,
    "configs": cmd_configs,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chtorch`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from chtorch.config import ConfigError
    from chtorch.train.checkpoint import CheckpointError
    from chtorch.train.lifecycle import TrainingError
    from chtorch.train.rundir import RunRecordsError

    previous_showwarning = warnings.showwarning
    warnings.showwarning = _warning_printer(previous_showwarning)
    from chtorch._io import UnreadableFileError, os_error_message

    errors: tuple[type[BaseException], ...] = (
        ConfigError,
        CheckpointError,
        TrainingError,
        RunRecordsError,
        UnreadableFileError,
    )
    try:
        from chtorch.data import DataError

        errors += (DataError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        if getattr(args, "imports", None):
            args.imports = _imported(args.imports)
        return _COMMANDS[args.command](args)
    except errors as exc:
        from chtorch.cli_hints import data_hint

        return _fail(str(exc) + data_hint(exc, getattr(args, "overrides", ())))
    except KeyboardInterrupt:
        print("\nchtorch: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `chtorch methods | head`: the reader left; stay quiet
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, a read-only mount, a long path: one line, the files stay as they were
        return _fail(os_error_message(exc))
    finally:
        warnings.showwarning = previous_showwarning
        from chtorch.train.distributed import shutdown

        shutdown()  # leave the torchrun process group (a no-op for one process)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
