"""Backbones: feature shapes, and --pretrained loading a local checkpoint (no download)."""
import pytest
import torch

from irda_ext.train.models import MLP, ResNet1d, SmallCNN, build_backbone

torchvision = pytest.importorskip("torchvision")


def test_feature_shapes():
    assert MLP(10)(torch.randn(4, 10)).shape == (4, MLP(10).feature_dim)
    assert SmallCNN()(torch.randn(2, 1, 12, 12)).shape == (2, 128)
    net = ResNet1d(5, widths=(8, 16), blocks_per_stage=1)
    assert net(torch.randn(2, 5, 100)).shape == (2, 16) and net.feature_dim == 16
    depth = build_backbone("resnet18-depth")
    assert depth(torch.randn(1, 3, 64, 96)).shape == (1, depth.feature_dim, 32, 48)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg")


def test_pretrained_loads_a_local_torchvision_checkpoint(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    net = build_backbone("resnet18", pretrained=str(path))
    assert torch.equal(net.net.conv1.weight, source.conv1.weight)
    assert torch.equal(net.net.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("resnet18", pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        build_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))
