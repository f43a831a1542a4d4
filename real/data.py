"""The training data on the device, moved there once (airbench style): uint8 images and int64 labels,
with the run's subsets, contrast, planted easy feature (real/planted.py) and label noise applied.
The files and their formats are real/datasets.py's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .augment import symmetric_label_noise
from .config import TrainConfig
from .datasets import Dataset, DatasetError, load_dataset
from .planted import EasyFeature, prepare_dataset

__all__ = ["TrainData", "load_training_data"]


@dataclass(frozen=True)
class TrainData:
    """The data set on the device.  ``flipped``: the label-noise mask (None without noise); ``easy``: what
    real/planted.py planted (None without ``--easy-feature``), ``test_has_easy`` its test mask."""

    dataset: Dataset
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    flipped: np.ndarray | None = None
    easy: EasyFeature | None = None
    test_has_easy: torch.Tensor | None = None

    n_train = property(lambda self: int(self.train_x.shape[0]))
    # The data set's own (after real/planted.py's changes):
    num_classes = property(lambda self: self.dataset.num_classes)
    mean = property(lambda self: self.dataset.mean)
    std = property(lambda self: self.dataset.std)
    in_channels = property(lambda self: self.dataset.in_channels)
    image_size = property(lambda self: self.dataset.image_size)


def load_training_data(cfg: TrainConfig, device: torch.device) -> TrainData:
    """Load the data set (fetched first with ``--download``; a DatasetError, before anything is written,
    if missing, malformed or empty), add the label noise, move it to ``device``."""
    if cfg.download:
        from .download import ensure_dataset

        ensure_dataset(cfg.dataset, cfg.data_dir, mirror=cfg.mirror)
    ds = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, synthetic_train=cfg.synthetic_train,
                      synthetic_test=cfg.synthetic_test, long_tail_ratio=cfg.long_tail_ratio)
    for split, y in (("training", ds.train_y), ("test", ds.test_y)):
        if y.numel() == 0:
            raise DatasetError(f"{cfg.dataset}: the {split} split is empty")
    ds, easy = prepare_dataset(ds, seed=cfg.seed, train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                               contrast=cfg.contrast, easy_feature=cfg.easy_feature, easy_fraction=cfg.easy_fraction,
                               easy_size=cfg.easy_size)
    train_y, flipped = ds.train_y, None
    if cfg.label_noise > 0:
        noisy, flipped = symmetric_label_noise(ds.train_y.numpy(), rate=cfg.label_noise,
                                               num_classes=ds.num_classes, seed=cfg.seed)
        train_y = torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.int64))
    return TrainData(dataset=ds, train_x=ds.train_x.to(device), train_y=train_y.to(device),
                     test_x=ds.test_x.to(device), test_y=ds.test_y.to(device), flipped=flipped, easy=easy,
                     test_has_easy=None if easy is None else torch.from_numpy(easy.has_easy_test).to(device))
