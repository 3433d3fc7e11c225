"""The DIR split: balanced per-bin validation/test sets, seeded, disjoint; bins; shot thresholds."""
import numpy as np
import pytest
import torch

from irda_ext import Bins
from irda_ext.dir_protocol import balanced_holdout, balanced_split, label_bins, scaled_shot_thresholds


def long_tailed_targets(seed=0):
    rng = np.random.default_rng(seed)
    counts = [300, 120, 40, 10, 4, 2, 1]
    return np.concatenate([rng.uniform(b, b + 1, c) for b, c in enumerate(counts)]), counts


def test_balanced_split_takes_min_n_div_3_cap_per_bin_each():
    y, counts = long_tailed_targets()
    bins = Bins(0, 7, 1)
    train, val, test = balanced_split(y, bins, cap=15, seed=3)
    for part, name in ((val, "val"), (test, "test")):
        per_bin = np.bincount(bins.index(torch.tensor(y[part])).numpy(), minlength=7)
        assert per_bin.tolist() == [min(c // 3, 15) for c in counts], name
    assert len(np.intersect1d(train, val)) == 0 and len(np.intersect1d(train, test)) == 0
    assert len(np.intersect1d(val, test)) == 0
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(y)))


def test_balanced_split_is_seeded():
    y, _ = long_tailed_targets()
    bins = Bins(0, 7, 1)
    a = balanced_split(y, bins, cap=15, seed=1)
    b = balanced_split(y, bins, cap=15, seed=1)
    c = balanced_split(y, bins, cap=15, seed=2)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_balanced_holdout_keeps_the_rest():
    y, counts = long_tailed_targets()
    bins = Bins(0, 7, 1)
    kept, held = balanced_holdout(y, bins, cap=15, seed=0)
    assert len(held) == sum(min(c // 3, 15) for c in counts)
    assert len(kept) + len(held) == len(y) and len(np.intersect1d(kept, held)) == 0


def test_label_bins():
    b = label_bins([1, 5, 29], integer_labels=True)
    assert (b.low, b.high, b.num_bins) == (0.5, 29.5, 29)
    assert b.centers[0].item() == pytest.approx(1.0)
    b = label_bins([0.0, 3.0, 10.0], num_bins=100)
    assert b.num_bins == 100 and b.index(torch.tensor([10.0])).item() == 99
    b = label_bins([0.7, 9.95], width=0.1)
    assert b.index(torch.tensor([0.7, 9.95], dtype=torch.float64)).tolist() == [0, b.num_bins - 1]
    with pytest.raises(ValueError, match="exactly one"):
        label_bins([1.0, 2.0])
    with pytest.raises(ValueError, match="not integers"):
        label_bins([1.5], integer_labels=True)


def test_scaled_shot_thresholds():
    bins = Bins(0, 10, 1)
    # 120 per occupied bin is AgeDB-DIR's density: DIR's own thresholds come back
    assert scaled_shot_thresholds(np.repeat(np.arange(10) + 0.5, 120), bins) == (100, 20)
    many, few = scaled_shot_thresholds(np.repeat(np.arange(10) + 0.5, 12), bins)
    assert (many, few) == (10, 2)


def test_cap_must_be_an_int():
    with pytest.raises(ValueError, match="cap"):
        balanced_split([1.0, 2.0, 3.0], Bins(0, 4, 1), cap=-1)


def test_integer_ages_get_bins_centred_on_them():
    from irda_ext.dir_protocol import unit_bins_from_zero

    bins = unit_bins_from_zero([0, 3, 41, 101])
    assert bins.num_bins == 102 and bins.centers[41] == 41.0  # a label equals its bin's centre
    assert bins.index(torch.tensor([0.0, 41.0, 101.0])).tolist() == [0, 41, 101]  # bin b holds age b, as DIR
    fractional = unit_bins_from_zero([0.5, 3.25, 41.7])
    assert (fractional.low, fractional.num_bins, float(fractional.centers[41])) == (0.0, 42, 41.5)
