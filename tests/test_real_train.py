"""real/train.py, real/useful.py, real/rundir.py, real/distributed.py: the training loop, USEFUL's
two phases, the run directory, exact resume after kill -9, divergence, locks, torchrun.

Everything runs on the CPU with the synthetic data set and tiny sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, env, flags, kill_when, run_module, unfinish
from hypothesis import given, settings
from hypothesis import strategies as st

from real.config import TrainConfig
from real.datasets import load_dataset
from real.phase import init_model, steps_per_epoch
from real.rundir import (
    RunLock,
    RunLockError,
    load_checkpoint,
    read_learning_stats,
    read_metrics,
    read_partition,
    state_digest,
)
from real.train import train
from real.useful import auto_cap, auto_separate_epoch, make_partition
from theory.plumbing.atomic import atomic_write_json
from theory.plumbing.config import ConfigError

SPEC_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "curves.png")
METRIC_KEYS = {"epoch", "steps", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "phase"}

TINY = dict(dataset="synthetic", model="cnn-small", synthetic_train=128, synthetic_test=64, batch_size=32)


def tiny(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 2, "out": str(tmp_path / name), **overrides})


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_module("real", *args, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# The automatic separating epoch (a pure function on the error history).


def test_auto_rule_stops_where_the_decrease_slows():
    # chance 0.9; epoch 1 drops to 0.5 (reference decrease 0.4, threshold 0.04); epoch 2 drops by
    # 0.2, epoch 3 by 0.1, epoch 4 by 0.03 < 0.04: separate at 4.
    errors = [0.5, 0.3, 0.2, 0.17, 0.16, 0.15]
    assert auto_separate_epoch(errors, initial_error=0.9, cap=20) == 4
    # Decided from the prefix as soon as epoch 4 is known, undecided before.
    assert auto_separate_epoch(errors[:4], initial_error=0.9, cap=20) == 4
    assert auto_separate_epoch(errors[:3], initial_error=0.9, cap=20) is None
    assert auto_separate_epoch([], initial_error=0.9, cap=20) is None


def test_auto_rule_cap_and_odd_histories():
    steady = [0.9 - 0.05 * t for t in range(1, 15)]  # never slows (constant decrease 0.05)
    assert auto_separate_epoch(steady[:4], initial_error=0.95, cap=5) is None
    assert auto_separate_epoch(steady[:5], initial_error=0.95, cap=5) == 5
    assert auto_separate_epoch(steady, initial_error=0.95, cap=5) == 5
    # An error that goes up counts as slowed.
    assert auto_separate_epoch([0.6, 0.62], initial_error=0.9, cap=10) == 2
    # No decrease in the reference epoch: wait for the cap.
    assert auto_separate_epoch([0.9, 0.5, 0.49], initial_error=0.9, cap=4) is None
    assert auto_separate_epoch([0.9, 0.5, 0.49, 0.48], initial_error=0.9, cap=4) == 4
    # A wider reference window: the average of the first two decreases.
    assert auto_separate_epoch([0.5, 0.3, 0.29], initial_error=0.9, cap=10, warmup=2, fraction=0.1) == 3
    assert auto_cap(200) == 20 and auto_cap(5) == 1 and auto_cap(10) == 1 and auto_cap(11) == 2 and auto_cap(30) == 3
    with pytest.raises(ConfigError):
        auto_separate_epoch([0.5, float("nan")], initial_error=0.9, cap=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), max_size=30), st.integers(1, 25))
def test_auto_rule_is_decided_once(errors, cap):
    """The decision after epoch t never changes with later epochs, and lies in [2, cap]."""
    decided = None
    for t in range(len(errors) + 1):
        d = auto_separate_epoch(errors[:t], initial_error=0.9, cap=cap)
        if decided is not None:
            assert d == decided
        elif d is not None:
            assert d <= t and 1 <= d <= cap and (d >= 2 or cap == 1)
            decided = d


# ----------------------------------------------------------------------------------------------
# The acceptance command and the run directory.


def test_acceptance_command_writes_every_file(tmp_path):
    out = tmp_path / "acc"
    start = time.perf_counter()
    res = cli("run", "--dataset", "synthetic", "--model", "resnet18", "--epochs", "2", "--useful",
              "--separate-epoch", "1", "--out", str(out), "--synthetic-train", "64", "--synthetic-test", "32",
              "--batch-size", "32")
    elapsed = time.perf_counter() - start
    assert res.returncode == 0, res.stderr
    assert elapsed < 120
    for name in SPEC_FILES + ("partition.npz",):
        assert (out / name).is_file(), name
    assert not (out / "run.lock").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "resnet18" and config["useful"] is True and config["separate_epoch"] == 1
    assert set(TrainConfig.__dataclass_fields__) | {"format"} == set(config)  # fully resolved, and marked ours
    rows = read_metrics(out)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("separate", 1), ("main", 1), ("main", 2)]
    assert all(METRIC_KEYS <= set(r) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epochs"] == 2 and summary["epochs_before_split"] == 1
    for key in ("final_test_acc", "best_test_acc", "wall_seconds", "images_per_second"):
        assert isinstance(summary[key], float)
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows if r["phase"] == "main")
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["phase"] == "main" and ckpt["epoch"] == 2 and len(ckpt["run"]["metrics"]) == 3


def test_useful_partition_and_restart_from_scratch(tmp_path):
    k = 3
    cfg = tiny(tmp_path, useful=True, separate_epoch=2, upsample_factor=k, epochs=2, deterministic=True)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["epochs_before_split"] == 2
    part = read_partition(tmp_path / "run")
    n = cfg.synthetic_train
    idx, mult = part["indices"], part["multiplicities"]
    assert part["method"] == "useful" and int(part["k"]) == k and int(part["separate_epoch"]) == 2
    assert int(part["separate_steps"]) == 0 and summary["separated_at"] == {"epoch": 2, "steps": 0}
    assert mult.shape == (n,) and mult.sum() == n + (k - 1) * len(idx)
    assert set(np.flatnonzero(mult == k)) == set(idx) and set(np.unique(mult)) <= {1, k}
    assert part["upsampled_per_class"].sum() == len(idx) and part["class_sizes"].sum() == n
    # Per class, the upsampled cluster is the chosen 2-means cluster, with the higher mean loss.
    for c in range(int(part["num_classes"])):
        chosen = part["chosen_cluster"][c]
        if chosen >= 0:
            assert part["cluster_sizes"][c][chosen] == part["upsampled_per_class"][c]
            assert part["cluster_mean_losses"][c][chosen] >= part["cluster_mean_losses"][c][1 - chosen]
            assert part["mean_loss_upsampled"][c] >= part["mean_loss_rest"][c]
    assert summary["n_upsampled"] == len(idx) and summary["train_list_length"] == n + (k - 1) * len(idx)
    # The main phase starts from a fresh initialization with the same seed.
    ds = load_dataset("synthetic", seed=cfg.seed, synthetic_train=n, synthetic_test=cfg.synthetic_test)
    fresh = state_digest(init_model(cfg, ds).state_dict())  # (a Dataset has the shape fields TrainData has)
    assert summary["init_digest"] == {"separate": fresh, "main": fresh}
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state_digest(ckpt["model"]) != fresh  # ... and is trained afterwards


def test_restart_with_k1_repeats_the_pre_split_epoch(tmp_path):
    """With k = 1 nothing is upsampled, so the main phase (fresh model, fresh optimizer, same seeds)
    must repeat the pre-split phase's first epoch bit for bit: the restart is from scratch."""
    cfg = tiny(tmp_path, useful=True, separate_epoch=1, upsample_factor=1, epochs=2, deterministic=True)
    train(cfg)
    rows = read_metrics(tmp_path / "run")
    pre, main1 = rows[0], rows[1]
    assert (pre["phase"], main1["phase"], main1["epoch"]) == ("separate", "main", 1)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert pre[key] == main1[key], key


def test_upweight_and_baselines(tmp_path):
    cfg = tiny(tmp_path, useful=True, separate_epoch=1, epochs=1, partition="random", upweight=True)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["upweight"] is True
    part = read_partition(tmp_path / "run")
    assert part["method"] == "random" and bool(part["upweight"])
    assert summary["train_list_length"] == cfg.synthetic_train  # weights, not copies
    assert json.loads((tmp_path / "run" / "config.json").read_text())["partition"] == "random"
    # Every baseline rule on fixed outputs.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    logits = rng.normal(size=(60, 3))
    losses = rng.random(60)
    useful = make_partition("useful", logits, labels, losses, k=2, seed=0)
    random_ = make_partition("random", logits, labels, losses, k=2, seed=0)
    assert np.array_equal(np.bincount(labels[useful.upsample], minlength=3), np.bincount(labels[random_.upsample], minlength=3))
    quant = make_partition("quantile", logits, labels, losses, k=2, seed=0, quantile=0.75)
    assert quant.upsample.sum() == 15
    mis = make_partition("misclassified", logits, labels, losses, k=4, seed=0)
    jtt = make_partition("jtt", logits, labels, losses, k=4, seed=0, jtt_upweight=5)
    assert np.array_equal(mis.upsample, logits.argmax(1) != labels) and jtt.method == "jtt"
    assert np.array_equal(jtt.upsample, mis.upsample) and np.array_equal(jtt.multiplicities, np.where(mis.upsample, 5, 1))


def test_steps_per_epoch():
    assert steps_per_epoch(128, 32) == 4
    assert steps_per_epoch(129, 32) == 4  # a last batch of one is dropped
    assert steps_per_epoch(130, 32) == 5
    assert steps_per_epoch(130, 32, world_size=2) == 4  # 65 per rank, batches of 16, one left over
    assert steps_per_epoch(132, 32, world_size=2) == 5


# ----------------------------------------------------------------------------------------------
# Resume after kill -9.


def _final_state(path: Path) -> dict:
    return load_checkpoint(path / "checkpoint.pt")["model"]


def test_sigkill_resume_is_exact(tmp_path):
    kw = dict(TINY, synthetic_train=256, epochs=4, useful=True, separate_epoch=2, deterministic=True)
    out = tmp_path / "killed"
    args = ["run", *flags(**kw), "--out", str(out)]
    kill_when("real", args, lambda: (out / "checkpoint.pt").exists(), poll=0.02)
    assert not (out / "summary.json").exists()  # killed before the end
    assert (out / "run.lock").exists()  # left behind by the killed process: stale, taken over
    # Without --resume the unfinished directory is refused.
    refused = cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    rows = read_metrics(out)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("separate", 1), ("separate", 2)] + [("main", e) for e in (1, 2, 3, 4)]
    # The uninterrupted run (in this process) ends with the same weights and the same metrics.
    ref = train(TrainConfig(**kw, out=str(tmp_path / "ref")))
    assert ref["status"] == "completed"
    a, b = _final_state(out), _final_state(tmp_path / "ref")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_rows = read_metrics(tmp_path / "ref")
    for r, s in zip(rows, ref_rows):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert r[key] == s[key]
    assert np.array_equal(read_partition(out)["indices"],
                          read_partition(tmp_path / "ref")["indices"])


def test_resume_with_only_out_and_config_mismatch(tmp_path):
    out = tmp_path / "r"
    first = train(TrainConfig(**TINY, epochs=1, out=str(out)))
    assert first["status"] == "completed"
    unfinish(out)  # pretend it stopped after epoch 1 of 2
    bad = cli("run", "--out", str(out), "--resume", "--lr", "0.5")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--lr" in bad.stderr
    ok = cli("run", "--out", str(out), "--resume")
    assert ok.returncode == 0, ok.stderr
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    # Resuming a completed run does nothing.
    again = cli("run", "--out", str(out), "--resume")
    assert again.returncode == 0 and len(read_metrics(out)) == 2


# ----------------------------------------------------------------------------------------------
# Robustness.


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny(tmp_path, epochs=20, lr=1e6, schedule="constant", synthetic_train=64)
    summary = train(cfg)
    assert summary["status"] == "diverged"
    msg = summary["message"]
    assert "epoch" in msg and "iteration" in msg
    rows = read_metrics(tmp_path / "run")
    bad_epoch = int(msg.split("epoch ")[1].split(",")[0])
    assert [r["epoch"] for r in rows] == list(range(1, bad_epoch))
    assert bad_epoch >= 2, "the test needs a run that diverges after its first epoch"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["epoch"] == bad_epoch - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
    # The CLI exits 1 and names the epoch.
    res = cli("run", *flags(**TINY), "--epochs", "20", "--lr", "1e6", "--schedule", "constant",
              "--synthetic-train", "64", "--out", str(tmp_path / "cli"))
    assert res.returncode == 1 and f"epoch {bad_epoch}" in res.stderr


def test_live_lock_refused_and_stale_lock_taken(tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from theory.plumbing.lock import _process_start_time

        (out / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                                  "start": _process_start_time(sleeper.pid)}))
        with pytest.raises(ConfigError, match="in use"):
            train(TrainConfig(**TINY, epochs=1, out=str(out)))
        assert not (out / "config.json").exists()
        with pytest.raises(RunLockError):
            RunLock(out).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # The owner is gone: the lock is stale and taken over; released at the end.
    assert train(TrainConfig(**TINY, epochs=1, out=str(out)))["status"] == "completed"
    assert not (out / "run.lock").exists()


def test_finished_run_not_overwritten(tmp_path):
    out = tmp_path / "done"
    assert train(TrainConfig(**TINY, epochs=1, out=str(out)))["status"] == "completed"
    before = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="--overwrite"):
        train(TrainConfig(**TINY, epochs=1, out=str(out)))
    assert (out / "summary.json").read_text() == before
    summary = train(TrainConfig(**TINY, epochs=1, out=str(out), overwrite=True, seed=1))
    assert summary["status"] == "completed" and summary["seed"] == 1


def test_atomic_writes_leave_no_temporaries(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# ----------------------------------------------------------------------------------------------
# torchrun, two CPU processes (gloo).


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "real", "run", *flags(**TINY),
           "--epochs", "2", "--useful", "--separate-epoch", "1", "--device", "cpu", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env(), cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in SPEC_FILES + ("partition.npz",):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    rows = read_metrics(out)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("separate", 1), ("main", 1), ("main", 2)]
    part = read_partition(out)
    assert part["multiplicities"].sum() == TINY["synthetic_train"] + len(part["indices"])
    # Every example of the list is seen once per epoch over both ranks (global batch 32 = 2 x 16).
    assert summary["train_list_length"] == TINY["synthetic_train"] + len(part["indices"])


def test_other_options_run(tmp_path):
    """MixUp with label noise, TrivialAugment, ASAM, label smoothing, multistep with warm-up, a
    long-tailed split, the quantile baseline: one short run through every path."""
    cfg = tiny(tmp_path, epochs=2, optimizer="asam", rho=0.5, mixup_alpha=1.0, label_noise=0.2, trivial_augment=True,
               label_smoothing=0.1, schedule="multistep", milestones=(1,), warmup_epochs=0.5, long_tail_ratio=4.0,
               useful=True, separate_epoch=1, partition="quantile", quantile=0.75, augment="crop-flip")
    summary = train(cfg)
    assert summary["status"] == "completed"
    assert summary["n_train"] < cfg.synthetic_train  # long-tailed subset
    assert summary["label_noise_flipped"] > 0
    part = read_partition(tmp_path / "run")
    assert part["method"] == "quantile" and part["label_noise_flipped"].sum() == summary["label_noise_flipped"]
    rows = read_metrics(tmp_path / "run")
    assert all(np.isfinite(r["train_loss"]) for r in rows)


# ----------------------------------------------------------------------------------------------
# Per-example learning statistics (learning_stats.npz, clusters.md).


def test_learning_stats_written_restored_and_free(tmp_path):
    from real.learning_stats import LearningStats

    kw = dict(TINY, epochs=2, useful=True, separate_epoch=1, deterministic=True)
    summary = train(TrainConfig(**kw, out=str(tmp_path / "u")))
    assert summary["status"] == "completed"
    z = read_learning_stats(tmp_path / "u")
    n = summary["n_train"]
    for prefix in ("", "separate_"):
        for key in ("forgetting_count", "first_learned_epoch", "learned_from_epoch", "presentations"):
            assert z[prefix + key].shape == (n,)
    assert list(z["epochs"]) == [1, 2] and list(z["separate_epochs"]) == [1]
    upsample = read_partition(tmp_path / "u")["upsample"]
    assert np.array_equal(z["upsample"], upsample)
    # Presentations: every example once per epoch before the split, k times per epoch after it for the
    # upsampled ones (up to the examples of the dropped last partial batch).
    assert z["separate_presentations"].sum() == steps_per_epoch(n, TINY["batch_size"]) * TINY["batch_size"]
    assert (z["presentations"][upsample] >= z["presentations"][~upsample].min()).all()
    # The per-epoch correctness matches the metrics' training accuracy.
    rows = [r for r in read_metrics(tmp_path / "u") if r["phase"] == "separate"]
    assert z["separate_history"].sum() == pytest.approx(rows[0]["train_acc"] * z["separate_presentations"].sum())
    text = (tmp_path / "u" / "clusters.md").read_text()
    assert "| statistic | upsampled | rest | all |" in text and "Pre-split phase" in text
    assert f"| examples | {int(upsample.sum())} | {n - int(upsample.sum())} | {n} |" in text
    # The checkpoint carries the statistics; they restore to the same results.
    ckpt = load_checkpoint(tmp_path / "u" / "checkpoint.pt")
    restored = LearningStats(n)
    restored.load_state_dict(ckpt["run"]["learning"]["main"])
    assert np.array_equal(restored.result()["forgetting_count"], z["forgetting_count"])
    # Counting consumes no randomness and changes no numerics: a plain run equals one without stats.
    import real.train as T

    plain = train(TrainConfig(**{**kw, "useful": False}, out=str(tmp_path / "p")))
    original = T.start_phase

    def without_observers(*args, **kwargs):
        ph = original(*args, **kwargs)
        ph.observers.clear()
        return ph

    T.start_phase = without_observers
    try:
        bare = train(TrainConfig(**{**kw, "useful": False}, out=str(tmp_path / "b")))
    finally:
        T.start_phase = original
    a, b = _final_state(tmp_path / "p"), _final_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a) and plain["final_test_acc"] == bare["final_test_acc"]
    assert read_learning_stats(tmp_path / "p")["epochs"].tolist() == [1, 2]
    assert read_learning_stats(tmp_path / "b")["epochs"].tolist() == []  # nothing was counted
    assert not (tmp_path / "p" / "clusters.md").exists()


def test_learning_stats_survive_a_resume(tmp_path):
    """A run stopped after epoch 1 and resumed has the same learning statistics as one run straight
    through (constant schedule, so a 1-epoch run is the first epoch of the 2-epoch one)."""
    kw = dict(TINY, schedule="constant", deterministic=True)
    out = tmp_path / "r"
    assert train(TrainConfig(**kw, epochs=1, out=str(out)))["status"] == "completed"
    unfinish(out)
    assert train(TrainConfig(**kw, epochs=2, out=str(out), resume=True))["status"] == "completed"
    assert train(TrainConfig(**kw, epochs=2, out=str(tmp_path / "ref")))["status"] == "completed"
    a, b = read_learning_stats(out), read_learning_stats(tmp_path / "ref")
    assert sorted(a) == sorted(b) and list(a["epochs"]) == [1, 2]
    for key in a:
        assert np.array_equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------------
# The baselines and options added for the paper's comparisons: each acts, and is recorded.


@pytest.mark.parametrize("partition", ["eiil", "class-balanced"])
def test_new_partitions_run_and_are_recorded(tmp_path, partition):
    cfg = tiny(tmp_path, useful=True, separate_epoch=1, epochs=1, partition=partition, long_tail_ratio=4.0,
               deterministic=True)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["partition"] == partition
    part = read_partition(tmp_path / "run")
    labels = load_dataset("synthetic", seed=0, synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test,
                          long_tail_ratio=4.0).train_y.numpy()
    assert part["method"] == partition and json.loads((tmp_path / "run" / "config.json").read_text())["partition"] == partition
    assert summary["train_list_length"] == part["multiplicities"].sum()
    if partition == "class-balanced":  # per class round(n_max / n_c): the classes are balanced
        counts = np.bincount(labels)
        assert np.array_equal(part["multiplicities"], np.maximum(1, np.rint(counts.max() / counts))[labels])
        assert int(part["k"]) == part["multiplicities"].max() > 1
    else:
        assert set(np.unique(part["multiplicities"])) <= {1, 2} and part["upsample"].any()


def test_copy_augment_gives_the_copies_trivial_augment(tmp_path):
    """--copy-augment trivial-augment (TADA's variant): the extra copies are TrivialAugment-ed, the
    first occurrences are not; recorded in partition.npz and config.json; and it changes the run."""
    base = dict(useful=True, separate_epoch=1, epochs=1, deterministic=True)
    plain = train(tiny(tmp_path, "plain", **base))
    tada = train(tiny(tmp_path, "tada", copy_augment="trivial-augment", **base))
    assert plain["n_upsampled"] == tada["n_upsampled"] > 0  # the same split (same pre-split phase)
    assert str(read_partition(tmp_path / "tada")["copy_augment"]) == "trivial-augment"
    assert json.loads((tmp_path / "tada" / "config.json").read_text())["copy_augment"] == "trivial-augment"
    assert read_metrics(tmp_path / "tada")[-1]["train_loss"] != read_metrics(tmp_path / "plain")[-1]["train_loss"]
    # The augmenter: images not marked as copies get exactly what they would get without the option.
    from real.augment import Augmenter

    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    copies = torch.arange(16) % 3 == 0
    a = Augmenter(mean=(0.5,) * 3, std=(0.25,) * 3, seed=5)(x)
    b = Augmenter(mean=(0.5,) * 3, std=(0.25,) * 3, seed=5)(x, copies)
    assert torch.equal(a[~copies], b[~copies]) and not torch.equal(a[copies], b[copies])
    # The phase marks every entry but the first of each example's run of copies.
    from real import distributed as D
    from real.data import load_training_data
    from real.phase import build_phase

    cfg = tiny(tmp_path, "x", copy_augment="trivial-augment", **base)
    data = load_training_data(cfg, torch.device("cpu"))
    m = np.array([1, 3, 1, 2] + [1] * (data.n_train - 4))
    ph = build_phase("main", cfg, data, D.DistInfo(), multiplicities=m)
    assert ph.copies[:7].tolist() == [False, False, True, True, False, False, True]
    assert int(ph.copies.sum()) == (m - 1).sum()
