"""Models of real/models.py: shapes at every supported image size, gradients, errors, init."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from real.models import MODELS, SmallCNN, VisionTransformer, build_model, vit_patch_size

# (in_channels, image_size): Fashion-MNIST, CIFAR/CINIC, Tiny-ImageNet, STL-10.
SIZES = [(1, 28), (3, 32), (3, 64), (3, 96)]


@lru_cache(maxsize=None)
def _cached(name: str, channels: int, size: int) -> torch.nn.Module:
    """Build each distinct architecture once (the CNNs do not depend on the image size)."""
    torch.manual_seed(0)
    return build_model(name, in_channels=channels, num_classes=7, image_size=size)


def cached_model(name: str, channels: int, size: int) -> torch.nn.Module:
    model = _cached(name, channels, size if name in ("mlp", "vit-s") else 32)
    model.zero_grad(set_to_none=True)
    return model.train()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _free_cached_models():
    yield
    _cached.cache_clear()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels, size", SIZES)
def test_forward_shape(name, channels, size):
    model = cached_model(name, channels, size)
    with torch.no_grad():
        logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = cached_model(name, 3, 32)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    F.cross_entropy(model(x), y).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
    model.zero_grad(set_to_none=True)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*resnet18.*cnn-small"):
        build_model("resnet50", in_channels=3, num_classes=10, image_size=32)


@pytest.mark.parametrize("field, value", [("in_channels", 0), ("num_classes", -1), ("image_size", 3.5)])
def test_rejects_bad_sizes(field, value):
    kwargs = {"in_channels": 3, "num_classes": 10, "image_size": 32, field: value}
    with pytest.raises(ValueError, match=field):
        build_model("mlp", **kwargs)


def test_parameter_counts_match_reference_architectures():
    def count(name):  # cached models have 7 classes
        return sum(p.numel() for p in cached_model(name, 3, 32).parameters())

    assert count("resnet18") == 11_173_962 - 3 * 513  # the CIFAR ResNet18 of kuangliu/pytorch-cifar
    assert count("vgg19") == 20_035_018 - 3 * 513
    assert count("densenet121") == 6_956_298 - 3 * 1025
    assert 21e6 < count("vit-s") < 22e6
    assert count("mlp") == 3072 * 512 + 512 + 512 * 512 + 512 + 512 * 7 + 7
    assert 50_000 < count("cnn-small") < 300_000


@pytest.mark.parametrize("size, patch", [(32, 4), (64, 8), (96, 12), (28, 4), (16, 2)])
def test_vit_patch_size(size, patch):
    assert vit_patch_size(size) == patch and size % patch == 0


def test_vit_structure_and_bad_patch():
    model = cached_model("vit-s", 3, 32)
    assert len(model.blocks) == 12 and model.cls_token.shape == (1, 1, 384)
    assert model.pos_embed.shape == (1, 65, 384) and model.blocks[0].attn.heads == 6
    assert model.blocks[0].mlp[0].out_features == 1536
    with pytest.raises(ValueError, match="patch size 5"):
        VisionTransformer(in_channels=3, num_classes=10, image_size=32, patch_size=5)


def test_conv_init_is_kaiming_fan_out():
    conv = cached_model("resnet18", 3, 32).stages[-1].conv2  # 512 -> 512, 3x3: fan_out = 512 * 9
    assert abs(conv.weight.std().item() - math.sqrt(2 / (512 * 9))) < 0.05 * math.sqrt(2 / (512 * 9))


def test_same_seed_same_model_and_batch_independence():
    torch.manual_seed(1)
    a = SmallCNN(in_channels=1, num_classes=10)
    torch.manual_seed(1)
    b = SmallCNN(in_channels=1, num_classes=10)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    a.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[:1], a(x[:1]))


def test_cnn_small_learns_a_separable_toy_problem():
    x = torch.randn(32, 1, 16, 16)
    y = torch.arange(32) % 2
    x[:, 0, :8] += (y.float() * 2 - 1)[:, None, None]  # class sign in the top half
    model = build_model("cnn-small", in_channels=1, num_classes=2, image_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3
