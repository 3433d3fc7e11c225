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

from ...dir_protocol import label_bins
from .images import split_image_csv
from .splits import DatasetSplits, parse_float, read_csv_rows

LAYOUT = ("skyfinder.csv in --data-dir with the header 'path,temperature,split' (split: train, val or test; "
          "temperature in degrees C) and the images at <data-dir>/<path>")


def load_skyfinder(data_dir: str, image_size: int = 224, many: Optional[int] = None,
                   few: Optional[int] = None) -> DatasetSplits:
    path = os.path.join(data_dir, "skyfinder.csv")
    rows = read_csv_rows(path, ("path", "temperature", "split"), LAYOUT)
    temps = np.array([parse_float(r["temperature"], path, "temperature", i) for i, r in enumerate(rows)])
    bins = label_bins(temps, width=1.0)
    train, val, test, train_temps = split_image_csv(data_dir, path, rows, temps, LAYOUT, image_size)
    return DatasetSplits(
        name="skyfinder", kind="image", train=train, val=val, test=test, train_targets=train_temps, bins=bins,
        many=100 if many is None else many, few=20 if few is None else few, backbone="resnet50", input_dim=3,
        label="temperature (C)",
    )
