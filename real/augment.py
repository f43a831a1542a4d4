"""Batched data augmentation on the device (airbench style: the data set lives on the device as
uint8 tensors (N, C, H, W); each batch is augmented there, without per-sample Python loops).

Randomness comes from an explicit ``torch.Generator`` (on the data's device), so a seed fixes the
augmentation stream; ``generator=None`` uses torch's global RNG.  ``trivial_augment`` is
torchvision's TrivialAugmentWide, batched (:mod:`real.trivial_augment`: its operations, magnitudes
and exactness).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from theory.plumbing.config import check, check_int, check_number

from .trivial_augment import trivial_augment

__all__ = ["AUGMENTS", "COPY_AUGMENTS", "normalize", "random_crop_flip", "trivial_augment", "mixup",
           "symmetric_label_noise", "Augmenter"]


def _stats(values: Sequence[float] | torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel values as a (1, C, 1, 1) tensor on ``x``'s device; a tensor already there (as the
    Augmenter keeps them) is used as is (a host-to-device copy per batch would block the host)."""
    if isinstance(values, torch.Tensor) and values.device == x.device and values.dtype == dtype:
        t = values.reshape(-1)
    else:
        t = torch.as_tensor(values, dtype=dtype, device=x.device)
    if not (t.ndim == 1 and t.numel() == x.shape[1]):  # shape metadata only: no device sync per batch
        check(False, "mean/std", tuple(t.tolist()), f"{x.shape[1]} per-channel values")
    return t.view(1, -1, 1, 1)


def normalize(x_uint8: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, *,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(x / 255 - mean_c) / std_c`` per channel c of an (N, C, H, W) uint8 batch."""
    return (x_uint8.to(dtype) / 255.0 - _stats(mean, x_uint8, dtype)) / _stats(std, x_uint8, dtype)


def random_crop_flip(x: torch.Tensor, *, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the zero-padded batch and horizontal flip with probability 1/2, per sample, as
    torchvision's ``RandomCrop(H, padding)`` then ``RandomHorizontalFlip()``: with ``xp`` the input
    zero-padded by ``padding`` on each side and offsets ``dy, dx ~ U{0..2 padding}``,

        out[n, c, i, j] = xp[n, c, dy_n + i, dx_n + (W - 1 - j if flip_n else j)]

    for any dtype, shape (N, C, H, W), in one gather for the whole batch."""
    check_int("padding", padding, low=0)
    check(x.ndim == 4, "x", tuple(x.shape), "an (N, C, H, W) batch")
    n, c, h, w = x.shape
    dev = x.device if generator is None else generator.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device)
    xp = F.pad(x, (padding,) * 4) if padding else x
    j = torch.arange(w, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - j, j)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def mixup(x: torch.Tensor, y: torch.Tensor, *, alpha: float, num_classes: int,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_mixed, y_soft)``: MixUp (Zhang et al., 2018) of a float batch ``x``, labels or soft targets ``y``:

        x_mixed = lam x + (1 - lam) x[perm],   y_soft = lam onehot(y) + (1 - lam) onehot(y[perm])

    one ``lam ~ Beta(alpha, alpha)`` per batch, drawn with numpy from a seed from ``generator`` (torch's
    Beta takes none), and ``perm`` a random permutation from ``generator``."""
    check_number("alpha", alpha, low=0.0, low_open=True)
    check_int("num_classes", num_classes, low=1)
    check(x.is_floating_point(), "x", x.dtype, "a floating-point batch (normalize first)")
    dev = x.device if generator is None else generator.device
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator, device=dev).to(x.device)
    soft = y.to(x.dtype) if y.ndim == 2 else F.one_hot(y.long(), num_classes).to(x.dtype)
    return lam * x + (1.0 - lam) * x[perm], lam * soft + (1.0 - lam) * soft[perm]


def symmetric_label_noise(labels: np.ndarray, *, rate: float, num_classes: int, seed: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy_labels, flipped_mask)``, a function of ``seed``: each label replaced with probability
    ``rate`` by a uniformly drawn *other* class, ``noisy_i = (y_i + u_i) mod C``, ``u_i ~ U{1..C-1}``."""
    check_number("rate", rate, low=0.0, high=1.0)
    check_int("num_classes", num_classes, low=2)
    labels = np.asarray(labels)
    check(labels.ndim == 1 and bool(np.all((labels >= 0) & (labels < num_classes))), "labels", labels.shape,
          f"a 1-d array of classes in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    flipped = rng.random(labels.shape[0]) < rate
    shift = rng.integers(1, num_classes, size=labels.shape[0])
    noisy = np.where(flipped, (labels + shift) % num_classes, labels).astype(labels.dtype)
    return noisy, flipped


Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]  # (uint8 batch, generator) -> batch

# The registries (``--augment`` and ``--copy-augment``): name -> the transform of a uint8 batch.
AUGMENTS: dict[str, Transform] = {
    "crop-flip": lambda x, generator: random_crop_flip(x, padding=4, generator=generator),  # the paper's
    "none": lambda x, generator: x,
}
COPY_AUGMENTS: dict[str, Transform | None] = {  # what the extra copies of upsampled examples also receive
    "none": None,
    "trivial-augment": lambda x, generator: trivial_augment(x, generator=generator),  # TADA's variant
}


class Augmenter:
    """The trainer's per-batch transform, in torchvision users' order: ``augment`` (a key of
    :data:`AUGMENTS`), then TrivialAugmentWide on uint8 (optional), then normalize; on ``device``, with its
    own generator seeded by ``seed`` (in ``state_dict``).  Its values are TrainConfig's, not re-validated."""

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], augment: str = "crop-flip",
                 trivial_augment: bool = False, copy_augment: str = "trivial-augment", seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.augment, self.trivial_augment = AUGMENTS[augment], trivial_augment
        self.copy_augment = COPY_AUGMENTS[copy_augment]
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # On the device once (not per batch: see _stats).
        self._mean_t, self._std_t = (torch.tensor(tuple(v), dtype=torch.float32, device=device) for v in (mean, std))

    def __call__(self, x_uint8: torch.Tensor, copies: torch.Tensor | None = None) -> torch.Tensor:
        """The augmented, normalized batch.  ``copies`` (bool per image, ``--copy-augment``) marks extra
        copies of upsampled examples, which also get TrivialAugmentWide (TADA's variant): drawn for the
        whole batch and kept where set, so the draws do not depend on the copies and nothing waits for the host."""
        x = self.augment(x_uint8, self.generator)
        if self.trivial_augment:
            x = trivial_augment(x, generator=self.generator)
        elif copies is not None and self.copy_augment is not None:
            x = torch.where(copies.view(-1, 1, 1, 1), self.copy_augment(x, self.generator), x)
        return normalize(x, self._mean_t, self._std_t)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
