"""Multi30k en->de with a CPU-sized Transformer: dense vs SET vs RigL vs CHTs vs CHTss, BLEU.

Every run uses the same config, budget (steps, batch, schedule) and seed; only ``sparsity.method``
and ``sparsity.sparsity`` change. Runs go one after another in this process (the machine has two
shared cores), each through the normal ``chtorch.train.train`` path, so each has its run directory
with metrics, plots and report. A run whose ``summary.json`` exists is reused, so an interrupted
sweep continues where it stopped. At the end a Markdown table is written with BLEU (beam 2, best
validation checkpoint), validation perplexity, active neurons, wall time and the share of training
time spent in topology updates, beside the paper's Table 2 (Zhang et al., NeurIPS 2025,
arXiv:2501.19107).

    nohup python -m benchmarks.translation --data-dir ../shared/data \
        --out benchmarks/results/translation-multi30k-cpu.md > /tmp/translation-bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import Session, add_protocol_args

ROOT = Path(__file__).resolve().parents[1]

#: The CPU-sized budget (applied on top of configs/translation_multi30k_cpu.yaml).
TRANSLATION_OVERRIDES = [
    "model.d_model=128",
    "model.n_heads=4",
    "model.n_layers=2",
    "model.d_ff=256",
    "data.vocab_size=2000",
    "data.batch_tokens=1024",
    "data.steps_per_epoch=200",
    "train.epochs=6",
    "data.max_decode_len=60",
    "optim.lr=0.25",
    "optim.warmup_steps=240",
    "optim.rewarmup_steps=10",
    "sparsity.update_interval=50",
]

PAPER_TABLE_2 = """\
Paper Table 2 (Zhang et al., NeurIPS 2025): BLEU on the test set, 6+6-layer Transformer d_model 512
(Multi30k FFN 1024, 5000 steps of 1024 tokens; IWSLT14/WMT17 FFN 2048, 20k/80k steps of 10-12k
tokens), each cell 95% / 90% sparsity, 3 seeds; density decay from 50%.

| Method | Multi30k | IWSLT14 | WMT17 |
|---|---|---|---|
| FC | 31.38±0.38 | 24.48±0.30 | 25.22 |
| SET | 28.99±0.28 / 29.73±0.10 | 18.53±0.05 / 20.13±0.08 | 20.19±0.12 / 21.52±0.28 |
| RigL | 29.94±0.27 / 30.26±0.34 | 20.53±0.21 / 21.52±0.15 | 20.71±0.21 / 22.22±0.10 |
| CHT | 27.79 / 28.38 | 18.59 / 19.91 | 19.03 / 21.08 |
| CHTs | 28.94±0.57 / 29.81±0.37 | 21.15±0.10 / 21.92±0.17 | 20.94±0.63 / 22.40±0.06 |
| MEST EM&S | 28.89±0.26 / 30.04±0.52 | 19.56±0.10 / 21.05±0.21 | 20.70±0.07 / 22.22±0.10 |
| GMP | 30.51±0.82 / 30.49±0.40 | 22.76±0.82 / 22.82±0.53 | 22.47±0.10 / 23.37±0.08 |
| GraNet | 31.31±0.31 / 31.62±0.48 | 22.53±0.12 / 22.43±0.09 | 22.51±0.21 / 23.46±0.09 |
| CHTss | 32.03±0.29 / 32.86±0.16 | 24.51±0.02 / 24.31±0.04 | 23.73±0.43 / 24.61±0.14 |
"""


# ------------------------------------------------------------------------------------------------
# Shared with benchmarks/lm.py


class StepTimer:
    """Trainer callback: wall time between consecutive optimizer steps of one epoch (so evaluation,
    which runs between epochs, is left out), and the steps that included a topology update."""

    def __init__(self) -> None:
        self.last: tuple[int, float] | None = None
        self.train_seconds = 0.0

    def __call__(self, trainer: Any) -> None:
        now = time.perf_counter()
        if self.last is not None and self.last[0] == trainer.epoch:
            self.train_seconds += now - self.last[1]
        self.last = (trainer.epoch, now)


def run_one(config_path: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Train (or reuse) one run and return its summary plus timing facts from its logs."""
    from chtorch.config import load_config
    from chtorch.train import resume, train
    from chtorch.train.metrics import read_metrics

    summary_path = run_dir / "summary.json"
    timer = StepTimer()
    if not summary_path.is_file():
        started, cpu_started = time.perf_counter(), time.process_time()
        if (run_dir / "checkpoint.pt").is_file():
            resume(run_dir, out=io.StringIO(), callbacks=[timer])
        else:
            train(load_config(config_path, overrides), run_dir, out=io.StringIO(), callbacks=[timer])
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        (run_dir / "bench_timing.json").write_text(
            json.dumps({"wall": wall, "cpu": cpu, "train_seconds": timer.train_seconds})
        )
    summary = json.loads(summary_path.read_text())
    timing = (
        json.loads((run_dir / "bench_timing.json").read_text()) if (run_dir / "bench_timing.json").is_file() else {}
    )
    updates = [r for r in read_metrics(run_dir) if r.get("kind") == "update"]
    summary["update_seconds"] = sum(float(r.get("seconds") or 0.0) for r in updates)
    summary["n_updates"] = len(updates)
    summary["train_seconds"] = timing.get("train_seconds")
    summary["wall"] = timing.get("wall")
    summary["cpu"] = timing.get("cpu")
    return summary


def sweep(
    config_path: Path, base: list[str], runs: list[tuple[str, float]], out_dir: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    results = []
    for method, sparsity in runs:
        name = "dense" if method == "dense" else f"{method}-{sparsity:g}"
        overrides = [*base, f"sparsity.method={method}", f"run.name={name}", "train.progress=off"]
        if method != "dense":
            overrides.append(f"sparsity.sparsity={sparsity}")
        log(f"[{datetime.datetime.now():%H:%M:%S}] {name}: start")
        try:
            summary = run_one(config_path, overrides, out_dir / name)
        except Exception as exc:  # keep the sweep going; the table says what failed
            log(f"[{datetime.datetime.now():%H:%M:%S}] {name}: FAILED {type(exc).__name__}: {exc}")
            results.append(
                {"name": name, "method": method, "sparsity": sparsity, "error": f"{type(exc).__name__}: {exc}"}
            )
            continue
        summary.update(name=name, target_sparsity=sparsity)
        final = summary.get("final", {})
        log(
            f"[{datetime.datetime.now():%H:%M:%S}] {name}: done in {summary.get('wall') or summary['seconds']:.0f}s "
            f"{summary['primary_metric']}={final.get(summary['primary_metric'])}"
        )
        results.append(summary)
    return results


def sparsity_cell(r: dict[str, Any]) -> str:
    return "-" if r["method"] == "dense" else f"{r['target_sparsity']:.0%}"


def overhead_cell(r: dict[str, Any]) -> str:
    if not r.get("n_updates"):
        return "-"
    train = r.get("train_seconds") or r.get("seconds")
    per = 1000 * r["update_seconds"] / r["n_updates"]
    return f"{100 * r['update_seconds'] / train:.1f}% ({r['n_updates']} × {per:.0f} ms)"


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CHTORCH_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--config", default=str(ROOT / "configs" / "translation_multi30k_cpu.yaml"))
    parser.add_argument(
        "--runs-dir", default=None, help="where the run directories go (default: runs/bench-translation)"
    )
    parser.add_argument("--methods", default="set,rigl,chts,chtss")
    parser.add_argument("--sparsities", default="0.9,0.95")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra config overrides")
    add_protocol_args(parser, threads=2)
    args = parser.parse_args(argv)
    session = Session(args, "Multi30k en→de, CPU-sized Transformer: BLEU of dense vs SET vs RigL vs CHTs vs CHTss")
    out_dir = Path(args.runs_dir or ROOT / "runs" / "bench-translation")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = [
        f"data.dir={args.data_dir}",
        f"run.threads={args.threads}",
        "run.device=cpu",
        *TRANSLATION_OVERRIDES,
        *args.overrides,
    ]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    runs = [("dense", 0.0)] + [(m, s) for s in sparsities for m in args.methods.split(",")]
    results = sweep(Path(args.config), base, runs, out_dir, lambda line: print(line, flush=True))

    lines = session.header()
    lines += [
        f"- config: `{Path(args.config).relative_to(ROOT) if Path(args.config).is_relative_to(ROOT) else args.config}` "
        f"with `{' '.join(TRANSLATION_OVERRIDES + args.overrides)}`",
        "- seed 0, one run per cell; runs one after another (an accuracy "
        "benchmark: wall times are indicative, CPU time in brackets)",
        "",
    ]
    done = [r for r in results if "error" not in r]
    if done:
        d = done[0].get("data", {})
        lines += [
            f"Data: {d.get('train_pairs')} training pairs, {d.get('val_pairs')} validation pairs, "
            f"{d.get('test_sentences')} test sentences (test_2016_flickr), joint BPE vocabulary {d.get('src_vocab')}; "
            f"{done[0].get('parameters')} parameters (dense); {done[0].get('steps')} steps of ≤1024 padded tokens.",
            "",
        ]
    lines += [
        "| method | sparsity | BLEU (best val ckpt) | best epoch | "
        "val ppl (last) | ANP | density | wall | topology updates |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['sparsity']:g} | failed: {r['error']} | | | | | | |")
            continue
        f = r["final"]
        lines.append(
            f"| {r['method']} | {sparsity_cell(r)} | {f.get('test_bleu', float('nan')):.2f} | "
            f"{f.get('best_epoch', '-')} | {f.get('val_ppl', float('nan')):.2f} "
            f"| {100 * f.get('active_neurons', 1.0):.1f}% | "
            f"{f.get('density', 1.0):.4f} | {r.get('wall') or r['seconds']:.0f}s "
            f"({r.get('cpu') or 0:.0f}s cpu) | {overhead_cell(r)} |"
        )
    lines += [
        "",
        "ANP = active neurons (percent of neurons of the sparse layers that keep links, paper's ANP). "
        "Topology updates = share of the training-step wall time (evaluation excluded) spent in "
        "`DynamicSparsity` topology updates (count × mean time).",
        "",
        PAPER_TABLE_2,
    ]
    print("\n".join(lines))
    session.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
