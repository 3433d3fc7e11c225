"""Data set loaders for ``irda-train``, one module per data set or on-disk format.

``load_dataset(name, **options)`` returns a :class:`DatasetSplits`. Loaders of the
paper's benchmarks read the data sets' real on-disk formats from ``data_dir``; a missing
file or column raises an error naming the file and the expected layout.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Mapping

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


# A loader parameter -> the irda-train option that sets it and that option's metavar.
CLI_OPTIONS = {"path": ("--csv", "PATH"), "target": ("--target", "COLUMN"), "data_dir": ("--data-dir", "DIR"),
               "cap": ("--cap", "N"), "num_bins": ("--num-bins", "N"),
               "bin_width": ("--bin-width", "W"), "many": ("--many", "N"), "few": ("--few", "N"),
               "image_size": ("--image-size", "PIXELS")}


def loader_options(name: str, given: Mapping[str, object], seed: int) -> dict:
    """The keyword arguments of data set ``name``'s loader from the run's options, read off the
    loader's signature (``given`` maps loader parameter names to values; None means not
    given, and the loader's own default applies); ``seed``, the run's seed, goes to every
    loader that takes one.

    Raises:
        ValueError: a parameter the loader requires is not given (``--dataset csv`` without
            ``--csv``), or an option that only other data sets take is given.
    """
    parameters = inspect.signature(get_loader(name)).parameters
    missing = [p for p, spec in parameters.items()
               if spec.default is inspect.Parameter.empty and given.get(p) is None and p in CLI_OPTIONS]
    if missing:
        wanted = " and ".join(" ".join(CLI_OPTIONS[p]) for p in missing)
        raise ValueError(f"--dataset {name} needs {wanted}" + (" (its files are read from there)"
                                                                 if "data_dir" in missing else ""))
    foreign = [CLI_OPTIONS[p][0] for p, value in given.items() if value is not None and p not in parameters]
    if foreign:
        raise ValueError(f"{' and '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
                         f"--dataset {name}")
    options = {p: value for p, value in given.items() if p in parameters and value is not None}
    if "seed" in parameters:
        options["seed"] = seed
    return options


__all__ = ["CLI_OPTIONS", "DATASETS", "DatasetSplits", "LOADERS", "get_loader", "load_dataset", "loader_options"]
