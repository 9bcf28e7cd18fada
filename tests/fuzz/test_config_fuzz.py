"""Mutation fuzzing of every shipped config in configs/: keys, values and types
are mutated, then ``chtorch.config.load_config`` and the ``chtorch config`` command run on the result.
Each mutant gives a config, or a clear error (``ConfigError``, a ValueError subclass, with a one-line
message; exit status 2 from the command), never another exception. A quick subset by default, many
more mutants with ``-m slow``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from clear_errors import success_or_clear_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chtorch.train  # noqa: F401  (registers the built-in recipes)
from chtorch.cli import main
from chtorch.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
QUICK = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-4, 600), max_size=3),
    st.dictionaries(st.sampled_from(["beta", "r", "betta", "zeta", "x"]), st.floats(allow_nan=True), max_size=2),
    st.sampled_from(["chts", "chtz", "brf", "mlp", "sgd", "cpu", "cuda:3", "../x", "0.99999", "epoch", "soft"]),
)
KEY_TYPOS = st.sampled_from(["lrr", "epochs", "init_options", "zetta", "options", "hidden", "sparsity", ""])


def leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    yield path


@st.composite
def mutants(draw):
    source = draw(st.sampled_from(CONFIGS))
    config = yaml.safe_load(source.read_text())
    mutant = copy.deepcopy(config)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in leaves(mutant) if p]
        path = draw(st.sampled_from(paths))
        parent = mutant
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["value", "key", "delete", "nest"]))
        if action == "value":
            parent[path[-1]] = draw(VALUES)
        elif action == "key":
            parent[draw(KEY_TYPOS)] = parent.pop(path[-1])
        elif action == "delete":
            parent.pop(path[-1])
        else:
            parent[path[-1]] = {"x": draw(VALUES)}
    return source.name, mutant


def check_mutant(tmp_path: Path, name: str, mutant, capsys) -> None:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mutant, allow_unicode=True))
    success_or_clear_error(lambda: load_config(path), (ConfigError,))
    status = main(["config", str(path)])
    out, err = capsys.readouterr()
    assert status in (0, 2), status
    if status == 2:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("chtorch: error: ") and len([l for l in lines if "error" in l]) == 1, err
        assert "Traceback" not in err


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_loads(config, capsys):
    load_config(config)
    assert main(["config", str(config)]) == 0


@QUICK
@given(mutants())
def test_config_mutation_fuzz_quick(tmp_path_factory, capsys, case):
    check_mutant(tmp_path_factory.mktemp("fuzz"), *case, capsys)


@pytest.mark.slow
@LONG
@given(mutants())
def test_config_mutation_fuzz_long(tmp_path_factory, capsys, case):
    check_mutant(tmp_path_factory.mktemp("fuzz"), *case, capsys)


def test_unknown_init_options_key_is_one_line_in_the_cli(tmp_path, capsys):
    """docs/errors.md row 'unknown init_options key' (the CLI side)."""
    status = main(["config", "configs/digits_chts.yaml", "--set", "sparsity.options.init_options={betta: 0.1}"])
    err = capsys.readouterr().err
    assert status == 2
    assert "init_options key 'betta' is not an option of init='brf'; valid keys: r, degree, side" in err
