"""shot_metrics, delta1 and per_bin_mae against hand-computed values (SPEC 8)."""
import math

import numpy as np
import pytest
import torch

from irda_ext import Bins
from irda_ext.metrics import delta1, error_summary, per_bin_mae, shot_groups, shot_metrics


def test_error_summary_by_hand():
    m = error_summary([1.0, 2.0, 4.0], [2.0, 2.0, 1.0])  # errors 1, 0, 3
    assert m["mae"] == pytest.approx(4 / 3)
    assert m["mse"] == pytest.approx(10 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(10 / 3))
    # the zero error is floored at 1e-12 before the logarithm
    assert m["gm"] == pytest.approx((1.0 * 1e-12 * 3.0) ** (1 / 3))
    assert m["count"] == 3


def test_shot_groups_follow_training_counts_of_the_sample_bin():
    bins = Bins(0, 4, 1)
    # training counts per bin: 150 (many), 50 (medium), 5 (few), 0 (few)
    train = np.concatenate([np.full(150, 0.5), np.full(50, 1.5), np.full(5, 2.5)])
    target = torch.tensor([0.2, 0.7, 1.1, 2.9, 3.5])
    pred = target + torch.tensor([1.0, -1.0, 2.0, 4.0, -8.0])
    m = shot_metrics(pred, target, train, bins, many=100, few=20)
    assert (m["many"]["count"], m["medium"]["count"], m["few"]["count"], m["all"]["count"]) == (2, 1, 2, 5)
    assert m["many"]["mae"] == pytest.approx(1.0)
    assert m["medium"]["mae"] == pytest.approx(2.0)
    assert m["few"]["mae"] == pytest.approx(6.0)
    assert m["few"]["mse"] == pytest.approx((16 + 64) / 2)
    assert m["all"]["mae"] == pytest.approx(16 / 5)
    assert m["few"]["gm"] == pytest.approx(math.sqrt(32))


def test_thresholds_are_strict_as_in_dir():
    bins = Bins(0, 3, 1)
    train = np.concatenate([np.full(100, 0.5), np.full(20, 1.5), np.full(19, 2.5)])
    masks = shot_groups(torch.tensor([0.5, 1.5, 2.5]), train, bins, many=100, few=20)
    # exactly 100 is medium, exactly 20 is medium, 19 is few
    assert masks["many"].tolist() == [False, False, False]
    assert masks["medium"].tolist() == [True, True, False]
    assert masks["few"].tolist() == [False, False, True]


def test_empty_group_gives_none_and_zero_count():
    m = shot_metrics([1.0], [0.5], [0.5] * 200, Bins(0, 2, 1))
    assert m["few"] == {"mae": None, "mse": None, "rmse": None, "gm": None, "count": 0}


def test_delta1_by_hand():
    pred = torch.tensor([1.0, 1.3, 2.0, 0.0])
    gt = torch.tensor([1.1, 1.0, 1.0, 1.0])  # ratios 1.1, 1.3, 2.0, inf
    assert delta1(pred, gt) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="positive"):
        delta1(pred, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    m = shot_metrics(pred, gt, [1.05] * 5, Bins(0, 3, 0.1), many=3, few=1, with_delta1=True)
    assert m["all"]["delta1"] == pytest.approx(0.25)


def test_per_bin_mae_nan_for_empty_bins():
    out = per_bin_mae([1.0, 3.0, 2.0], [0.5, 0.5, 2.5], Bins(0, 4, 1))
    assert out[0].item() == pytest.approx(1.5)
    assert out[2].item() == pytest.approx(0.5)
    assert math.isnan(out[1].item()) and math.isnan(out[3].item())


def test_bad_input_is_named():
    bins = Bins(0, 2, 1)
    with pytest.raises(ValueError, match="same number"):
        shot_metrics([1.0, 2.0], [1.0], [1.0], bins)
    with pytest.raises(TypeError, match="pred"):
        shot_metrics("abc", [1.0], [1.0], bins)
    with pytest.raises(ValueError, match="few <= many"):
        shot_metrics([1.0], [1.0], [1.0], bins, many=5, few=10)
