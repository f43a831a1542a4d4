"""The baselines and variants of issue 20 in the trainer: what USEFUL's 2-means clusters (--split-on),
the outputs partition.npz keeps for a picture of the split, JTT's multiplicity, ASAM's two variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from real.config import TrainConfig
from real.rundir import read_partition
from real.train import train
from real.useful import SplitPoint, make_partition, partition_arrays
from theory.useful import split_features

TINY = dict(dataset="synthetic", model="cnn-small", synthetic_train=128, synthetic_test=64, batch_size=32,
            epochs=1, useful=True, separate_epoch=1)


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / "run"), **overrides})


def three_class_outputs(seed: int = 0, n: int = 90):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    logits = rng.normal(size=(n, 3)) * 2 + 2 * np.eye(3)[labels] * rng.integers(0, 2, size=(n, 1))
    top = logits.max(axis=1)
    losses = top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[np.arange(n), labels]
    return logits, labels, losses


# ----------------------------------------------------------------------------------------------
# --split-on and partition.npz's outputs.


@pytest.mark.parametrize("split_on", ["logits", "softmax", "loss"])
def test_partition_arrays_keep_the_outputs_at_the_split(split_on):
    logits, labels, losses = three_class_outputs()
    part = make_partition("useful", logits, labels, losses, k=2, seed=0, split_on=split_on)
    arrays = partition_arrays(part, labels, losses, logits=logits, num_classes=3, separated_at=SplitPoint(1),
                              upweight=False, split_on=split_on)
    assert arrays["logits"].dtype == np.float32 and arrays["split_features"].dtype == np.float32
    np.testing.assert_array_equal(arrays["logits"], logits.astype(np.float32))
    width = 1 if split_on == "loss" else 3
    assert arrays["split_features"].shape == (len(labels), width) and str(arrays["split_on"]) == split_on
    np.testing.assert_allclose(arrays["split_features"], split_features(logits, losses, split_on), rtol=1e-6)
    # the features are what was clustered: re-clustering them per class gives the same partition
    again = make_partition("useful", arrays["split_features"].astype(np.float64), labels, losses, k=2, seed=0,
                           split_on="logits")
    if split_on != "logits":  # (float32 rounding aside, the logits case is the same computation)
        np.testing.assert_array_equal(again.upsample, part.upsample)


def test_split_on_changes_the_partition():
    logits, labels, losses = three_class_outputs(1)
    masks = [make_partition(m, logits, labels, losses, k=2, seed=0, split_on=on).upsample
             for m in ("useful",) for on in ("logits", "softmax", "loss")]
    assert len({m.tobytes() for m in masks}) == 3
    # random draws per class as many as USEFUL's split on the same features
    for on in ("softmax", "loss"):
        useful = make_partition("useful", logits, labels, losses, k=2, seed=0, split_on=on)
        rand = make_partition("random", logits, labels, losses, k=2, seed=0, split_on=on)
        np.testing.assert_array_equal(np.bincount(labels[rand.upsample], minlength=3),
                                      np.bincount(labels[useful.upsample], minlength=3))


def test_the_trainer_splits_on_what_split_on_names(tmp_path):
    cfg = tiny(tmp_path, split_on="loss")
    summary = train(cfg)
    assert summary["status"] == "completed"
    part = read_partition(tmp_path / "run")
    assert str(part["split_on"]) == "loss" and part["split_features"].shape == (cfg.synthetic_train, 1)
    assert part["logits"].shape == (cfg.synthetic_train, 10) and part["logits"].dtype == np.float32
    np.testing.assert_allclose(part["split_features"][:, 0], part["losses"], rtol=1e-6)
    # the partition the run used is the loss split of the outputs it stored
    losses = part["losses"].astype(np.float64)
    ys = _train_labels(cfg)
    ref = make_partition("useful", part["logits"].astype(np.float64), ys, losses, k=2, seed=cfg.seed, split_on="loss")
    np.testing.assert_array_equal(ref.upsample, part["upsample"])


def _train_labels(cfg: TrainConfig) -> np.ndarray:
    from real.datasets import load_dataset

    return np.asarray(load_dataset(cfg.dataset, synthetic_train=cfg.synthetic_train,
                                   synthetic_test=cfg.synthetic_test, seed=cfg.seed).train_y.numpy())
