"""Hypothesis fuzzing of the public API: sparsify with random options, values and
types; SparsityOptions; the topology initialisers; CH link prediction with odd masks and dtypes;
DynamicSparsity.load_state_dict with mutated states. Each call succeeds or raises a clear chtorch
error (a ValueError subclass with a one-line message), never another exception. The default run is a
quick subset; ``-m slow`` runs many more examples."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from clear_errors import success_or_clear_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import chtorch
from chtorch.dst.options import SparsityOptions

QUICK = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 9), max_size=2),
    st.sampled_from(
        ["topk", "soft", "ch", "random", "magnitude", "brf", "bsw", "CH3", "l3p", "cubic", "sigmoid", "erk"]
    ),
)
FIELDS = SparsityOptions.field_names()
OPTION_VALUES = st.dictionaries(st.sampled_from([*FIELDS, "zetta", "init_option"]), ODD_VALUES, max_size=3)
SANE = st.fixed_dictionaries(
    {
        "sparsity": st.one_of(
            st.floats(-0.5, 1.5), st.sampled_from([0.0, 0.5, 0.9, 0.99999, math.nan, math.inf]), ODD_VALUES
        ),
        "total_steps": st.one_of(st.integers(-2, 40), ODD_VALUES),
        "seed": st.one_of(st.integers(-2, 2**64), ODD_VALUES),
        "update_interval": st.one_of(st.none(), st.integers(-1, 5), ODD_VALUES),
    }
)


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def run_a_few_steps(sp: chtorch.DynamicSparsity, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for _ in range(3):
        model(torch.randn(4, 5)).pow(2).mean().backward()
        opt.step()
        sp.step()
        opt.zero_grad()
    for _, layer, mask in sp.iter_layers():
        assert torch.equal(layer.weight.detach()[~mask], torch.zeros(int((~mask).sum())))


def fuzz_sparsify(method: str, args: dict, options: dict, backend: str) -> None:
    options = {k: v for k, v in options.items() if k not in args}
    model, opt = model_and_optimizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = success_or_clear_error(
        lambda: chtorch.sparsify(model, opt, method=method, backend=backend, **args, **options)
    )
    if isinstance(result, BaseException):
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), (
            "a failed sparsify changed the model"
        )
    else:
        success_or_clear_error(lambda: run_a_few_steps(result, model, opt))


sparsify_args = dict(
    method=st.sampled_from(["set", "rigl", "mest", "gmp", "granet", "cht", "chts", "chtss", "static"]),
    args=SANE,
    options=OPTION_VALUES,
    backend=st.sampled_from(["masked", "auto", "sparse"]),
)


@QUICK
@given(**sparsify_args)
def test_sparsify_fuzz_quick(method, args, options, backend):
    fuzz_sparsify(method, args, options, backend)


@pytest.mark.slow
@LONG
@given(**sparsify_args)
def test_sparsify_fuzz_long(method, args, options, backend):
    fuzz_sparsify(method, args, options, backend)


@QUICK
@given(OPTION_VALUES)
def test_options_fuzz(overrides):
    success_or_clear_error(lambda: SparsityOptions().replace(**overrides))


TOPOLOGY_ARGS = st.fixed_dictionaries(
    {
        "n_out": st.one_of(st.integers(-1, 12), ODD_VALUES),
        "n_in": st.one_of(st.integers(-1, 12), ODD_VALUES),
        "sparsity": st.one_of(st.floats(-0.5, 1.5), ODD_VALUES),
    },
    optional={
        "n_links": st.one_of(st.integers(-2, 200), ODD_VALUES),
        "beta": ODD_VALUES,
        "r": ODD_VALUES,
        "degree": ODD_VALUES,
    },
)


@QUICK
@given(name=st.sampled_from(["erdos_renyi", "bsw", "brf", "bsf"]), kwargs=TOPOLOGY_ARGS)
def test_topology_fuzz(name, kwargs):
    init = chtorch.topology.get_initializer(name)
    valid = set(__import__("inspect").signature(init).parameters)
    kwargs = {k: v for k, v in kwargs.items() if k in valid}
    n_out, n_in = kwargs.pop("n_out"), kwargs.pop("n_in")
    mask = success_or_clear_error(lambda: init(n_out, n_in, generator=torch.Generator().manual_seed(0), **kwargs))
    if torch.is_tensor(mask):
        assert mask.dtype == torch.bool and tuple(mask.shape) == (n_out, n_in)


ODD_MASKS = st.builds(
    lambda rows, cols, density, dtype, seed, layout: (rows, cols, density, dtype, seed, layout),
    st.integers(0, 7),
    st.integers(0, 7),
    st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    st.sampled_from([torch.bool, torch.float32, torch.int64, torch.uint8, torch.float16]),
    st.integers(0, 10),
    st.sampled_from(["2d", "1d", "3d", "transposed", "sparse", "list"]),
)


def make_mask(spec):
    rows, cols, density, dtype, seed, layout = spec
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(rows, cols, generator=g) < density).to(dtype)
    return {
        "2d": mask,
        "1d": mask.flatten(),
        "3d": mask.unsqueeze(0),
        "transposed": mask.T,
        "sparse": mask.to_sparse() if dtype != torch.bool else mask.float().to_sparse(),
        "list": mask.tolist(),
    }[layout]


@QUICK
@given(spec=ODD_MASKS, variant=st.sampled_from(["CH2", "CH3", "ch3.1", "RA", "CH9", 3, None]))
def test_link_prediction_fuzz(spec, variant):
    mask = make_mask(spec)
    for predict in (chtorch.linkpred.ch_l3n, chtorch.linkpred.ch_l3p):
        scores = success_or_clear_error(lambda predict=predict: predict(mask, variant=variant))
        if torch.is_tensor(scores):
            assert scores.shape == mask.shape and scores.dtype == torch.float32
            assert bool(torch.isfinite(scores).all()) and bool((scores[mask] == 0).all())


def mutate(state, path, value):
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


STATE_PATHS = st.sampled_from(
    [
        ("version",),
        ("method",),
        ("sparsity",),
        ("total_steps",),
        ("step_count",),
        ("update_count",),
        ("options",),
        ("options", "zeta"),
        ("layers",),
        ("layers", "0"),
        ("layers", "0", "shape"),
        ("layers", "0", "target"),
        ("layers", "0", "frozen"),
        ("layers", "0", "ever_active"),
        ("layers", "2", "history"),
        ("layers", "2", "grad_sum"),
        ("layers", "2", "grad_count"),
        ("layers", "2", "last_overlap"),
    ]
)
STATE_VALUES = st.one_of(ODD_VALUES, st.builds(lambda r, c: torch.zeros(r, c), st.integers(0, 9), st.integers(0, 9)))


@QUICK
@given(path=STATE_PATHS, value=STATE_VALUES)
def test_load_state_dict_fuzz(path, value):
    model, opt = model_and_optimizer()
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=20, update_interval=2)
    run_a_few_steps(sp, model, opt)
    state = sp.state_dict()
    keep = copy.deepcopy(state)
    mutate(state, path, value)
    result = success_or_clear_error(lambda: sp.load_state_dict(state))
    if isinstance(result, BaseException):
        now = sp.state_dict()
        assert now.keys() == keep.keys() and now["step_count"] == keep["step_count"]
        for name, entry in keep["layers"].items():
            assert torch.equal(now["layers"][name]["ever_active"], entry["ever_active"])
            assert now["layers"][name]["target"] == entry["target"]
    else:
        success_or_clear_error(lambda: run_a_few_steps(sp, model, opt))
