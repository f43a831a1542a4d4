"""real/planted.py, real/group_accuracy.py and their place in the trainer: the planted easy feature
(positions, carriers, contrast, subset), the per-group training accuracy at iteration granularity,
easy_feature.npz / group_accuracy.npz, per-group test accuracy, resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import unfinish
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from real.config import TrainConfig
from real.datasets import Dataset, load_dataset
from real.group_accuracy import GroupAccuracy
from real.planted import (
    PATCH_VALUE,
    channel_stats,
    choose_carriers,
    patch_positions,
    prepare_dataset,
    stratified_subset,
)
from real.rundir import (
    load_checkpoint,
    read_easy_feature,
    read_group_accuracy,
    read_metrics,
    read_summary,
)
from real.train import train
from theory.plumbing.config import ConfigError

TINY = dict(dataset="synthetic", model="cnn-small", synthetic_train=128, synthetic_test=64, batch_size=32,
            augment="none", easy_feature="patch", deterministic=True)


def fake_dataset(n_train=300, n_test=120, size=28, classes=10, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, 1, size, size), dtype=np.uint8)
    y = rng.integers(0, classes, size=n_train + n_test).astype(np.int64)
    t = torch.from_numpy
    return Dataset(name="fashion-mnist", train_x=t(x[:n_train]), train_y=t(y[:n_train]), test_x=t(x[n_train:]),
                   test_y=t(y[n_train:]), num_classes=classes, mean=(0.5,), std=(0.29,))


# ----------------------------------------------------------------------------------------------
# The feature.


@given(classes=st.integers(2, 24), size=st.integers(1, 6), image=st.sampled_from([16, 28, 32, 64]))
def test_positions_are_separate_squares_on_the_border(classes, size, image):
    try:
        pos = patch_positions(classes, image, size)
    except ConfigError as err:
        assert err.field == "--easy-feature" and 4 * (image - size) < (2 * size + 1) * classes  # spacing < 2s+1
        return
    assert pos.shape == (classes, 2) and pos.min() >= 0 and pos.max() <= image - size
    on_border = (pos[:, 0] == 0) | (pos[:, 1] == 0) | (pos[:, 0] == image - size) | (pos[:, 1] == image - size)
    assert on_border.all()
    masks = np.zeros((classes, image, image), dtype=bool)
    for k, (r, c) in enumerate(pos):
        masks[k, r:r + size, c:c + size] = True
    assert (masks.sum(0) <= 1).all()  # no two squares share a pixel


def test_too_many_classes_is_one_line_naming_the_flag():
    with pytest.raises(ConfigError, match=r"^--easy-feature: 100 classes need 100 separate squares of 4x4 pixels"):
        patch_positions(100, 32, 4)
    assert patch_positions(10, 28, 4).tolist() == [[0, 0], [0, 10], [0, 19], [5, 24], [14, 24], [24, 24], [24, 14],
                                                   [24, 5], [19, 0], [10, 0]]  # Fashion-MNIST's squares


@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=200), fraction=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_carriers_are_exactly_alpha_of_each_class(labels, fraction, seed):
    labels = np.array(labels)
    mask = choose_carriers(labels, fraction, np.random.default_rng(seed))
    for c in np.unique(labels):
        n_c = int((labels == c).sum())
        assert mask[labels == c].sum() == round(fraction * n_c)


@given(n=st.integers(1, 300), seed=st.integers(0, 1000))
@settings(max_examples=40)
def test_stratified_subset(n, seed):
    labels = np.repeat(np.arange(3), [150, 100, 50])
    idx = stratified_subset(labels, n, seed)
    assert idx.size == n and np.unique(idx).size == n and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=3)
    assert np.all(np.abs(counts - n * np.array([0.5, 1 / 3, 1 / 6])) < 1)  # proportional up to rounding
    assert np.array_equal(idx, stratified_subset(labels, n, seed))
    with pytest.raises(ConfigError, match="--train-subset"):
        stratified_subset(labels, 301, seed)


@given(contrast=st.floats(0.05, 1.0), fraction=st.floats(0.05, 1.0), size=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_prepared_images_are_the_clothing_times_contrast_plus_the_square(contrast, fraction, size, seed):
    ds = fake_dataset()
    out, easy = prepare_dataset(ds, seed=seed, train_subset=None, contrast=contrast, easy_feature="patch",
                                easy_fraction=fraction, easy_size=size)
    assert torch.equal(ds.train_x, fake_dataset().train_x)  # the input is not modified
    for x0, x1, y, has in ((ds.train_x, out.train_x, ds.train_y, easy.has_easy_train),
                           (ds.test_x, out.test_x, ds.test_y, easy.has_easy_test)):
        scaled = torch.round(x0.float() * contrast).to(torch.uint8)
        square = torch.zeros_like(x0, dtype=torch.bool)
        for i in np.flatnonzero(has):
            r, c = easy.positions[int(y[i])]
            square[i, :, r:r + size, c:c + size] = True
        assert torch.equal(x1[square], torch.full_like(x1[square], PATCH_VALUE))
        assert torch.equal(x1[~square], scaled[~square])
    assert out.mean == pytest.approx(channel_stats(out.train_x)[0])
    mean = out.train_x.double().div(255).mean().item()
    assert out.mean[0] == pytest.approx(mean) and out.std[0] == pytest.approx(out.train_x.double().div(255).std(
        unbiased=False).item())
    # Deterministic from the seed; training and test carriers drawn separately.
    again = prepare_dataset(ds, seed=seed, train_subset=None, contrast=contrast, easy_feature="patch",
                            easy_fraction=fraction, easy_size=size)[1]
    assert np.array_equal(again.has_easy_train, easy.has_easy_train)


def test_the_square_is_linearly_decodable():
    """With the clothing below full contrast, reading the mean of each class's square gives the label
    of every carrier (the feature is linearly decodable from the pixels)."""
    ds = fake_dataset(n_train=500)
    out, easy = prepare_dataset(ds, seed=3, train_subset=None, contrast=0.9, easy_feature="patch",
                                easy_fraction=0.5, easy_size=4)
    x = out.train_x.double()[:, 0]
    reads = torch.stack([x[:, r:r + 4, c:c + 4].mean((1, 2)) for r, c in easy.positions], 1)
    carriers = torch.from_numpy(easy.has_easy_train)
    assert torch.equal(reads[carriers].argmax(1), out.train_y[carriers])


def test_subset_then_feature_and_nothing_without_options():
    ds = fake_dataset()
    same, easy = prepare_dataset(ds, seed=0, train_subset=None, contrast=1.0, easy_feature="none",
                                 easy_fraction=0.9, easy_size=4)
    assert same is ds and easy is None
    sub, easy = prepare_dataset(ds, seed=1, train_subset=100, contrast=1.0, easy_feature="patch", easy_fraction=0.9,
                                easy_size=4)
    assert sub.train_x.shape[0] == 100 and easy.has_easy_train.shape == (100,)
    assert np.array_equal(sub.train_y.numpy(), ds.train_y.numpy()[easy.subset])
    assert sub.test_x.shape == ds.test_x.shape  # the whole test set


def test_configuration_refuses_flags_that_would_not_act():
    with pytest.raises(ConfigError, match="^--easy-fraction"):
        TrainConfig(easy_fraction=0.5)
    with pytest.raises(ConfigError, match="^--group-window"):
        TrainConfig(group_window=3)
    with pytest.raises(ConfigError, match="^--augment"):
        TrainConfig(easy_feature="patch")  # crop-flip (the default) would move the square
    with pytest.raises(ConfigError, match="^--trivial-augment"):
        TrainConfig(easy_feature="patch", augment="none", trivial_augment=True)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="^--contrast"):
            TrainConfig(contrast=bad)
    with pytest.raises(ConfigError, match="^--train-subset"):
        TrainConfig(train_subset=1)
    TrainConfig(easy_feature="patch", augment="none", easy_fraction=1.0, contrast=0.3, train_subset=10)


# ----------------------------------------------------------------------------------------------
# Per-group accuracy.


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_group_accuracy_counts_every_presentation(data):
    n = data.draw(st.integers(2, 40))
    groups = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    window = data.draw(st.integers(1, 4))
    epochs = data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))  # steps per epoch
    acc = GroupAccuracy(groups, window=window)
    truth = []
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    for e, steps in enumerate(epochs, 1):
        for step in range(steps):
            idx = rng.integers(0, n, size=rng.integers(1, 6))
            ok = rng.random(idx.size) < 0.5
            acc.update(torch.from_numpy(idx), torch.from_numpy(ok), e)
            truth.append((e, step, idx, ok))
        if e == 2:  # a checkpoint in the middle: the state round-trips
            state = acc.state_dict()
            acc = GroupAccuracy.from_state_dict(state)
        acc.end_epoch(e)
    r = acc.result()
    offset = 0
    row = 0
    for e, steps in enumerate(epochs, 1):
        for w in range(-(-steps // window)):
            lo, hi = w * window, min((w + 1) * window, steps)
            assert (r["epoch"][row], r["start"][row], r["end"][row]) == (e, offset + lo, offset + hi)
            for g in (0, 1):
                seen = sum(int((groups[i] == g).sum()) for ee, s, i, _ in truth if ee == e and lo <= s < hi)
                good = sum(int(((groups[i] == g) & o).sum()) for ee, s, i, o in truth if ee == e and lo <= s < hi)
                assert (r["seen"][row, g], r["correct"][row, g]) == (seen, good)
            row += 1
        offset += steps
    assert row == len(r["epoch"])
    assert np.array_equal(np.isnan(r["accuracy"]), r["seen"] == 0)


def test_trainer_records_groups_writes_files_and_resumes(tmp_path):
    kw = dict(TINY, epochs=2, group_window=2, useful=True, separate_iteration=3, contrast=0.5)
    out = tmp_path / "u"
    summary = train(TrainConfig(**kw, out=str(out)))
    assert summary["status"] == "completed"
    easy, groups = read_easy_feature(out), read_group_accuracy(out)
    n = summary["n_train"]
    has = easy["has_easy_train"]
    labels = load_dataset("synthetic", seed=0, synthetic_train=128, synthetic_test=64).train_y.numpy()
    assert has.shape == (n,) and has.sum() == sum(round(0.9 * c) for c in np.bincount(labels))
    assert np.array_equal(groups["groups"], has.astype(np.int8))
    # Pre-split: 3 iterations in windows of 2; main phase: every window of both epochs.
    assert groups["separate_end"].tolist() == [2, 3] and groups["separate_seen"].sum() == 3 * 32
    steps = read_metrics(out)[-1]["steps"]
    assert groups["end"][-1] == 2 * steps
    assert groups["seen"].sum() == 2 * summary["train_list_length"]  # every presentation of the upsampled list
    # The per-group training counts of an epoch add up to its training accuracy.
    rows = [m for m in read_metrics(out) if m["phase"] == "main"]
    first = groups["epoch"] == 1
    assert groups["correct"][first].sum() / groups["seen"][first].sum() == pytest.approx(rows[0]["train_acc"])
    # The per-group test accuracies average to the test accuracy.
    has_t = easy["has_easy_test"]
    final = rows[-1]
    mixed = (final["test_acc_with_easy"] * has_t.sum() + final["test_acc_without_easy"] * (~has_t).sum()) / has_t.size
    assert mixed == pytest.approx(final["test_acc"])
    assert summary["final_test_acc_without_easy"] == final["test_acc_without_easy"]
    # Resume: a run stopped after its first main epoch ends with the same group accuracy.
    ckpt = load_checkpoint(out)
    assert set(ckpt["run"]["groups"]) == {"separate", "main"}
    ref = tmp_path / "ref"
    kw1 = dict(kw, schedule="constant")
    assert train(TrainConfig(**kw1, out=str(ref)))["status"] == "completed"
    part = tmp_path / "part"
    assert train(TrainConfig(**dict(kw1, epochs=1), out=str(part)))["status"] == "completed"
    unfinish(part, epochs=2)
    assert train(TrainConfig(**kw1, out=str(part), resume=True))["status"] == "completed"
    a, b = read_group_accuracy(part), read_group_accuracy(ref)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key
    assert read_summary(part)["final_test_acc_without_easy"] == read_summary(ref)["final_test_acc_without_easy"]


def test_counting_changes_no_numerics(tmp_path):
    """The same run with and without the observer (monkeypatched away) ends with the same weights."""
    import real.train as T

    kw = dict(TINY, epochs=1)
    a = train(TrainConfig(**kw, out=str(tmp_path / "a")))
    original = T.start_phase

    def bare(*args, **kwargs):
        ph = original(*args, **kwargs)
        ph.observers[:] = [o for o in ph.observers if not isinstance(o, GroupAccuracy)]
        return ph

    T.start_phase = bare
    try:
        b = train(TrainConfig(**kw, out=str(tmp_path / "b")))
    finally:
        T.start_phase = original
    sa, sb = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a["final_test_acc"] == b["final_test_acc"]


def test_planted_data_reach_the_device_unchanged(tmp_path):
    from real.data import load_training_data

    cfg = TrainConfig(**TINY, epochs=1, contrast=0.5, train_subset=100)
    data = load_training_data(cfg, torch.device("cpu"))
    assert data.n_train == 100 and data.easy is not None
    assert torch.equal(data.test_has_easy, torch.from_numpy(data.easy.has_easy_test))
    assert dataclasses.is_dataclass(data.easy) and data.mean == channel_stats(data.train_x.cpu())[0]


def test_runs_written_before_the_new_fields_still_resume(tmp_path):
    """A checkpoint whose configuration predates the planted-feature fields resumes (a missing field
    counts as its default); a run with the feature is still told apart from one without it."""
    import json

    from real.rundir import config_differences

    kw = dict(dataset="synthetic", model="cnn-small", synthetic_train=64, synthetic_test=32, batch_size=32,
              schedule="constant")
    out = tmp_path / "old"
    assert train(TrainConfig(**kw, epochs=1, out=str(out)))["status"] == "completed"
    unfinish(out, epochs=2)
    new = ("train_subset", "test_subset", "contrast", "easy_feature", "easy_fraction", "easy_size", "group_window")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in new}))
    ckpt = load_checkpoint(out)
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in new}
    torch.save(ckpt, out / "checkpoint.pt")
    assert train(TrainConfig(**kw, epochs=2, out=str(out), resume=True))["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    planted = TrainConfig(**kw, epochs=2, easy_feature="patch", augment="none")
    assert [d[0] for d in config_differences(ckpt["config"], planted)] == ["easy_feature", "augment"]  # in field order


# ----------------------------------------------------------------------------------------------
# Bad input through the command line: exit 2, one line naming the flag, nothing trained.

_BAD = {
    "train-subset": st.one_of(st.integers(-10**6, 1).map(str), st.sampled_from(["2.5", "abc", "1e9x"])),
    "test-subset": st.one_of(st.integers(-10**6, 0).map(str), st.sampled_from(["0.5", "x"])),
    "contrast": st.one_of(st.floats(-1e6, 0.0).map(repr), st.floats(1.0, 1e6, exclude_min=True).map(repr),
                          st.sampled_from(["nan", "inf", "abc"])),
    "easy-feature": st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(
        lambda s: s not in ("none", "patch")),
    "easy-fraction": st.one_of(st.floats(-1e6, 0.0).map(repr), st.floats(1.0, 1e6, exclude_min=True).map(repr),
                               st.sampled_from(["nan", "x"])),
    "easy-size": st.one_of(st.integers(-100, 0).map(str), st.integers(65, 10**6).map(str), st.just("2.5")),
    "group-window": st.one_of(st.integers(-100, 0).map(str), st.just("w")),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(_BAD)), data=st.data(), via_toml=st.booleans())
def test_invalid_planted_flags_exit_2_naming_them(flag, data, via_toml, tmp_path_factory, capsys, monkeypatch):
    import real.train
    from real.cli import main

    monkeypatch.setattr(real.train, "train", lambda cfg: pytest.fail(f"training started: {cfg}"))
    raw = data.draw(_BAD[flag])
    tmp = tmp_path_factory.mktemp("cli")
    argv = ["run", "--out", str(tmp / "o"), "--augment", "none"]
    if flag in ("easy-fraction", "easy-size", "group-window"):
        argv += ["--easy-feature", "patch"]
    if via_toml:
        (tmp / "c.toml").write_text(f'{flag.replace("-", "_")} = "{raw}"\n')
        argv += ["--config", str(tmp / "c.toml")]
    else:
        argv += [f"--{flag}={raw}"]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and f"--{flag}" in err[0], (flag, raw, err)
    assert not (tmp / "o").exists()
