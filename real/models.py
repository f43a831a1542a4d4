"""Classifiers for small images (28 to 96 pixels): the paper's architectures, plus a small CNN.

Float ``(N, C, H, W)`` in, logits ``(N, num_classes)`` out (:func:`build_model`).  The CNNs have a
CIFAR-style stem (3x3 convolution, stride 1, no max-pool) and adaptive average pooling, so the same
code serves 28 to 96 pixel images.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from theory.plumbing.config import check_int

__all__ = ["MODELS", "build_model", "ResNet", "VGG", "DenseNet", "VisionTransformer", "MLP", "SmallCNN",
           "vit_patch_size"]


def _init_cnn(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, all bias-free; batch norm keeps torch's scales 1, shifts 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity (or 1x1 conv-bn) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (stride 1, no max-pool), then one stage of BasicBlocks per entry of
    ``blocks`` (``(2, 2, 2, 2)``: ResNet18, ``(3, 4, 6, 3)``: ResNet34), ``width`` channels doubling per stage."""

    def __init__(self, blocks: tuple[int, ...], *, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with batch norm: ``cfg`` lists channel counts and ``"M"`` (2x2 max-pool; default configuration E,
    VGG19); max-pools round up (``ceil_mode``) so 28-pixel inputs survive five pools."""

    def __init__(self, cfg: tuple = VGG19_CFG, *, in_channels: int, num_classes: int):
        super().__init__()
        layers, c_in = [], in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += _conv_bn_relu(c_in, item)
                c_in = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class DenseLayer(nn.Module):
    """Bottleneck BN-ReLU-Conv1x1(4g)-BN-ReLU-Conv3x3(g); output concatenated to the input."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                                  nn.Conv2d(c_in, 4 * growth, 1, bias=False), nn.BatchNorm2d(4 * growth),
                                  nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNet(nn.Module):
    """DenseNet-BC with a CIFAR stem (3x3 conv to ``2 * growth`` channels, no pooling): ``blocks`` dense
    layers per block (``(6, 12, 24, 16)``: DenseNet121), transitions reducing channels by ``compression``."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), *, in_channels: int, num_classes: int,
                 growth: int = 32, compression: float = 0.5):
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                c_out = int(c * compression)  # the transition
                layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                            nn.Conv2d(c, c_out, 1, bias=False), nn.AvgPool2d(2)))
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def vit_patch_size(image_size: int) -> int:
    """The divisor of ``image_size`` closest to ``image_size / 8``, ties to the larger: 32 -> 4, 64 -> 8,
    96 -> 12, 28 -> 4."""
    divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
    return min(divisors, key=lambda p: (abs(p - image_size / 8), -p))


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token, learned position embedding and pre-norm blocks; ``patch_size`` must divide
    ``image_size`` (default :func:`vit_patch_size`); the defaults are ViT-Small's width, depth, heads, MLP width."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, patch_size: int | None = None,
                 dim: int = 384, depth: int = 12, heads: int = 6, mlp_dim: int = 1536):
        super().__init__()
        patch_size = vit_patch_size(image_size) if patch_size is None else patch_size
        if image_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {image_size}")
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        # Truncated-normal (std 0.02) embeddings and linears; Kaiming-normal patch convolution.
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.patch_embed.weight, mode="fan_in", nonlinearity="linear")
        nn.init.zeros_(self.patch_embed.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class MLP(nn.Module):
    """The paper's 3-layer MLP: flatten -> hidden -> hidden -> classes, ReLU activations."""

    def __init__(self, *, in_features: int, num_classes: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A fast CNN for CPU runs (about 94k parameters): conv32-pool, conv64-pool, conv128 (3x3, batch norm,
    ReLU), global average pool, linear."""

    def __init__(self, *, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(*_conv_bn_relu(in_channels, a), nn.MaxPool2d(2), *_conv_bn_relu(a, b),
                                      nn.MaxPool2d(2), *_conv_bn_relu(b, c), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(c, num_classes)
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


# The registry: name -> builder (in_channels, num_classes, image_size) -> a freshly initialized module.
MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet18": lambda c, k, size: ResNet((2, 2, 2, 2), in_channels=c, num_classes=k),
    "resnet34": lambda c, k, size: ResNet((3, 4, 6, 3), in_channels=c, num_classes=k),
    "vgg19": lambda c, k, size: VGG(VGG19_CFG, in_channels=c, num_classes=k),
    "densenet121": lambda c, k, size: DenseNet((6, 12, 24, 16), in_channels=c, num_classes=k),
    "vit-s": lambda c, k, size: VisionTransformer(image_size=size, in_channels=c, num_classes=k),
    "mlp": lambda c, k, size: MLP(in_features=c * size * size, num_classes=k),
    "cnn-small": lambda c, k, size: SmallCNN(in_channels=c, num_classes=k),
}


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialized model ``name`` (a key of :data:`MODELS`); unknown names or non-positive sizes
    are a ValueError."""
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
        check_int(label, value, low=1)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_channels, num_classes, image_size)
