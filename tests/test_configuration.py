"""theory/configuration.py (the one validation layer) and theory/atomic.py (atomic writes)."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theory.data import DataConfig
from theory.plumbing.atomic import (
    atomic_open,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from theory.plumbing.cli import OneLineArgumentParser, cli_entry
from theory.plumbing.config import (
    ConfigError,
    _coerce,
    add_config_arguments,
    check_choice,
    check_int,
    check_number,
    check_within,
    config_from_mapping,
    doc,
    load_toml,
    resolve_config,
    to_jsonable,
)

FAST = settings(deadline=None, max_examples=60)

# ------------------------------------------------------------------------------------------------
# Invalid values of every DataConfig field.

not_numbers = st.one_of(
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.just([1.0]),
    st.just(complex(1, 1)),
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def invalid_int(low: int):
    return st.one_of(
        st.integers(max_value=low - 1),
        st.floats(allow_nan=False, allow_infinity=False),  # any float, even 3.0, is not an integer
        st.integers(low, 1000).map(float),
        non_finite,
        not_numbers,
    )


def positive_number_invalid():
    return st.one_of(st.floats(max_value=0.0, allow_nan=False), non_finite, not_numbers)


INVALID = {
    "d": invalid_int(3),
    "P": invalid_int(3),
    "alpha": st.one_of(
        st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0, exclude_min=True), non_finite, not_numbers
    ),
    "beta_e": positive_number_invalid(),
    "beta_d": positive_number_invalid(),
    "sigma_p": positive_number_invalid(),
}


@FAST
@given(st.data())
def test_every_invalid_data_parameter_raises_naming_it(data):
    name = data.draw(st.sampled_from(sorted(INVALID)))
    value = data.draw(INVALID[name])
    with pytest.raises(ValueError) as info:
        DataConfig(**{name: value})
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.field == name
    assert str(err).startswith(f"{name}: ") and "\n" not in str(err)


@FAST
@given(st.floats(0.1, 10.0), st.floats(1.0, 100.0))
def test_beta_d_not_below_beta_e_raises_naming_both(beta_e, factor):
    with pytest.raises(ConfigError) as info:
        DataConfig(beta_e=beta_e, beta_d=beta_e * factor)
    assert info.value.field in ("beta_e", "beta_d")  # the pair is invalid; either may be blamed
    assert "beta_e" in str(info.value) and "beta_d" in str(info.value)


@FAST
@given(
    st.integers(3, 10**6),
    st.integers(3, 1000),
    st.floats(0.0, 1.0, exclude_min=True),
    st.floats(1e-6, 1e6),
    st.floats(1e-6, 1.0, exclude_max=True),
    st.floats(1e-9, 1e9),
)
def test_valid_data_configs_are_accepted(d, P, alpha, beta_e, frac, sigma_p):
    """The validation is not over-strict: every value in the documented ranges passes."""
    beta_d = beta_e * frac
    if not (0 < beta_d < beta_e):
        return
    cfg = DataConfig(d=d, P=P, alpha=alpha, beta_e=beta_e, beta_d=beta_d, sigma_p=sigma_p)
    assert (cfg.d, cfg.alpha) == (d, alpha)


def test_check_helpers_messages():
    with pytest.raises(ConfigError, match=r"^alpha: got 1\.5, expected a number in \(0, 1\]$") as info:
        check_number("alpha", 1.5, low=0.0, high=1.0, low_open=True)
    assert info.value.value == 1.5 and info.value.expected == "a number in (0, 1]"
    with pytest.raises(ConfigError, match=r"\[3, inf\]"):
        check_int("P", 2, low=3)
    with pytest.raises(ConfigError, match="P: got True"):
        check_int("P", True, low=0)
    with pytest.raises(ConfigError, match="one of 'gd', 'sam'"):
        check_choice("rule", "adam", ("gd", "sam"))
    check_number("x", 0.0, low=0.0)  # closed ends are inclusive
    check_number("x", 1.0, high=1.0)
    with pytest.raises(ConfigError):
        check_number("x", 0.0, low=0.0, low_open=True)
    with pytest.raises(ConfigError):
        check_number("x", 1.0, high=1.0, high_open=True)


# ------------------------------------------------------------------------------------------------
# Conversion of raw values (_coerce) and mappings.


@dataclass(frozen=True)
class Demo:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    mode: Literal["gd", "sam"] = "gd"
    level: Literal[1, 2, 3] = 1
    limit: Optional[int] = None
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    weights: tuple[float, ...] = ()
    epoch: int | Literal["auto"] = "auto"


@FAST
@given(st.integers(-(10**12), 10**12))
def test_coerce_int(i):
    assert _coerce("count", str(i), int) == i
    assert _coerce("count", f" {i} ", int) == i
    assert _coerce("count", i, int) == i
    assert _coerce("count", float(i), int) == i  # |i| <= 1e12 < 2**53: the float is exact
    assert type(_coerce("count", float(i), int)) is int


@pytest.mark.parametrize("raw", ["1.5", "abc", "", 1.5, True, False, None, [1], math.nan, math.inf])
def test_coerce_int_rejects(raw):
    with pytest.raises(ConfigError) as info:
        _coerce("count", raw, int)
    assert info.value.field == "count" and "integer" in str(info.value)


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_coerce_float_round_trips(x):
    assert _coerce("rate", repr(x), float) == x
    assert _coerce("rate", x, float) == x
    assert type(_coerce("rate", 3, float)) is float


@pytest.mark.parametrize("raw", ["abc", "1,2", True, None, [0.5]])
def test_coerce_float_rejects(raw):
    with pytest.raises(ConfigError) as info:
        _coerce("rate", raw, float)
    assert info.value.field == "rate"


@pytest.mark.parametrize("raw, value", [("true", True), ("YES", True), ("1", True), ("On", True), (True, True),
                                        ("false", False), ("no", False), ("0", False), ("OFF", False), (False, False)])
def test_coerce_bool(raw, value):
    assert _coerce("flag", raw, bool) is value


@pytest.mark.parametrize("raw", ["maybe", "", 1, 0, None, 1.0])
def test_coerce_bool_rejects(raw):
    with pytest.raises(ConfigError) as info:
        _coerce("flag", raw, bool)
    assert info.value.field == "flag" and "true or false" in str(info.value)


def test_coerce_literal_optional_tuple_union():
    assert _coerce("mode", "sam", Literal["gd", "sam"]) == "sam"
    with pytest.raises(ConfigError, match=r"^mode: got 'adam', expected one of 'gd', 'sam'$"):
        _coerce("mode", "adam", Literal["gd", "sam"])
    assert _coerce("level", "2", Literal[1, 2, 3]) == 2 and type(_coerce("level", "2", Literal[1, 2, 3])) is int
    assert _coerce("level", 3, Literal[1, 2, 3]) == 3
    with pytest.raises(ConfigError, match="level"):
        _coerce("level", "4", Literal[1, 2, 3])
    for raw in (None, "none", "None", "null", ""):
        assert _coerce("limit", raw, Optional[int]) is None
        assert _coerce("limit", raw, int | None) is None
    assert _coerce("limit", "7", Optional[int]) == 7
    with pytest.raises(ConfigError, match="limit"):
        _coerce("limit", "seven", Optional[int])
    assert _coerce("sizes", "1,2,3", tuple[int, ...]) == (1, 2, 3)
    assert _coerce("sizes", "1, 2,", tuple[int, ...]) == (1, 2)
    assert _coerce("sizes", [4, 5.0], tuple[int, ...]) == (4, 5)
    assert _coerce("sizes", "", tuple[int, ...]) == ()
    with pytest.raises(ConfigError, match="sizes"):
        _coerce("sizes", "1,x", tuple[int, ...])
    with pytest.raises(ConfigError, match="sizes"):
        _coerce("sizes", 3, tuple[int, ...])
    assert _coerce("weights", "0.5,1e-3", tuple[float, ...]) == (0.5, 1e-3)
    assert _coerce("epoch", "auto", int | Literal["auto"]) == "auto"
    assert _coerce("epoch", "12", int | Literal["auto"]) == 12
    with pytest.raises(ConfigError) as info:
        _coerce("epoch", "soon", int | Literal["auto"])
    assert info.value.field == "epoch" and "integer" in str(info.value) and "'auto'" in str(info.value)
    assert _coerce("name", "abc", str) == "abc"
    with pytest.raises(ConfigError, match="name"):
        _coerce("name", 5, str)


@FAST
@given(st.lists(st.integers(-1000, 1000), max_size=6))
def test_coerce_tuple_round_trips_comma_lists(items):
    assert _coerce("sizes", ",".join(map(str, items)), tuple[int, ...]) == tuple(items)
    assert _coerce("sizes", items, tuple[int, ...]) == tuple(items)


def test_config_from_mapping_converts_and_accepts_dashes():
    cfg = config_from_mapping(DataConfig, {"sigma-p": "0.1", "d": "50", "alpha": 1, "P": 4.0})
    assert cfg == DataConfig(d=50, P=4, alpha=1.0, sigma_p=0.1)
    assert type(cfg.alpha) is float and type(cfg.P) is int


field_names = {"d", "P", "alpha", "beta_e", "beta_d", "sigma_p"}


@FAST
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12))
def test_config_from_mapping_rejects_unknown_keys_naming_them(key):
    if key.replace("-", "_") in field_names:
        return
    with pytest.raises(ConfigError) as info:
        config_from_mapping(DataConfig, {"d": 10, key: 1}, source="my.toml")
    err = info.value
    assert err.field == key and repr(key) in str(err) and "my.toml" in str(err)
    assert "sigma-p" in str(err)  # lists the allowed keys
    assert "\n" not in str(err)


@pytest.mark.parametrize("key, raw", [("alpha", "1.5"), ("alpha", "nan"), ("d", "2"), ("d", "ten"), ("sigma_p", "-1"), ("P", "inf")])
def test_config_from_mapping_invalid_value_names_field(key, raw):
    with pytest.raises(ConfigError) as info:
        config_from_mapping(DataConfig, {key: raw})
    assert info.value.field.replace("-", "_") == key
    assert key in str(info.value).replace("-", "_")


# ------------------------------------------------------------------------------------------------
# TOML files and precedence defaults < TOML < command line.


def test_load_toml_missing_and_malformed(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_toml(missing)
    assert str(missing) in str(info.value) and info.value.field == "--config"
    with pytest.raises(ConfigError) as info:
        load_toml(tmp_path)  # a folder is not a file
    assert str(tmp_path) in str(info.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("alpha = [1, \n")
    with pytest.raises(ConfigError) as info:
        load_toml(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    binary = tmp_path / "binary.toml"  # regression: not UTF-8 escaped as a bare UnicodeDecodeError
    binary.write_bytes(b'alpha = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as info:
        load_toml(binary)
    assert str(binary) in str(info.value)
    good = tmp_path / "good.toml"
    good.write_text('alpha = 0.5\n[data]\nd = 7\n')
    assert load_toml(str(good)) == {"alpha": 0.5, "data": {"d": 7}}


def _toml_value(v):
    return repr(v) if isinstance(v, float) else str(v)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={"d": st.integers(3, 500), "P": st.integers(3, 9), "alpha": st.floats(0.05, 1.0),
                  "sigma_p": st.floats(0.01, 1.0)},
    ),
    st.fixed_dictionaries(
        {},
        optional={"d": st.integers(3, 500), "P": st.integers(3, 9), "alpha": st.floats(0.05, 1.0),
                  "sigma_p": st.floats(0.01, 1.0)},
    ),
    st.fixed_dictionaries({}, optional={"d": st.integers(3, 500), "alpha": st.floats(0.05, 1.0)}),
    st.booleans(),
)
def test_resolve_config_precedence(toml, cli, base, use_section):
    """Each field comes from the command line if given, else the TOML file, else base, else the default."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        lines = [f"{k.replace('_', '-') if k == 'sigma_p' else k} = {_toml_value(v)}" for k, v in toml.items()]
        text = ("[data]\n" if use_section else "") + "\n".join(lines) + "\n"
        if use_section:
            text = "[other]\nx = 1\n" + text
        path.write_text(text)
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, DataConfig)
        argv = []
        for k, v in cli.items():
            argv += ["--" + k.replace("_", "-"), str(v)]
        args = parser.parse_args(argv)
        cfg = resolve_config(DataConfig, args, config_path=path, section="data" if use_section else None, base=base)
    default = DataConfig()
    for name in ("d", "P", "alpha", "sigma_p"):
        want = cli.get(name, toml.get(name, base.get(name, getattr(default, name))))
        assert getattr(cfg, name) == want, name


def test_resolve_config_from_mapping_and_without_file():
    cfg = resolve_config(DataConfig, {"alpha": "0.25", "d": None}, base={"d": 9})
    assert cfg.alpha == 0.25 and cfg.d == 9


def test_resolve_config_rejects_unknown_toml_key_and_bad_value(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("alhpa = 0.5\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(DataConfig, {}, config_path=path)
    assert info.value.field == "alhpa" and str(path) in str(info.value)
    path.write_text("alpha = 2.0\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(DataConfig, {}, config_path=path)
    assert info.value.field == "alpha"
    # the command line's valid value overrides the file's invalid one
    assert resolve_config(DataConfig, {"alpha": "0.5"}, config_path=path).alpha == 0.5


def test_add_config_arguments_flags():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Demo, exclude=("name",))
    args = parser.parse_args(["--count", "3", "--flag", "--mode", "sam", "--sizes", "4,5"])
    assert args.count == "3" and args.flag is True and args.mode == "sam" and args.rate is None
    assert parser.parse_args(["--no-flag"]).flag is False
    assert not hasattr(args, "name")
    cfg = resolve_config(Demo, args)
    assert cfg == Demo(count=3, flag=True, mode="sam", sizes=(4, 5))
    help_text = parser.format_help()
    assert "one of gd, sam" in help_text and "(default: 'gd')" in help_text


def test_one_line_argument_parser_error(capsys):
    parser = OneLineArgumentParser(prog="useful-sim")
    parser.add_argument("--alpha")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--bogus", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: useful-sim: ") and "--bogus" in err
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--alpha"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--alpha" in err


def test_cli_entry_turns_config_errors_into_one_line_and_status_2(capsys):
    @cli_entry
    def main(argv=None):
        """Docstring."""
        config_from_mapping(DataConfig, {"alpha": "1.5"})
        return 0

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "error: --alpha: got 1.5, expected a number in (0, 1]\n"  # the field as its flag
    assert main.__doc__ == "Docstring." and main.__name__ == "main"

    @cli_entry
    def ok(argv=None):
        return 0

    assert ok([]) == 0


def test_to_jsonable():
    obj = {"cfg": Demo(sizes=(1, 2)), "a": np.arange(3), "x": np.float64(1.5), "t": (np.int64(2),), 3: "k"}
    out = to_jsonable(obj)
    assert out["cfg"]["sizes"] == [1, 2] and out["a"] == [0, 1, 2] and out["x"] == 1.5 and out["t"] == [2]
    assert out["3"] == "k"
    json.dumps(out)  # plain JSON data
    assert type(out["x"]) is float and type(out["t"][0]) is int


# ------------------------------------------------------------------------------------------------
# Atomic writes.


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@settings(deadline=None, max_examples=30)
@given(st.text(), st.text(), st.binary(max_size=200))
def test_atomic_writes_replace_content_and_leave_no_temp_files(first, second, blob):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sub" / "dir"  # parents are created
        target = folder / "out.txt"
        atomic_write_text(target, first)
        assert target.read_bytes() == first.encode("utf-8")
        atomic_write_text(target, second)
        assert target.read_bytes() == second.encode("utf-8")
        atomic_write_bytes(folder / "b.bin", blob)
        assert (folder / "b.bin").read_bytes() == blob
        atomic_write_json(folder / "j.json", {"first": first, "n": [1, 2.5, None]})
        assert json.loads((folder / "j.json").read_text(encoding="utf-8")) == {"first": first, "n": [1, 2.5, None]}
        assert _listing(folder) == ["b.bin", "j.json", "out.txt"]


def test_atomic_open_failure_keeps_old_content_and_cleans_up(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["x.json"]


def test_atomic_save_npz_round_trip(tmp_path):
    target = tmp_path / "arrays.npz"
    a, b = np.arange(6.0).reshape(2, 3), np.array([True, False])
    atomic_save_npz(target, a=a, b=b)
    atomic_save_npz(target, a=a * 2, b=b)
    with np.load(target) as z:
        np.testing.assert_array_equal(z["a"], a * 2)
        np.testing.assert_array_equal(z["b"], b)
    assert _listing(tmp_path) == ["arrays.npz"]


def test_atomic_json_writes_strict_json_with_null_for_non_finite(tmp_path):
    atomic_write_json(tmp_path / "n.json", {"v": float("nan"), "w": [1.5, float("inf"), {"x": float("-inf")}]})
    text = (tmp_path / "n.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data == {"v": None, "w": [1.5, None, {"x": None}]}


def test_atomic_writes_are_readable_by_others(tmp_path):
    """mkstemp creates 0600 files; results and checkpoints must be readable by collaborators (0644)."""
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("argv", [["run", "--ba", "1", "--out", "x"], ["run", "--ep", "3", "--out", "x"],
                                  ["run", "--separate", "2", "--out", "x"], ["config", "--opt", "sam"]])
def test_abbreviated_trainer_flags_are_refused(argv, capsys, tmp_path, monkeypatch):
    """argparse's default takes any unique prefix (--ba would set --batch-size): a mistyped flag could
    silently set another field.  Flags must match exactly, in every command."""
    from real.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments" in err[0] and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [["run", "--out", "s", "--al", "0.5"], ["sweep", "--out", "s", "--see", "2"],
                                  ["reproduce", "--out", "s", "--qu"]])
def test_abbreviated_simulator_flags_are_refused(argv, capsys, tmp_path, monkeypatch):
    from sims.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments" in err[0] and not (tmp_path / "s").exists()


def test_numbers_are_stored_in_their_fields_type():
    """lr=1 and lr=1.0 (or a numpy scalar) are one configuration: the same JSON, the same digest."""
    from real.config import TrainConfig, computed_config
    from sims.config import SimConfig, config_hash
    from theory.plumbing.config import config_digest

    a, b = TrainConfig(dataset="synthetic", lr=1, seed=np.int64(3)), TrainConfig(dataset="synthetic", lr=1.0, seed=3)
    assert a == b and type(a.lr) is float and type(a.seed) is int
    assert to_jsonable(a) == to_jsonable(b) and config_digest(computed_config(a)) == config_digest(computed_config(b))
    assert config_hash(SimConfig(lr=1)) == config_hash(SimConfig(lr=np.float32(1.0)))
    assert TrainConfig(dataset="synthetic", lr=0.5) != TrainConfig(dataset="synthetic", lr=0.25)


# ------------------------------------------------------------------------------------------------
# Ranges declared with the field (doc's ``within``): one source of the check and of the help text.


@dataclass(frozen=True)
class _Ranged:
    count: int = doc(3, "a count", "[2, inf)")
    share: float = doc(0.5, "a share", "(0, 1]")
    cap: float = doc(1.0, "capped by float32", "[0, f32]")
    open_int: int = doc(1, "an int with open ends", "(0, 4)")
    unset: Optional[int] = doc(None, "may be unset", "[5, 9]")

    def __post_init__(self):
        check_within(self)


@FAST
@given(count=st.integers(-5, 10), share=st.floats(-1.0, 2.0, allow_nan=False), open_int=st.integers(-2, 6),
       unset=st.one_of(st.none(), st.integers(0, 12)))
def test_check_within_accepts_exactly_the_declared_interval(count, share, open_int, unset):
    ok = {"--count": count >= 2, "--share": 0 < share <= 1, "--open-int": 0 < open_int < 4,
          "--unset": unset is None or 5 <= unset <= 9}
    try:
        _Ranged(count=count, share=share, open_int=open_int, unset=unset)
    except ConfigError as err:
        assert not ok[err.field] and all(ok[f] for f in list(ok)[: list(ok).index(err.field)]), str(err)
    else:
        assert all(ok.values())


def test_within_is_stated_in_the_help_and_bad_intervals_are_refused():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Ranged)
    text = {a.dest: a.help for a in parser._actions}
    assert text["count"] == "a count; >= 2 (default: 3)" and text["share"] == "a share; in (0, 1] (default: 0.5)"
    assert text["cap"].startswith("capped by float32; >= 0 ")  # the float32 cap is checked, not printed
    with pytest.raises(ConfigError, match=r"--cap: got 1e\+39, expected a number in \[0, 3.40282e\+38\]"):
        _Ranged(cap=1e39)
    for bad in ("1, 2", "[inf, 2]", "[a, 2]", "(0 1]"):
        with pytest.raises(ValueError):
            doc(0, "x", bad)


def _classes_declaring_within() -> list[type]:
    """Every dataclass of theory/, sims/ and real/ with a field declared with an interval (doc's ``within``)."""
    import dataclasses
    import importlib
    import pkgutil

    found = set()
    for package in ("theory", "sims", "real"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            if info.name.endswith("__main__"):
                continue
            for value in vars(importlib.import_module(info.name)).values():
                if isinstance(value, type) and dataclasses.is_dataclass(value) and any(
                        "within" in f.metadata for f in dataclasses.fields(value)):
                    found.add(value)
    return sorted(found, key=lambda c: c.__qualname__)


def test_the_classes_declaring_ranges_are_the_ones_checked_below():
    names = {f"{c.__module__}:{c.__qualname__}" for c in _classes_declaring_within()}
    assert names == {"real.config:TrainConfig", "real.reproduce_plan:ReproduceSettings", "sims.config:SimConfig"}


@pytest.mark.parametrize("cls", _classes_declaring_within(), ids=lambda c: c.__qualname__)
def test_every_declared_range_is_checked_and_in_its_help(cls):
    """Just below each field's lower end is refused naming it (the trainer: its flag); the help states the interval.
    The classes are found, not listed: one that declares ``within`` but never calls check_within fails here."""
    import dataclasses

    name = cls.__name__
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    helps = {a.dest: a.help for a in parser._actions}
    ranged = [f for f in dataclasses.fields(cls) if "within" in f.metadata]
    assert len(ranged) >= (10 if name == "SimConfig" else 20)
    base, hints = ({"dataset": "synthetic"} if name == "TrainConfig" else {}), typing.get_type_hints(cls)
    for f in ranged:
        iv, integer = f.metadata["within"], int in (hints[f.name], *typing.get_args(hints[f.name]))
        below = iv.low if iv.low_open else iv.low - (1 if integer else 1e-3)
        with pytest.raises(ConfigError) as err:
            cls(**base, **{f.name: int(below) if integer else float(below)})
        assert err.value.field == (f.name if name == "SimConfig" else "--" + f.name.replace("_", "-")), str(err.value)
        assert iv.text(integer=integer) in helps[f.name], f.name


def test_one_field_under_two_spellings_is_refused_not_merged(tmp_path):
    """``n-train`` and ``n_train`` are one field: given both (in a mapping or a --config file), one value
    would silently replace the other, so the second is refused naming both."""
    from sims.config import SimConfig

    with pytest.raises(ConfigError, match=r"^grid: 'n-train' and 'n_train' are the same key; give it once$"):
        config_from_mapping(SimConfig, {"n-train": 10, "n_train": 20}, source="grid")
    path = tmp_path / "c.toml"
    path.write_text("n_train = 10\nn-train = 20\n")
    with pytest.raises(ConfigError, match="'n_train' and 'n-train' are the same key") as err:
        resolve_config(SimConfig, {}, config_path=str(path))
    assert str(path) in str(err.value)
    assert config_from_mapping(SimConfig, {"n-train": 10, "lr": 0.1}).n_train == 10
