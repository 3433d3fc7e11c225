"""Rotated digits: the CPU test bed of the image pipeline.

**Real images, synthetic label.** The images are scikit-learn's bundled 8x8 handwritten
digits (UCI "Optical Recognition of Handwritten Digits", 1,797 images); each is used
``copies`` times, zero-padded to 12x12 and rotated by an angle in ``[0, 90)`` degrees
drawn from a truncated exponential distribution (scale 15 degrees), so small angles are
common and large ones rare, a long tail like the DIR benchmarks'. The target is that
angle; a small CNN regresses it. Bins are one degree wide.

The angles (hence the data set) depend only on ``data_seed``; the training ``seed`` only
changes the balanced validation/test split, as for the tabular data sets.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ...dir_protocol import balanced_split, scaled_shot_thresholds
from .splits import DatasetSplits

MAX_ANGLE = 90.0
ANGLE_SCALE = 15.0
IMAGE_SIZE = 12
NOTE = "real images (scikit-learn digits), synthetic label (rotation angle)"


def long_tailed_angles(n: int, rng: np.random.Generator, scale: float = ANGLE_SCALE,
                       max_angle: float = MAX_ANGLE) -> np.ndarray:
    """``n`` angles from an exponential of ``scale`` truncated to ``[0, max_angle)``
    (inverse-CDF sampling, so no rejection loop)."""
    u = rng.random(n)
    return -scale * np.log1p(-u * (1.0 - np.exp(-max_angle / scale)))


def rotated_digit_images(copies: int = 3, data_seed: int = 0):
    """``(images [N, 1, 12, 12] float32 in [0, 1], angles [N] float64 degrees)``."""
    from scipy.ndimage import rotate
    from sklearn.datasets import load_digits

    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive int, got {copies!r}")
    digits = load_digits().images.astype(np.float64) / 16.0  # [1797, 8, 8]
    rng = np.random.default_rng(data_seed)
    pad = (IMAGE_SIZE - 8) // 2
    base = np.pad(digits, ((0, 0), (pad, pad), (pad, pad)))
    images, angles = [], []
    for _ in range(copies):
        theta = long_tailed_angles(len(base), rng)
        for image, angle in zip(base, theta):
            images.append(rotate(image, angle, reshape=False, order=1, mode="constant", cval=0.0))
        angles.append(theta)
    images = np.clip(np.stack(images), 0.0, 1.0).astype(np.float32)[:, None]
    return images, np.concatenate(angles)


def load_rotated_digits(seed: int = 0, cap: int = 15, copies: int = 3, data_seed: int = 0,
                        many: Optional[int] = None, few: Optional[int] = None) -> DatasetSplits:
    """Rotated digits under the DIR protocol (balanced val/test, one-degree bins)."""
    from ...binning import Bins

    images, angles = rotated_digit_images(copies=copies, data_seed=data_seed)
    bins = Bins(0.0, MAX_ANGLE, 1.0)
    train_index, val_index, test_index = balanced_split(angles, bins, cap=cap, seed=seed)
    if many is None or few is None:
        auto_many, auto_few = scaled_shot_thresholds(angles[train_index], bins)
        many = auto_many if many is None else many
        few = auto_few if few is None else few
    x, y = torch.from_numpy(images), torch.from_numpy(angles.astype(np.float32))
    return DatasetSplits(
        name="rotated-digits", kind="image",
        train=TensorDataset(x[train_index], y[train_index]),
        val=TensorDataset(x[val_index], y[val_index]),
        test=TensorDataset(x[test_index], y[test_index]),
        train_targets=angles[train_index], bins=bins, many=int(many), few=int(few), backbone="small-cnn",
        input_dim=1, label="degrees", note=NOTE, extra={"image_size": IMAGE_SIZE},
    )
