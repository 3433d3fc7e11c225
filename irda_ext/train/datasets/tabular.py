"""Tabular regression data: the bundled UCI Abalone and Bike Sharing files and any CSV.

Encoding, fitted on the training split only so nothing leaks from validation or test:
categorical columns (declared, or any column with a non-numeric value) are one-hot
encoded over the categories seen in training (an unseen category encodes as all zeros);
numeric columns are standardised with the training mean and standard deviation, and an
empty numeric cell takes the training mean. The split is DIR's balanced one
(:func:`irda_ext.dir_protocol.balanced_split`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ...dir_protocol import balanced_split, label_bins, scaled_shot_thresholds
from .splits import DatasetSplits, csv_rows, read_text, require_file

# The bundled data ship inside the package, beside the library (irda_ext/data/).
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data")


def _read_table(path: str) -> List[Dict[str, str]]:
    require_file(path, "tabular data", "a headed CSV file (optionally gzip-compressed, .gz)")
    text = read_text(path)
    rows = csv_rows(text, path)
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")
    return rows


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def encode_features(rows: List[Dict[str, str]], columns: Sequence[str], train_index: np.ndarray,
                    categorical: Sequence[str] = ()) -> Tuple[np.ndarray, List[str]]:
    """Feature matrix ``[N, F]`` float32 and the name of each encoded column."""
    blocks, names = [], []
    for column in columns:
        values = [row[column].strip() for row in rows]
        is_categorical = column in categorical or any(v != "" and not _is_number(v) for v in values)
        if is_categorical:
            categories = sorted({values[i] for i in train_index})
            lookup = {c: j for j, c in enumerate(categories)}
            block = np.zeros((len(values), len(categories)), dtype=np.float32)
            for i, v in enumerate(values):
                if v in lookup:
                    block[i, lookup[v]] = 1.0
            names += [f"{column}={c}" for c in categories]
        else:
            raw = np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
            infinite = np.flatnonzero(np.isinf(raw))
            if infinite.size:
                raise ValueError(f"column {column!r}, row {infinite[0] + 2}: an infinite value ({values[infinite[0]]!r}); "
                                 f"features must be finite numbers (leave a cell empty for a missing value)")
            train_values = raw[train_index]
            train_values = train_values[~np.isnan(train_values)]
            mean = train_values.mean() if train_values.size else 0.0
            std = train_values.std() if train_values.size else 1.0
            raw = np.where(np.isnan(raw), mean, raw)
            block = ((raw - mean) / (std if std > 0 else 1.0)).astype(np.float32)[:, None]
            names.append(column)
        blocks.append(block)
    return np.concatenate(blocks, axis=1), names


def load_table(path: str, target: str, name: str = "csv", seed: int = 0, cap: int = 15,
               num_bins: Optional[int] = 100, bin_width: Optional[float] = None,
               integer_labels: bool = False, categorical: Sequence[str] = (),
               drop: Sequence[str] = (), many: Optional[int] = None, few: Optional[int] = None,
               label: Optional[str] = None) -> DatasetSplits:
    """A tabular regression CSV under the DIR protocol.

    Args:
        path: the CSV (``.csv`` or ``.csv.gz``) with a header row.
        target: the column to regress; every other column not in ``drop`` is a feature.
        seed, cap: of the balanced validation/test split (per bin ``min(n // 3, cap)``).
        num_bins, bin_width, integer_labels: the label bins (see
            :func:`irda_ext.dir_protocol.label_bins`); ``bin_width`` wins over ``num_bins``.
        categorical: columns to one-hot even though they hold numbers (hour, weekday).
        many, few: shot thresholds; default: :func:`scaled_shot_thresholds`.
    """
    rows = _read_table(path)
    header = list(rows[0].keys())
    if target not in header:
        raise ValueError(f"{path}: no target column {target!r}; the columns are {header}")
    unknown = [c for c in list(drop) + list(categorical) if c not in header]
    if unknown:
        raise ValueError(f"{path}: column(s) {unknown} named in drop/categorical do not exist; the columns are {header}")
    y = []
    for i, row in enumerate(rows):
        value = row[target].strip()
        if not _is_number(value):
            raise ValueError(f"{path}: row {i + 2}: target {target!r} must be a number, got {value!r}")
        y.append(float(value))
    y = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"{path}: target {target!r} has NaN or infinite values")
    if integer_labels:
        bins = label_bins(y, integer_labels=True)
    elif bin_width is not None:
        bins = label_bins(y, width=bin_width)
    else:
        bins = label_bins(y, num_bins=num_bins)
    train_index, val_index, test_index = balanced_split(y, bins, cap=cap, seed=seed)
    if val_index.size == 0 or test_index.size == 0:
        raise ValueError(f"{path}: too few rows per label bin for a balanced validation and test set "
                         f"(every bin needs at least 3 rows to give one to each); use fewer bins")
    columns = [c for c in header if c != target and c not in drop]
    if not columns:
        raise ValueError(f"{path}: no feature columns left besides the target {target!r}")
    try:
        x, feature_names = encode_features(rows, columns, train_index, categorical)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if many is None or few is None:
        auto_many, auto_few = scaled_shot_thresholds(y[train_index], bins)
        many = auto_many if many is None else many
        few = auto_few if few is None else few

    def subset(index):
        return TensorDataset(torch.from_numpy(x[index]), torch.from_numpy(y[index].astype(np.float32)))

    return DatasetSplits(
        name=name, kind="tabular", train=subset(train_index), val=subset(val_index), test=subset(test_index),
        train_targets=y[train_index], bins=bins, many=int(many), few=int(few), backbone="mlp",
        input_dim=x.shape[1], label=label or target, extra={"feature_names": feature_names},
    )


def load_abalone(seed: int = 0, cap: int = 15, many: Optional[int] = None, few: Optional[int] = None) -> DatasetSplits:
    """UCI Abalone (bundled): regress ``rings`` from 8 measurements, bins of one ring."""
    return load_table(os.path.join(DATA_DIR, "abalone.csv.gz"), "rings", name="abalone", seed=seed, cap=cap,
                      integer_labels=True, categorical=("sex",), many=many, few=few, label="rings")


def load_bikeshare(seed: int = 0, cap: int = 15, num_bins: int = 100, many: Optional[int] = None,
                   few: Optional[int] = None) -> DatasetSplits:
    """UCI Bike Sharing hourly 2011 (bundled, ISLP's ``Bikeshare`` without the leaking
    ``casual``/``registered`` columns): regress ``bikers``, 100 equal-width bins."""
    return load_table(os.path.join(DATA_DIR, "bikeshare.csv.gz"), "bikers", name="bikeshare", seed=seed, cap=cap,
                      num_bins=num_bins, categorical=("season", "mnth", "hr", "weekday", "weathersit"),
                      many=many, few=few, label="bikers per hour")
