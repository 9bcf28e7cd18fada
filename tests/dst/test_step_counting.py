"""The engine counts optimizer steps, whatever the loop does: gradient accumulation calling
``sp.step()`` on every micro-step or only after ``optimizer.step()``, Accelerate's ``accumulate()``,
a ``GradScaler`` that skips a step, a run that goes past ``total_steps``."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import chtorch
from helpers import tiny_mlp

MICRO = 3  # micro-batches per optimizer step


def micro_batches(step: int, k: int = MICRO) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(6 * k, 12, generator=g), torch.randint(0, 3, (6 * k,), generator=g)
    return list(zip(x.chunk(k), y.chunk(k)))


def build(method: str = "rigl", total_steps: int = 12, **kw):
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = chtorch.sparsify(model, opt, method=method, sparsity=0.8, total_steps=total_steps, update_interval=2, **kw)
    return model, opt, sp


def accumulate(model, opt, sp, steps: int, every_micro_step: bool) -> list[dict[str, torch.Tensor]]:
    """``steps`` optimizer steps of MICRO micro-batches each; the masks after every optimizer step."""
    trace = []
    for step in range(steps):
        for i, (x, y) in enumerate(micro_batches(step)):
            (nn.functional.cross_entropy(model(x), y) / MICRO).backward()
            last = i == MICRO - 1
            if last:
                opt.step()
            if every_micro_step or last:
                sp.step()
        opt.zero_grad()
        trace.append({k: v.clone() for k, v in sp.masks.items()})
    return trace


@pytest.mark.parametrize("method", ["rigl", "chtss", "set"])
def test_sp_step_on_every_micro_step_counts_optimizer_steps(method):
    runs = []
    for every in (True, False):
        # only RigL reads dense gradients; an option a method does not read is an error
        model, opt, sp = build(method, **({"grad_accumulation": 2} if method == "rigl" else {}))
        runs.append((accumulate(model, opt, sp, 12, every), model, sp))
    (trace_a, model_a, sp_a), (trace_b, model_b, sp_b) = runs
    assert sp_a.step_count == sp_b.step_count == 12
    assert sp_a.update_count == sp_b.update_count == len([s for s in range(1, 13) if sp_a.is_update_step(s)]) > 0
    assert not sp_a.past_total_steps
    for a, b in zip(trace_a, trace_b):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(trace_a[0][k], trace_a[-1][k]) for k in trace_a[0])  # the topology moved
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    assert sp_a.state_dict()["step_count"] == sp_b.state_dict()["step_count"]


def test_the_dense_gradient_of_an_accumulated_step_is_the_sum_of_its_micro_steps():
    """RigL reads the gradient of the optimizer step (the micro-gradients summed), averaged over the
    last ``grad_accumulation`` optimizer steps: equal to what one full batch per step records."""
    model, opt, sp = build("rigl", grad_accumulation=2)
    full_model, full_opt, full_sp = build("rigl", grad_accumulation=2)
    full_model.load_state_dict(model.state_dict())
    seen = {}
    for step in range(1):  # the first optimizer step is in the window of the update after step 2
        for x, y in micro_batches(step):
            (nn.functional.cross_entropy(model(x), y) / MICRO).backward()
        opt.step()
        x = torch.cat([b[0] for b in micro_batches(step)])
        y = torch.cat([b[1] for b in micro_batches(step)])
        nn.functional.cross_entropy(full_model(x), y).backward()
        full_opt.step()
        for a, b in zip(sp.layers, full_sp.layers):
            assert a.grad_count == b.grad_count == 1
            torch.testing.assert_close(a.grad_sum, b.grad_sum, rtol=1e-5, atol=1e-7)
            seen[a.name] = a.grad_sum.clone()
    assert seen


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; leave them as found for the next test."""
    state = pytest.importorskip("accelerate.state")
    yield
    state.AcceleratorState._reset_state(True)
    state.GradientState._reset_state()


def test_accelerate_accumulate_counts_optimizer_steps(fresh_accelerate_state):
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = accelerator.prepare(model, opt)  # sparsify the prepared pair, as a user would
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.8, total_steps=8, update_interval=2)
    updates = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # never past total_steps
        for step in range(16):  # 16 micro-steps = 8 optimizer steps
            x, y = micro_batches(step, 1)[0]
            with accelerator.accumulate(model):
                accelerator.backward(nn.functional.cross_entropy(model(x), y))
                opt.step()
                updates += sp.step() is not None
                opt.zero_grad()
    assert sp.step_count == 8 and not sp.past_total_steps
    assert updates == sp.update_count == len([s for s in range(1, 9) if sp.is_update_step(s)])
    for _, module, mask in sp.iter_layers():
        assert bool((module.weight[~mask] == 0).all())


def test_a_step_the_grad_scaler_skips_is_not_counted_and_runs_no_update():
    model, opt, sp = build("rigl", total_steps=12, grad_accumulation=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    sp.set_grad_scaler(scaler)
    reports = []
    for step in range(5):
        x, y = micro_batches(step, 1)[0]
        loss = nn.functional.cross_entropy(model(x), y)
        if step == 1:
            loss = loss * float("inf")  # the scaler finds inf gradients and skips the optimizer step
        masks = {k: v.clone() for k, v in sp.masks.items()}
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        reports.append(sp.step())
        opt.zero_grad()
        if step == 1:
            assert sp.step_count == 1 and reports[-1] is None  # not counted: step 2's update waits
            assert all(torch.equal(masks[k], sp.masks[k]) for k in masks)
    assert sp.step_count == 4
    assert [r is not None for r in reports] == [False, False, True, False, True]  # after optimizer steps 2 and 4
    for layer in sp.layers:
        assert layer.grad_sum is None  # the update consumed the finite, unscaled gradients
    for _, module, mask in sp.iter_layers():
        assert bool(torch.isfinite(module.weight).all()) and bool((module.weight[~mask] == 0).all())


def test_recorded_gradients_are_unscaled_by_the_named_grad_scaler():
    plain_model, plain_opt, plain_sp = build("rigl", grad_accumulation=2)
    model, opt, sp = build("rigl", grad_accumulation=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sp.set_grad_scaler(scaler)
    x, y = micro_batches(0, 1)[0]
    nn.functional.cross_entropy(plain_model(x), y).backward()
    plain_opt.step()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    for a, b in zip(sp.layers, plain_sp.layers):
        torch.testing.assert_close(a.grad_sum, b.grad_sum, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="GradScaler"):
        sp.set_grad_scaler(object())


def test_a_step_the_loop_leaves_out_is_not_counted():
    model, opt, sp = build("set", total_steps=6)
    counts = []
    for step in range(4):
        x, y = micro_batches(step, 1)[0]
        nn.functional.cross_entropy(model(x), y).backward()
        if step != 1:
            opt.step()
        report = sp.step()
        counts.append((sp.step_count, report is not None))
        opt.zero_grad()
    assert counts == [(1, False), (1, False), (2, True), (3, False)]


def test_past_total_steps_warns_once_and_the_state_says_so():
    model, opt, sp = build("set", total_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(6):
            x, y = micro_batches(step, 1)[0]
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sp.step()
            opt.zero_grad()
    past = [w for w in caught if "past total_steps=3" in str(w.message)]
    assert len(past) == 1 and "optimizer step 4" in str(past[0].message)
    assert sp.past_total_steps and sp.step_count == 6
    state = copy.deepcopy(sp.state_dict())
    assert state["past_total_steps"] is True
    _, _, fresh = build("set", total_steps=3)
    assert not fresh.past_total_steps and fresh.state_dict()["past_total_steps"] is False
    fresh.load_state_dict(state)
    assert fresh.past_total_steps
    del state["past_total_steps"]  # a state written before the flag: read from the counters
    _, _, older = build("set", total_steps=3)
    older.load_state_dict(state)
    assert older.past_total_steps
    state["past_total_steps"] = "yes"
    with pytest.raises(ValueError, match="past_total_steps must be a bool"):
        older.load_state_dict(state)
