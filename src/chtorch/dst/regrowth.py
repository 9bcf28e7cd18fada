"""Link regrowth: which non-links a layer gains at a topology update.

Scores for a candidate (non-link) (i, j):

- ``random``: uniform (SET, Mocanu et al. 2018).
- ``gradient``: |∂L/∂W_ij| of the dense gradient accumulated over the last steps before the update
  (RigL, Evci et al., ICML 2020; GraNet).
- ``ch``: Cannistraci-Hebb link prediction on the layer's bipartite graph after removal, either the
  matrix CH2-L3n / CH3-L3n or the path-based CH3-L3p (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
  §3.1 and App. K; CHT, ICLR 2024). A neuron left without links on one side has CH score 0.

Candidates: ``all`` non-links (the official MLP/Transformer code: its 1e-5 floor reaches every
non-link, so a neuron that percolation disconnected can be reconnected), or, for a regrowth that
declares ``"live_neurons"`` (CH), ``live``: the non-links between neurons that keep a link on each
side (widening to every non-link only when too few), so the active-neuron count can only fall.

Selection: ``topk``, or ``soft`` (sample without replacement with p ∝ score; when fewer candidates
have a positive score than links are needed, ``floor`` = 1e-5 is added to every candidate's score,
so the budget is always met).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from chtorch import linkpred
from chtorch.dst.registry import REGROWTHS
from chtorch.dst.sampling import select

if TYPE_CHECKING:
    from chtorch.dst.options import SparsityOptions

__all__ = ["regrowth_scores", "grow_links"]


@REGROWTHS.register("random", summary="uniform among the free positions (SET)", flags=("uniform",))
def random_score(keep: torch.Tensor, *, grad: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ones(keep.shape, dtype=torch.float32, device=keep.device)


@REGROWTHS.register(
    "none",
    summary="no regrowth: removal and percolation must take nothing (GMP); any shortfall is filled at random",
    flags=("uniform", "restores_nothing"),
)
def no_regrowth_score(keep: torch.Tensor, *, grad: torch.Tensor | None = None) -> torch.Tensor:
    return random_score(keep)


@REGROWTHS.register(
    "gradient", summary="|dense gradient| accumulated before the update (RigL, GraNet)", needs=("dense_gradient",)
)
def gradient_score(keep: torch.Tensor, *, grad: torch.Tensor | None = None) -> torch.Tensor:
    if grad is None:
        raise ValueError("gradient regrowth needs the dense gradient; none was recorded before this update")
    return grad.float().abs()


@REGROWTHS.register(
    "ch",
    summary="Cannistraci-Hebb link prediction (CH2/CH3-L3n matrix or "
    "CH3-L3p path); live neurons only with regrowth_candidates='live'",
    needs=("live_neurons",),
    params={"predictor": "ch_predictor", "variant": "ch_variant"},
)
def ch_score(
    keep: torch.Tensor, *, grad: torch.Tensor | None = None, predictor: str = "l3n", variant: str = "CH2"
) -> torch.Tensor:
    predict = linkpred.ch_l3n if predictor == "l3n" else linkpred.ch_l3p
    return predict(keep, variant=variant)


def regrowth_scores(
    keep: torch.Tensor,
    kind: str,
    grad: torch.Tensor | None = None,
    predictor: str = "l3n",
    variant: str = "CH2",
    options: SparsityOptions | None = None,
) -> torch.Tensor:
    """Dense ``(n_out, n_in)`` float32 scores for every position (only non-links matter) of the
    registered regrowth ``kind``. With ``options`` the part gets what it reads from them
    (:meth:`SparsityOptions.part_kwargs`: its mapped options and ``regrowth_options``), as in the
    engine; without, ``predictor``/``variant`` reach the parts that declare them."""
    part = REGROWTHS.part(kind)
    if options is not None:
        return part.fn(keep, grad=grad, **options.part_kwargs(part))
    given = {"predictor": predictor, "variant": variant}
    return part.fn(keep, grad=grad, **{k: v for k, v in given.items() if k in part.params})


def grow_links(
    keep: torch.Tensor,
    n_new: int,
    kind: str,
    selection: str,
    generator: torch.Generator,
    grad: torch.Tensor | None = None,
    predictor: str = "l3n",
    variant: str = "CH2",
    floor: float = 1e-5,
    scores: torch.Tensor | None = None,
    candidates: str = "all",
) -> torch.Tensor:
    """Bool mask of exactly ``n_new`` new links, disjoint from ``keep``.

    ``candidates="all"``: every non-link may be drawn (with the soft ``floor`` when too few scores
    are positive, a dead neuron can come back). ``candidates="live"`` and a regrowth that declares
    ``"live_neurons"`` (CH): the non-links between live neurons (at least one link on each side);
    only if there are fewer of those than ``n_new`` does the search widen to every non-link, so the
    budget is always met. ``scores`` may be given precomputed (dense, same shape).
    """
    part = REGROWTHS.part(kind)
    n_new = int(n_new)
    free = ~keep
    n_free = int(torch.count_nonzero(free))
    if not 0 <= n_new <= n_free:
        raise ValueError(f"cannot grow {n_new} links: only {n_free} positions are free")
    new = torch.zeros_like(keep)
    if n_new == 0:
        return new
    if scores is None:
        scores = regrowth_scores(keep, kind, grad=grad, predictor=predictor, variant=variant)
    if candidates not in ("all", "live"):
        raise ValueError(f"candidates must be 'all' or 'live', got {candidates!r}")
    allowed = free
    if candidates == "live" and "live_neurons" in part.needs_for():
        live_free = free & keep.any(dim=1, keepdim=True) & keep.any(dim=0, keepdim=True)
        if int(torch.count_nonzero(live_free)) >= n_new:
            allowed = live_free
    flat_scores = scores.flatten()
    # Usually far fewer candidates have a positive score than the layer has positions (CH scores
    # vanish beyond 3 hops); when they suffice, the zero-score ones can never be drawn, so select
    # among the positive ones only: same distribution, a fraction of the work.
    positive = allowed.flatten() & (flat_scores > 0)
    if "uniform" not in part.flags and int(torch.count_nonzero(positive)) >= n_new:
        index = torch.nonzero(positive).flatten()
    else:
        index = torch.nonzero(allowed.flatten()).flatten()
    chosen = select(flat_scores[index], n_new, selection, generator, floor=floor)
    new.view(-1)[index[chosen]] = True
    return new
