"""Data set loaders for ``irda-train``, one module per data set or on-disk format.

``load_dataset(name, **options)`` returns a :class:`DatasetSplits`. Loaders of the
paper's benchmarks read the data sets' real on-disk formats from ``data_dir``; a missing
file or column raises an error naming the file and the expected layout.
"""
from __future__ import annotations

import importlib

from .splits import DatasetSplits

# name -> (module, loader function); modules are imported on use, so the tabular data
# sets never import torchvision or PIL.
LOADERS = {
    "abalone": ("tabular", "load_abalone"),
    "bikeshare": ("tabular", "load_bikeshare"),
    "csv": ("tabular", "load_table"),
    "rotated-digits": ("rotated_digits", "load_rotated_digits"),
    "agedb": ("faces", "load_agedb"),
    "imdb-wiki": ("faces", "load_imdb_wiki"),
    "skyfinder": ("skyfinder", "load_skyfinder"),
    "nyud2": ("nyud2", "load_nyud2"),
    "tuab": ("tuab", "load_tuab"),
}
DATASETS = tuple(LOADERS)


def get_loader(name: str):
    """The loader function of data set ``name``."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    module, function = LOADERS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def load_dataset(name: str, **options) -> DatasetSplits:
    """Load data set ``name``; ``options`` are the loader's keyword arguments."""
    return get_loader(name)(**options)


__all__ = ["DATASETS", "DatasetSplits", "LOADERS", "get_loader", "load_dataset"]
