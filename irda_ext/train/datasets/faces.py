"""AgeDB-DIR and IMDB-WIKI-DIR (Yang et al., ICML 2021): age estimation from faces.

On-disk format, exactly as the DIR repository's ``data/`` folder: ``agedb.csv`` (or
``imdb_wiki.csv``) with the columns ``age,path,split`` (``split`` is ``train``, ``val`` or
``test``; the DIR curation already made val and test balanced), and the images at
``<data-dir>/<path>``. One-year bins from 0; DIR's shot thresholds (many > 100, few < 20);
224 px images with DIR's transforms; ResNet-50.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ...dir_protocol import unit_bins_from_zero
from .images import split_image_csv
from .splits import DatasetSplits, parse_float, read_csv_rows

FACE_LAYOUT = ("{csv} in --data-dir with the header 'age,path,split' (split: train, val or test) and the images "
               "at <data-dir>/<path>, as in the DIR repository's data folder")


def load_face_csv(data_dir: str, csv_name: str, name: str, image_size: int = 224, many: Optional[int] = None,
                  few: Optional[int] = None) -> DatasetSplits:
    layout = FACE_LAYOUT.format(csv=csv_name)
    path = os.path.join(data_dir, csv_name)
    rows = read_csv_rows(path, ("age", "path", "split"), layout)
    ages = np.array([parse_float(r["age"], path, "age", i) for i, r in enumerate(rows)])
    if (ages < 0).any():
        raise ValueError(f"{path}: ages must be non-negative, got {ages.min()}")
    bins = unit_bins_from_zero(ages)
    train, val, test, train_ages = split_image_csv(data_dir, path, rows, ages, layout, image_size)
    return DatasetSplits(
        name=name, kind="image", train=train, val=val, test=test, train_targets=train_ages, bins=bins,
        many=100 if many is None else many, few=20 if few is None else few, backbone="resnet50", input_dim=3,
        label="age (years)",
    )


def load_agedb(data_dir: str, image_size: int = 224, many: Optional[int] = None, few: Optional[int] = None) -> DatasetSplits:
    """AgeDB-DIR from ``<data_dir>/agedb.csv``."""
    return load_face_csv(data_dir, "agedb.csv", "agedb", image_size, many, few)


def load_imdb_wiki(data_dir: str, image_size: int = 224, many: Optional[int] = None,
                   few: Optional[int] = None) -> DatasetSplits:
    """IMDB-WIKI-DIR from ``<data_dir>/imdb_wiki.csv``."""
    return load_face_csv(data_dir, "imdb_wiki.csv", "imdb-wiki", image_size, many, few)
