"""real/augment.py and real/trivial_augment.py: crop + flip, normalize, TrivialAugmentWide, MixUp,
label noise, Augmenter.

The TrivialAugmentWide operations are compared with torchvision's where torchvision imports (exact
equality, every op, bin and sign: the geometric ops too, since real/trivial_augment.py samples with
torchvision's own grid and rounding); everywhere else they are checked through properties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from real.augment import Augmenter, mixup, normalize, random_crop_flip, symmetric_label_noise, trivial_augment
from real.trivial_augment import NUM_BINS, OPS, _sharpness_blur, apply_ops, draw_params, magnitude
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
    assert 0.5 < changed.float().mean().item() < 1.0  # identity for 1/14 of the images, and bin 0 of most ops


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
    plain = Augmenter(mean=mean, std=std, augment="none")
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


def test_augmenter_order_crop_flip_then_trivial_augment():
    x = _images(24, 8, 8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    got = Augmenter(mean=mean, std=std, trivial_augment=True, seed=11)(x)
    g = _gen(11)  # the Augmenter's stream: crop offsets and flips, then op, bin and sign per image
    expected = normalize(trivial_augment(random_crop_flip(x, padding=4, generator=g), generator=g), mean, std)
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- TrivialAugmentWide, one op at a time


def _one_op(x: torch.Tensor, op: str, b: int = 0, negative: int = 0) -> torch.Tensor:
    n = x.shape[0]
    return apply_ops(x, torch.full((n,), OPS.index(op)), torch.full((n,), b), torch.full((n,), negative))


@st.composite
def image_batches(draw, max_n: int = 4, max_side: int = 12):
    """(N, C, H, W) uint8 batches: C = 1 or 3, sides 1..max_side, values in a random sub-range (narrow
    ranges exercise AutoContrast's and Equalize's special cases)."""
    n, c = draw(st.integers(1, max_n)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    lo = draw(st.integers(0, 255))
    hi = draw(st.integers(lo, 255))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.randint(lo, hi + 1, (n, c, h, w), generator=_gen(seed), dtype=torch.uint8)


@settings(max_examples=60)
@given(image_batches(max_n=6), st.data())
def test_apply_ops_is_per_image_and_keeps_shape(x, data):
    """Grouping by operation is invisible: each image comes out as if augmented alone."""
    n = x.shape[0]
    op = torch.tensor(data.draw(st.lists(st.integers(0, len(OPS) - 1), min_size=n, max_size=n)))
    bins = torch.tensor(data.draw(st.lists(st.integers(0, NUM_BINS - 1), min_size=n, max_size=n)))
    neg = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    out = apply_ops(x, op, bins, neg)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(n):
        assert torch.equal(out[i : i + 1], apply_ops(x[i : i + 1], op[i : i + 1], bins[i : i + 1], neg[i : i + 1])), i


ZERO_IS_IDENTITY = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness", "Posterize")


@settings(max_examples=40)
@given(image_batches(), st.integers(0, NUM_BINS - 1), st.integers(0, 1))
def test_identity_and_magnitude_zero_are_exact_identities(x, b, negative):
    assert torch.equal(_one_op(x, "Identity", b, negative), x)
    for op in ZERO_IS_IDENTITY:  # bin 0: shear/translate/rotate by 0, factor 1.0, 8 bits
        assert magnitude(op, 0, bool(negative)) == (8.0 if op == "Posterize" else 0.0)
        assert torch.equal(_one_op(x, op, 0, negative), x), op
    gray = x[:, :1]
    assert torch.equal(_one_op(gray, "Color", b, negative), gray)  # no saturation to change in one channel


@settings(max_examples=40)
@given(image_batches())
def test_solarize_bins(x):
    """torchvision's bins are linspace(255, 0, 31): bin 0 (threshold 255) is not an identity, it inverts
    exactly the pixels equal to 255; a threshold t inverts exactly the pixels >= t."""
    for b in range(NUM_BINS):
        t = magnitude("Solarize", b, False)
        assert t == 255.0 - 8.5 * b
        expected = torch.where(x.double() >= t, 255 - x, x)
        assert torch.equal(_one_op(x, "Solarize", b), expected), b
    assert torch.equal(_one_op(x, "Solarize", NUM_BINS - 1), 255 - x)


@settings(max_examples=40)
@given(image_batches())
def test_posterize_keeps_the_top_bits(x):
    bits = [int(magnitude("Posterize", b, False)) for b in range(NUM_BINS)]
    assert bits == [8] * 3 + [7] * 5 + [6] * 5 + [5] * 5 + [4] * 5 + [3] * 5 + [2] * 3  # 8 - round(b / 5)
    for b, k in enumerate(bits):
        out = _one_op(x, "Posterize", b)
        assert torch.all(out % 2 ** (8 - k) == 0) and torch.all(x - out < 2 ** (8 - k)) and torch.all(out <= x)


@pytest.mark.parametrize("side", [8, 7])
def test_rotate_by_90_is_rot90_counter_clockwise(side):
    x = _images(5, side, side, seed=3)
    assert magnitude("Rotate", 20, False) == 90.0 and magnitude("Rotate", 20, True) == -90.0
    assert torch.equal(_one_op(x, "Rotate", 20, 0), torch.rot90(x, 1, dims=(2, 3)))  # positive = counter-clockwise
    assert torch.equal(_one_op(x, "Rotate", 20, 1), torch.rot90(x, -1, dims=(2, 3)))
    corner = torch.zeros(1, 1, side, side, dtype=torch.uint8)
    corner[0, 0, 0, -1] = 9  # top-right pixel goes to the top-left under a counter-clockwise quarter turn
    assert _one_op(corner, "Rotate", 20)[0, 0, 0, 0] == 9


@pytest.mark.parametrize("b", [1, 7, 15, 16, 29, 30])
@pytest.mark.parametrize("negative", [0, 1])
def test_translate_shifts_by_the_truncated_magnitude(b, negative):
    x = _images(3, 32, 32, seed=b)
    t = int(magnitude("TranslateX", b, bool(negative)))
    assert abs(t) == int(32 * b / 30 + 1e-4) - (b == 15)  # float32 linspace: bin 15 is 15.999999, shifts by 15
    right, down = torch.zeros_like(x), torch.zeros_like(x)
    if t >= 0:
        right[..., t:] = x[..., : 32 - t]
        down[..., t:, :] = x[..., : 32 - t, :]
    else:
        right[..., :t] = x[..., -t:]
        down[..., :t, :] = x[..., -t:, :]
    assert torch.equal(_one_op(x, "TranslateX", b, negative), right)  # positive: content moves right
    assert torch.equal(_one_op(x, "TranslateY", b, negative), down)  # positive: content moves down


@pytest.mark.parametrize("b", [1, 10, 20, 30])
@pytest.mark.parametrize("negative", [0, 1])
def test_shear_moves_each_row_by_about_m_times_its_height(b, negative):
    """ShearX about the top-left corner: row i is row i of the input shifted by round(m (i + 1/2))
    pixels to the left (0 filled in); ShearY is the same on columns (checked on the transpose)."""
    h, w = 9, 40
    x = (torch.arange(w, dtype=torch.uint8) + 1).repeat(1, 1, h, 1)  # distinct non-zero values in each row
    m = magnitude("ShearX", b, bool(negative))
    for op, img, rows in (("ShearX", x, lambda o: o[0, 0]), ("ShearY", x.transpose(2, 3).contiguous(), lambda o: o[0, 0].T)):
        out = rows(_one_op(img, op, b, negative))
        for i in range(h):
            k = round(m * (i + 0.5))
            assert abs(m * (i + 0.5) - k) < 0.5 - 1e-3  # no tie at these magnitudes
            expected = torch.zeros(w, dtype=torch.uint8)
            lo, hi = max(0, -k), min(w, w - k)
            expected[lo:hi] = x[0, 0, i, lo + k : hi + k]
            assert torch.equal(out[i], expected), (op, i)


@settings(max_examples=40)
@given(image_batches(max_side=20))
def test_sharpness_blur_in_integers_equals_rounded_float_conv(x):
    """The exactness argument of real/trivial_augment.py: round(conv2d(x, k / 13)) in float32 (what
    torchvision computes) equals the integer (2 S + 13) // 26 on the interior."""
    if x.shape[2] <= 2 or x.shape[3] <= 2:
        return
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    conv = torch.round(F.conv2d(x.float(), kernel, groups=x.shape[1])).to(torch.uint8)
    blurred = _sharpness_blur(x)
    assert torch.equal(blurred[:, :, 1:-1, 1:-1], conv)
    border = torch.ones_like(x, dtype=torch.bool)
    border[:, :, 1:-1, 1:-1] = False
    assert torch.equal(blurred[border], x[border])


@settings(max_examples=40)
@given(image_batches(), st.integers(1, NUM_BINS - 1))
def test_colour_factors_move_the_right_way(x, b):
    up, down = _one_op(x, "Brightness", b, 0), _one_op(x, "Brightness", b, 1)
    f_up, f_down = 1.0 + magnitude("Brightness", b, False), 1.0 + magnitude("Brightness", b, True)
    assert f_up > 1.0 > f_down > 0.0
    exact_up, exact_down = np.minimum(f_up * x.numpy().astype(float), 255), f_down * x.numpy().astype(float)
    assert np.all(np.abs(up.numpy() - np.floor(exact_up)) <= 1) and torch.all(up >= x)
    assert np.all(np.abs(down.numpy() - np.floor(exact_down)) <= 1) and torch.all(down <= x)
    for op in ("Contrast", "Brightness"):  # f > 0: a non-decreasing map of each image's pixel values
        out = _one_op(x, op, b, 1).flatten(1)
        order = x.flatten(1).argsort(1)
        assert torch.all(out.gather(1, order).diff(dim=1).to(torch.int16) >= 0)


def _float32_autocontrast_top(d: int) -> int:
    """floor(d * s) with s = float32(float32(1 / d) * 255), as torchvision computes it."""
    s = np.float32(np.float32(1.0) / np.float32(d)) * np.float32(255)
    return int(np.floor(np.float32(d) * np.float32(s)))


@settings(max_examples=60)
@given(image_batches())
def test_autocontrast_stretches_each_channel(x):
    out = _one_op(x, "AutoContrast")
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    olo, ohi = out.amin(dim=(2, 3)), out.amax(dim=(2, 3))
    flat = lo == hi
    assert torch.equal(out[flat], x[flat])  # a flat channel is left as it is
    assert torch.all(olo[~flat] == 0)
    for d, top in zip((hi - lo)[~flat].tolist(), ohi[~flat].tolist()):
        # 255, except 254 for the ranges where float32 rounds (1 / d) * 255 down (torchvision's quirk)
        assert top == _float32_autocontrast_top(d) and top in (254, 255)
    assert [d for d in range(1, 256) if _float32_autocontrast_top(d) == 254][:3] == [41, 61, 67]


@settings(max_examples=60)
@given(image_batches(max_side=24))
def test_equalize_properties(x):
    """Per channel: step = (pixels less the count of the maximum) // 255.  step == 0 (e.g. every image
    of at most 255 pixels): unchanged.  step > 0: a non-decreasing map with min -> 0 and max -> 255
    (lut[min] = (0 + step // 2) // step = 0; lut[max] = (H W - h[max] + step // 2) // step >= 255)."""
    out = _one_op(x, "Equalize")
    n, c, h, w = x.shape
    for i in range(n):
        for ch in range(c):
            v, o = x[i, ch].flatten(), out[i, ch].flatten()
            step = (h * w - int((v == v.max()).sum())) // 255
            if step == 0:
                assert torch.equal(o, v)
                continue
            assert o[v == v.min()].eq(0).all() and o[v == v.max()].eq(255).all()
            order = v.argsort()
            assert torch.all(o[order].diff().to(torch.int16) >= 0)


def test_equalize_fixed_point_and_small_images():
    """A channel holding every value 0..255 equally often is a fixed point (lut[v] = (v k + k // 2) // k = v);
    an image of at most 255 pixels is never changed (step = 0)."""
    flat_hist = torch.stack([torch.randperm(512, generator=_gen(c)) // 2 for c in range(3)]).to(torch.uint8)
    x = flat_hist.reshape(1, 3, 16, 32)
    assert torch.equal(_one_op(x, "Equalize"), x)
    small = _images(20, 15, 17)
    assert torch.equal(_one_op(small, "Equalize"), small)
    assert not torch.equal(_one_op(_images(20, 32, 32), "Equalize"), _images(20, 32, 32))


def test_draws_are_uniform_and_reproducible():
    n = 31 * 14 * 20
    op, bins, neg = draw_params(n, generator=_gen(123))
    again = draw_params(n, generator=_gen(123))
    assert all(torch.equal(a, b) for a, b in zip((op, bins, neg), again))
    for values, k in ((op, len(OPS)), (bins, NUM_BINS), (neg, 2)):
        counts = torch.bincount(values, minlength=k).double()
        assert counts.numel() == k and values.min() >= 0
        chi2 = float(((counts - n / k) ** 2 / (n / k)).sum())
        assert chi2 < 3 * (k - 1) + 20, (k, chi2)  # mean k - 1; this bound is far in the tail


def test_apply_ops_validates_its_inputs():
    x = _images(2)
    ok = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError):
        apply_ops(x, torch.tensor([0, 14]), ok, ok)
    with pytest.raises(ConfigError):
        apply_ops(x, ok, torch.tensor([0, 31]), ok)
    with pytest.raises(ConfigError):
        apply_ops(x, ok, ok, torch.tensor([0, 2]))
    with pytest.raises(ConfigError):
        apply_ops(x[:, :2], ok, ok, ok)  # C must be 1 or 3
    with pytest.raises(ConfigError):
        apply_ops(x.float(), ok, ok, ok)
    with pytest.raises(ConfigError):
        magnitude("Invert", 0, False)  # AutoAugment's, not TrivialAugmentWide's
    assert apply_ops(x[:0], ok[:0], ok[:0], ok[:0]).shape == (0, 3, 8, 8)


# ---------------------------------------------------------------- against torchvision (where it imports)


@pytest.fixture(scope="module")
def tv():
    pytest.importorskip("torchvision")
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import TrivialAugmentWide, _apply_op

    def apply(img, op, b, negative):
        return _apply_op(img, op, magnitude(op, b, bool(negative)), InterpolationMode.NEAREST, None)

    return TrivialAugmentWide()._augmentation_space(NUM_BINS), apply


def test_magnitudes_are_torchvisions(tv):
    space, _ = tv
    assert tuple(space) == OPS
    for op, (mags, signed) in space.items():
        for b in range(NUM_BINS):
            unsigned = float(mags[b].item()) if mags.ndim else 0.0
            assert magnitude(op, b, False) == unsigned and magnitude(op, b, True) == (-unsigned if signed else unsigned)


def _reference_images() -> list[torch.Tensor]:
    batches = []
    for c, h, w in ((3, 32, 32), (1, 28, 28), (3, 7, 5), (3, 2, 9), (1, 1, 1)):
        x = torch.randint(0, 256, (4, c, h, w), generator=_gen(h * w), dtype=torch.uint8)
        x[0] = 77  # flat
        x[1] = torch.randint(100, 103, (c, h, w), generator=_gen(1), dtype=torch.uint8)  # narrow range
        batches.append(x)
    return batches


@pytest.mark.parametrize("op", OPS)
def test_each_op_equals_torchvision(tv, op):
    """Exact equality, every bin and sign, on CIFAR-, MNIST-, odd- and tiny-sized images."""
    _, apply = tv
    for x in _reference_images():
        for b in range(NUM_BINS):
            for negative in (0, 1):
                out = _one_op(x, op, b, negative)
                for i in range(x.shape[0]):
                    assert torch.equal(out[i], apply(x[i], op, b, negative)), (tuple(x.shape), b, negative, i)


@settings(max_examples=200)
@given(image_batches(max_n=1, max_side=20), st.integers(0, len(OPS) - 1), st.integers(0, NUM_BINS - 1), st.integers(0, 1))
def test_random_images_equal_torchvision(tv, x, k, b, negative):
    _, apply = tv
    assert torch.equal(_one_op(x, OPS[k], b, negative)[0], apply(x[0], OPS[k], b, negative))


# ---------------------------------------------------------------- CUDA (run on the GPU machine)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    """Crop/flip and TrivialAugmentWide give the same bytes on CUDA as on the CPU.  The random draws
    come from a CPU generator in both runs (moved to the device), so they are equal; every operation is
    then deterministic and device-independent: integer ops, float32 elementwise ops (IEEE, identical),
    integer sums and histograms, and geometric index tables built on the CPU."""
    x = _images(512, 32, 32, seed=5)
    for seed in range(3):
        g_cpu, g_dev = _gen(seed), _gen(seed)
        cpu = trivial_augment(random_crop_flip(x, padding=4, generator=g_cpu), generator=g_cpu)
        dev = trivial_augment(random_crop_flip(x.cuda(), padding=4, generator=g_dev), generator=g_dev)
        assert dev.is_cuda and torch.equal(dev.cpu(), cpu), seed
    # every op, bin and sign, on 3-channel and 1-channel images
    k = torch.arange(len(OPS)).repeat_interleave(2 * NUM_BINS)
    b = torch.arange(NUM_BINS).repeat_interleave(2).repeat(len(OPS))
    s = torch.tensor([0, 1]).repeat(len(OPS) * NUM_BINS)
    for c, side in ((3, 32), (1, 28)):
        y = torch.randint(0, 256, (k.numel(), c, side, side), generator=_gen(side), dtype=torch.uint8)
        assert torch.equal(apply_ops(y.cuda(), k.cuda(), b.cuda(), s.cuda()).cpu(), apply_ops(y, k, b, s)), c


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_augmenter_is_reproducible_and_resumable():
    """On CUDA the Augmenter's generator lives on the device (its draws differ from the CPU's): same
    seed -> same output, and load_state_dict resumes the stream."""
    x = _images(256, 32, 32, seed=6).cuda()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    a = Augmenter(mean=mean, std=std, trivial_augment=True, seed=4, device="cuda")
    first = a(x)
    state = a.state_dict()
    second = a(x)
    b = Augmenter(mean=mean, std=std, trivial_augment=True, seed=4, device="cuda")
    assert first.is_cuda and torch.equal(b(x), first)
    b.load_state_dict(state)
    assert torch.equal(b(x), second) and not torch.equal(first, second)
