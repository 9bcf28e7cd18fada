"""Which modules of a model to sparsify: every ``nn.Linear`` but the last by default, or a chosen set.

The paper sparsifies every Linear layer except the classifier / ``lm_head`` and keeps embeddings,
norms and biases dense (Zhang et al., NeurIPS 2025, arXiv:2501.19107, §4.1).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

from chtorch.dst.options import closest

__all__ = ["LayerSelector", "select_layers"]

LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None


def select_layers(model: nn.Module, layers: LayerSelector = None, exclude: str | Sequence[str] | None = None) -> list[str]:
    """Names of the modules to sparsify.

    ``layers``: ``None`` = every ``nn.Linear`` except the model's last one (the classifier or
    ``lm_head``, which the paper keeps dense); a glob pattern or exact name, or a list of them; or a
    callable ``(name, module) -> bool``. ``exclude``: patterns removed from the selection. Raises
    ``ValueError`` when a pattern selects nothing, a selected module is not an ``nn.Linear``, or
    nothing is left.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    linear_names = [n for n, m in named if isinstance(m, nn.Linear)]
    if layers is None:
        if len(linear_names) < 2:
            raise ValueError(
                f"the model has {len(linear_names)} nn.Linear layer(s); by default the last one stays dense, "
                "so nothing would be sparsified: pass layers=... to choose layers explicitly"
            )
        chosen = linear_names[:-1]
    elif callable(layers):
        chosen = [n for n, m in named if layers(n, m)]
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        chosen = []
        all_names = [n for n, _ in named]
        for pattern in patterns:
            hits = [n for n in all_names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(
                    f"layer pattern {pattern!r} selects no module{closest(pattern, all_names)}; "
                    f"Linear modules: {', '.join(linear_names[:20])}{' ...' if len(linear_names) > 20 else ''}"
                )
            chosen.extend(h for h in hits if h not in chosen)
        # keep model order
        order = {n: i for i, n in enumerate(all_names)}
        chosen.sort(key=order.__getitem__)
    if exclude is not None:
        ex = [exclude] if isinstance(exclude, str) else list(exclude)
        chosen = [n for n in chosen if not any(n == p or fnmatch.fnmatchcase(n, p) for p in ex)]
    modules = dict(named)
    for name in chosen:
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(
                f"selected module {name!r} is a {type(modules[name]).__name__}, not an nn.Linear; "
                "narrow the layer patterns (for example 'layers.*' → 'layers.*.fc') or use exclude="
            )
    if not chosen:
        raise ValueError("the layer selection is empty after exclusions: nothing to sparsify")
    return chosen
