"""Generated invalid configurations through ``useful-sim`` (flags and TOML): exit 2, one line naming the field;
and every flag of every subcommand documented in ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sims.cli import COMMANDS, main, make_parser
from sims.config import SimConfig
from sims.experiments import ReproduceSettings
from theory.plumbing.config import field_help

_not_a_number = st.sampled_from(["abc", "1e", "--", "0x1g", "one", "[1]", "1,2"])
_non_int = st.one_of(_not_a_number, st.sampled_from(["2.5", "1e-3", "nan"]))


def _below(limit: float, *, inclusive: bool) -> st.SearchStrategy:
    top = limit if inclusive else math.nextafter(limit, -math.inf)
    return st.floats(min_value=-1e6, max_value=top, allow_nan=False).map(repr)


def _int_below(limit: int) -> st.SearchStrategy:
    return st.integers(min_value=-10**6, max_value=limit - 1).map(str)


# field -> strategy of invalid raw values (strings, as typed on a command line)
INVALID = {
    "d": st.one_of(_int_below(3), _non_int),
    "P": st.one_of(_int_below(3), _non_int),
    "alpha": st.one_of(_below(0.0, inclusive=True), st.floats(min_value=1.0001, max_value=1e6).map(repr),
                       st.sampled_from(["nan", "inf", "-inf"]), _not_a_number),
    "beta_e": st.one_of(_below(0.0, inclusive=True), _not_a_number, st.sampled_from(["nan", "inf"])),
    "beta_d": st.one_of(_below(0.0, inclusive=True), st.floats(min_value=1.0, max_value=1e6).map(repr), _not_a_number),
    "sigma_p": st.one_of(_below(0.0, inclusive=True), _not_a_number, st.just("inf")),
    "J": st.one_of(_int_below(1), _non_int),
    "sigma_0": st.one_of(_below(0.0, inclusive=True), _not_a_number),
    "optimizer": st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8).filter(
        lambda s: s not in ("gd", "sgd", "sam", "usam") and not s.startswith("-")),
    "lr": st.one_of(_below(0.0, inclusive=True), _not_a_number, st.just("nan")),
    "rho": st.one_of(_below(0.0, inclusive=False), _not_a_number),
    "iterations": st.one_of(_int_below(1), _non_int),
    "batch_size": st.one_of(_int_below(1), st.integers(min_value=201, max_value=10**6).map(str), _non_int),
    "n_train": st.one_of(_int_below(2), _non_int),
    "n_test": st.one_of(_int_below(1), _non_int),
    "record_every": st.one_of(_int_below(1), _non_int),
    "theta": st.one_of(_below(0.0, inclusive=True), _not_a_number),
    "separate_at": st.one_of(_int_below(1), _non_int),
    "upsample_factor": st.one_of(_int_below(1), _non_int),
    "seed": st.one_of(_int_below(0), _non_int),
    "dtype": st.sampled_from(["float16", "f64", "double", "int"]),
    "backend": st.sampled_from(["jax", "cuda", "numpy", "Numba"]),
    "device": st.sampled_from(["cuda", "cuda:0", "gpu", "tpu"]),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(INVALID)), data=st.data(), via_toml=st.booleans())
def test_invalid_value_exits_2_with_one_line_naming_it(field, data, via_toml, tmp_path_factory, capsys):
    raw = data.draw(INVALID[field], label="value")
    tmp = tmp_path_factory.mktemp("cli")
    argv = ["run", "--out", str(tmp / "o"), "--iterations", "5"] if field != "iterations" else ["run", "--out", str(tmp / "o")]
    if via_toml:
        toml = tmp / "c.toml"
        toml.write_text(f"{field} = {raw!r}\n".replace("'", '"'))
        argv += ["--config", str(toml)]
    else:
        argv += [f"--{field.replace('_', '-')}={raw}"]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (field, raw, err)
    assert len(err.splitlines()) == 1, err
    # Every error names the field as its flag (also uppercase fields: --J, --P), whatever the source.
    assert err.startswith(f"error: --{field.replace('_', '-')}: ") or (via_toml and "not valid TOML" in err), err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_unknown_toml_key_is_named(key, tmp_path_factory, capsys):
    from sims.config import SimConfig

    if key in SimConfig.__dataclass_fields__:
        return
    tmp = tmp_path_factory.mktemp("cli")
    toml = tmp / "c.toml"
    toml.write_text(f"{key} = 1\n")
    code = main(["run", "--out", str(tmp / "o"), "--config", str(toml)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and repr(key) in err and str(toml) in err


@pytest.mark.parametrize("argv", [["run"], ["bogus"], ["run", "--out", "x", "--nope", "1"], []])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_subcommands_are_the_commands_dict():
    assert list(_subparsers()) == list(COMMANDS) == ["run", "sweep", "reproduce"]
    for name, command in COMMANDS.items():
        assert make_parser().parse_args([name, "--out", "x"]).handler is command.handler


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_beyond_its_default(name, capsys):
    sub = _subparsers()[name]
    options = [a for a in sub._actions if a.option_strings]
    assert len(options) > len(dataclasses.fields(SimConfig)) - 2  # the configuration's flags are there
    for action in options:
        text = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip(" ;")
        assert len(text) >= 10, (name, action.option_strings, action.help)
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for action in options:
        assert action.option_strings[0] in out
    for f in dataclasses.fields(SimConfig):
        if f"--{f.name.replace('_', '-')}" in {o for a in options for o in a.option_strings}:
            # the field's one-line doc is its flag's help (argparse rewraps it: compare words)
            assert " ".join(field_help(SimConfig, f.name).split()[:4]) in " ".join(out.split()), f.name


@pytest.mark.parametrize("cls", [SimConfig, ReproduceSettings])
def test_every_configuration_field_has_a_doc(cls):
    for f in dataclasses.fields(cls):
        assert len(field_help(cls, f.name)) >= 10, f.name
