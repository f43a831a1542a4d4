"""real/augment.py: crop + flip, normalize, TrivialAugment, MixUp, label noise, Augmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from real.augment import (
    Augmenter,
    mixup,
    normalize,
    random_crop_flip,
    symmetric_label_noise,
    trivial_augment,
)
from theory.plumbing.config import ConfigError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), generator=_gen(seed), dtype=torch.uint8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_is_a_window_of_the_padded_input(dtype):
    x = _images(16, 6, 7).to(dtype)
    p = 2
    out = random_crop_flip(x, padding=p, generator=_gen(1))
    assert out.shape == x.shape and out.dtype == dtype
    xp = F.pad(x, (p,) * 4)
    for n in range(len(x)):  # brute force: the output is exactly one window, possibly mirrored
        windows = [
            win
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for win in (xp[n, :, dy : dy + 6, dx : dx + 7], xp[n, :, dy : dy + 6, dx : dx + 7].flip(-1))
        ]
        assert any(torch.equal(out[n], win) for win in windows), n


def test_crop_flip_deterministic_and_flip_rate():
    x = _images(4000, 4, 4)
    a = random_crop_flip(x, padding=0, generator=_gen(7))
    assert torch.equal(a, random_crop_flip(x, padding=0, generator=_gen(7)))
    assert not torch.equal(a, random_crop_flip(x, padding=0, generator=_gen(8)))
    flipped = (a == x.flip(-1)).flatten(1).all(1) & ~(a == x).flatten(1).all(1)
    assert torch.equal(a[~flipped], x[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 0.04
    # offsets: with padding 1 every one of the 3 x 3 shifts occurs
    ones = torch.ones(900, 1, 3, 3, dtype=torch.uint8)
    zero_rows_cols = random_crop_flip(ones, padding=1, generator=_gen(3)).sum(dim=(1, 2, 3))
    assert set(zero_rows_cols.tolist()) == {4, 6, 9}  # corner, edge and centre windows


def test_normalize_formula():
    x = _images(3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(x, mean, std)
    for c in range(3):
        expected = (x[:, c].double() / 255 - mean[c]) / std[c]
        torch.testing.assert_close(out[:, c].double(), expected, atol=1e-6, rtol=0)
    assert out.dtype == torch.float32
    with pytest.raises(ConfigError):
        normalize(x, (0.1, 0.2), (1.0, 1.0))


def test_trivial_augment_uint8_deterministic():
    x = _images(48, 16, 16)
    a = trivial_augment(x, generator=_gen(0))
    assert a.shape == x.shape and a.dtype == torch.uint8
    state = torch.random.get_rng_state()
    assert torch.equal(a, trivial_augment(x, generator=_gen(0)))
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    changed = ~(a == x).flatten(1).all(1)
    assert 0.5 < changed.float().mean().item() < 1.0  # identity for about 1/13 of the images


def test_mixup_convex_combination():
    g = _gen(0)
    x = torch.randn(32, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (32,), generator=g)
    xm, ys = mixup(x, y, alpha=0.4, num_classes=5, generator=_gen(5))
    assert ys.shape == (32, 5) and xm.shape == x.shape
    torch.testing.assert_close(ys.sum(1), torch.ones(32, dtype=torch.float64))
    onehot = F.one_hot(y, 5).double()
    moved = [i for i in range(32) if not torch.allclose(xm[i], x[i])]  # rows not paired with themselves
    i = moved[0]
    lam = [lam for j in range(32) if j != i for lam in _solve_lams(x[i], x[j], xm[i])][0]
    assert 0 < lam < 1
    partners = []
    for i in range(32):  # with this one lam, every row is lam x_i + (1 - lam) x_j for one j
        js = [j for j in range(32) if torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j])]
        assert len(js) == 1, i
        torch.testing.assert_close(ys[i], lam * onehot[i] + (1 - lam) * onehot[js[0]])
        partners.append(js[0])
    assert sorted(partners) == list(range(32))  # a permutation
    again = mixup(x, y, alpha=0.4, num_classes=5, generator=_gen(5))
    assert torch.equal(again[0], xm) and torch.equal(again[1], ys)


def _solve_lams(xi, xj, xm):
    diff = (xi - xj).flatten()
    if diff.abs().max() < 1e-8:
        return [0.5] if torch.allclose(xm, xi, atol=1e-5) else []
    lam = float(((xm - xj).flatten() @ diff) / (diff @ diff))
    return [lam] if torch.allclose(xm, lam * xi + (1 - lam) * xj, atol=1e-5) else []


def test_symmetric_label_noise():
    labels = np.random.default_rng(0).integers(0, 10, 100_000)
    noisy, flipped = symmetric_label_noise(labels, rate=0.3, num_classes=10, seed=1)
    assert abs(flipped.mean() - 0.3) < 0.01
    assert np.all(noisy[flipped] != labels[flipped]) and np.all(noisy[~flipped] == labels[~flipped])
    counts = np.bincount((noisy[flipped] - labels[flipped]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.9 * counts[1:].mean()  # uniform over other classes
    again = symmetric_label_noise(labels, rate=0.3, num_classes=10, seed=1)
    assert np.array_equal(again[0], noisy) and np.array_equal(again[1], flipped)
    assert not np.array_equal(symmetric_label_noise(labels, rate=0.3, num_classes=10, seed=2)[0], noisy)
    assert np.array_equal(symmetric_label_noise(labels, rate=0.0, num_classes=10, seed=1)[0], labels)


def test_augmenter_pipeline_and_resume():
    x = _images(20, 8, 8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain = Augmenter(mean=mean, std=std, crop_flip=False)
    torch.testing.assert_close(plain(x), normalize(x, mean, std))
    aug = Augmenter(mean=mean, std=std, trivial_augment=True, seed=3)
    first = aug(x)
    assert first.shape == x.shape and first.dtype == torch.float32
    state = aug.state_dict()
    second = aug(x)
    aug2 = Augmenter(mean=mean, std=std, trivial_augment=True, seed=3)
    assert torch.equal(aug2(x), first)
    aug2.load_state_dict(state)
    assert torch.equal(aug2(x), second)
