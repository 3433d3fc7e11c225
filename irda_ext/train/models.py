"""Backbones for ``irda-train``.

Every backbone maps an input batch to the features the regression head and the IRDA
statistics see: ``[n, D]`` for one target per sample, ``[n, D, h, w]`` for depth maps
(one feature vector per pixel). ``feature_dim`` is ``D``. The head itself,
``nn.Linear(D, 1)``, belongs to the driver, because IRDA needs its weight.

torchvision is imported only by the ResNet builders, so tabular training works without it.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F


class MLP(nn.Module):
    """Fully connected ReLU network for tabular inputs; the last hidden layer is the feature."""

    def __init__(self, input_dim: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0):
        super().__init__()
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"MLP: input_dim must be a positive int, got {input_dim!r}")
        layers, width = [], input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.feature_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three 3x3 convolutions and a fully connected layer, for the 12x12 rotated digits.

    The spatial map is flattened rather than pooled: the rotation angle is a property of
    where the strokes are, which global pooling would throw away."""

    def __init__(self, in_channels: int = 1, image_size: int = 12, feature_dim: int = 128):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        )
        side = image_size // 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, feature_dim), nn.ReLU(inplace=True))
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


def _torchvision_resnet(depth: int):
    try:
        import torchvision
    except ImportError as err:  # pragma: no cover - torchvision is an optional extra
        raise ImportError("the image backbones need torchvision: pip install 'irda-ext[vision]'") from err
    builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
    if depth not in builders:
        raise ValueError(f"ResNet depth must be one of {sorted(builders)}, got {depth}")
    return builders[depth](weights=None)  # no download: weights come from --pretrained only


def load_pretrained(module: nn.Module, path: Optional[str]) -> None:
    """Load a local checkpoint (a state dict, or a dict holding one under ``state_dict``
    or ``model``); keys of a classifier head (``fc.*``) are ignored."""
    if path is None:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pretrained: no checkpoint file at {path!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--pretrained: {path!r} holds a {type(state).__name__}, expected a state dict")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(module.state_dict()):
        raise ValueError(f"--pretrained: {path!r} does not fit the backbone "
                         f"({len(missing)} missing, unexpected e.g. {unexpected[:3]})")


class ResNetRegressor(nn.Module):
    """torchvision ResNet trunk, global-average-pooled (2048 features for ResNet-50)."""

    def __init__(self, depth: int = 50, pretrained: Optional[str] = None, in_channels: int = 3):
        super().__init__()
        net = _torchvision_resnet(depth)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        load_pretrained(net, pretrained)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNetDepth(nn.Module):
    """ResNet encoder with an upsampling decoder and skip connections, the shape of the
    model of Hu et al. (WACV 2019) used by NYUD2-DIR, reduced to what a per-pixel linear
    head needs: ``[n, feature_dim, H/2, W/2]`` features for an ``[n, 3, H, W]`` image."""

    def __init__(self, depth: int = 50, pretrained: Optional[str] = None, feature_dim: int = 64):
        super().__init__()
        net = _torchvision_resnet(depth)
        net.fc = nn.Identity()
        load_pretrained(net, pretrained)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)  # 1/2
        self.pool = net.maxpool
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])  # 1/4 .. 1/32
        widths = [self._out_channels(m) for m in self.stages]
        stem_width = net.conv1.out_channels
        self.reduce = nn.Conv2d(widths[-1], widths[-1] // 2, 1)
        ups, width = [], widths[-1] // 2
        for skip in reversed([stem_width] + widths[:-1]):
            out = max(feature_dim, skip // 2)
            ups.append(nn.Sequential(nn.Conv2d(width + skip, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)))
            width = out
        self.ups = nn.ModuleList(ups)
        self.out = nn.Sequential(nn.Conv2d(width, feature_dim, 3, padding=1), nn.ReLU(inplace=True))
        self.feature_dim = feature_dim

    @staticmethod
    def _out_channels(stage: nn.Sequential) -> int:
        last = stage[-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        h = self.pool(skips[0])
        for stage in self.stages:
            h = stage(h)
            skips.append(h)
        h = self.reduce(skips.pop())
        for up, skip in zip(self.ups, reversed(skips)):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skip], dim=1))
        return self.out(h)


class _BasicBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 7, stride=stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 7, padding=3, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout)))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet1d(nn.Module):
    """1D ResNet for multichannel EEG windows ``[n, channels, time]``.

    With the default 4 stages of 3 two-convolution blocks it has 24 residual
    convolutions, the depth of the brain-age model the paper takes from [47]."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128, 256), blocks_per_stage: int = 3):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"ResNet1d: in_channels must be a positive int, got {in_channels!r}")
        self.stem = nn.Sequential(nn.Conv1d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm1d(widths[0]), nn.ReLU(inplace=True))
        blocks, width = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(_BasicBlock1d(width, w, stride=2 if (j == 0 and i > 0) else 1))
                width = w
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=-1)


def build_backbone(name: str, input_dim: int = 0, pretrained: Optional[str] = None, image_size: int = 12) -> nn.Module:
    """The backbone called ``name``: ``mlp``, ``small-cnn``, ``resnet18``, ``resnet50``,
    ``resnet50-depth``, ``resnet18-depth``, ``resnet1d``."""
    if name in ("mlp", "small-cnn", "resnet1d"):
        net = {"mlp": lambda: MLP(input_dim), "small-cnn": lambda: SmallCNN(in_channels=1, image_size=image_size),
               "resnet1d": lambda: ResNet1d(input_dim)}[name]()
        load_pretrained(net, pretrained)
        return net
    if name in ("resnet18", "resnet34", "resnet50"):
        return ResNetRegressor(int(name[6:]), pretrained=pretrained)
    if name in ("resnet18-depth", "resnet50-depth"):
        return ResNetDepth(int(name[6:8]), pretrained=pretrained)
    raise ValueError(f"unknown backbone {name!r}; expected one of mlp, small-cnn, resnet18, resnet34, resnet50, "
                     f"resnet18-depth, resnet50-depth, resnet1d")
