"""SkyFinder (Mihail et al. 2016; the temperature-regression split of SupCR / Rank-N-Contrast):
outdoor webcam images around 11 am, regress the temperature.

On-disk format: ``<data-dir>/skyfinder.csv`` with the columns ``path,temperature,split``
(``split``: ``train``, ``val`` or ``test``; temperature in degrees Celsius) and the images at
``<data-dir>/<path>``. One-degree bins; DIR's shot thresholds; 224 px images with DIR's
transforms; ResNet-50, as the paper.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..dir_protocol import label_bins
from .images import ImageTargetDataset, check_first_images, dir_image_transform
from .splits import DatasetSplits, parse_float, read_csv_rows, split_indices

LAYOUT = ("skyfinder.csv in --data-dir with the header 'path,temperature,split' (split: train, val or test; "
          "temperature in degrees C) and the images at <data-dir>/<path>")


def load_skyfinder(data_dir: str, image_size: int = 224, many: Optional[int] = None,
                   few: Optional[int] = None) -> DatasetSplits:
    path = os.path.join(data_dir, "skyfinder.csv")
    rows = read_csv_rows(path, ("path", "temperature", "split"), LAYOUT)
    temps = np.array([parse_float(r["temperature"], path, "temperature", i) for i, r in enumerate(rows)])
    splits = split_indices(rows, path)
    missing = [s for s in ("train", "val", "test") if s not in splits]
    if missing:
        raise ValueError(f"{path}: no rows with split {missing}. Expected layout: {LAYOUT}")
    bins = label_bins(temps, width=1.0)
    paths = [os.path.join(data_dir, r["path"]) for r in rows]
    check_first_images(paths, LAYOUT)

    def subset(split, train):
        index = splits[split]
        return ImageTargetDataset([paths[i] for i in index], temps[index], dir_image_transform(image_size, train), LAYOUT)

    return DatasetSplits(
        name="skyfinder", kind="image", train=subset("train", True), val=subset("val", False),
        test=subset("test", False), train_targets=temps[splits["train"]], bins=bins,
        many=100 if many is None else many, few=20 if few is None else few, backbone="resnet50", input_dim=3,
        label="temperature (C)",
    )
