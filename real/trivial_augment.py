r"""TrivialAugmentWide (Mueller & Hutter, 2021) on batched uint8 device tensors, as torchvision defines it.

``trivial_augment(x, generator=g)`` takes an (N, C, H, W) uint8 batch (C = 1 or 3; CPU or CUDA) and
gives every image one operation ``op ~ U{0..13}``, one magnitude bin ``b ~ U{0..30}`` and one sign
``s ~ U{0, 1}`` (``s = 1`` negates the magnitude of the signed operations), all drawn from ``g``.
Each operation, its magnitude and its integer arithmetic follow torchvision's
``transforms.TrivialAugmentWide()`` (31 bins, nearest interpolation, fill 0) and the tensor functions
in ``transforms/_functional_tensor.py``; ``m_b`` is torchvision's float32 ``linspace(0, top, 31)[b]``
(so ``m_b = top * b / 30`` up to float32 rounding), ``m = -m_b`` when ``s = 1``:

===============  =====================================  ===========================================================================
op (index)       magnitude                              output (uint8; ``trunc`` = cast of a float >= 0 to uint8)
===============  =====================================  ===========================================================================
Identity 0       none                                   ``x``
ShearX 1         ``m`` in [-0.99, 0.99]                 shear ``degrees(atan(m))`` along x about the top-left corner:
                                                        ``out[i, j] = x[i, round(j + m (i + 1/2))]`` (0 outside)
ShearY 2         ``m`` in [-0.99, 0.99]                 ``out[i, j] = x[round(i + m (j + 1/2)), j]`` (0 outside)
TranslateX 3     ``t = int(m)``, ``m`` in [-32, 32]     ``out[i, j] = x[i, j - t]`` (0 outside); ``int`` truncates,
                                                        so bin 15 (float32 15.999999) shifts by 15 and 16 never occurs
TranslateY 4     as TranslateX                          ``out[i, j] = x[i - t, j]`` (0 outside)
Rotate 5         ``m`` in [-135, 135] degrees           rotation by ``m`` counter-clockwise about the image centre
Brightness 6     ``f = 1 + m``, ``m`` in [-0.99, 0.99]  ``trunc(clamp(f x + (1 - f) 0, 0, 255))``
Color 7          ``f = 1 + m``, as Brightness           ``trunc(clamp(f x + (1 - f) g, 0, 255))``, ``g`` the grey level
                                                        ``trunc(0.2989 R + 0.587 G + 0.114 B)``; identity if C = 1
Contrast 8       ``f = 1 + m``, as Brightness           ``trunc(clamp(f x + (1 - f) mean(g), 0, 255))``, ``g = x`` if C = 1
Sharpness 9      ``f = 1 + m``, as Brightness           ``trunc(clamp(f x + (1 - f) k, 0, 255))``, ``k`` = ``x`` blurred by
                                                        [[1,1,1],[1,5,1],[1,1,1]] / 13 and rounded, on the interior only
                                                        (border pixels keep ``x``); identity if H or W <= 2
Posterize 10     ``bits = 8 - round(b / 5)``, 8..2      ``x & (255 << (8 - bits))``: keeps the top ``bits`` bits
Solarize 11      ``t = 255 - 8.5 b``, 255..0            ``255 - x`` where ``x >= t``, else ``x``; bin 0 (t = 255) still
                                                        inverts 255 to 0, as torchvision's bins do
AutoContrast 12  none                                   per channel, ``lo, hi`` its min and max, ``s = fl(fl(1 / (hi - lo)) 255)``:
                                                        ``trunc(clamp((x - lo) s, 0, 255))``; identity where ``hi = lo``
Equalize 13      none                                   per channel, histogram ``h``, ``step = (H W - h[max x]) // 255``,
                                                        ``lut[v] = (cumsum(h)[v - 1] + step // 2) // step``, ``lut[0] = 0``:
                                                        ``clamp(lut[x], 0, 255)``; identity where ``step = 0``
===============  =====================================  ===========================================================================

The geometric rows (1-5) are torchvision's tensor ``affine`` / ``rotate``: its inverse affine matrix
(the shears about ``center=[0, 0]``, the rest about the image centre), its float32 sampling grid at the
pixel centres and ``grid_sample(mode="nearest", padding_mode="zeros", align_corners=False)`` (the
``round`` in the table is that, on float32 coordinates; rows and columns are pixel indices).

**Why by hand.** torchvision transforms one image per call with Python-side parameters (and does not
import beside every torch build): hundreds of tiny kernel launches and host round trips per batch.
Here the batch is sorted by operation (one ``argsort``), each operation runs once on its group with
per-image parameters gathered from small tables, and the result is put back with ``index_copy_``;
the group sizes are the one host synchronization per batch.

**Exactness.**  Every operation returns exactly torchvision's uint8 output (tests/test_real_augment.py
compares every op, bin and sign where torchvision imports; checked against 0.29.1 on the CPU), and the
same bits on the CPU and on CUDA.  Some compute the same numbers another way:

- Geometric ops: nearest sampling only copies a source pixel (or the fill 0), so each output pixel's
  source index is precomputed once per image size with torchvision's float32 grid and CPU
  ``grid_sample`` rounding, for 5 ops x 31 bins x 2 signs (1.3 MB at 32x32); a batch is one ``gather``.
  (torchvision on CUDA rounds with CUDA's ``grid_sample``, which could differ at exact ties.)
- Contrast: the exact integer luma sum divided in float32 equals torchvision's float32 ``mean``
  whenever ``255 H W < 2**24`` (up to 256 x 256 images).
- Sharpness: the blur is ``(2 S + 13) // 26`` in integers, ``S`` the kernel-weighted sum; torchvision's
  rounded float32 ``conv2d`` of ``S / 13`` is the same integer (``S / 13`` is never within 1/26 of a
  half-integer, the float error is below 1e-3).
- Equalize: all channels' histograms are one ``scatter_add_`` of integer counts (exact in any order).

The random stream is not torchvision's (its global RNG, a bin only for ops with bins, a sign only for
signed ops): op, bin and sign are drawn for every image from the given generator (same distribution;
reproducible and resumable).  torchvision's quirks are kept: AutoContrast maps a channel's maximum to
254 for some ranges ``hi - lo`` (41, 61, 67, ...: float32 rounding of ``(1 / d) * 255``), TranslateX/Y
never shift by 16.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from theory.plumbing.config import check, check_int

__all__ = ["NUM_BINS", "OPS", "apply_ops", "draw_params", "magnitude", "trivial_augment"]

# torchvision's TrivialAugmentWide op order (the keys of its _augmentation_space).
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
       "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NUM_BINS = 31
_GEOMETRIC = OPS[1:6]  # contiguous op indices 1..5, applied together as one gather
_SIGNED = frozenset(OPS[1:10])
_OP = {name: k for k, name in enumerate(OPS)}


@functools.cache
def _bins() -> dict[str, tuple[float, ...]]:
    """Unsigned magnitude per bin, as Python floats of torchvision's float32 tables."""
    def lin(top: float) -> tuple[float, ...]:
        return tuple(torch.linspace(0.0, top, NUM_BINS, dtype=torch.float32).tolist())

    bits = 8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 6)).round().int()  # 8, 8, 8, 7, ..., 2
    table = {name: lin(0.99) for name in ("ShearX", "ShearY", "Brightness", "Color", "Contrast", "Sharpness")}
    table.update(TranslateX=lin(32.0), TranslateY=lin(32.0), Rotate=lin(135.0))
    table.update(Posterize=tuple(float(b) for b in bits.tolist()), Solarize=tuple(torch.linspace(255.0, 0.0, NUM_BINS, dtype=torch.float32).tolist()))
    return table


def magnitude(op: str, bin: int, negative: bool) -> float:
    """The magnitude torchvision's TrivialAugmentWide passes to its op for this bin and sign
    (0.0 for the ops without bins; ``negative`` is ignored for the unsigned ones)."""
    check(op in _OP, "op", op, f"one of {OPS}")
    check(isinstance(bin, int) and 0 <= bin < NUM_BINS, "bin", bin, f"an integer in [0, {NUM_BINS})")
    if op not in _bins():
        return 0.0
    m = _bins()[op][bin]
    return -m if (negative and op in _SIGNED) else m


def _inverse_affine(angle: float, translate: tuple[float, float], shear: tuple[float, float], center: tuple[float, float]) -> list[float]:
    """Output-to-input map ``[m0, ..., m5]`` (x_in = m0 x + m1 y + m2, y_in = m3 x + m4 y + m5, in
    pixels relative to the image centre) of torchvision's affine transform with scale 1: rotation by
    ``angle`` and ``shear`` (degrees) about ``center``, then ``translate``.  Its formula and its order
    of float operations, so torchvision's matrix bit for bit (``_get_inverse_affine_matrix``)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    # forward rotation-shear [[a, b], [c, d]] (determinant 1) ...
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    # ... inverted, composed with the inverse translation and the centre shift
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _geometric_matrix(op: str, mag: float, h: int, w: int) -> list[float]:
    """torchvision's matrix for ShearX/ShearY/TranslateX/TranslateY/Rotate with magnitude ``mag``.
    Centres are relative to the image centre: the shears use ``center=[0, 0]`` (the top-left corner)."""
    corner = (-w * 0.5, -h * 0.5)
    if op == "ShearX":
        return _inverse_affine(0.0, (0.0, 0.0), (math.degrees(math.atan(mag)), 0.0), corner)
    if op == "ShearY":
        return _inverse_affine(0.0, (0.0, 0.0), (0.0, math.degrees(math.atan(mag))), corner)
    if op == "TranslateX":
        return _inverse_affine(0.0, (float(int(mag)), 0.0), (0.0, 0.0), (0.0, 0.0))
    if op == "TranslateY":
        return _inverse_affine(0.0, (0.0, float(int(mag))), (0.0, 0.0), (0.0, 0.0))
    return _inverse_affine(-mag, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))  # Rotate: F.rotate negates the angle


def _source_index(matrix: list[float], h: int, w: int) -> torch.Tensor:
    """(H W,) int32: the flat input pixel that nearest sampling copies to each output pixel, -1 for the
    fill.  torchvision's float32 grid (pixel centres relative to the image centre, mapped by the matrix
    and scaled to [-1, 1]) and grid_sample's own rounding, applied to an image of pixel numbers."""
    theta = torch.tensor(matrix, dtype=torch.float32).reshape(1, 2, 3)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, dtype=torch.float32)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, dtype=torch.float32)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w)], dim=-1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32)
    grid = base.reshape(1, h * w, 3).bmm(scaled).reshape(1, h, w, 2)
    numbers = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w)  # exact below 2**24
    picked = F.grid_sample(numbers, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return picked.reshape(h * w).to(torch.int32) - 1


@dataclass(frozen=True)
class _Tables:
    """Per-(bin, sign) parameters on the device.  Row ``2 b + s`` of the signed tables."""

    source: torch.Tensor  # (5 * 62, H W) int32, row (g * 31 + b) * 2 + s for geometric op g = op - 1
    factor: torch.Tensor  # (62,) float32: f = 1 + m (Brightness, Color, Contrast, Sharpness)
    rest: torch.Tensor  # (62,) float32: 1 - f, rounded from double as torchvision's Python float is
    keep_mask: torch.Tensor  # (31,) uint8: 255 << (8 - bits) & 255 (Posterize)
    threshold: torch.Tensor  # (31,) float32 (Solarize)


@functools.lru_cache(maxsize=16)
def _tables(h: int, w: int, device: torch.device) -> _Tables:
    """Built once per image size and device, on the CPU (so identical on every device), then moved."""
    rows = [_source_index(_geometric_matrix(op, magnitude(op, b, bool(s)), h, w), h, w)
            for op in _GEOMETRIC for b in range(NUM_BINS) for s in (0, 1)]
    factors = [1.0 + magnitude("Brightness", b, bool(s)) for b in range(NUM_BINS) for s in (0, 1)]
    bits = [int(magnitude("Posterize", b, False)) for b in range(NUM_BINS)]
    return _Tables(
        source=torch.stack(rows).to(device),
        factor=torch.tensor(factors, dtype=torch.float32).to(device),
        rest=torch.tensor([1.0 - f for f in factors], dtype=torch.float32).to(device),
        keep_mask=torch.tensor([(255 << (8 - k)) & 255 for k in bits], dtype=torch.uint8).to(device),
        threshold=torch.tensor(_bins()["Solarize"], dtype=torch.float32).to(device),
    )


# ---- the operations, each on a group (n, C, H, W) of uint8 images with per-image parameters ----

def _geometric(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling with fill 0: ``out[:, :, p] = x[:, :, source[:, p]]``."""
    n, c, h, w = x.shape
    src = source.long()  # (n, H W)
    picked = x.reshape(n, c, h * w).gather(2, src.clamp(min=0)[:, None, :].expand(n, c, h * w))
    return picked.masked_fill((src < 0)[:, None, :], 0).reshape(n, c, h, w)


def _blend(x: torch.Tensor, y: torch.Tensor, factor: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """``trunc(clamp(f x + (1 - f) y, 0, 255))`` in float32, as torchvision's ``_blend``."""
    f, r = factor.view(-1, 1, 1, 1), rest.view(-1, 1, 1, 1)
    return (f * x + r * y).clamp_(0, 255).to(torch.uint8)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) uint8 grey level: ``trunc(0.2989 R + 0.587 G + 0.114 B)``, or ``x`` if C = 1."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _contrast_mean(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) float32 mean grey level: exact integer sum / (H W), divided as tensors (CUDA would
    multiply by a rounded reciprocal for a Python-number divisor)."""
    total = _luma(x).sum(dim=(1, 2, 3), dtype=torch.int64).to(torch.float32)
    return (total / torch.full_like(total, x.shape[2] * x.shape[3])).view(-1, 1, 1, 1)


def _sharpness_blur(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its interior replaced by round(S / 13), S = 3x3 sum + 4 centre, in exact integers."""
    h, w = x.shape[2], x.shape[3]
    v = x.to(torch.int32)
    s = 4 * v[:, :, 1:-1, 1:-1]
    for di in range(3):
        for dj in range(3):
            s = s + v[:, :, di : di + h - 2, dj : dj + w - 2]
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = torch.div(2 * s + 13, 26, rounding_mode="floor").to(torch.uint8)
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True).to(torch.float32)
    hi = x.amax(dim=(2, 3), keepdim=True).to(torch.float32)
    scale = (hi - lo).reciprocal() * 255  # torchvision's `255 / (hi - lo)` runs Tensor.__rtruediv__: this
    flat = ~torch.isfinite(scale)
    lo, scale = lo.masked_fill(flat, 0.0), scale.masked_fill(flat, 1.0)
    return ((x - lo) * scale).clamp_(0, 255).to(torch.uint8)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    v = x.reshape(n * c, h * w).long()
    offsets = torch.arange(n * c, device=x.device)[:, None] * 256
    hist = torch.zeros(n * c * 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(0, (v + offsets).reshape(-1), torch.ones_like(v).reshape(-1))
    hist = hist.view(n * c, 256)
    # torchvision: step = (pixels less the last non-empty bin, which is the channel's maximum) // 255
    step = torch.div(h * w - hist.gather(1, v.amax(1, keepdim=True)), 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1), rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)  # lut[v] uses the counts below v
    out = torch.where(step == 0, v, lut.gather(1, v))  # step 0: the channel is left as it is
    return out.to(torch.uint8).reshape(n, c, h, w)


def _apply_group(k: int, x: torch.Tensor, bins: torch.Tensor, neg: torch.Tensor, t: _Tables) -> torch.Tensor:
    """Operation ``OPS[k]`` (k >= 6) on a group of images with per-image bins and signs."""
    name, row = OPS[k], bins * 2 + neg
    if name == "Brightness":
        return _blend(x, x.new_zeros(()), t.factor[row], t.rest[row])
    if name == "Color":
        return x if x.shape[1] == 1 else _blend(x, _luma(x), t.factor[row], t.rest[row])
    if name == "Contrast":
        return _blend(x, _contrast_mean(x), t.factor[row], t.rest[row])
    if name == "Sharpness":
        if x.shape[2] <= 2 or x.shape[3] <= 2:
            return x
        return _blend(x, _sharpness_blur(x), t.factor[row], t.rest[row])
    if name == "Posterize":
        return x & t.keep_mask[bins].view(-1, 1, 1, 1)
    if name == "Solarize":
        return torch.where(x >= t.threshold[bins].view(-1, 1, 1, 1), 255 - x, x)
    if name == "AutoContrast":
        return _autocontrast(x)
    return _equalize(x)


def apply_ops(x: torch.Tensor, op: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """A new uint8 batch: ``OPS[op[i]]`` with magnitude bin ``bins[i]`` and sign ``negative[i]`` applied to
    image ``i`` of ``x`` (N, C, H, W), C = 1 or 3; ``op``, ``bins``, ``negative`` are (N,) integer tensors in
    [0, 14), [0, 31), {0, 1}.  One host synchronization (the group sizes, which also validate the values)."""
    check(x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] in (1, 3), "x", (x.dtype, tuple(x.shape)), "an (N, C, H, W) uint8 batch with C = 1 or 3")
    n = x.shape[0]
    params = (op, bins, negative)
    check(
        all(isinstance(t, torch.Tensor) and t.shape == (n,) and not (t.is_floating_point() or t.is_complex()) for t in params),
        "op/bins/negative", [(getattr(t, "dtype", type(t)), tuple(getattr(t, "shape", ()))) for t in params], f"three ({n},) integer tensors",
    )
    op, bins, negative = (t.to(device=x.device, dtype=torch.int64) for t in params)
    counts = (op[:, None] == torch.arange(len(OPS), device=x.device)).sum(0)
    bad = ((bins < 0) | (bins >= NUM_BINS) | (negative < 0) | (negative > 1)).sum()
    *sizes, n_bad = torch.cat([counts, bad[None]]).tolist()  # the host synchronization
    check(sum(sizes) == n and n_bad == 0, "op/bins/negative", f"{n - sum(sizes)} ops, {n_bad} bins or signs out of range", f"ops in [0, {len(OPS)}), bins in [0, {NUM_BINS}), signs 0 or 1")
    if n == 0:
        return x.clone()
    t = _tables(x.shape[2], x.shape[3], x.device)
    order = torch.argsort(op, stable=True)  # images grouped by operation
    xs, op, bins, negative = x[order], op[order], bins[order], negative[order]
    ends = [0, *itertools.accumulate(sizes)]
    pieces = [xs[: ends[1]]]  # Identity
    geo = slice(ends[1], ends[6])  # ShearX .. Rotate: one gather
    if geo.stop > geo.start:
        row = ((op[geo] - 1) * NUM_BINS + bins[geo]) * 2 + negative[geo]
        pieces.append(_geometric(xs[geo], t.source[row]))
    for k in range(6, len(OPS)):
        group = slice(ends[k], ends[k + 1])
        if group.stop > group.start:
            pieces.append(_apply_group(k, xs[group], bins[group], negative[group], t))
    return torch.empty_like(x).index_copy_(0, order, torch.cat(pieces))


def draw_params(n: int, *, generator: torch.Generator | None = None, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(op, bins, negative)``, each (n,) int64, uniform on [0, 14), [0, 31), {0, 1}, drawn in this
    order from ``generator`` (on its device; torch's global RNG if None) and moved to ``device``."""
    check_int("n", n, low=0)
    dev = generator.device if generator is not None else torch.device(device or "cpu")
    op = torch.randint(0, len(OPS), (n,), generator=generator, device=dev)
    bins = torch.randint(0, NUM_BINS, (n,), generator=generator, device=dev)
    negative = torch.randint(0, 2, (n,), generator=generator, device=dev)
    return tuple(t.to(device or dev) for t in (op, bins, negative))


def trivial_augment(x_uint8: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """TrivialAugmentWide on an (N, C, H, W) uint8 batch (C = 1 or 3): :func:`draw_params` from ``generator``,
    then :func:`apply_ops`.  Same generator state and input, same output; a CPU generator gives the same
    draws for a CPU or a CUDA batch, so the outputs are equal (tests/test_real_augment.py checks it on a GPU)."""
    check(isinstance(x_uint8, torch.Tensor) and x_uint8.ndim == 4, "x", getattr(x_uint8, "shape", x_uint8), "an (N, C, H, W) uint8 batch")
    op, bins, negative = draw_params(x_uint8.shape[0], generator=generator, device=x_uint8.device)
    return apply_ops(x_uint8, op, bins, negative)
