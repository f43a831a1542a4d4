"""A planted fast-learnable feature on real images: the paper's Definition 3.1 drawn in pixels.

In a fraction ``alpha`` (``--easy-fraction``) of the training and test images alike (so it stays in
distribution), a white square (``--easy-size`` pixels a side) is drawn on the image's border at a
position set by the label.  It is learned much faster than the clothing (beta_e >> beta_d in the
theory): strong (255 on the black border, which the clothing, scaled by ``--contrast``, never reaches),
the same in every example of a class, and apart from the clothing, as the fast feature sits in its own
patch in Definition 3.1.  ``--contrast c`` multiplies every pixel by ``c``: the slow feature's strength.

Everything is deterministic from ``--seed``: the class-stratified subsets and the carriers (exactly
``round(alpha n_c)`` of class ``c``, training and test drawn separately).  The square follows the clean
labels, before label noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from theory.plumbing.config import ConfigError

__all__ = ["EASY_FEATURES", "EasyFeature", "patch_positions", "stratified_subset", "choose_carriers", "scale_contrast",
           "draw_patches", "channel_stats", "prepare_dataset"]

EASY_FEATURES = ("none", "patch")
PATCH_VALUE = 255  # the square's pixel value (white)

# Independent random streams, one per use, from np.random.SeedSequence([seed, stream]).
_SUBSET_STREAM, _TRAIN_STREAM, _TEST_STREAM, _TEST_SUBSET_STREAM = 0x5B, 0xEA, 0x7E, 0x75


@dataclass(frozen=True, eq=False)
class EasyFeature:
    """What was planted: per-example masks and the per-class positions (top-left ``row, col``)."""

    has_easy_train: np.ndarray  # (N_train,) bool
    has_easy_test: np.ndarray  # (N_test,) bool
    positions: np.ndarray  # (C, 2) int64
    size: int
    fraction: float
    contrast: float
    subset: np.ndarray | None  # indices of the training subset into the data set's training split
    test_subset: np.ndarray | None = None  # the same for the test split

    def arrays(self) -> dict[str, np.ndarray]:
        """What the run directory keeps (real/rundir.py writes it)."""
        out = {"has_easy_train": self.has_easy_train, "has_easy_test": self.has_easy_test,
               "positions": self.positions, "size": np.int64(self.size), "value": np.int64(PATCH_VALUE),
               "fraction": np.float64(self.fraction), "contrast": np.float64(self.contrast)}
        subsets = {"train_subset": self.subset, "test_subset": self.test_subset}
        return out | {key: value for key, value in subsets.items() if value is not None}


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def patch_positions(num_classes: int, image_size: int, size: int) -> np.ndarray:
    """Top-left corners ``(row, col)`` of each class's square, evenly spaced clockwise along the border
    from the top-left corner: class ``k`` at perimeter coordinate ``round(k P / C)``, ``P = 4 (H - s)``.
    Corners ``d`` apart along the border are ``>= d / 2`` apart in max-norm, so a spacing ``P / C >= 2 s + 1``
    keeps them apart; overlapping squares are a :class:`ConfigError` on ``--easy-feature``."""
    span = image_size - size
    perimeter = 4 * span
    out = np.zeros((num_classes, 2), dtype=np.int64)
    for k in range(num_classes):
        t = int(round(k * perimeter / num_classes)) % max(perimeter, 1)
        edge, u = divmod(t, max(span, 1))
        out[k] = [(0, u), (u, span), (span, span - u), (span - u, 0)][edge]
    gaps = np.abs(out[:, None, :] - out[None, :, :]).max(axis=2) + size * np.eye(num_classes, dtype=np.int64)
    if span <= 0 or gaps.min() < size:
        raise ConfigError("--easy-feature", message=f"--easy-feature: {num_classes} classes need {num_classes} "
                          f"separate squares of {size}x{size} pixels on the border of a {image_size}x{image_size} "
                          f"image, and they would overlap (about {max(perimeter // (2 * size + 1), 0)} fit); use a "
                          "smaller --easy-size or a data set with fewer classes")
    return out


def stratified_subset(labels: np.ndarray, n: int, seed: int, *, split: str = "train") -> np.ndarray:
    """``n`` sorted indices drawn without replacement, each class in proportion to its size (largest
    remainders get the leftover places); ``split`` (``train``/``test``) names the flag and the stream."""
    labels = np.asarray(labels)
    if not 1 <= n <= labels.size:
        raise ConfigError(f"--{split}-subset", n, f"at most the {labels.size} examples of the {split} split")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / labels.size
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]
    take[extra] += 1
    rng = _rng(seed, _SUBSET_STREAM if split == "train" else _TEST_SUBSET_STREAM)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def choose_carriers(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A mask with exactly ``round(fraction n_c)`` examples of each class ``c`` set, chosen at random."""
    labels = np.asarray(labels)
    mask = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.choice(members, size=int(round(fraction * members.size)), replace=False)] = True
    return mask


def scale_contrast(images: torch.Tensor, contrast: float) -> torch.Tensor:
    """uint8 images with every pixel multiplied by ``contrast`` (rounded): the contrast against black."""
    if contrast == 1.0:
        return images
    return torch.round(images.to(torch.float32) * contrast).clamp_(0, 255).to(torch.uint8)


def draw_patches(images: torch.Tensor, labels: torch.Tensor, carriers: np.ndarray, positions: np.ndarray,
                 size: int) -> torch.Tensor:
    """A copy of ``images`` (N, C, H, W) uint8 with a ``size`` x ``size`` square of value 255 (all
    channels) at ``positions[label]`` in every image where ``carriers`` is set."""
    square = torch.zeros(len(positions), *images.shape[2:], dtype=torch.bool)  # (classes, H, W)
    for k, (r, c) in enumerate(positions):
        square[k, r : r + size, c : c + size] = True
    rows = torch.as_tensor(np.flatnonzero(carriers), dtype=torch.int64)
    out = images.clone()
    out[rows] = out[rows].masked_fill(square[labels[rows]][:, None], PATCH_VALUE)
    return out


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``x / 255`` (uint8 ``(N, C, H, W)``), exact, from byte histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for ch in range(x.shape[1]):
        counts = torch.bincount(x[:, ch].reshape(-1).to(torch.int64), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        means.append(mean)
        std = max(float(counts @ values**2 / total) - mean**2, 0.0) ** 0.5
        stds.append(std if std > 0 else 1.0)  # constant images: normalize by 1
    return tuple(means), tuple(stds)


def prepare_dataset(ds, *, seed: int, train_subset: int | None, contrast: float, easy_feature: str,
                    easy_fraction: float, easy_size: int, test_subset: int | None = None):
    """A copy of the :class:`real.datasets.Dataset` ``ds`` as the run trains on it (stratified subsets,
    contrast, squares, then the mean and std of the resulting training images), and what was planted
    (None without ``--easy-feature``); ``ds`` itself is returned when nothing changes."""
    if train_subset is None and test_subset is None and contrast == 1.0 and easy_feature == "none":
        return ds, None
    train_x, train_y, test_x, test_y, subset, t_subset = ds.train_x, ds.train_y, ds.test_x, ds.test_y, None, None
    if train_subset is not None:
        subset = stratified_subset(train_y.numpy(), train_subset, seed)
        train_x, train_y = train_x[subset], train_y[subset]
    if test_subset is not None:
        t_subset = stratified_subset(test_y.numpy(), test_subset, seed, split="test")
        test_x, test_y = test_x[t_subset], test_y[t_subset]
    train_x, test_x = scale_contrast(train_x, contrast), scale_contrast(test_x, contrast)
    easy = None
    if easy_feature == "patch":
        positions = patch_positions(ds.num_classes, int(train_x.shape[-1]), easy_size)
        has_train = choose_carriers(train_y.numpy(), easy_fraction, _rng(seed, _TRAIN_STREAM))
        has_test = choose_carriers(test_y.numpy(), easy_fraction, _rng(seed, _TEST_STREAM))
        train_x = draw_patches(train_x, train_y, has_train, positions, easy_size)
        test_x = draw_patches(test_x, test_y, has_test, positions, easy_size)
        easy = EasyFeature(has_easy_train=has_train, has_easy_test=has_test, positions=positions, size=easy_size,
                           fraction=float(easy_fraction), contrast=float(contrast), subset=subset,
                           test_subset=t_subset)
    mean, std = channel_stats(train_x)
    ds = dataclasses.replace(ds, train_x=train_x.contiguous(), train_y=train_y.contiguous(),
                             test_x=test_x.contiguous(), test_y=test_y.contiguous(), mean=mean, std=std)
    return ds, easy
