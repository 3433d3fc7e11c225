"""Image-file regression data shared by the face (AgeDB-DIR, IMDB-WIKI-DIR) and SkyFinder
loaders: a list of image paths with one target each, and DIR's transforms."""
from __future__ import annotations

import os
from typing import Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import split_indices


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


def split_image_csv(data_dir: str, csv_path: str, rows, targets: np.ndarray, layout: str,
                    image_size: int) -> Tuple[Dataset, Dataset, Dataset, np.ndarray]:
    """``(train, val, test, train_targets)`` of a CSV whose rows name an image (``path``,
    relative to ``data_dir``) and a ``split``, with ``targets`` one per row. Every split
    must be present and the first images must open; errors name ``csv_path`` and
    ``layout``."""
    splits = split_indices(rows, csv_path)
    missing = [s for s in ("train", "val", "test") if s not in splits]
    if missing:
        raise ValueError(f"{csv_path}: no rows with split {missing}. Expected layout: {layout}")
    paths = [os.path.join(data_dir, r["path"]) for r in rows]
    check_first_images(paths, layout)

    def subset(split: str, train: bool) -> Dataset:
        index = splits[split]
        return ImageTargetDataset([paths[i] for i in index], targets[index], dir_image_transform(image_size, train),
                                  layout)

    return subset("train", True), subset("val", False), subset("test", False), targets[splits["train"]]
