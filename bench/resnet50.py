"""The ResNet-50 trunk for the GPU benchmark's training step: torchvision's when it is
installed, else the same network written out here (the lent GPU machine has no torchvision):
the stem, bottleneck stages of [3, 4, 6, 3] blocks, global average pooling, 2048 features,
23.5M parameters, layer for layer torchvision's resnet50 without its classifier."""
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


def _written_out() -> nn.Sequential:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
            inplanes = planes * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def resnet50_trunk(prefer_torchvision: bool = True) -> nn.Module:
    """``[n, 3, H, W]`` images to ``[n, 2048]`` features."""
    if prefer_torchvision:
        try:
            import torchvision
        except ImportError:
            pass
        else:
            model = torchvision.models.resnet50(weights=None)
            return nn.Sequential(*list(model.children())[:-1], nn.Flatten())
    return _written_out()
