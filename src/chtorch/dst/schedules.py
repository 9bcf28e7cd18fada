"""Schedules of dynamic sparse training: pure functions of the step (no state, so a resumed run and
every rank compute the same values).

References: Zhang et al., NeurIPS 2025, arXiv:2501.19107 (CHTs/CHTss; where the paper and the official code differ:
docs/decisions.md);
Evci et al., ICML 2020 (RigL cosine drop fraction); Zhu & Gupta 2017 (GMP cubic schedule);
Liu et al., NeurIPS 2021 (GraNet); Yuan et al., NeurIPS 2021 (MEST EM&S). The optimizer's own LR
schedules (linear decay, noam, cosine) live in :mod:`chtorch.train.lr_schedules`; the re-warm-up
after a topology update is the engine's (below).

Conventions: ``step`` counts optimizer steps (0 before the first one). Topology updates happen at
``step = start + interval, start + 2·interval, …`` while ``step < t_end`` (``final_update="before_t_end"``, the
official MLP/Transformer code) or ``step <= t_end`` (``"at_t_end"``, the LLaMA code). Density-decay schedules
are indexed by ``tau``, the number of decay events done (``0 … n``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from chtorch._checks import check_number
from chtorch.dst.registry import DENSITY_SCHEDULES, TEMPERATURE_SCHEDULES

__all__ = [
    "FINAL_UPDATES",
    "update_limit",
    "is_update_step",
    "default_t_end",
    "zeta",
    "delta_schedule",
    "temperature_from_delta",
    "temperature",
    "temperature_linear",
    "temperature_paper",
    "TEMPERATURE_SCHEDULES",
    "decay_events",
    "decay_tau",
    "constant_sparsity",
    "linear_sparsity",
    "cubic_sparsity",
    "sigmoid_sparsity",
    "DENSITY_SCHEDULES",
    "get_density_schedule",
    "mest_ems_extra_density",
    "rewarmup_factor",
    "rewarmup_lambda",
]

_ANNEALS = ("cosine", "constant")


def _int(name: str, value: object, minimum: int = 0) -> int:
    return check_number(name, value, minimum, integer=True)


def _real(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    return check_number(name, value, low, high)


# --------------------------------------------------------------------------- topology update timing


#: Where the topology updates stop (option ``final_update``; docs/decisions.md, "the last topology update"):
#: "before_t_end": while ``step < T_end`` (the official MLP and Transformer code, ``self.step < self.T_end``);
#: "at_t_end": while ``step <= T_end`` (the official LLaMA code, ``self.step <= self.T_end``).
FINAL_UPDATES = ("before_t_end", "at_t_end")


def update_limit(t_end: int, final_update: str = "before_t_end") -> int:
    """The last step at which a topology update may run: ``t_end − 1`` under ``"before_t_end"``,
    ``t_end`` under ``"at_t_end"`` (-1 when no update can run: ``t_end = 0`` before it).
    E.g. t_end=750: 749 and 750; an update at step 750 (ΔT = 50) runs only under "at_t_end"."""
    t_end = _int("t_end", t_end)
    if final_update not in FINAL_UPDATES:
        raise ValueError(f"final_update must be one of {FINAL_UPDATES}, got {final_update!r}")
    return t_end if final_update == "at_t_end" else t_end - 1


def is_update_step(step: int, interval: int, t_end: int, start: int = 0, final_update: str = "before_t_end") -> bool:
    """True when a topology update is due after optimizer step ``step``: every ``interval`` steps
    counted from ``start`` (so never at ``start`` itself, and never at step 0), while ``step < t_end``
    (``final_update="before_t_end"``) or ``step <= t_end`` (``"at_t_end"``): :func:`update_limit`.
    E.g. interval=100, t_end=800: the last update at 700 ("before_t_end") or 800 ("at_t_end")."""
    step = _int("step", step)
    interval = _int("interval", interval, 1)
    start = _int("start", start)
    limit = update_limit(t_end, final_update)
    return step > start and step > 0 and step <= limit and (step - start) % interval == 0


def default_t_end(total_steps: int, fraction: float = 0.75) -> int:
    """``int(fraction · total_steps)``: the step after which the topology is frozen (0.75 in the paper
    and the official code)."""
    total_steps = _int("total_steps", total_steps)
    fraction = _real("fraction", fraction, 0.0, 1.0)
    return int(fraction * total_steps)


# --------------------------------------------------------------------------- removal fraction and temperature


def zeta(step: int, zeta0: float, t_end: int, anneal: str = "cosine") -> float:
    """Fraction of active links removed at an update.

    ``"cosine"`` (RigL, CHTs ``--adaptive_zeta``): ``zeta0/2 · (1 + cos(π · step / t_end))``;
    ``"constant"`` (SET): ``zeta0``. Both are 0 after ``t_end`` (no update happens there).
    E.g. zeta0=0.3, t_end=1000: 0.3 at step 0, 0.15 at step 500, 0.0 at step 1000.
    """
    step = _int("step", step)
    zeta0 = _real("zeta0", zeta0, 0.0, 1.0)
    t_end = _int("t_end", t_end)
    if anneal not in _ANNEALS:
        raise ValueError(f"anneal must be one of {_ANNEALS}, got {anneal!r}")
    if step > t_end:
        return 0.0
    if anneal == "constant" or t_end == 0:
        return zeta0
    return zeta0 / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def delta_schedule(step: int, t_end: int, start: float = 0.5, end: float = 0.9) -> float:
    """Softness δ of removal, linear from ``start`` at step 0 to ``end`` at ``t_end`` (held after).

    The paper's setting is 0.5 → 0.9 (App. H); the official MLP/Transformer code's T 1 → 3 corresponds to
    0.5 → 0.75
    (docs/decisions.md)."""
    step = _int("step", step)
    t_end = _int("t_end", t_end)
    start = _real("start", start, 0.0, 1.0)
    end = _real("end", end, 0.0, 1.0)
    if t_end == 0:
        return end
    return start + (end - start) * min(step, t_end) / t_end


def temperature_from_delta(delta: float) -> float:
    """Exponent T applied to removal scores, ``p ∝ score ** T``: ``T = δ / (1 − δ)``.

    This follows the official code's values (δ = 0.5 → 1, 0.75 → 3, 0.9 → 9), not the paper's
    ``1/(1−δ)`` (docs/decisions.md, removal temperature). ``δ = 1`` returns ``inf``: hard top-k (plain
    magnitude)."""
    delta = _real("delta", delta, 0.0, 1.0)
    if delta == 1.0:
        return math.inf
    return delta / (1.0 - delta)


@TEMPERATURE_SCHEDULES.register(
    "linear",
    summary="T linear in the step from temperature_start to temperature_end "
    "until T_end (both official codes: MLP/Transformer 1 → 3, LLaMA 1 → 9)",
    params={"start": "temperature_start", "end": "temperature_end"},
)
def temperature_linear(step: int, t_end: int, *, start: float = 1.0, end: float = 3.0) -> float:
    """``T = start + (end − start) · min(step, t_end) / t_end``: the official MLP/Transformer code's
    ``T = 1 + 2t/T_end`` with ``start=1, end=3`` (the default), the LLaMA code's ``start_T → end_T``
    with ``end=9`` (docs/decisions.md, removal temperature). It reads no δ: delta_start / delta_end
    under this schedule are an error (:mod:`chtorch.dst.reads`).
    E.g. t_end=1000, 1 → 3: 1.0 at step 0, 2.0 at 500, 3.0 at 1000 and after."""
    step = _int("step", step)
    t_end = _int("t_end", t_end)
    start = _real("start", start, 0.0)
    end = _real("end", end, 0.0)
    if t_end == 0:
        return end
    return start + (end - start) * min(step, t_end) / t_end


_DELTAS = {"start_delta": "delta_start", "end_delta": "delta_end"}


@TEMPERATURE_SCHEDULES.register(
    "paper",
    summary="the paper's text: δ linear from delta_start to delta_end until T_end, T = 1/(1−δ)",
    params=_DELTAS,
)
def temperature_paper(step: int, t_end: int, start_delta: float = 0.5, end_delta: float = 0.9) -> float:
    """``T = 1/(1 − δ)`` with δ linear in the step (Zhang et al., NeurIPS 2025, §3.1 / App. H):
    T = 2 at δ = 0.5, 4 at 0.75, 10 at 0.9. ``δ = 1`` gives ``inf`` (hard top-k).
    E.g. t_end=1000, δ 0.5 → 0.75: 2.0 at step 0, 1/(1−0.625) = 8/3 at 500, 4.0 at 1000."""
    delta = delta_schedule(step, t_end, start_delta, end_delta)
    return math.inf if delta == 1.0 else 1.0 / (1.0 - delta)


@TEMPERATURE_SCHEDULES.register(
    "delta",
    summary="δ linear from delta_start to delta_end until T_end, T = δ/(1−δ) (T 1 → 9)",
    params=_DELTAS,
)
def temperature_linear_delta(step: int, t_end: int, start_delta: float = 0.5, end_delta: float = 0.9) -> float:
    """T = δ/(1−δ) with δ linear in the step (:func:`temperature` with ``linear_in="delta"``): neither
    the paper's formula nor the codes' linear T; kept as an option to reproduce earlier chtorch runs."""
    return temperature(step, t_end, start_delta, end_delta, linear_in="delta")


@TEMPERATURE_SCHEDULES.register(
    "temperature",
    summary="T itself linear from T(delta_start) to T(delta_end) until T_end, T(δ) = δ/(1−δ)",
    params=_DELTAS,
)
def temperature_linear_t(step: int, t_end: int, start_delta: float = 0.5, end_delta: float = 0.9) -> float:
    """T linear in the step between ``δ/(1−δ)`` at the two ends (:func:`temperature` with
    ``linear_in="temperature"``): ``linear`` with its end points given as δ."""
    return temperature(step, t_end, start_delta, end_delta, linear_in="temperature")


def temperature(
    step: int,
    t_end: int,
    start_delta: float = 0.5,
    end_delta: float = 0.9,
    linear_in: str = "delta",
) -> float:
    """Removal temperature at ``step``, from ``T(start_delta)`` at step 0 to ``T(end_delta)`` at ``t_end``
    with ``T(δ) = δ/(1−δ)`` (:func:`temperature_from_delta`).

    ``linear_in="delta"`` (default; docs/decisions.md, removal temperature): δ moves linearly, ``T =
    T(delta_schedule(...))``;
    e.g. t_end=1000: T = 1 at step 0, 7/3 at step 500, 9 at step 1000.
    ``linear_in="temperature"``: T itself moves linearly between the same endpoints, which is what both
    official codes do (the LLaMA code's ``start_T→end_T``, the MLP/Transformer code's ``1 + 2t/T_end``); e.g. T = 5 at
    step 500 for 0.5→0.9.
    """
    if linear_in == "delta":
        return temperature_from_delta(delta_schedule(step, t_end, start_delta, end_delta))
    if linear_in != "temperature":
        raise ValueError(f"linear_in must be 'delta' or 'temperature', got {linear_in!r}")
    step = _int("step", step)
    t_end = _int("t_end", t_end)
    low = temperature_from_delta(_real("start_delta", start_delta, 0.0, 1.0))
    high = temperature_from_delta(_real("end_delta", end_delta, 0.0, 1.0))
    if math.isinf(low) or math.isinf(high):
        raise ValueError("linear_in='temperature' needs start_delta and end_delta < 1 (T would be infinite)")
    if t_end == 0:
        return high
    return low + (high - low) * min(step, t_end) / t_end


# --------------------------------------------------------------------------- gradual density decay


def decay_events(t0: int, t_f: int, interval: int) -> int:
    """Number ``n`` of decay events between ``t0`` and ``t_f``: ``(t_f − t0) // interval``."""
    t0 = _int("t0", t0)
    t_f = _int("t_f", t_f)
    interval = _int("interval", interval, 1)
    if t_f < t0:
        raise ValueError(f"the decay end t_f={t_f} is before its start t0={t0}")
    return (t_f - t0) // interval


def decay_tau(step: int, t0: int, interval: int) -> int:
    """Number of decay events done by ``step``: ``max(0, floor((step − t0) / interval))``
    (clamp it to ``n`` yourself, or let the sparsity schedules do it)."""
    step = _int("step", step)
    t0 = _int("t0", t0)
    interval = _int("interval", interval, 1)
    return max(0, (step - t0) // interval)


def _progress(tau: float, n: int) -> float | None:
    """τ/n with τ clamped to [0, n]; None when n == 0 (no decay: the final sparsity holds)."""
    n = _int("n", n)
    tau = _real("tau", tau)
    if n == 0:
        return None
    return min(max(tau, 0.0), float(n)) / n


def _check_pair(s_i: float, s_f: float) -> tuple[float, float]:
    return _real("s_i", s_i, 0.0, 1.0), _real("s_f", s_f, 0.0, 1.0)


@DENSITY_SCHEDULES.register("constant", summary="no decay: the final sparsity throughout (fixed-density methods)")
def constant_sparsity(tau: float, n: int, s_i: float, s_f: float) -> float:
    """No decay: always the final sparsity ``s_f`` (fixed-density methods)."""
    _progress(tau, n)
    return _check_pair(s_i, s_f)[1]


@DENSITY_SCHEDULES.register("linear", summary="s_i → s_f linearly")
def linear_sparsity(tau: float, n: int, s_i: float, s_f: float) -> float:
    """``s_i + (s_f − s_i) · τ/n``."""
    s_i, s_f = _check_pair(s_i, s_f)
    x = _progress(tau, n)
    return s_f if x is None else s_i + (s_f - s_i) * x


@DENSITY_SCHEDULES.register("cubic", "granet", "gmp", summary="s_i → s_f on the cubic schedule (GMP, GraNet)")
def cubic_sparsity(tau: float, n: int, s_i: float, s_f: float) -> float:
    """GMP / GraNet (Zhu & Gupta 2017): ``s_i + (s_f − s_i) · (1 − (1 − τ/n)³)``.
    E.g. s_i=0.5, s_f=0.9, n=10: 0.5 (τ=0), 0.7628 (τ=3: 0.5 + 0.4·0.657), 0.85 (τ=5), 0.9 (τ=10)."""
    s_i, s_f = _check_pair(s_i, s_f)
    x = _progress(tau, n)
    return s_f if x is None else s_i + (s_f - s_i) * (1.0 - (1.0 - x) ** 3)


def _sigma(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@DENSITY_SCHEDULES.register(
    "sigmoid", "s_shape", summary="min-max normalised sigmoid of steepness sigmoid_k (CHTss)", params={"k": "sigmoid_k"}
)
def sigmoid_sparsity(tau: float, n: int, s_i: float, s_f: float, k: float = 6.0) -> float:
    """CHTss (as the official LLaMA code's ``s_shape``): a min–max normalised sigmoid,

    ``s_i + (s_f − s_i) · [σ(k(2τ/n − 1)) − σ(−k)] / [σ(k) − σ(−k)]``,

    so ``s(0) = s_i``, ``s(n) = s_f``, ``s(n/2) = (s_i + s_f)/2``; ``k`` (6 in the paper) sets the
    steepness (``k → 0`` tends to linear)."""
    s_i, s_f = _check_pair(s_i, s_f)
    k = _real("k", k, 0.0)
    x = _progress(tau, n)
    if x is None:
        return s_f
    if k == 0.0:
        return s_i + (s_f - s_i) * x
    low, high = _sigma(-k), _sigma(k)
    return s_i + (s_f - s_i) * (_sigma(k * (2.0 * x - 1.0)) - low) / (high - low)


DensitySchedule = Callable[..., float]


def get_density_schedule(name: str) -> DensitySchedule:
    """The sparsity schedule ``f(tau, n, s_i, s_f, ...) -> sparsity`` registered as ``name`` (the
    official code's ``--pruning_scheduler`` names ``granet``, ``gmp`` and ``s_shape`` are aliases)."""
    return DENSITY_SCHEDULES.part(name).fn


# --------------------------------------------------------------------------- MEST EM&S


def mest_ems_extra_density(
    step: int,
    t_end: int,
    interval: int,
    extra1: float = 0.05,
    extra2: float = 0.025,
    stage1: float = 0.6,
) -> float:
    """Extra density above the target in MEST's elastic mutation & soft memory bound (EM&S)
    (Yuan et al. 2021): ``extra1`` while ``step <= stage1 · t_end``, then ``extra2``
    while ``step < t_end − interval``, then 0 (boundaries as in the official code).
    E.g. t_end=1000, interval=100: 0.05 at step 600, 0.025 at 601…899, 0.0 from 900."""
    step = _int("step", step)
    t_end = _int("t_end", t_end)
    interval = _int("interval", interval, 1)
    extra1 = _real("extra1", extra1, 0.0, 1.0)
    extra2 = _real("extra2", extra2, 0.0, 1.0)
    stage1 = _real("stage1", stage1, 0.0, 1.0)
    if step <= stage1 * t_end:
        return extra1
    if step < t_end - interval:
        return extra2
    return 0.0


# --------------------------------------------------------------------------- LR re-warm-up after an update


def rewarmup_factor(step: int, interval: int, warmup_steps: int, t_end: int | None = None) -> float:
    """Iterative LR re-warm-up ("inoam", Zhang et al., NeurIPS 2025, Tables 5–6): the LR multiplier of
    the optimizer step that follows ``step`` finished steps (a ``LambdaLR`` counter).

    The paper writes ``min(1, (t mod ΔT)/w)``. In the official code the step at ``t = kΔT`` is the
    update step, skipped or run at LR 0; chtorch runs the update *after* optimizer step ``kΔT`` and
    skips nothing, so the ``j``-th step after an update (``j = step mod interval + 1``, 1 … ΔT) runs
    at ``min(1, j / warmup_steps)``: the paper's ramp without a zero-LR step (docs/decisions.md,
    "LR re-warm-up"). The first steps of training ramp the same way (the initial topology is new too).
    ``t_end=None`` (the default, both official codes: their factor is ``(t mod ΔT)/w`` for the whole
    run) ramps after every multiple of ``interval``, after T_end too; a step ``t_end`` (the last step
    at which an update may run, :func:`update_limit`) ramps only after real updates: 1.0 once the last
    multiple of ``interval`` before ``step`` lies after ``t_end``. Always 1.0 when ``warmup_steps == 0``.
    E.g. interval=100, warmup=20: 0.05 at step 100 (the first step after the update), 0.3 at 105,
    1.0 from 119 to 199, 0.05 again at 800 and 900; with t_end=150: 1.0 from step 200 on.
    """
    step = _int("step", step)
    interval = _int("interval", interval, 1)
    warmup_steps = _int("warmup_steps", warmup_steps)
    if t_end is not None:
        t_end = _int("t_end", t_end)
    if warmup_steps == 0 or (t_end is not None and step - step % interval > t_end):
        return 1.0
    return min(1.0, (step % interval + 1) / warmup_steps)


def rewarmup_lambda(
    interval: int,
    warmup_steps: int,
    t_end: int | None = None,
    base: Callable[[int], float] | None = None,
) -> Callable[[int], float]:
    """A function ``step -> multiplier`` for ``torch.optim.lr_scheduler.LambdaLR``:
    ``base(step) · rewarmup_factor(step, interval, warmup_steps, t_end)`` (``base`` defaults to 1),
    e.g. ``base=lambda s: cosine_with_warmup(s, total, warmup)``
    (:mod:`chtorch.train.lr_schedules`). Arguments are checked now."""
    _int("interval", interval, 1)
    _int("warmup_steps", warmup_steps)
    if t_end is not None:
        _int("t_end", t_end)
    if base is not None and not callable(base):
        raise ValueError("base must be a callable step -> multiplier (or None)")

    def multiplier(step: int) -> float:
        factor = rewarmup_factor(step, interval, warmup_steps, t_end)
        return factor if base is None else float(base(step)) * factor

    return multiplier
