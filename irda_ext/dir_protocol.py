"""The deep-imbalanced-regression (DIR) evaluation protocol.

Yang et al. ("Delving into Deep Imbalanced Regression", ICML 2021) built AgeDB-DIR and
IMDB-WIKI-DIR by keeping the long-tailed label distribution for training and carving
*balanced* validation and test sets out of it: every label bin contributes the same
number of samples (capped), so that the test error is not dominated by the head. Data
sets that ship without such a split (the tabular ones, rotated digits) get one here:
per bin ``min(n // 3, cap)`` samples go to validation and as many to test, chosen by a
seeded permutation; the rest is the training set.

The shot groups of DIR (many > 100, few < 20 training samples per bin) assume about 120
training samples per bin (AgeDB-DIR: 12.2K images, ~100 one-year bins). Smaller data sets
get the same thresholds scaled by their own mean training count per occupied bin, see
:func:`scaled_shot_thresholds`.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

#: DIR's shot thresholds and the mean training count per bin they were set for.
DIR_MANY, DIR_FEW = 100, 20
DIR_MEAN_BIN_COUNT = 120.0


def unit_bins_from_zero(targets):
    """One bin per label unit from 0 up to the largest target (ages in years, as DIR's
    AgeDB-DIR and IMDB-WIKI-DIR bins, where bin ``b`` holds age ``b``).

    Integer labels get bins centred on the integers, ``[b - 1/2, b + 1/2)`` (SPEC 1), so a
    label equals its bin's centre: with ``[b, b + 1)`` every centre sat half a year above
    every label and moved the optimum of the bin-based losses (IRDA, Meta-IRDA, ISDA-R,
    RISDA-R, BNI) by 0.1 to 0.36 bins. Fractional labels keep ``[b, b + 1)``."""
    from .binning import Bins

    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if y.size == 0 or not np.isfinite(y).all() or (y < 0).any():
        raise ValueError("unit_bins_from_zero: targets must be non-empty, finite and non-negative")
    top = float(np.floor(y.max()))
    if np.array_equal(y, np.round(y)):
        return Bins(-0.5, top + 0.5, 1.0)
    return Bins(0.0, top + 1.0, 1.0)


def label_bins(targets, width: float = None, num_bins: int = None, integer_labels: bool = False):
    """The :class:`irda_ext.Bins` covering all ``targets``.

    ``integer_labels``: bins of one unit centred on the integers (abalone rings, ages).
    Otherwise bins of ``width`` starting at the smallest target, or ``num_bins``
    equal-width bins spanning ``[min, max]`` (exactly one of the two)."""
    from .binning import Bins

    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("label_bins: no targets given")
    if not np.isfinite(y).all():
        raise ValueError("label_bins: targets contain NaN or infinite values")
    low, high = float(y.min()), float(y.max())
    if integer_labels:
        if not np.allclose(y, np.round(y)):
            raise ValueError("label_bins: integer_labels=True but some targets are not integers")
        return Bins(low - 0.5, high + 0.5, 1.0)
    if (width is None) == (num_bins is None):
        raise ValueError(f"label_bins: give exactly one of width and num_bins, got width={width}, num_bins={num_bins}")
    if width is not None:
        if not width > 0:
            raise ValueError(f"label_bins: width must be positive, got {width}")
        # bins aligned on multiples of the width, the largest target strictly inside
        # (min: k * width can round to just above the smallest target, 7 * 0.1 > 0.7)
        start = min(math.floor(low / width + 1e-9) * width, low)
        count = int(math.floor((high - start) / width + 1e-9)) + 1
        return Bins(start, start + count * width, width)
    if not (isinstance(num_bins, int) and num_bins >= 1):
        raise ValueError(f"label_bins: num_bins must be a positive int, got {num_bins!r}")
    if high == low:
        high = low + 1.0
    return Bins(low, high, (high - low) / num_bins)


def _per_bin_draw(targets, bins, cap: int, parts: int, seed: int):
    """Per occupied bin, a seeded permutation of its members cut into ``parts`` blocks of
    ``min(n // 3, cap)`` followed by the remainder."""
    if not (isinstance(cap, int) and cap >= 0) or isinstance(cap, bool):
        raise ValueError(f"cap must be a non-negative int, got {cap!r}")
    y = torch.as_tensor(np.asarray(targets, dtype=np.float64).reshape(-1))
    index = bins.index(y).numpy()
    rng = np.random.default_rng(seed)
    blocks = [[] for _ in range(parts + 1)]
    for b in np.unique(index):
        members = np.flatnonzero(index == b)
        members = members[rng.permutation(members.size)]
        k = min(members.size // 3, cap)
        for p in range(parts):
            blocks[p].append(members[p * k:(p + 1) * k])
        blocks[parts].append(members[parts * k:])
    return [np.sort(np.concatenate(block)) if block else np.zeros(0, dtype=np.int64) for block in blocks]


def balanced_split(targets, bins, cap: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(train, val, test)``: per bin ``min(n // 3, cap)`` samples to validation
    and as many to test, the rest to training; each sorted ascending.

    Bins with fewer than 3 samples stay entirely in training (a held-out sample would
    leave the rarest labels with nothing to learn from)."""
    val, test, train = _per_bin_draw(targets, bins, cap, 2, seed)
    return train, val, test


def balanced_holdout(targets, bins, cap: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)`` with ``min(n // 3, cap)`` per bin held out: carves a
    balanced validation set out of a training split that came without one (TUAB)."""
    held_out, kept = _per_bin_draw(targets, bins, cap, 1, seed)
    return kept, held_out


def scaled_shot_thresholds(train_targets, bins) -> Tuple[int, int]:
    """``(many, few)``: DIR's 100 / 20 scaled by this training set's mean count per
    occupied bin over AgeDB-DIR's ~120, rounded, with ``few >= 2`` and ``many > few``."""
    counts = bins.counts(torch.as_tensor(np.asarray(train_targets, dtype=np.float64)), clamp=True)
    occupied = counts[counts > 0]
    if occupied.numel() == 0:
        raise ValueError("scaled_shot_thresholds: no training targets")
    scale = float(occupied.double().mean()) / DIR_MEAN_BIN_COUNT
    few = max(2, int(round(DIR_FEW * scale)))
    many = max(few + 1, int(round(DIR_MANY * scale)))
    return many, few
