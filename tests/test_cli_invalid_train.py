"""Generated invalid configurations through ``useful-train run`` (flags, TOML, unknown keys and flags):
exit 2 and exactly one stderr line naming the field -- decided before any data is loaded or any
training starts (``real.train.train`` is replaced by a function that fails the test)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import real.train
from real.cli import main
from real.config import TrainConfig

_not_a_number = st.sampled_from(["abc", "1e", "0x1g", "one", "[1]", "1,2", "1.2.3"])
_non_int = st.one_of(_not_a_number, st.sampled_from(["2.5", "1e-3", "nan", "inf"]))
_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).filter(lambda s: not s.startswith("-"))


def _below(limit: float, *, inclusive: bool) -> st.SearchStrategy:
    top = limit if inclusive else math.nextafter(limit, -math.inf)
    return st.floats(min_value=-1e6, max_value=top, allow_nan=False).map(repr)


def _above(limit: float, *, inclusive: bool) -> st.SearchStrategy:
    bottom = limit if inclusive else math.nextafter(limit, math.inf)
    return st.floats(min_value=bottom, max_value=max(1e6, 10 * bottom), allow_nan=False).map(repr)


def _int_below(limit: int) -> st.SearchStrategy:
    return st.integers(min_value=-10**6, max_value=limit - 1).map(str)


def _choice(valid: tuple[str, ...]) -> st.SearchStrategy:
    return st.one_of(_word.filter(lambda s: s not in valid), st.sampled_from([v.upper() for v in valid if v.upper() != v]))


_number = st.one_of(_not_a_number, st.sampled_from(["nan", "inf", "-inf"]))

# field -> strategy of invalid raw values (strings, as typed on a command line); the base
# configuration is the default one plus --epochs 10 (so that epoch-bounded fields have a range).
INVALID: dict[str, st.SearchStrategy] = {
    "dataset": _choice(("cifar10", "cifar100", "stl10", "cinic10", "tinyimagenet", "fashion-mnist", "synthetic")),
    "data_dir": st.sampled_from(["/nonexistent/data", "/nonexistent", "/dev/null/x"]),
    "model": _choice(("resnet18", "resnet34", "vgg19", "densenet121", "vit-s", "mlp", "cnn-small")),
    "optimizer": _choice(("sgd", "sam", "asam")),
    "epochs": st.one_of(_int_below(1), _non_int),
    "batch_size": st.one_of(_int_below(1), _non_int),
    "lr": st.one_of(_below(0.0, inclusive=True), _above(3.5e38, inclusive=True).filter(lambda r: r != "inf"), _number),
    "momentum": st.one_of(_below(0.0, inclusive=False), _above(1.0, inclusive=True), _number),
    "weight_decay": st.one_of(_below(0.0, inclusive=False), _number),
    "rho": st.one_of(_below(0.0, inclusive=False), _above(3.5e38, inclusive=True).filter(lambda r: r != "inf"), _number),
    "schedule": _choice(("cosine", "multistep", "constant")),
    "warmup_epochs": st.one_of(_below(0.0, inclusive=False), _above(10.0, inclusive=False), _number),
    "milestones": st.one_of(st.sampled_from(["5,3", "0", "11", "3,3", "a,b", "2.5"]), _int_below(1)),
    "gamma": st.one_of(_below(0.0, inclusive=True), _above(1.0, inclusive=False), _number),
    "label_smoothing": st.one_of(_below(0.0, inclusive=False), _above(1.0, inclusive=True), _number),
    "augment": _choice(("crop-flip", "none")),
    "mixup_alpha": st.one_of(_below(0.0, inclusive=False), _number),
    "label_noise": st.one_of(_below(0.0, inclusive=False), _above(1.0, inclusive=True), _number),
    "long_tail_ratio": st.one_of(_below(1.0, inclusive=False), _number),
    "separate_epoch": st.one_of(_int_below(1), st.integers(min_value=11, max_value=10**6).map(str),
                                _not_a_number, st.sampled_from(["Auto", "2.5", "soon"])),
    "separate_iteration": st.one_of(_int_below(1), _non_int),
    "upsample_factor": st.one_of(_int_below(1), _non_int),
    "partition": _choice(("useful", "random", "quantile", "misclassified", "jtt", "eiil", "class-balanced")),
    "copy_augment": _choice(("none", "trivial-augment")),
    "quantile": st.one_of(_below(0.0, inclusive=False), _above(1.0, inclusive=True), _number),
    "seed": st.one_of(_int_below(0), st.integers(min_value=2**31, max_value=2**40).map(str), _non_int),
    "device": st.sampled_from(["gpu", "cuda:0", "tpu", "CPU", "mps"]),
    "precision": _choice(("auto", "bf16", "float32")),
    "memory_format": _choice(("auto", "channels_last", "contiguous")),
    "synthetic_train": st.one_of(_int_below(2), _non_int),
    "synthetic_test": st.one_of(_int_below(1), _non_int),
    "eval_batch_size": st.one_of(_int_below(1), _non_int),
    "preset": _word.filter(lambda s: s not in ("cifar10-resnet18",)).map(lambda s: "zz" + s),
}
# Booleans: any word that is not true/false/1/0/yes/no/on/off (TOML only: on the command line they are switches).
BOOLEANS = ("nesterov", "trivial_augment", "useful", "upweight", "deterministic", "compile", "resume", "overwrite")
_bad_bool = st.sampled_from(["maybe", "2", "truee", "nope", "-1"])

# Values valid alone but invalid in combination: (extra args, field named).
COMBINATIONS = [
    (["--epochs", "3", "--useful", "--separate-epoch", "4"], "separate-epoch"),
    (["--partition", "random"], "partition"),
    (["--upweight"], "upweight"),
    (["--momentum", "0", "--nesterov"], "nesterov"),
    (["--epochs", "3", "--warmup-epochs", "3.5"], "warmup-epochs"),
    (["--epochs", "5", "--milestones", "2,6"], "milestones"),
    (["--separate-epoch", "2", "--separate-iteration", "10"], "separate-iteration"),
    (["--copy-augment", "trivial-augment"], "copy-augment"),
    (["--useful", "--upweight", "--copy-augment", "trivial-augment"], "copy-augment"),
    (["--useful", "--trivial-augment", "--copy-augment", "trivial-augment"], "copy-augment"),
    (["--useful", "--partition", "class-balanced", "--upsample-factor", "3"], "upsample-factor"),
]


def _toml_value(raw: str) -> str:
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def no_training(monkeypatch):
    def refuse(cfg):  # pragma: no cover - reached only when validation let a bad value through
        raise AssertionError(f"training started with an invalid configuration: {cfg}")

    monkeypatch.setattr(real.train, "train", refuse)


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse (unknown flag, missing value)
        code = exc.code
    return code, capsys.readouterr().err


def _check(code, err, names, context) -> None:
    lines = err.strip("\n").splitlines()
    assert code == 2, (context, code, err)
    assert len(lines) == 1, (context, err)
    assert lines[0].startswith("error:"), (context, err)
    assert "Traceback" not in err
    assert any(n in lines[0] for n in names), (context, err)


_FIELD_VALUE = st.one_of(
    st.sampled_from(sorted(INVALID)).flatmap(lambda f: st.tuples(st.just(f), INVALID[f])),
    st.sampled_from(BOOLEANS).flatmap(lambda f: st.tuples(st.just(f), _bad_bool)),
)


@settings(max_examples=450, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field_value=_FIELD_VALUE, via_toml=st.booleans())
def test_invalid_value_exits_2_with_one_line_naming_it(field_value, via_toml, tmp_path_factory, capsys, no_training):
    field, raw = field_value
    if field in BOOLEANS:
        via_toml = True
    tmp = tmp_path_factory.mktemp("cli")
    argv = ["run", "--out", str(tmp / "o")]
    if field not in ("epochs", "warmup_epochs", "milestones", "separate_epoch"):
        argv += ["--epochs", "10"]
    else:
        argv += ["--epochs", "10"] if field != "epochs" else []
    if field == "separate_epoch":
        argv += ["--useful"]
    if field == "data_dir":
        argv += ["--dataset", "cifar10"]
    if via_toml:
        toml = tmp / "c.toml"
        toml.write_text(f"{field} = {_toml_value(raw)}\n")
        argv += ["--config", str(toml)]
    else:
        argv += [f"--{field.replace('_', '-')}={raw}"]
    code, err = _run(argv, capsys)
    _check(code, err, {field.replace("_", "-"), field}, (field, raw, via_toml))
    assert not (tmp / "o").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=14).filter(lambda s: s[0].isalpha()))
def test_unknown_toml_key_is_named(key, tmp_path_factory, capsys, no_training):
    if key.replace("-", "_") in TrainConfig.__dataclass_fields__:
        return
    tmp = tmp_path_factory.mktemp("cli")
    toml = tmp / "c.toml"
    toml.write_text(f'"{key}" = 1\n')
    code, err = _run(["run", "--out", str(tmp / "o"), "--config", str(toml)], capsys)
    _check(code, err, {repr(key)}, key)
    assert str(toml) in err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=2, max_size=14).filter(lambda s: s[0].isalpha()))
def test_unknown_flag_is_named(flag, capsys, no_training, tmp_path):
    if flag.replace("-", "_") in TrainConfig.__dataclass_fields__ or flag in ("config", "preset", "help"):
        return
    code, err = _run(["run", "--out", str(tmp_path / "o"), f"--{flag}", "1"], capsys)
    # argparse may take a unique prefix of a real flag (``--epoch`` for ``--epochs``): then the value
    # itself is what is checked, or it is valid and training would start; only unknown flags count here.
    if code == 2:
        _check(code, err, {f"--{flag}", flag}, flag)


@pytest.mark.parametrize("extra, name", COMBINATIONS)
@pytest.mark.parametrize("via_toml", [False, True])
def test_invalid_combinations(extra, name, via_toml, tmp_path, capsys, no_training):
    argv = ["run", "--out", str(tmp_path / "o")]
    if via_toml:
        lines, i = [], 0
        while i < len(extra):
            key = extra[i][2:].replace("-", "_")
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value = extra[i + 1]
                if key == "milestones":
                    lines.append(f"{key} = [{value}]")
                elif key in ("partition", "copy_augment"):
                    lines.append(f'{key} = "{value}"')
                else:
                    lines.append(f"{key} = {value}")
                i += 2
            else:
                lines.append(f"{key} = true")
                i += 1
        (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
        argv += ["--config", str(tmp_path / "c.toml")]
    else:
        argv += extra
    code, err = _run(argv, capsys)
    _check(code, err, {name}, (extra, via_toml))
