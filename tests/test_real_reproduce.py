"""real/reproduce.py: ``useful-train reproduce`` on small generated idx files (the Fashion-MNIST
format): the claims.json schema, the figures, real run directories that compare reads, reuse of runs
only for their exact configuration, --overwrite / --resume, determinism, the missing data set."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import real.datasets
from real.cli import main
from real.compare import compare, paired_difference
from real.reproduce import (
    FIGURES,
    REQUIRED_IDS,
    ReproduceSettings,
    run_digest,
    early_gap,
    fit_iteration,
    merge_short_windows,
    plan,
    split_quality,
)
from real.rundir import load_run_config
from theory.plumbing.config import ConfigError

TINY = dict(seeds=2, train_subset=100, epochs=2, batch_size=20, separate_iteration=3, group_window=1,
            early_iterations=4, contrast_grid="0.25,1", workers=1)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images.astype(np.uint8).tobytes()))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """150 training and 100 test images: a class-dependent bright bar in the middle plus noise, on
    a black border (like Fashion-MNIST's clothing)."""
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 150), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 6:22, 6:22] = rng.normal(60, 30, size=(16, 16))
            images[i, 6 + y:8 + y, 6:22] += 120
        write_idx(folder, prefix, np.clip(images, 0, 255).round(), labels)
    return folder


def flags(**kw) -> list[str]:
    return [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exit_:  # a usage error from argparse
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----------------------------------------------------------------------------------------------
# The numbers behind the claims.


def test_fit_iteration_gap_and_split_quality():
    groups = {"start": np.array([0, 5, 10, 15]), "end": np.array([5, 10, 15, 20]),
              "accuracy": np.array([[0.1, 0.5], [0.2, 0.95], [0.5, 0.99], [np.nan, 1.0]])}
    assert fit_iteration(groups, 1, 0.9) == 10 and fit_iteration(groups, 0, 0.9) is None
    assert fit_iteration(groups, 0, 0.5) == 15
    assert early_gap(groups, 10) == pytest.approx(((0.5 - 0.1) + (0.95 - 0.2)) / 2)
    # Windows of unequal length weigh by their iterations; a short window at an epoch's end is merged.
    raw = {"window": np.int64(4), "epoch": np.array([1, 1, 2]), "start": np.array([0, 4, 5]),
           "end": np.array([4, 5, 9]), "seen": np.array([[2, 6], [1, 1], [4, 4]]),
           "correct": np.array([[1, 6], [0, 1], [2, 4]])}
    merged = merge_short_windows(raw)
    assert merged["end"].tolist() == [5, 9] and merged["seen"].tolist() == [[3, 7], [4, 4]]
    assert merged["accuracy"][0].tolist() == pytest.approx([1 / 3, 1.0])
    assert early_gap(merged, 9) == pytest.approx((5 * (1 - 1 / 3) + 4 * 0.5) / 9)
    up = np.array([1, 1, 1, 0, 0, 0], bool)
    has = np.array([0, 0, 1, 1, 1, 0], bool)  # without: examples 0, 1, 5
    assert split_quality(up, has) == pytest.approx((2 / 3, 2 / 3))


def test_paired_difference_is_the_t_interval():
    a, b = [0.71, 0.69, 0.74, 0.70], [0.68, 0.69, 0.70, 0.66]
    d = np.subtract(a, b)
    out = paired_difference(a, b)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert out["mean"] == pytest.approx(d.mean()) and out["n"] == 4
    assert (out["low"], out["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (out["low"], out["high"]) == pytest.approx((lo, hi))
    one = paired_difference([0.5], [0.4])
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["std"] is None


def test_plan_keys_runs_by_their_full_configuration(tmp_path):
    s = ReproduceSettings(**{**TINY, "contrast_grid": (0.25, 1.0)})
    jobs = plan(s, tmp_path)
    assert len(jobs) == 2 * (4 + 1 + 3)  # main contrast, the other contrast (SGD recording its split), plain
    assert len({j.config.out for j in jobs}) == len(jobs)
    for j in jobs:
        assert Path(j.config.out).name.endswith(run_digest(j.config)[:10])
        assert j.config.deterministic and j.config.augment == "none"
    other = plan(ReproduceSettings(**{**TINY, "contrast_grid": (0.25, 1.0), "epochs": 3}), tmp_path)
    assert not {j.config.out for j in jobs} & {j.config.out for j in other}  # another budget: other runs
    useful = [j for j in jobs if j.method in ("useful", "random")]
    assert all(j.config.separate_iteration == 3 and j.config.useful for j in useful)


def test_sgd_with_its_split_recorded_is_sgd(tmp_path):
    """The sweep's "sgd_split" runs (USEFUL with k = 1) train their main phase exactly as SGD does."""
    import torch

    from real.config import TrainConfig
    from real.rundir import load_checkpoint, read_metrics
    from real.train import train

    kw = dict(dataset="synthetic", model="cnn-small", synthetic_train=96, synthetic_test=32, batch_size=32, epochs=2,
              augment="none", easy_feature="patch", deterministic=True)
    train(TrainConfig(**kw, out=str(tmp_path / "sgd")))
    train(TrainConfig(**kw, useful=True, upsample_factor=1, separate_iteration=2, out=str(tmp_path / "k1")))
    a, b = load_checkpoint(tmp_path / "sgd")["model"], load_checkpoint(tmp_path / "k1")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[{k: r[k] for k in ("train_loss", "test_acc", "test_acc_without_easy")} for r in read_metrics(tmp_path / x)
             if r["phase"] == "main"] for x in ("sgd", "k1")]
    assert rows[0] == rows[1]


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="^--contrast:"):
        ReproduceSettings(contrast=0.3)  # not in the grid
    with pytest.raises(ConfigError, match="^--contrast-grid"):
        ReproduceSettings(contrast_grid=(1.0, 0.25))
    with pytest.raises(ConfigError, match="^--separate-iteration"):
        ReproduceSettings(separate_iteration=10**6)
    with pytest.raises(ConfigError, match="^--easy-fraction"):
        ReproduceSettings(easy_fraction=1.0)  # no examples without the feature


# ----------------------------------------------------------------------------------------------
# The command.


def test_reproduce_end_to_end(idx_dir, tmp_path, capsys):
    out = tmp_path / "report"
    rc, stdout, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), *flags(**TINY))
    assert rc == 0, err
    report = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in report["claims"]] == list(REQUIRED_IDS)
    for c in report["claims"]:
        assert set(c) >= {"id", "statement", "holds", "values", "rule", "figure"}
        assert isinstance(c["holds"], bool) and c["rule"] and c["statement"].endswith(".")
        assert (out / c["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert c["holds"] or c.get("note"), c["id"]  # a claim that does not hold is explained
        assert f"{c['id']} " in stdout
    assert sorted(p.name for p in out.glob("*.png")) == sorted(FIGURES)
    v = report["claims"][0]["values"]
    assert set(v["T_with_easy"]) == {"mean", "std", "per_seed", "missing"} and len(v["T_with_easy"]["per_seed"]) == 2
    helps = report["claims"][3]["values"]
    assert set(helps["useful_minus_random"]) >= {"mean", "low", "high", "n", "per_seed"}
    assert helps["useful_minus_random"]["n"] == 2
    assert (out / "claims.md").read_text().startswith("| claim | holds |")
    # Every run is a real run directory whose configuration is the one its name's digest says.
    assert len(report["runs"]) == 16
    for rel in report["runs"].values():
        cfg = load_run_config(out / rel)
        assert rel.endswith(run_digest(cfg)[:10]) and cfg.data_dir == str(idx_dir)
    # The numbers come from those runs: the paired difference is recomputed from their summaries.
    acc = {m: [json.loads((out / report["runs"][f"c0.25/{m}/seed{i}"] / "summary.json").read_text())
               ["final_test_acc_without_easy"] for i in range(2)] for m in ("useful", "random")}
    assert helps["useful_minus_random"]["per_seed"] == pytest.approx(np.subtract(acc["useful"], acc["random"]))
    # compare reads them, pairs them by seed and says when fewer than 3 pairs exist.
    table, groups, skipped = compare(sorted((out / "runs").glob("c0.25-*")))
    assert not skipped and len(groups) == 4
    assert "2 pairs: fewer than 3, no interval" in table

    # A report folder is refused without --overwrite or --resume (one line, exit 2) ...
    rc, _, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), *flags(**TINY))
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # ... --resume reuses every run (two worker processes, nothing retrained) and a run deleted
    # is retrained to the same numbers (deterministic): the same claims.json but for the seconds.
    before = {k: (out / r / "summary.json").stat().st_mtime_ns for k, r in report["runs"].items()}
    victim = out / report["runs"]["c0.25/useful/seed1"]
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    rc, _, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), "--resume",
                     *flags(**{**TINY, "workers": 2}))
    assert rc == 0, err
    again = json.loads((out / "claims.json").read_text())
    after = {k: (out / r / "summary.json").stat().st_mtime_ns for k, r in again["runs"].items()}
    assert [k for k in before if before[k] != after[k]] == ["c0.25/useful/seed1"]
    for x in (report, again):
        x.pop("seconds")
    assert again == report

    # --overwrite removes the report's files and run directories, nothing of the user's.
    (out / "notes.txt").write_text("mine")
    (out / "runs" / "mine").mkdir()
    rc, _, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), "--overwrite",
                     *flags(**{**TINY, "seeds": 1, "contrast_grid": "0.25,0.5"}))
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "mine" and (out / "runs" / "mine").is_dir()
    names = {p.name for p in (out / "runs").iterdir()}
    assert len(names) == 9 and not any(n.startswith("c1-") for n in names)  # no stale run left


def test_missing_data_set_names_the_debian_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(real.datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    rc, _, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), "--quick")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "dataset-fashion-mnist" in err and err.startswith("error: --data-dir")
    assert not (tmp_path / "r").exists()  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), "--data-dir", str(empty))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "train-images-idx3-ubyte" in err


def test_bad_settings_are_one_line(tmp_path, capsys):
    for argv, flag in ((["--seeds", "0"], "--seeds"), (["--contrast-grid", "0.5"], "--contrast-grid"),
                       (["--workers", "x"], "--workers"), (["--bogus", "1"], "--bogus")):
        rc, _, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), *argv)
        assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1
