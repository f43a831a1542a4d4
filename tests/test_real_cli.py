"""real/cli.py and real/config.py: flags, TOML, presets, one-line errors with exit status 2, compare."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from real.cli import COMMANDS, main, resolve_run_config
from theory.plumbing.cli import build_parser
from real.config import TrainConfig, load_preset, load_setting, preset_names, setting_names, split_preset_name
from real.rundir import FORMAT
from theory.plumbing.config import ConfigError, to_jsonable

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "fast"], "lr"),
        (["--model", "nope"], "--model"),
        (["--dataset", "nope"], "--dataset"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "--data-dir"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "2", "--useful", "--separate-epoch", "5"], "--separate-epoch"),
        (["--useful", "--separate-epoch", "soon"], "separate-epoch"),
        (["--partition", "random"], "--partition"),
        (["--upweight"], "--upweight"),
        (["--optimizer", "adam"], "optimizer"),
        (["--milestones", "5,3"], "--milestones"),
        (["--preset", "nope"], "--preset"),
        (["--config", "/nonexistent.toml"], "--config"),
    ],
)
def test_invalid_values_one_line_exit_2(capsys, tmp_path, argv, names):
    rc, out, err = run_main(capsys, "run", *argv, "--out", str(tmp_path / "x"))
    assert rc == 2
    line = one_line(err)
    assert line.startswith("error:") and names in line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [["run", "--bogus", "1"], ["nope"], []])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error:")


def test_missing_data_one_line(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_main(capsys, "run", "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(tmp_path / "o"))
    assert rc == 2
    line = one_line(err)
    assert "--data-dir" in line and "cifar10" in line and str(empty) in line
    assert not (tmp_path / "o").exists()


def test_toml_unknown_key_subprocess(tmp_path):
    """In a real process: exactly one line on stderr, naming the file and the key; exit 2."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('dataset = "synthetic"\nlearning_rate = 0.1\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "real", "run", "--config", str(cfg), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "learning_rate" in line and str(cfg) in line
    res = subprocess.run([sys.executable, "-m", "real", "run", "--lr", "-1", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "--lr" in one_line(res.stderr)
    res = subprocess.run([sys.executable, "-m", "real", "run", "--dataset", "cifar10", "--data-dir", "/nonexistent",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "--data-dir" in one_line(res.stderr)


def test_every_field_is_a_flag():
    parser = build_parser("useful-train", "", COMMANDS)
    run = parser._subparsers._group_actions[0].choices["run"]
    options = {opt for action in run._actions for opt in action.option_strings}
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in options, f.name
    assert {"--config", "--no-useful", "--no-deterministic"} <= options


def test_precedence_defaults_preset_toml_cli(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 0.3\nseed = 4\nmilestones = [2, 4]\nseparate-epoch = "auto"\n')
    cfg = resolve_run_config({"preset": "cifar10-resnet18-sam", "config": str(toml), "lr": "0.2"})
    assert cfg.lr == 0.2 and cfg.seed == 4 and cfg.milestones == (2, 4) and cfg.separate_epoch == "auto"
    assert cfg.optimizer == "sam" and cfg.rho == 0.1 and cfg.preset == "cifar10-resnet18-sam"
    cfg = resolve_run_config({"config": str(toml)})
    assert cfg.lr == 0.3 and cfg.optimizer == "sgd" and cfg.preset is None
    assert resolve_run_config({"separate_epoch": "7"}).separate_epoch == 7


def test_presets_are_valid_and_listed(capsys):
    names = preset_names()
    settings = setting_names()
    assert len(names) == len(settings) * 4  # each setting, and each setting with each optimizer
    expected = {"cifar10-resnet18-sgd", "cifar10-resnet18-sam", "cifar10-resnet18-asam", "cifar100-resnet34-sam",
                "cifar100-resnet34-asam", "stl10-resnet18-sgd", "cinic10-resnet18-sgd", "tinyimagenet-resnet18-sgd",
                "cifar10-vgg19-sgd", "cifar10-densenet121-sgd", "cifar10-vit-s-sgd", "fashion-mnist-cnn-small",
                "cifar10-mlp-sgd", "cifar10-noise10-mixup-resnet18-sgd", "cifar10-noise20-mixup-resnet18-sgd",
                "cifar10-noise40-mixup-resnet18-sgd", "cifar10-lt10-resnet18-sgd", "cifar10-lt100-resnet18-sgd"}
    assert expected <= set(names)
    for name in names:
        cfg = resolve_run_config({"preset": name, "useful": "true"})  # validated with USEFUL on
        assert isinstance(cfg, TrainConfig) and cfg.preset == name
        assert cfg.separate_epoch != "auto" and cfg.separate_epoch <= cfg.epochs
        setting, optimizer = split_preset_name(name)
        if optimizer is not None:
            assert cfg.optimizer == optimizer
            if optimizer != "sgd":  # every SAM-type preset states its radius, from the paper or chosen
                assert cfg.rho == load_setting(setting).per_optimizer[optimizer]["rho"]
    for setting in settings:  # every ASAM radius is marked chosen (the paper's was not checked)
        assert load_setting(setting).source("rho", "asam").startswith("chosen")
    cifar = load_preset("cifar10-resnet18-sgd")
    assert (cifar["epochs"], cifar["batch_size"], cifar["lr"], cifar["weight_decay"], cifar["separate_epoch"]) == (200, 128, 0.1, 5e-4, 8)
    assert load_preset("cifar100-resnet34-sam")["rho"] == 0.2
    rc, out, err = run_main(capsys, "presets")
    assert rc == 0 and all(name in out for name in names)


@pytest.mark.parametrize("preset, optimizer, rho", [("cifar10-resnet18-sgd", "sam", 0.1), ("cifar10-resnet18-sgd", "asam", 0.5),
                                                     ("cifar100-resnet34-sgd", "sam", 0.2), ("cifar10-vgg19-sam", None, 0.1)])
def test_the_optimizer_picks_the_settings_radius_and_an_explicit_rho_wins(preset, optimizer, rho):
    given = {"preset": preset} | ({"optimizer": optimizer} if optimizer else {})
    assert resolve_run_config(given).rho == rho
    assert resolve_run_config({**given, "rho": "0.3"}).rho == 0.3
    assert resolve_run_config({"optimizer": optimizer or "sam"}).rho == 0.05  # no setting: SAM's default


def test_config_command_prints_the_resolved_toml_with_sources(tmp_path, capsys):
    import tomllib

    rc, out, err = run_main(capsys, "config", "--preset", "cifar10-resnet18-sgd", "--optimizer", "sam")
    assert rc == 0 and not err
    data = tomllib.loads(out)
    assert data["rho"] == 0.1 and data["optimizer"] == "sam" and data["preset"] == "cifar10-resnet18-sgd"
    lines = {line.split("=")[0].strip(): line for line in out.splitlines() if "=" in line and not line.startswith("#")}
    assert "its [sam] values (paper)" in lines["rho"] and "command line" in lines["optimizer"]
    assert "default" in lines["nesterov"]
    _, out2, _ = run_main(capsys, "config", "--preset", "cifar10-resnet18-sgd", "--optimizer", "asam")
    assert "chosen: ASAM" in next(line for line in out2.splitlines() if line.startswith("rho"))
    # The printed file is a --config file: passed back, it gives the same configuration.
    saved = tmp_path / "resolved.toml"
    saved.write_text(out)
    assert resolve_run_config({"config": str(saved)}) == resolve_run_config(
        {"preset": "cifar10-resnet18-sgd", "optimizer": "sam"})
    assert not list(Path.cwd().glob("runs/cifar10-resnet18-sam-*"))  # nothing was trained or written
    rc, _, err = run_main(capsys, "config", "--preset", "nope")
    assert rc == 2 and "--preset" in err and len(err.strip().splitlines()) == 1


def test_preset_files_are_checked(tmp_path, monkeypatch):
    """A setting file with an unknown key, a table that is not an optimizer, or a [chosen] entry for a
    value it does not set is refused with one line naming the file."""
    import real.config as C

    monkeypatch.setattr(C, "_presets_dir", lambda: tmp_path)
    for text, word in (('lrr = 0.1\n', "lrr"), ('lr = 0.1\n[adam]\nrho = 1.0\n', "adam"),
                       ('lr = 0.1\n[chosen]\n"sam.rho" = "x"\n', "sam.rho")):
        (tmp_path / "s.toml").write_text(text)
        with pytest.raises(ConfigError, match=word):
            C.load_setting("s")


def test_config_json_round_trip():
    cfg = TrainConfig(dataset="synthetic", milestones=(3, 6), long_tail_ratio=10.0, separate_epoch=3, useful=True)
    data = json.loads(json.dumps(to_jsonable(cfg)))
    from theory.plumbing.config import config_from_mapping

    assert config_from_mapping(TrainConfig, data) == cfg
    with pytest.raises(ConfigError, match="--label-noise"):
        TrainConfig(dataset="synthetic", label_noise=1.0)


def _fake_run(path: Path, seed: int, acc: float, **config) -> Path:
    path.mkdir(parents=True)
    cfg = to_jsonable(TrainConfig(dataset="synthetic", seed=seed, out=str(path), **config))
    (path / "config.json").write_text(json.dumps({"format": FORMAT, **cfg}))
    (path / "summary.json").write_text(json.dumps({"status": "completed", "final_test_acc": acc, "best_test_acc": acc}))
    return path


def test_compare_groups_by_config_ignoring_seed(tmp_path, capsys):
    """``useful-train compare`` (real.compare, registered through the plugin hook) groups by config, not seed."""
    import real.compare

    runs = [
        _fake_run(tmp_path / "a0", 0, 0.90),
        _fake_run(tmp_path / "a1", 1, 0.92),
        _fake_run(tmp_path / "b0", 0, 0.95, useful=True, separate_epoch=8),
    ]
    table = real.compare.compare(runs)[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 4
    row_a = next(line for line in lines if line.startswith("| SGD |"))
    row_b = next(line for line in lines if line.startswith("| SGD+USEFUL |"))
    assert "| 2 | 9.00 | 1.41 |" in row_a and "| 1 | 5.00 | 0.00 |" in row_b
    rc, out, _ = run_main(capsys, "compare", *map(str, runs))
    assert rc == 0 and out.strip() == table
    rc, _, err = run_main(capsys, "compare", str(tmp_path / "missing"))
    assert rc == 2 and "config.json" in one_line(err)


def test_commands_registered_and_module_entry():
    assert {"run", "compare", "presets"} <= set(COMMANDS)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "real", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and "run" in res.stdout and "compare" in res.stdout


def _subparsers(parser):
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_says_what_it_is():
    """Each flag's help says what the flag is, beyond its default and its list of choices (one
    source: the configuration field's doc, for the fields)."""
    import re

    parser = build_parser("useful-train", "", COMMANDS)
    missing = []
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            text = re.sub(r"\(default: [^)]*\)", "", action.help or "")
            text = re.sub(r"one of [\w\-, .]+", "", text).strip(" ;")
            if len(text) < 10:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {action.help!r}")
    assert missing == []


def test_run_help_shows_a_fields_doc_and_default(capsys):
    import pytest as _pytest

    with _pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "SAM/ASAM neighbourhood radius (0: both passes at the same point); >= 0 (default: 0.05)" in out
    assert "JTT's lambda_up" in out
