"""TUAB (Temple University Hospital Abnormal EEG corpus) brain-age estimation.

On-disk format of the preprocessed data: ``<data-dir>/tuab.csv`` with the columns
``recording,age,split`` (``split``: ``train`` and ``test``, optionally ``val``) and, per
recording, ``<data-dir>/<recording>.npy``: a float array ``[windows, channels, time]`` of
preprocessed EEG windows (a 2-D ``[channels, time]`` array is one window). Every window
is a sample carrying its recording's age; every recording must have the same channels
and window length.

The paper follows [42]'s 1,246 / 139 subject split, which has no validation set: when the
CSV has no ``val`` rows, a balanced validation set of *recordings* (per one-year bin
``min(n // 3, cap)``, seeded) is held out of training, whole recordings so that no subject
is in both. Shot groups count training windows per bin, with DIR's thresholds scaled to
the window density (:func:`irda_ext.dir_protocol.scaled_shot_thresholds`).
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ...dir_protocol import balanced_holdout, scaled_shot_thresholds, unit_bins_from_zero
from .splits import DatasetSplits, parse_float, read_csv_rows, require_file, split_indices

LAYOUT = ("tuab.csv in --data-dir with the header 'recording,age,split' (split: train, test, optionally val) and "
          "one <data-dir>/<recording>.npy per recording holding float windows [windows, channels, time]")


class EEGWindows(Dataset):
    """``(window tensor [channels, time] float32, age float32)`` over the windows of a set of
    recordings; arrays are memory-mapped, so the corpus need not fit in memory."""

    def __init__(self, files: List[str], ages: np.ndarray, windows: List[int]):
        self.files, self.ages = files, np.asarray(ages, dtype=np.float32)
        self.index: List[Tuple[int, int]] = [(r, w) for r, n in enumerate(windows) for w in range(n)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int):
        recording, window = self.index[item]
        data = np.load(self.files[recording], mmap_mode="r")
        window_data = data[window] if data.ndim == 3 else data
        return torch.from_numpy(np.array(window_data, dtype=np.float32)), torch.tensor(self.ages[recording])

    def targets(self) -> np.ndarray:
        return np.array([self.ages[r] for r, _ in self.index], dtype=np.float64)


def _recording_shape(path: str) -> Tuple[int, Tuple[int, int]]:
    require_file(path, "TUAB recording", LAYOUT)
    data = np.load(path, mmap_mode="r")
    if data.ndim == 2:
        return 1, tuple(data.shape)
    if data.ndim == 3 and data.shape[0] > 0:
        return data.shape[0], tuple(data.shape[1:])
    raise ValueError(f"{path}: expected a float array [windows, channels, time] or [channels, time], "
                     f"got shape {tuple(data.shape)}. Expected layout: {LAYOUT}")


def load_tuab(data_dir: str, seed: int = 0, cap: int = 15, many: Optional[int] = None,
              few: Optional[int] = None) -> DatasetSplits:
    path = os.path.join(data_dir, "tuab.csv")
    rows = read_csv_rows(path, ("recording", "age", "split"), LAYOUT)
    ages = np.array([parse_float(r["age"], path, "age", i) for i, r in enumerate(rows)])
    if (ages < 0).any():
        raise ValueError(f"{path}: ages must be non-negative, got {ages.min()}")
    files = [os.path.join(data_dir, r["recording"] + ".npy") for r in rows]
    counts, shape = [], None
    for file in files:
        n, window_shape = _recording_shape(file)
        if shape is not None and window_shape != shape:
            raise ValueError(f"{file}: windows of shape {window_shape}, but earlier recordings have {shape}; "
                             f"all recordings need the same channels and window length")
        shape = window_shape
        counts.append(n)
    splits = split_indices(rows, path)
    for needed in ("train", "test"):
        if needed not in splits:
            raise ValueError(f"{path}: no rows with split {needed!r}. Expected layout: {LAYOUT}")
    bins = unit_bins_from_zero(ages)
    train_rec = splits["train"]
    if "val" in splits:
        val_rec = splits["val"]
    else:
        kept, held = balanced_holdout(ages[train_rec], bins, cap=cap, seed=seed)
        if held.size == 0:
            raise ValueError(f"{path}: too few training recordings per age to hold out a validation set "
                             f"(a one-year bin needs 3 recordings to give one); add 'val' rows")
        train_rec, val_rec = train_rec[kept], train_rec[held]

    def subset(records):
        return EEGWindows([files[i] for i in records], ages[records], [counts[i] for i in records])

    train, val, test = subset(train_rec), subset(val_rec), subset(splits["test"])
    train_targets = train.targets()
    if many is None or few is None:
        auto_many, auto_few = scaled_shot_thresholds(train_targets, bins)
        many = auto_many if many is None else many
        few = auto_few if few is None else few
    return DatasetSplits(
        name="tuab", kind="eeg", train=train, val=val, test=test, train_targets=train_targets, bins=bins,
        many=int(many), few=int(few), backbone="resnet1d", input_dim=int(shape[0]), label="age (years)",
        extra={"recordings": {"train": len(train_rec), "val": len(val_rec), "test": len(splits["test"])}},
    )
