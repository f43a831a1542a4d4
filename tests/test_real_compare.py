"""real/compare.py: ``useful-train compare`` (grouping over seeds, relative time, skipped runs, plot)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from real.cli import COMMANDS, main
from real.compare import compare, group_runs, load_runs, paired_time_ratio
from real.config import TrainConfig
from theory.plumbing.config import to_jsonable
from real.rundir import FORMAT
from real.train import train
from theory.plumbing.config import ConfigError

TINY = dict(dataset="synthetic", model="cnn-small", synthetic_train=64, synthetic_test=32, batch_size=32)


def fake_run(path: Path, *, seed: int, acc: float | None, wall: float, status: str = "completed",
             metrics: bool = True, train_seconds: float | None = None, **config) -> Path:
    path.mkdir(parents=True)
    cfg = to_jsonable(TrainConfig(**{**TINY, "seed": seed, "out": str(path), **config}))
    (path / "config.json").write_text(json.dumps({"format": FORMAT, **cfg}))
    summary = {"status": status, "message": "" if status == "completed" else "training diverged: x",
               "final_test_acc": acc, "best_test_acc": acc, "wall_seconds": wall}
    if train_seconds is not None:
        summary["train_seconds"] = train_seconds
    (path / "summary.json").write_text(json.dumps(summary))
    if metrics:
        (path / "metrics.jsonl").write_text(json.dumps({"phase": "main", "epoch": 1, "seconds": wall}) + "\n")
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def runs(tmp_path):
    return [
        fake_run(tmp_path / "sgd0", seed=0, acc=0.90, wall=10.0),
        fake_run(tmp_path / "sgd1", seed=1, acc=0.92, wall=12.0, device="cpu", compile=False, deterministic=True),
        fake_run(tmp_path / "useful0", seed=0, acc=0.95, wall=11.0, useful=True, separate_epoch=1),
        fake_run(tmp_path / "useful1", seed=1, acc=0.93, wall=13.2, useful=True, separate_epoch=1),
        fake_run(tmp_path / "samta0", seed=0, acc=0.96, wall=22.0, optimizer="sam", trivial_augment=True),
        fake_run(tmp_path / "bad", seed=2, acc=None, wall=3.0, status="diverged"),
    ]


def test_groups_errors_relative_time_and_skips(runs, tmp_path):
    table, groups, skipped = compare(runs, out=tmp_path / "plots" / "fig.png")
    by_label = {g.label: g for g in groups}
    assert set(by_label) == {"SGD", "SGD+USEFUL", "SAM+TA"}  # seed and run-control fields ignored
    sgd, useful, sam = by_label["SGD"], by_label["SGD+USEFUL"], by_label["SAM+TA"]
    assert len(sgd.runs) == 2 and len(useful.runs) == 2 and len(sam.runs) == 1
    assert sgd.error_mean == pytest.approx(9.0) and sgd.error_std == pytest.approx(math.sqrt(2.0))
    assert useful.error_mean == pytest.approx(6.0) and sam.error_std == 0.0
    assert sgd.relative_time == pytest.approx(1.0)
    assert useful.relative_time == pytest.approx(12.1 / 11.0)
    assert sam.relative_time == pytest.approx(2.0)
    assert [g.label for g in groups] == ["SGD", "SGD+USEFUL", "SAM+TA"]  # TA variants after the plain ones
    assert skipped == [(str(runs[-1]), "status 'diverged': training diverged: x")]
    lines = table.splitlines()
    assert lines[0].startswith("| configuration | seeds | test error (%) mean | std |")
    assert "| SGD | 2 | 9.00 | 1.41 |" in table and "| 1.10x |" in table and "| 2.00x |" in table
    assert "Skipped 1 run(s):" in table and "bad: status 'diverged'" in table
    png = (tmp_path / "plots" / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "plots").glob(".*tmp"))


def test_labels_name_differing_fields_and_baseline_choice(tmp_path):
    runs = [
        fake_run(tmp_path / "a", seed=0, acc=0.9, wall=10.0, lr=0.1),
        fake_run(tmp_path / "b", seed=0, acc=0.9, wall=20.0, lr=0.2),
        fake_run(tmp_path / "c", seed=0, acc=0.9, wall=40.0, lr=0.2, useful=True, partition="random",
                 separate_epoch=1, metrics=False),
    ]
    loaded, skipped = load_runs(runs)
    assert not skipped
    labels = {g.label: g for g in group_runs(loaded)}
    assert set(labels) == {"SGD (lr=0.1)", "SGD (lr=0.2)", "SGD+random (lr=0.2)"}
    # The baseline is the SGD group differing in the fewest fields (lr=0.2 here).
    assert labels["SGD+random (lr=0.2)"].relative_time == pytest.approx(2.0)
    # Without summary.json's wall_seconds, the metrics' seconds are summed.
    d = tmp_path / "nowall"
    fake_run(d, seed=3, acc=0.9, wall=7.0)
    s = json.loads((d / "summary.json").read_text())
    del s["wall_seconds"]
    (d / "summary.json").write_text(json.dumps(s))
    (d / "metrics.jsonl").write_text('{"phase": "separate", "seconds": 2.5}\n{"phase": "main", "seconds": 4.0}\n')
    assert load_runs([d])[0][0].seconds == pytest.approx(6.5)


def test_cli_compare_replaces_the_basic_one(runs, tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "compare", *map(str, runs), "--out", str(tmp_path / "f.png"))
    assert rc == 0 and "| SGD+USEFUL | 2 | 6.00 |" in out and (tmp_path / "f.png").is_file()
    assert COMMANDS["compare"].handler.__module__ == "real.compare"
    # SAM as the baseline optimizer: SAM+TA is the only SAM group without USEFUL, so it is 1.00x.
    rc, out, _ = run_cli(capsys, "compare", *map(str, runs[:2]), str(runs[4]), "--baseline-optimizer", "sam")
    assert rc == 0 and "time vs SAM" in out and "| 1.00x |" in out
    # Not a run directory: one line, exit status 2.
    rc, _, err = run_cli(capsys, "compare", str(tmp_path / "missing"))
    assert rc == 2 and "config.json" in err and len(err.strip().splitlines()) == 1
    # A run without summary.json (still running) is skipped, not an error.
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "config.json").write_text((runs[0] / "config.json").read_text())
    rc, out, _ = run_cli(capsys, "compare", str(runs[0]), str(tmp_path / "running"))
    assert rc == 0 and "no summary" in out


def test_real_runs_match_the_format(tmp_path, capsys):
    """Two real tiny runs (SGD and SGD+USEFUL, 1 epoch): the files the trainer writes are what compare reads."""
    a = train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "sgd")))
    b = train(TrainConfig(**TINY, epochs=1, useful=True, separate_epoch=1, out=str(tmp_path / "useful")))
    assert a["status"] == b["status"] == "completed"
    table, groups, skipped = compare([tmp_path / "sgd", tmp_path / "useful"])
    assert not skipped and [g.label for g in groups] == ["SGD", "SGD+USEFUL"]
    assert groups[0].error_mean == pytest.approx(100 * (1 - a["final_test_acc"]))
    assert groups[1].seconds == pytest.approx(b["wall_seconds"]) and groups[0].relative_time == 1.0
    assert math.isfinite(groups[1].relative_time)
    with pytest.raises(ConfigError):
        load_runs([tmp_path / "nothing"])


# ----------------------------------------------------------------------------------------------
# Paired statistics.


def test_paired_differences_over_shared_seeds(tmp_path):
    """SGD, SGD+USEFUL and SGD+random on seeds 0-3 (USEFUL misses seed 3): USEFUL is paired with SGD
    and with random upsampling over the shared seeds, with the t-interval of the mean difference."""
    from scipy import stats

    from real.compare import pair_groups, paired_difference

    errs = {"sgd": [10.0, 12.0, 11.0, 13.0], "useful": [8.0, 11.0, 9.5], "random": [9.5, 12.5, 10.0, 12.0]}
    runs = []
    for name, values in errs.items():
        extra = {} if name == "sgd" else dict(useful=True, separate_epoch=1, partition=name)
        for seed, e in enumerate(values):
            runs.append(fake_run(tmp_path / f"{name}{seed}", seed=seed, acc=1 - e / 100, wall=1.0, **extra))
    runs.append(fake_run(tmp_path / "other-lr", seed=0, acc=0.5, wall=1.0, lr=0.3, useful=True, separate_epoch=1))
    table, groups, _ = compare(runs)
    by = {g.label: g for g in groups}
    useful = by["SGD+USEFUL (lr=0.1)"]
    assert useful.reference is by["SGD (lr=0.1)"] and useful.matched is by["SGD+random (lr=0.1)"]
    assert by["SGD+random (lr=0.1)"].reference is by["SGD (lr=0.1)"] and by["SGD+random (lr=0.1)"].matched is None
    # Another learning rate is another setting: no reference there (it differs in more than the method).
    assert by["SGD+USEFUL (lr=0.3)"].reference is None
    d = pair_groups(useful, useful.reference)
    diffs = np.array([8.0 - 10.0, 11.0 - 12.0, 9.5 - 11.0])
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["per_seed"] == pytest.approx(diffs)
    lo, hi = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert (d["mean"], d["low"], d["high"]) == pytest.approx((diffs.mean(), lo, hi))
    row = next(line for line in table.splitlines() if line.startswith("| SGD+USEFUL (lr=0.1) |"))
    assert f"{diffs.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] (3 pairs)" in row
    m = pair_groups(useful, useful.matched)
    assert m["per_seed"] == pytest.approx([-1.5, -1.5, -0.5])
    assert paired_difference([1.0, 2.0], [1.0, 1.0])["low"] is not None  # 2 pairs: an interval, but ...
    # ... the table says when fewer than 3 pairs exist, and gives no interval then.
    table2, _, _ = compare([runs[0], runs[1], runs[4], runs[5]])
    assert "2 pairs: fewer than 3, no interval" in table2
    table3, _, _ = compare([runs[0], runs[5]])
    assert "no shared seeds" in table3


def test_a_run_counts_once_and_twins_are_refused(tmp_path, capsys):
    """A folder given twice (or by two spellings) counts once; two folders of one configuration and
    seed (e.g. a grid's ``lr = [1, 1.0]``) are refused instead of counting as two seeds."""
    a = fake_run(tmp_path / "a", seed=0, acc=0.9, wall=1.0)
    b = fake_run(tmp_path / "b", seed=1, acc=0.8, wall=1.0)
    _, groups, _ = compare([a, a, tmp_path / "." / "a", b])
    assert [len(g.runs) for g in groups] == [2]
    twin = fake_run(tmp_path / "twin", seed=0, acc=0.7, wall=1.0)
    with pytest.raises(ConfigError, match="same configuration"):
        compare([a, b, twin])
    assert main(["compare", str(a), str(twin)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "twin" in err[0]


def test_plot_format_follows_the_suffix_and_bad_outs_are_refused(runs, tmp_path, capsys):
    compare(runs, out=tmp_path / "fig.pdf")
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")
    compare(runs, out=tmp_path / "fig.svg")
    assert b"<svg" in (tmp_path / "fig.svg").read_bytes()[:500]
    compare(runs, out=tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "folder").mkdir()
    for bad in (tmp_path / "folder", tmp_path / "fig.jpeg", tmp_path / "noext"):
        assert main(["compare", *map(str, runs), "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0]
    assert not (tmp_path / "fig.jpeg").exists() and not (tmp_path / "noext").exists()


def test_a_summary_that_is_not_an_accuracy_is_skipped(tmp_path):
    """``final_test_acc: true`` used to read as 1.0 (0 % error): anything but a number in [0, 1] skips."""
    good = fake_run(tmp_path / "g", seed=0, acc=0.9, wall=1.0)
    runs = []
    for i, bad in enumerate((True, "0.9", 1.5, -0.1, None)):
        path = fake_run(tmp_path / f"b{i}", seed=i + 1, acc=0.5, wall=1.0)
        summary = json.loads((path / "summary.json").read_text())
        summary["final_test_acc"] = bad
        (path / "summary.json").write_text(json.dumps(summary))
        runs.append(path)
    loaded, skipped = load_runs([good, *runs])
    assert [r.path.name for r in loaded] == ["g"] and len(skipped) == 5
    assert all("final_test_acc" in reason for _, reason in skipped)


def test_method_fields_do_not_label_runs_without_useful(tmp_path):
    """A USEFUL run split by --separate-iteration is "SGD+USEFUL" beside a plain "SGD" (the split's
    fields do not label runs without USEFUL), and --group-window (what is recorded) groups nothing apart."""
    runs = [fake_run(tmp_path / "s0", seed=0, acc=0.9, wall=1.0),
            fake_run(tmp_path / "u0", seed=0, acc=0.9, wall=1.0, useful=True, separate_iteration=7),
            fake_run(tmp_path / "p1", seed=1, acc=0.9, wall=1.0, augment="none", easy_feature="patch", group_window=5),
            fake_run(tmp_path / "p2", seed=2, acc=0.8, wall=1.0, augment="none", easy_feature="patch")]
    _, groups, _ = compare(runs[:2])
    assert [g.label for g in groups] == ["SGD", "SGD+USEFUL"]
    _, groups, _ = compare(runs[2:])
    assert len(groups) == 1 and len(groups[0].runs) == 2


# ----------------------------------------------------------------------------------------------
# Training time relative to SGD, paired by seed.


def test_train_time_relative_to_sgd_is_paired_by_seed(tmp_path):
    sgd_times = {0: 10.0, 1: 20.0, 2: 40.0}  # very different seeds: an unpaired ratio of means would not be 1.1
    useful_times = {0: 11.0, 1: 23.0, 2: 44.0}  # ratios 1.1, 1.15, 1.1
    runs = [fake_run(tmp_path / f"sgd{s}", seed=s, acc=0.9, wall=100.0, train_seconds=t) for s, t in sgd_times.items()]
    runs += [fake_run(tmp_path / f"useful{s}", seed=s, acc=0.9, wall=1.0, train_seconds=t, useful=True,
                      separate_epoch=1) for s, t in useful_times.items()]
    runs += [fake_run(tmp_path / "useful9", seed=9, acc=0.9, wall=1.0, train_seconds=1.0, useful=True,
                      separate_epoch=1)]  # no SGD run with seed 9: not paired
    runs += [fake_run(tmp_path / f"sam{s}", seed=s, acc=0.9, wall=1.0, train_seconds=2 * sgd_times[s],
                      optimizer="sam") for s in (0, 1)]
    runs += [fake_run(tmp_path / "nosgd", seed=0, acc=0.9, wall=1.0, train_seconds=5.0, lr=0.3)]  # another setting
    table, groups, _ = compare(runs)
    by = {g.label: g for g in groups}
    useful, sam, sgd = by["SGD+USEFUL (lr=0.1)"], by["SAM (lr=0.1)"], by["SGD (lr=0.1)"]
    d = paired_time_ratio(useful, useful.reference)
    assert useful.reference is sgd and d["seeds"] == [0, 1, 2] and d["n"] == 3
    expected = [useful_times[s] / sgd_times[s] for s in (0, 1, 2)]
    np.testing.assert_allclose(d["per_seed"], expected)
    assert d["mean"] == pytest.approx(np.mean(expected)) and d["std"] == pytest.approx(np.std(expected, ddof=1))
    assert paired_time_ratio(sam, sam.reference)["per_seed"] == pytest.approx([2.0, 2.0])
    assert paired_time_ratio(sgd, None) is None
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| SGD") or
            line.startswith("| SAM")}
    assert f"| {np.mean(expected):.2f}x ± {np.std(expected, ddof=1):.2f} (3 seeds) |" in rows["SGD+USEFUL (lr=0.1)"]
    assert "| 2.00x ± 0.00 (2 seeds) |" in rows["SAM (lr=0.1)"]
    assert "| 1 (reference) |" in rows["SGD (lr=0.1)"]
    assert "train time vs SGD (paired)" in table.splitlines()[0]
    # a setting without its SGD group has no ratio
    assert "| 1 (reference) |" in rows["SGD (lr=0.3)"] and paired_time_ratio(by["SGD (lr=0.3)"], sgd)["n"] == 1


def test_real_useful_run_counts_its_pre_split_epochs_in_train_seconds(tmp_path):
    """summary.json's train_seconds (compare's paired time) of a USEFUL run is the training time of
    both phases' epochs: each row's training time is its images over its images_per_second."""
    from real.rundir import read_metrics

    # --upweight: both phases go over the 64 examples in 2 full batches, so a row's images are known
    b = train(TrainConfig(**TINY, epochs=2, useful=True, upweight=True, separate_epoch=1, out=str(tmp_path / "u")))
    rows = read_metrics(tmp_path / "u")
    assert [r["phase"] for r in rows] == ["separate", "main", "main"] and b["train_list_length"] == 64
    assert all(r["steps"] * TINY["batch_size"] == 64 for r in rows)
    per_row = [64 / r["images_per_second"] for r in rows]
    assert b["train_seconds"] == pytest.approx(sum(per_row), rel=1e-6)
    assert b["train_seconds"] > sum(t for t, r in zip(per_row, rows) if r["phase"] == "main")
