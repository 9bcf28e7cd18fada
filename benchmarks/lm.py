"""Tiny LLaMA on tiny-shakespeare: dense vs CHTs vs CHTss at 70% and 90% sparsity, validation
perplexity.

Same budget for every run (steps, batch, schedule, seed); only ``sparsity.method`` and
``sparsity.sparsity`` change. Runs go one after another through ``chtorch.train.train`` (see
benchmarks/translation.py for the sweep mechanics: finished runs are reused). The result table has
validation perplexity, active neurons, wall time and the share of training-step time spent in
topology updates, beside the paper's Table 3 (Zhang et al., NeurIPS 2025, arXiv:2501.19107).

    nohup python -m benchmarks.lm --data-dir ../shared/data --out benchmarks/results/lm-shakespeare-cpu.md \
        > /tmp/lm-bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks._common import Session, add_protocol_args
from benchmarks.translation import ROOT, overhead_cell, sparsity_cell, sweep

#: The CPU-sized budget (on top of configs/lm_shakespeare_cpu.yaml).
LM_OVERRIDES = [
    "model.size=tiny",
    "model.d_model=128",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.d_ff=344",
    "data.seq_len=128",
    "data.batch_size=16",
    "data.steps_per_epoch=100",
    "train.epochs=8",
    "optim.lr=3e-3",
    "optim.final_lr=3e-4",
    "optim.warmup_steps=80",
    "optim.rewarmup_steps=10",
    "sparsity.update_interval=50",
]

PAPER_TABLE_3 = """\
Paper Table 3 (Zhang et al., NeurIPS 2025): validation perplexity on OpenWebText (t5-base tokenizer,
vocabulary 32000, sequence 256, batch 512; 60M: 10k steps = 1.3B tokens; 130M: 30k steps; 1B: 100k
steps), bf16, best BRF (r, degree) per cell; density decay from 50%.

| Method | 60M: 70 / 80 / 90 / 95% | 130M: 70 / 80 / 90 / 95% | 1B: 70% |
|---|---|---|---|
| FC | 26.56 | 19.27 | 14.62 |
| SET | 31.77 / 30.69 / 35.26 / 39.70 | 20.82 / 22.02 / 24.73 / 28.37 | 16.37 |
| RigL | 39.96 / 41.33 / 45.34 / 51.49 | 25.85 / 66.35 / 37.18 / 49.39 | 149.17 |
| CHT | 31.02 / 32.99 / 35.01 / 41.87 | 21.02 / 22.82 / 26.27 / 30.01 | – |
| CHTs | 28.12 / 29.84 / 33.03 / 36.47 | 20.10 / 21.33 / 23.71 / 26.45 | 14.53 |
| MEST | 28.26 / 29.94 / 33.60 / 37.87 | 21.32 / 22.21 / 24.98 / 27.96 | 60.36 |
| GMP | 29.22 / 30.59 / 33.68 / 39.00 | 20.49 / 22.28 / 23.61 / 27.16 | 31.76 |
| GraNet | 30.55 / 31.51 / 33.76 / 39.98 | 22.84 / 29.03 / 26.81 / 61.31 | 79.44 |
| CHTss | 27.62 / 29.00 / 31.42 / 35.10 | 19.85 / 20.70 / 22.51 / 25.07 | 15.41 |
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CHTORCH_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--config", default=str(ROOT / "configs" / "lm_shakespeare_cpu.yaml"))
    parser.add_argument("--runs-dir", default=None, help="where the run directories go (default: runs/bench-lm)")
    parser.add_argument("--methods", default="chts,chtss")
    parser.add_argument("--sparsities", default="0.7,0.9")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra config overrides")
    add_protocol_args(parser, threads=1)
    args = parser.parse_args(argv)
    session = Session(
        args, "Tiny LLaMA on tiny-shakespeare (characters): validation perplexity of dense vs CHTs vs CHTss"
    )
    out_dir = Path(args.runs_dir or ROOT / "runs" / "bench-lm")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = [
        f"data.dir={args.data_dir}",
        f"run.threads={args.threads}",
        "run.device=cpu",
        *LM_OVERRIDES,
        *args.overrides,
    ]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    runs = [("dense", 0.0)] + [(m, s) for s in sparsities for m in args.methods.split(",")]
    results = sweep(Path(args.config), base, runs, out_dir, lambda line: print(line, flush=True))

    lines = session.header()
    config = Path(args.config)
    lines += [
        f"- config: `{config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}` "
        f"with `{' '.join(LM_OVERRIDES + args.overrides)}`",
        "- seed 0, one run per cell; runs one after another (an accuracy benchmark: wall times are indicative)",
        "",
    ]
    done = [r for r in results if "error" not in r]
    if done:
        d = done[0].get("data", {})
        lines += [
            f"Data: {d.get('train_tokens')} training / {d.get('val_tokens')} validation characters "
            f"(vocabulary {d.get('vocab_size')}); {done[0].get('parameters')} parameters (dense); "
            f"{done[0].get('steps')} steps of {d.get('batch_size')} × {d.get('seq_len')} tokens.",
            "",
        ]
    lines += [
        "| method | sparsity | val ppl | best val ppl (epoch) | ANP | density | wall | topology updates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['sparsity']:g} | failed: {r['error']} | | | | | |")
            continue
        f = r["final"]
        best = _best_val(out_dir / r["name"])
        lines.append(
            f"| {r['method']} | {sparsity_cell(r)} | {f.get('val_ppl', float('nan')):.3f} | {best} | "
            f"{100 * f.get('active_neurons', 1.0):.1f}% | {f.get('density', 1.0):.4f} | "
            f"{r.get('wall') or r['seconds']:.0f}s ({r.get('cpu') or 0:.0f}s cpu) | {overhead_cell(r)} |"
        )
    lines += [
        "",
        "ANP = active neurons (percent of neurons of the sparse layers that keep links). Topology updates = "
        "share of the training-step wall time (evaluation excluded) spent in topology updates (count × mean time).",
        "",
        PAPER_TABLE_3,
    ]
    print("\n".join(lines))
    session.write(lines)
    return 0


def _best_val(run_dir: Path) -> str:
    from chtorch.train.metrics import read_metrics

    epochs = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch" and "val_ppl" in r]
    if not epochs:
        return "-"
    best = min(epochs, key=lambda r: r["val_ppl"])
    return f"{best['val_ppl']:.3f} ({best['epoch']})"


if __name__ == "__main__":
    sys.exit(main())
