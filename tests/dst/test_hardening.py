"""The engine against hostile input: model structure, exact zeros with NaN/Inf, validated options, engine state.

Each error here is a row of docs/errors.md ("Library API" section)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import chtorch
from chtorch.dst.options import OptionError


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def adam_after_one_step(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    return opt


def frozen_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Everything sparsify may touch, copied bit for bit."""
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "modules": [(n, id(m)) for n, m in model.named_modules()],
        "groups": [
            (id(g), [id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
            for g in opt.param_groups
        ],
        "state": {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in opt.state.items()
        },
        "hooks": [(id(p), len(p._backward_hooks or {})) for p in model.parameters()],
        "opt_hooks": len(opt._optimizer_step_post_hooks),
    }


def same_bits(a: dict, b: dict) -> bool:
    def eq(x, y):
        if torch.is_tensor(x):
            return (
                torch.is_tensor(y)
                and x.dtype == y.dtype
                and x.shape == y.shape
                and torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8))
            )
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return type(x) is type(y) and len(x) == len(y) and all(eq(p, q) for p, q in zip(x, y))
        return x == y

    return eq(a, b)


# ----------------------------------------------------------------------------- item 1: structure
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.mid = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 12, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(self.mid(self.embed(ids)))


def test_linear_tied_to_embedding_is_refused_naming_the_tie():
    model = Tied()
    before = model.embed.weight.detach().clone()
    with pytest.raises(
        ValueError, match=r"layer 'lm_head' has a tied weight: lm_head.weight is the same Parameter as embed.weight"
    ):
        chtorch.sparsify(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            method="set",
            sparsity=0.9,
            total_steps=10,
            layers=["mid", "lm_*"],
        )
    assert torch.equal(model.embed.weight, before) and not hasattr(model.lm_head, "weight_mask")
    sp = chtorch.sparsify(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method="set",
        sparsity=0.5,
        total_steps=10,
        layers=["mid", "lm_*"],
        exclude="lm_head",
    )
    assert sp.layer_names == ["mid"] and torch.equal(model.embed.weight, before)


def test_two_selected_layers_sharing_one_weight_are_refused():
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 2))
    model[1].weight = model[0].weight
    with pytest.raises(ValueError, match=r"layer '0' has a tied weight: 0.weight is the same Parameter as 1.weight"):
        chtorch.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), method="set", sparsity=0.5, total_steps=10)


def test_frozen_weight_is_refused():
    model = mlp()
    model[2].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"layer '2': its weight does not require grad \(frozen\)"):
        chtorch.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), method="set", sparsity=0.5, total_steps=10)


def test_exclude_matching_nothing_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match=r"exclude pattern 'fc\*' matches no module"):
        chtorch.sparsify(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            method="set",
            sparsity=0.5,
            total_steps=10,
            exclude="fc*",
        )


def test_sparsity_leaving_a_layer_without_links_is_refused():
    model = mlp()
    with pytest.raises(OptionError, match=r"sparsity 0.99999 leaves layer '0' \(10x6, 60 positions\) with 0 link\(s\)"):
        chtorch.sparsify(
            model, torch.optim.SGD(model.parameters(), lr=0.1), method="set", sparsity=0.99999, total_steps=10
        )
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_head_blocks_without_a_link_are_refused():
    model = mlp()
    with pytest.raises(OptionError, match=r"10 head blocks need a link each"):
        chtorch.sparsify(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            method="set",
            sparsity=0.9,
            total_steps=10,
            layers="0",
            head_groups={"0": 10},
        )


def failing_init(n_out, n_in, sparsity=None, *, n_links=None, generator=None):
    raise ValueError("this initialiser always fails")


chtorch.topology.INITIALIZERS.register("fails_for_tests", summary="raises (tests of atomic sparsify)")(failing_init)

FAILURES = {
    "bad option": dict(zeta=float("nan")),
    "head_groups matching nothing": dict(head_groups={"nope*": 2}),
    "failing initializer": dict(init="fails_for_tests"),
    "unknown init option": dict(init="bsw", init_options={"betta": 0.1}),
    "bad init value": dict(init="bsw", init_options={"beta": 2.0}),
    "bad seed": dict(seed=-1),
    "no link left": dict(sparsity=0.99999),
    "exclude nothing": dict(exclude="zzz"),
}


@given(
    failure=st.sampled_from(sorted(FAILURES) + ["not in optimizer", "sparse backend fails"]),
    method=st.sampled_from(["set", "chts", "rigl", "gmp"]),
    backend=st.sampled_from(["masked", "auto"]),
)
def test_sparsify_is_atomic(failure, method, backend):
    """After any failure the model, its state_dict, grads, the optimizer and the hooks are as they
    were, bit for bit, and the corrected call works."""
    model = mlp()
    opt = adam_after_one_step(model)
    kwargs = dict(method=method, sparsity=0.7, total_steps=20, backend=backend)
    bad = dict(kwargs, **FAILURES.get(failure, {}))
    target_opt = opt
    if failure == "not in optimizer":
        target_opt = torch.optim.Adam(list(model[0].parameters()), lr=1e-2)
        target_opt.load_state_dict({"state": {}, "param_groups": target_opt.state_dict()["param_groups"]})
    before = frozen_state(model, opt)
    if failure == "sparse backend fails":
        # Fail after the masks are registered and the weights written: when the optimizer post-hook
        # is registered (the last write).
        original = torch.optim.Optimizer.register_step_post_hook

        def boom(self, hook):
            raise RuntimeError("injected failure")

        torch.optim.Optimizer.register_step_post_hook = boom
        try:
            with pytest.raises(RuntimeError, match="injected"):
                chtorch.sparsify(model, opt, **kwargs)
        finally:
            torch.optim.Optimizer.register_step_post_hook = original
    else:
        with pytest.raises(ValueError):
            chtorch.sparsify(model, target_opt, **bad)
    assert same_bits(before, frozen_state(model, opt))
    sp = chtorch.sparsify(model, opt, **kwargs)
    assert all(hasattr(model.get_submodule(n), "weight_mask") for n in sp.layer_names)


def test_atomic_with_sparse_backend_replacing_modules(monkeypatch):
    import chtorch.sparse as sparse_pkg

    model = nn.Sequential(nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 200)).sum().backward()
    opt.step()
    before = frozen_state(model, opt)
    real = sparse_pkg.to_sparse

    def to_sparse_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("injected after the modules were replaced")

    monkeypatch.setattr(sparse_pkg, "to_sparse", to_sparse_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        chtorch.sparsify(model, opt, method="set", sparsity=0.95, total_steps=10, backend="sparse")
    assert same_bits(before, frozen_state(model, opt))
    monkeypatch.setattr(sparse_pkg, "to_sparse", real)
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.95, total_steps=10, backend="sparse")
    assert sp.backends == {"0": "sparse"}


# ----------------------------------------------------------------------------- item 2: numbers
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_off_mask_entries_stay_exactly_zero_with_nonfinite_grads_and_weights(bad):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.7, total_steps=100)
    model(torch.randn(4, 6)).sum().backward()
    for _, layer, _ in sp.iter_layers():
        layer.weight.grad.fill_(bad)  # gradients written behind the hook's back, non-finite everywhere
    opt.step()
    for _, layer, mask in sp.iter_layers():
        assert torch.equal(layer.weight.detach()[~mask], torch.zeros(int((~mask).sum())))
        assert not bool(torch.isfinite(layer.weight.detach()[mask]).any())  # the links keep what Adam made of them
        for value in opt.state[layer.weight].values():
            if value.shape == mask.shape:
                assert torch.equal(value[~mask], torch.zeros(int((~mask).sum())))
    # The hook path: a non-finite loss gives non-finite gradients everywhere before the mask.
    opt.zero_grad()
    (model(torch.randn(4, 6)).sum() * bad).backward()
    for _, layer, mask in sp.iter_layers():
        assert torch.equal(layer.weight.grad[~mask], torch.zeros(int((~mask).sum())))
    sp.step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(zeta=float("nan")), "zeta must be a number in"),
        (dict(delta_start=float("inf")), "delta_start must be a number in"),
        (dict(sigmoid_k=float("nan")), "sigmoid_k must be a number"),
        (dict(sparsity=float("nan")), "sparsity must be a number"),
        (dict(update_interval=float("inf")), "update_interval must be an integer"),
        (dict(percolation="yes"), "percolation must be true or false"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(seed=-3), "seed must be an integer in"),
        (dict(seed=True), "seed must be an integer"),
        (
            dict(init="bsw", init_options={"betta": 0.2}),
            r"init_options key 'betta' is not an option of init='bsw' \(did you mean 'beta'\?\); valid keys: beta",
        ),
        (dict(init="erdos_renyi", init_options={"r": 0.2}), r"valid keys: none"),
    ],
)
def test_every_option_is_validated_when_sparsify_is_called(kwargs, message):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=message):
        chtorch.sparsify(model, opt, **{"method": "set", "sparsity": 0.5, "total_steps": 10, **kwargs})


# ----------------------------------------------------------------------------- item 3: engine state
def engine(method="set", total_steps=20, sparsity=0.5, **kw):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return (
        model,
        opt,
        chtorch.sparsify(
            model, opt, method=method, sparsity=sparsity, total_steps=total_steps, update_interval=2, **kw
        ),
    )


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(method="rigl"), "from method 'set', but this run uses 'rigl'"),
        (dict(total_steps=30), "total_steps=20, but this run has 30"),
        (dict(zeta=0.1), r"from other options \(zeta: state 0.3, run 0.1\)"),
        (dict(sparsity=0.6), "resume with the same sparsity"),
    ],
)
def test_load_state_dict_refuses_another_run(other, message):
    _, _, sp = engine()
    state = sp.state_dict()
    _, _, sp2 = engine(**other)
    keep = copy.deepcopy(sp2.state_dict())
    with pytest.raises(ValueError, match=message):
        sp2.load_state_dict(state)
    assert same_bits(keep, sp2.state_dict())


def test_load_state_dict_refuses_another_model_shape():
    _, _, sp = engine()
    state = sp.state_dict()
    state["layers"]["0"]["shape"] = (11, 6)
    with pytest.raises(ValueError, match=r"layer '0': saved shape \(11, 6\) != model shape \(10, 6\)"):
        sp.load_state_dict(state)


MUTATIONS = {
    "step_count": lambda s: s.__setitem__("step_count", -1),
    "target": lambda s: s["layers"]["0"].__setitem__("target", 10**6),
    "ever_active": lambda s: s["layers"]["0"].__setitem__("ever_active", torch.zeros(3, 3, dtype=torch.bool)),
    "frozen": lambda s: s["layers"]["2"].__setitem__("frozen", "no"),
    "grad_count": lambda s: s["layers"]["2"].__setitem__("grad_count", 1.5),
    "last_overlap": lambda s: s["layers"]["0"].__setitem__("last_overlap", 7.0),
    "missing": lambda s: s.pop("update_count"),
    "layers": lambda s: s.__setitem__("layers", []),
}


@given(st.sampled_from(sorted(MUTATIONS)))
def test_load_state_dict_validates_everything_before_changing_anything(which):
    _, _, sp = engine()
    state = sp.state_dict()
    MUTATIONS[which](state)
    sp.step()
    keep = copy.deepcopy(sp.state_dict())
    with pytest.raises(ValueError):
        sp.load_state_dict(state)
    assert same_bits(keep, sp.state_dict())


def test_a_non_bool_weight_mask_loaded_into_the_model_is_caught_at_the_next_step():
    model, _, sp = engine()
    state = model.state_dict()
    state["0.weight_mask"] = state["0.weight_mask"].float() * 0.5
    model.load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"layer '0': the weight_mask loaded into the model is torch.float32, not torch.bool"
    ):
        sp.step()


def test_a_weight_mask_with_another_link_count_is_caught_at_the_next_step():
    model, _, sp = engine()
    state = model.state_dict()
    state["2.weight_mask"] = torch.ones_like(state["2.weight_mask"])
    model.load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"layer '2': weight_mask holds 80 links but the engine left it with 40 \(budget 40\)"
    ):
        sp.step()


def test_a_loaded_engine_state_names_the_link_count_the_masks_must_hold():
    """A layer may legitimately hold fewer links than its budget (EM&S with percolation): the count
    the engine state recorded is the one checked; a state without counts (older checkpoints) only
    bounds them by the budget."""
    model, _, sp = engine()
    state = copy.deepcopy(sp.state_dict())
    masks = model.state_dict()
    masks["2.weight_mask"].view(-1)[masks["2.weight_mask"].view(-1).nonzero()[:3]] = False  # 37 of 40 links
    state["layers"]["2"]["links"] = 37
    model.load_state_dict(masks)
    sp.load_state_dict(state)
    sp.step()  # as recorded: accepted
    state["layers"]["2"]["links"] = 40
    sp.load_state_dict(state)
    with pytest.raises(ValueError, match=r"layer '2': weight_mask holds 37 links but the engine left it with 40"):
        sp.step()
    del state["layers"]["2"]["links"]
    sp.load_state_dict(state)
    sp.step()  # an older state: 37 <= budget 40 passes
    masks = model.state_dict()
    masks["2.weight_mask"].fill_(True)
    model.load_state_dict(masks)
    sp.load_state_dict(state)
    with pytest.raises(ValueError, match=r"layer '2': weight_mask holds 80 links but the layer's budget is 40"):
        sp.step()


def test_the_runs_own_masks_load_without_complaint():
    model, _, sp = engine()
    for _ in range(3):
        sp.step()
    model.load_state_dict(copy.deepcopy(model.state_dict()))
    assert sp.step() is None or True  # no error; the step runs


def test_step_after_remove_is_an_error():
    _, _, sp = engine()
    sp.remove()
    with pytest.raises(RuntimeError, match=r"sp.step\(\) after sp.remove\(\)"):
        sp.step()


@pytest.mark.parametrize("backend", ["masked", "sparse"])
def test_a_sparsified_model_can_be_pickled_and_copied(backend):
    """torch.save(model) pickles the module hooks: the engine's must not make that fail, and a copy
    is not watched by the engine of the original."""
    import copy
    import pickle

    model = nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.9, total_steps=10, backend=backend)
    x = torch.randn(5, 40)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), model(x))
        clone.load_state_dict(model.state_dict())
    assert sp.step_count == 0
