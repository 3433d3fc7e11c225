"""Model units: the driver standardises the targets for the network, ``(y - shift) / scale``,
and maps the label bins along; every metric goes back to label units."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from ..binning import Bins


def target_standardisation(train_targets: np.ndarray, bins: Bins) -> Tuple[float, float]:
    """``(shift, scale)`` with ``(y - shift) / scale`` about zero-mean, unit-variance.

    The shift is the bin edge nearest the training mean and the scale the power of two
    nearest the standard deviation: then a label on a bin edge (an integer age) stays
    exactly on the mapped edge in floating point, so the method's bins in model units
    agree with the protocol's bins in label units sample for sample."""
    shift = bins.low + bins.width * round((float(train_targets.mean()) - bins.low) / bins.width)
    std = float(train_targets.std())
    scale = 2.0 ** round(math.log2(std)) if std > 0 else 1.0
    return float(shift), float(scale)


def model_units_bins(bins, mean: float, scale: float):
    """The label bins mapped to standardised targets ``(y - mean) / scale``."""
    return Bins((bins.low - mean) / scale, (bins.high - mean) / scale, bins.width / scale)
