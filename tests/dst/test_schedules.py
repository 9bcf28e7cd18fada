"""Tests for chtorch.dst.schedules: hand-computed values at known steps, endpoints, monotonicity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chtorch.dst import schedules as S

FAST = settings(max_examples=100, deadline=None)
approx = pytest.approx


# ----------------------------------------------------------------------------- update timing


def test_is_update_step_hand_values():
    # every 100 steps, T_end = 750
    assert [s for s in range(0, 1001) if S.is_update_step(s, 100, 750)] == [100, 200, 300, 400, 500, 600, 700]
    # the default ("before_t_end", the MLP/Transformer code's step < T_end) never updates at T_end itself;
    # "at_t_end" (the LLaMA code's step <= T_end) does
    assert not S.is_update_step(800, 100, 800) and S.is_update_step(800, 100, 801)
    assert S.is_update_step(800, 100, 800, final_update="at_t_end")
    assert not S.is_update_step(800, 100, 799, final_update="at_t_end")
    assert not S.is_update_step(0, 1, 10)  # never at step 0
    assert [s for s in range(0, 400) if S.is_update_step(s, 100, 1000, start=50)] == [150, 250, 350]
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        S.is_update_step(10, 0, 100)


def test_default_t_end():
    assert S.default_t_end(10_000) == 7500
    assert S.default_t_end(1001) == 750
    assert S.default_t_end(5000, 0.8) == 4000
    with pytest.raises(ValueError, match="fraction"):
        S.default_t_end(100, 1.5)


# ----------------------------------------------------------------------------- zeta and temperature


def test_zeta_cosine_hand_values():
    assert S.zeta(0, 0.3, 1000) == approx(0.3)
    assert S.zeta(250, 0.3, 1000) == approx(0.15 * (1 + math.sqrt(0.5)))  # 0.256066
    assert S.zeta(250, 0.3, 1000) == approx(0.2560660172)
    assert S.zeta(500, 0.3, 1000) == approx(0.15)
    assert S.zeta(1000, 0.3, 1000) == approx(0.0, abs=1e-15)
    assert S.zeta(1001, 0.3, 1000) == 0.0


def test_zeta_constant_and_errors():
    assert S.zeta(0, 0.3, 1000, "constant") == 0.3
    assert S.zeta(1000, 0.3, 1000, "constant") == 0.3
    assert S.zeta(1001, 0.3, 1000, "constant") == 0.0
    with pytest.raises(ValueError, match="anneal must be one of"):
        S.zeta(0, 0.3, 1000, "exponential")
    with pytest.raises(ValueError, match="zeta0"):
        S.zeta(0, 1.3, 1000)


@FAST
@given(t_end=st.integers(1, 10_000), a=st.integers(0, 12_000), b=st.integers(0, 12_000))
def test_zeta_is_non_increasing_and_temperature_non_decreasing(t_end, a, b):
    lo, hi = min(a, b), max(a, b)
    assert S.zeta(lo, 0.3, t_end) >= S.zeta(hi, 0.3, t_end) - 1e-15
    assert S.temperature(lo, t_end) <= S.temperature(hi, t_end) + 1e-12
    assert (
        S.temperature(lo, t_end, linear_in="temperature") <= S.temperature(hi, t_end, linear_in="temperature") + 1e-12
    )


def test_delta_and_temperature_hand_values():
    assert S.delta_schedule(0, 1000) == approx(0.5)
    assert S.delta_schedule(500, 1000) == approx(0.7)
    assert S.delta_schedule(1000, 1000) == approx(0.9)
    assert S.delta_schedule(5000, 1000) == approx(0.9)
    assert S.temperature_from_delta(0.5) == approx(1.0)
    assert S.temperature_from_delta(0.75) == approx(3.0)
    assert S.temperature_from_delta(0.9) == approx(9.0)
    assert S.temperature_from_delta(1.0) == math.inf  # hard top-k
    assert S.temperature(0, 1000) == approx(1.0)
    assert S.temperature(500, 1000) == approx(7.0 / 3.0)  # delta 0.7 -> 0.7/0.3
    assert S.temperature(1000, 1000) == approx(9.0)
    # R2's "T from 1 to 3" is delta 0.5 -> 0.75; linear in T it is 1 + 2t/T_end (2 at the midpoint).
    assert S.temperature(500, 1000, 0.5, 0.75, linear_in="temperature") == approx(2.0)
    assert S.temperature(500, 1000, 0.5, 0.75) == approx(0.625 / 0.375)
    assert S.temperature(500, 1000, linear_in="temperature") == approx(5.0)  # R1 README 1 -> 9
    with pytest.raises(ValueError, match="linear_in"):
        S.temperature(0, 10, linear_in="cubic")
    with pytest.raises(ValueError, match="delta"):
        S.temperature_from_delta(1.5)


# ----------------------------------------------------------------------------- density decay


def test_decay_events_and_tau():
    assert S.decay_events(0, 8000, 100) == 80
    assert S.decay_events(100, 1000, 300) == 3
    assert S.decay_events(500, 500, 100) == 0
    with pytest.raises(ValueError, match="before its start"):
        S.decay_events(100, 50, 10)
    assert S.decay_tau(0, 0, 100) == 0
    assert S.decay_tau(250, 0, 100) == 2
    assert S.decay_tau(250, 100, 100) == 1
    assert S.decay_tau(50, 100, 100) == 0


def test_sparsity_schedules_hand_values():
    # s_i = 0.5, s_f = 0.9, n = 10
    assert S.linear_sparsity(3, 10, 0.5, 0.9) == approx(0.62)
    assert S.cubic_sparsity(3, 10, 0.5, 0.9) == approx(0.5 + 0.4 * (1 - 0.7**3))
    assert S.cubic_sparsity(3, 10, 0.5, 0.9) == approx(0.7628)
    assert S.cubic_sparsity(5, 10, 0.5, 0.9) == approx(0.85)
    # sigmoid, k = 6: sigma(-3.6) = 1/(1 + e^3.6) = 1/37.59823444 = 0.0265969936,
    # sigma(6) - sigma(-6) = 0.9950547537 -> 0.5 + 0.4 * (0.0265969936 - 0.0024726232) / 0.9950547537
    assert S.sigmoid_sparsity(2, 10, 0.5, 0.9) == approx(0.5096977057, abs=1e-9)
    assert S.sigmoid_sparsity(5, 10, 0.5, 0.9) == approx(0.7)
    assert S.sigmoid_sparsity(8, 10, 0.5, 0.9) == approx(0.8903022943, abs=1e-9)
    assert S.constant_sparsity(3, 10, 0.5, 0.9) == 0.9
    # k -> 0 tends to linear
    assert S.sigmoid_sparsity(3, 10, 0.5, 0.9, k=1e-4) == approx(0.62, abs=1e-6)
    assert S.sigmoid_sparsity(3, 10, 0.5, 0.9, k=0.0) == approx(0.62)


@pytest.mark.parametrize("name", ["linear", "cubic", "sigmoid"])
def test_endpoints_clamping_and_no_events(name):
    f = S.get_density_schedule(name)
    assert f(0, 10, 0.5, 0.99) == approx(0.5)
    assert f(10, 10, 0.5, 0.99) == approx(0.99)
    assert f(-3, 10, 0.5, 0.99) == approx(0.5)  # tau clamped to [0, n]
    assert f(25, 10, 0.5, 0.99) == approx(0.99)
    assert f(0, 0, 0.5, 0.99) == 0.99  # no decay events: the final sparsity holds


@FAST
@given(
    name=st.sampled_from(["linear", "cubic", "sigmoid", "constant"]),
    n=st.integers(1, 500),
    a=st.integers(0, 500),
    b=st.integers(0, 500),
    s_i=st.floats(0.0, 1.0),
    s_f=st.floats(0.0, 1.0),
    k=st.floats(0.5, 12.0),
)
def test_density_schedules_are_monotone_and_bounded(name, n, a, b, s_i, s_f, k):
    f = S.get_density_schedule(name)
    kwargs = {"k": k} if name == "sigmoid" else {}
    lo, hi = min(a, b), max(a, b)
    v_lo, v_hi = f(lo, n, s_i, s_f, **kwargs), f(hi, n, s_i, s_f, **kwargs)
    sign = 1.0 if s_f >= s_i else -1.0
    assert sign * (v_hi - v_lo) >= -1e-12
    assert min(s_i, s_f) - 1e-12 <= v_lo <= max(s_i, s_f) + 1e-12


@FAST
@given(half=st.integers(1, 300), s_i=st.floats(0.0, 1.0), s_f=st.floats(0.0, 1.0), k=st.floats(0.5, 12.0))
def test_sigmoid_midpoint_and_symmetry(half, s_i, s_f, k):
    n = 2 * half
    assert S.sigmoid_sparsity(half, n, s_i, s_f, k) == approx((s_i + s_f) / 2, abs=1e-12)
    for tau in (0, half // 2, half - 1):
        total = S.sigmoid_sparsity(tau, n, s_i, s_f, k) + S.sigmoid_sparsity(n - tau, n, s_i, s_f, k)
        assert total == approx(s_i + s_f, abs=1e-12)


def test_sigmoid_is_flatter_at_the_ends_than_cubic_at_the_start():
    # The S-shape decays slowly at first (cubic decays fastest at first).
    assert S.sigmoid_sparsity(1, 10, 0.5, 0.9) < S.linear_sparsity(1, 10, 0.5, 0.9) < S.cubic_sparsity(1, 10, 0.5, 0.9)


def test_density_registry():
    assert S.get_density_schedule("Cubic") is S.cubic_sparsity
    assert S.get_density_schedule("s_shape") is S.sigmoid_sparsity
    assert S.get_density_schedule("granet") is S.cubic_sparsity
    assert set(S.DENSITY_SCHEDULES) >= {"constant", "linear", "cubic", "sigmoid"}
    with pytest.raises(ValueError, match="unknown density schedule 'exp'.*cubic.*sigmoid"):
        S.get_density_schedule("exp")


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match="s_f must be"):
        S.cubic_sparsity(1, 10, 0.5, 1.5)
    with pytest.raises(ValueError, match="n must be an integer"):
        S.linear_sparsity(1, -1, 0.5, 0.9)
    with pytest.raises(ValueError, match="k must be"):
        S.sigmoid_sparsity(1, 10, 0.5, 0.9, k=-1.0)


# ----------------------------------------------------------------------------- MEST EM&S


def test_mest_ems_stages():
    # T_end = 1000, interval 100: 5% until 0.6*T_end = 600 (inclusive), 2.5% until T_end - 100 (exclusive)
    values = {s: S.mest_ems_extra_density(s, 1000, 100) for s in (0, 100, 600, 601, 899, 900, 1000, 5000)}
    assert values == {0: 0.05, 100: 0.05, 600: 0.05, 601: 0.025, 899: 0.025, 900: 0.0, 1000: 0.0, 5000: 0.0}
    assert S.mest_ems_extra_density(10, 1000, 100, extra1=0.1, extra2=0.04, stage1=0.005) == 0.04


# ----------------------------------------------------------------------------- learning rate


def test_final_update_hand_values():
    # SET on the MLP protocol: ΔT = one epoch of 1875 steps, T_end = the whole run (100 epochs)
    epoch, total = 1875, 187_500
    before = [s // epoch for s in range(1, total + 1) if S.is_update_step(s, epoch, total)]
    at = [s // epoch for s in range(1, total + 1) if S.is_update_step(s, epoch, total, final_update="at_t_end")]
    assert before == list(range(1, 100))  # the official MLP code: no update after the last epoch's training
    assert at == list(range(1, 101))  # one more, right before the last evaluation
    # the Transformer protocol: 5000 steps, ΔT 100, T_end 0.75 -> 3750 (not a multiple: both rules agree)
    assert [s for s in range(3600, 3900) if S.is_update_step(s, 100, 3750)] == [3600, 3700]
    # the LLaMA protocol: 10 000 steps, T_end 7500: updates 100 … 7500 (75 of them) against 74
    assert sum(S.is_update_step(s, 100, 7500, final_update="at_t_end") for s in range(10_001)) == 75
    assert sum(S.is_update_step(s, 100, 7500) for s in range(10_001)) == 74
    assert S.update_limit(7500) == 7499 and S.update_limit(7500, "at_t_end") == 7500
    with pytest.raises(ValueError, match="final_update must be one of"):
        S.update_limit(10, "after")


def test_final_update_choices_are_the_options_choices():
    from chtorch.dst import options

    assert options.FINAL_UPDATES == S.FINAL_UPDATES


def test_rewarmup_factor_hand_values():
    # step = finished optimizer steps; the j-th step after the update at 100 (j = step - 100 + 1) runs at j/20
    f = [S.rewarmup_factor(s, 100, 20) for s in (100, 105, 118, 119, 150, 199, 200, 210)]
    assert f == approx([0.05, 0.3, 0.95, 1.0, 1.0, 1.0, 0.05, 0.55])
    assert S.rewarmup_factor(0, 100, 20) == approx(0.05)  # the initial topology ramps up too
    assert S.rewarmup_factor(205, 100, 20, t_end=150) == 1.0  # no update after T_end: no re-warm-up
    assert S.rewarmup_factor(105, 100, 20, t_end=150) == approx(0.3)
    assert S.rewarmup_factor(105, 100, 0) == 1.0
    # without t_end (both official codes: (t mod ΔT)/w for the whole run) the ramp repeats after T_end too
    assert [S.rewarmup_factor(s, 100, 20) for s in (800, 809, 900, 999)] == approx([0.05, 0.5, 0.05, 1.0])


def test_rewarmup_after_t_end_as_the_official_codes():
    # the Transformer code's inoam: noam(t) * min(1, (t mod ΔT)/w) at every t, T_end or not. With ΔT 100,
    # w 20 and T_end 3750, the LR factor of steps after T_end still dips after every multiple of 100
    # ("end"), while "last_update" (passing the last update step) holds 1.0 from step 3800 on.
    from chtorch.config import OptimConfig
    from chtorch.train.optim import lr_multiplier

    limit = S.update_limit(3750, "before_t_end")
    whole = lr_multiplier(OptimConfig(schedule="constant", rewarmup_steps=20), 5000, update_interval=100, t_end=limit)
    stop = lr_multiplier(
        OptimConfig(schedule="constant", rewarmup_steps=20, rewarmup_until="last_update"),
        5000,
        update_interval=100,
        t_end=limit,
    )
    assert [whole(s) for s in (3700, 3800, 3809, 4900, 4919)] == approx([0.05, 0.05, 0.5, 0.05, 1.0])
    assert [stop(s) for s in (3700, 3710, 3800, 3809, 4900)] == approx([0.05, 0.55, 1.0, 1.0, 1.0])
    assert OptimConfig().rewarmup_until == "end"


def test_rewarmup_follows_the_last_update_at_t_end():
    # the trainer and the HF callback once stopped at step >= t_end and so
    # skipped the ramp after an update that happens exactly at t_end
    assert [s for s in range(1, 40) if S.is_update_step(s, 10, 30, final_update="at_t_end")] == [10, 20, 30]
    assert [S.rewarmup_factor(s, 10, 4, t_end=30) for s in (29, 30, 31, 33, 40)] == approx([1.0, 0.25, 0.5, 1.0, 1.0])


def test_rewarmup_lambda_drives_lambdalr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    base = lambda s: 1.0 - s / 800  # noqa: E731  (any global schedule: a linear decay to half)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, S.rewarmup_lambda(100, 20, t_end=300, base=base))
    seen = {}
    for step in range(401):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step in (10, 60, 100, 110, 130, 300, 310, 399):
        expected = 0.1 * base(step) * S.rewarmup_factor(step, 100, 20, 300)
        assert seen[step] == approx(expected)
    assert seen[110] == approx(0.1 * base(110) * 0.55)  # the 11th step after the update at 100
    assert seen[310] == approx(0.1 * base(310) * 0.55)  # the update at T_end = 300 is re-warmed too
    assert seen[400] == approx(0.1 * base(400))  # no update after T_end: no re-warm-up
    assert S.rewarmup_lambda(100, 20)(105) == approx(0.3)
    with pytest.raises(ValueError, match="base must be a callable"):
        S.rewarmup_lambda(100, 20, base=3.0)


def test_every_rewarmup_user_calls_the_one_function(monkeypatch):
    """One truth for the LR re-warm-up: the trainer's LR schedule and the HF callback both call
    chtorch.dst.schedules.rewarmup_factor through the engine's face (patched there to a recording stand-in)."""
    from types import SimpleNamespace

    from chtorch.config import OptimConfig
    from chtorch.train.optim import lr_multiplier

    calls = []

    def recording(step, interval, warmup_steps, t_end=None):
        calls.append((step, interval, warmup_steps, t_end))
        return 0.5

    import chtorch.dst

    monkeypatch.setattr(chtorch.dst, "rewarmup_factor", recording)
    f = lr_multiplier(OptimConfig(schedule="constant", rewarmup_steps=4), 100, update_interval=10, t_end=30)
    assert f(31) == 0.5 and calls == [(31, 10, 4, None)]  # the default: the whole run
    calls.clear()
    config = OptimConfig(schedule="constant", rewarmup_steps=4, rewarmup_until="last_update")
    f = lr_multiplier(config, 100, update_interval=10, t_end=30)
    assert f(31) == 0.5 and calls == [(31, 10, 4, 30)]

    hf = pytest.importorskip("chtorch.integrations.hf", exc_type=ImportError)
    calls.clear()
    callback = hf.ChtorchCallback("set", sparsity=0.5, rewarmup_steps=4)
    callback.sparsity = SimpleNamespace(options=SimpleNamespace(update_interval=10, final_update="at_t_end"), t_end=30)
    param = torch.nn.Parameter(torch.zeros(1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=1.0), lambda step: 2.0)
    callback._wrap_schedule(scheduler)
    calls.clear()
    assert scheduler.lr_lambdas[0](31) == 1.0 and calls == [(31, 10, 4, None)]
    callback = hf.ChtorchCallback("set", sparsity=0.5, rewarmup_steps=4, rewarmup_until="last_update")
    callback.sparsity = SimpleNamespace(
        options=SimpleNamespace(update_interval=10, final_update="before_t_end"), t_end=30
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=1.0), lambda step: 2.0)
    callback._wrap_schedule(scheduler)
    calls.clear()
    assert scheduler.lr_lambdas[0](31) == 1.0 and calls == [(31, 10, 4, 29)]  # the last update step: 20
    monkeypatch.undo()
    # and unpatched, both follow the function exactly
    f = lr_multiplier(OptimConfig(schedule="constant", rewarmup_steps=4), 100, update_interval=10, t_end=30)
    assert [f(s) for s in range(45)] == [S.rewarmup_factor(s, 10, 4) for s in range(45)]
