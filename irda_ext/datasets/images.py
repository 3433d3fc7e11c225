"""Image-file regression data shared by the face (AgeDB-DIR, IMDB-WIKI-DIR) and SkyFinder
loaders: a list of image paths with one target each, and DIR's transforms."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def dir_image_transform(image_size: int, train: bool):
    """The transforms of the DIR age benchmarks: resize to a square, then for training a
    random crop with 16 px padding and a horizontal flip; tensors normalised to [-1, 1]."""
    from torchvision import transforms

    steps = [transforms.Resize((image_size, image_size))]
    if train:
        steps += [transforms.RandomCrop(image_size, padding=16), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])]
    return transforms.Compose(steps)


class ImageTargetDataset(Dataset):
    """``(image tensor [3, S, S], target float32)`` for each (path, target) pair."""

    def __init__(self, paths: Sequence[str], targets: Sequence[float], transform, layout: str):
        if len(paths) != len(targets):
            raise ValueError(f"got {len(paths)} image paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.transform = transform
        self.layout = layout

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        path = self.paths[index]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path!r} listed in the CSV does not exist. Expected layout: {self.layout}")
        with Image.open(path) as image:
            tensor = self.transform(image.convert("RGB"))
        return tensor, torch.tensor(self.targets[index])


def check_first_images(paths: Sequence[str], layout: str, how_many: int = 3) -> None:
    """Fail at load time, not hours into training, when the image root is wrong."""
    for path in list(paths)[:how_many]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path!r} listed in the CSV does not exist (is --data-dir right?). "
                                    f"Expected layout: {layout}")
