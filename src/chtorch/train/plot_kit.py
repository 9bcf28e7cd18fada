"""What every chtorch figure shares: matplotlib's object API (no pyplot, no global backend), atomic
PNG writes, the title line, topology-update markers, per-layer heatmaps with colour bars, and short
layer labels grouped by block and role, so that a 32-layer Transformer reads as well as a 3-layer MLP.

Layer names are split into a *block* (the path up to the last number: ``decoder.layers.1``) and a
*role* (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, ``fc1``, ``fc2``; ``cross q`` for
encoder–decoder attention), so ``decoder.layers.1.context_attn.q_proj`` is labelled ``dec 1 · cross q``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chtorch._io import atomic_write

__all__ = [
    "figure",
    "save",
    "safe_name",
    "layer_role",
    "layer_block",
    "layer_label",
    "run_title",
    "mark_updates",
    "heatmap",
    "legend_outside",
    "epoch_axis",
]

# leaf module name -> role. Attention projections of the common model families (LLaMA, BERT, GPT-2,
# PyTorch's and chtorch's Transformer), then feed-forward layers.
_ROLES = {
    "q_proj": "q",
    "query": "q",
    "q": "q",
    "k_proj": "k",
    "key": "k",
    "k": "k",
    "v_proj": "v",
    "value": "v",
    "v": "v",
    "o_proj": "o",
    "out_proj": "o",
    "o": "o",
    "c_attn": "qkv",
    "qkv": "qkv",
    "gate_proj": "gate",
    "w1": "gate",
    "up_proj": "up",
    "w3": "up",
    "down_proj": "down",
    "w2": "down",
    "w_1": "fc1",
    "fc1": "fc1",
    "c_fc": "fc1",
    "lin1": "fc1",
    "linear1": "fc1",
    "w_2": "fc2",
    "fc2": "fc2",
    "lin2": "fc2",
    "linear2": "fc2",
}
_CROSS = ("context_attn", "encoder_attn", "cross_attn", "crossattention", "multihead_attn", "src_attn")
_BLOCK_WORDS = {"model", "layers", "layer", "h", "blocks", "block", "transformer", "module", "_orig_mod"}
_ABBREV = {"encoder": "enc", "decoder": "dec"}


def figure(
    rows: int,
    cols: int,
    width: float,
    height: float,
    height_ratios: Sequence[float] | None = None,
    constrained: bool = True,
) -> tuple[Any, Any]:
    """A figure of ``rows × cols`` axes, each ``width`` inches wide and ``height`` tall (or, with
    ``height_ratios``, rows of those heights in inches). Constrained layout by default; figures drawn
    by the dozen (one per layer) lay themselves out (``constrained=False``), at half the cost."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib (or chtorch[plot])") from exc
    total = float(sum(height_ratios)) if height_ratios else height * rows
    fig = Figure(figsize=(width * cols, total), layout="constrained" if constrained else None)
    axes = fig.subplots(
        rows, cols, squeeze=False, gridspec_kw={"height_ratios": list(height_ratios)} if height_ratios else None
    )
    return fig, axes


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG)."""
    with atomic_write(path, suffix=".png") as (handle, _):
        fig.savefig(handle, dpi=100, format="png")
    return path


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "layer"


def layer_role(name: str) -> str:
    """``"model.layers.3.mlp.gate_proj"`` -> ``"gate"``; an unknown leaf is its own role."""
    parts = name.split(".")
    role = _ROLES.get(parts[-1], parts[-1])
    if any(p.lower() in _CROSS for p in parts[:-1]):
        role = f"cross {role}"
    return role


def layer_block(name: str) -> str | None:
    """The block a layer belongs to: its path up to the last numeric component before the leaf
    (``"encoder.layers.0.ffn.w_1"`` -> ``"encoder.layers.0"``); None when there is none
    (an MLP's ``layers.0`` is a layer, not a block)."""
    parts = name.split(".")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return None


def layer_label(name: str) -> str:
    """A short label: ``dec 1 · cross q``, ``3 · gate``; names outside blocks stay whole."""
    block = layer_block(name)
    if block is None:
        return name
    words = [_ABBREV.get(p, p) for p in block.split(".") if p not in _BLOCK_WORDS]
    return f"{' '.join(words)} · {layer_role(name)}"


def run_title(config: Mapping[str, Any], fallback: str) -> str:
    """``"<run> — <method>, sparsity 0.9 — lm / llama"`` from a run's config.yaml (as a dict)."""
    run, sp, model = (config.get(k) or {} for k in ("run", "sparsity", "model"))
    name = run.get("name", fallback)
    method = sp.get("method", "?")
    what = "dense (fully connected)" if method == "dense" else f"{method}, sparsity {sp.get('sparsity', '?')}"
    task = " / ".join(str(x) for x in (run.get("recipe"), model.get("name")) if x)
    return f"{name} — {what}" + (f" — {task}" if task else "")


def mark_updates(ax: Any, xs: Sequence[float], label: bool = False) -> None:
    """Topology updates on a time axis: thin lines when there are few, a rug of ticks along the
    bottom when there are many (one line per epoch over 100 epochs would grey the whole panel)."""
    if not len(xs):
        return
    if len(xs) <= 40:
        for i, x in enumerate(xs):
            ax.axvline(
                x,
                color="0.6",
                linewidth=0.6,
                linestyle=":",
                zorder=0,
                label="topology update" if label and i == 0 else None,
            )
    else:
        ax.vlines(
            xs,
            0.0,
            0.04,
            transform=ax.get_xaxis_transform(),
            color="0.45",
            linewidth=0.6,
            label="topology update" if label else None,
        )


def heatmap(
    fig: Any,
    ax: Any,
    values: np.ndarray,
    xs: Sequence[float],
    labels: Sequence[str],
    title: str,
    cbar: str,
    **kwargs: Any,
) -> None:
    """``values`` (layers × time) as an image with one labelled row per layer and a colour bar.
    Missing values (NaN) stay blank."""
    n = len(labels)
    x = np.asarray(xs, dtype=float)
    half = 0.5 * (np.min(np.diff(x)) if len(x) > 1 else 1.0)
    image = ax.imshow(
        np.ma.masked_invalid(values),
        aspect="auto",
        interpolation="nearest",
        extent=(x[0] - half, x[-1] + half, n - 0.5, -0.5),
        **kwargs,
    )
    step = max(1, int(np.ceil(n / 48)))  # at most 48 labelled rows; the others are ticks only
    ax.set_yticks(range(n))
    ax.set_yticklabels([label if i % step == 0 else "" for i, label in enumerate(labels)], fontsize=7 if n <= 16 else 6)
    ax.set_title(title, fontsize="medium")
    fig.colorbar(image, ax=ax, label=cbar, shrink=0.9 if n > 6 else 1.0)
    if n <= 8 and values.shape[1] <= 16:  # few cells (an MLP): print each value, colours alone are too coarse
        norm = image.norm
        for i in range(n):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    shade = image.cmap(norm(values[i, j]))
                    dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                    ax.text(
                        x[j],
                        i,
                        f"{values[i, j]:.3g}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if dark else "black",
                    )


def epoch_axis(ax: Any, label: str = "epoch") -> None:
    """Label the x axis and keep its ticks on whole numbers (epochs, update counts)."""
    ax.set_xlabel(label)
    ax.xaxis.get_major_locator().set_params(integer=True)


def legend_outside(ax: Any, **kwargs: Any) -> None:
    """A legend to the right of ``ax`` (constrained layout makes room), never over the curves."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0, **kwargs)
