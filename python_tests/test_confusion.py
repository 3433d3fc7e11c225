"""``ConfusionCounter`` (paper eq. 6) and its host op ``confusion_add_`` (csrc/cpu/bin_index.cpp): a
step's predictions binned as ``Bins.index(pred, clamp=True)`` and counted against the true bins."""
import math

import pytest
import torch

from irda_ext import Bins
from irda_ext.confusion import ConfusionCounter

OPS = torch.ops.irda_ext


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("low,high,width", [(0.0, 10.0, 1.0), (-4.5, 10.0, 0.5), (0.1, 0.7, 0.1)])
def test_host_op_counts_what_the_tensor_ops_count(dtype, low, high, width):
    bins = Bins(low, high, width)
    g = torch.Generator().manual_seed(0)
    true_bin = torch.randint(0, bins.num_bins, (500,), generator=g)
    span = high - low
    pred = (torch.rand(500, generator=g, dtype=torch.float64) * 1.4 - 0.2) * span + low
    edges = torch.tensor([low + k * width for k in range(bins.num_bins + 1)], dtype=torch.float64)
    neighbours = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1),
                            torch.tensor([math.inf, -math.inf])])
    pred = torch.cat([pred, neighbours]).to(dtype)
    true_bin = torch.cat([true_bin, torch.randint(0, bins.num_bins, (len(neighbours),), generator=g)])
    fused, plain = ConfusionCounter(bins.num_bins), ConfusionCounter(bins.num_bins)
    for _ in range(2):
        # the op itself (add_predictions would fall back to the tensor ops on a bad count)
        bad = OPS.confusion_add_(fused.counts, true_bin, pred, bins.low, bins.high, bins.width, bins.num_bins)
        assert int(bad) == 0
        plain.add(true_bin, bins.index(pred, clamp=True))
    assert torch.equal(fused.counts, plain.counts)
    assert fused.counts.sum() == 2 * len(pred)
    fused.add_predictions(true_bin, pred, bins)
    plain.add(true_bin, bins.index(pred, clamp=True))
    assert torch.equal(fused.counts, plain.counts)


def test_a_nan_prediction_raises_and_counts_nothing():
    bins = Bins(0, 10, 1)
    counter = ConfusionCounter(bins.num_bins)
    counter.add_predictions(torch.tensor([1, 2]), torch.tensor([1.5, 2.5]), bins)
    before = counter.counts.clone()
    with pytest.raises(ValueError, match="NaN target"):
        counter.add_predictions(torch.tensor([1, 2, 3]), torch.tensor([1.5, float("nan"), 3.5]), bins)
    assert torch.equal(counter.counts, before)
    bad = OPS.confusion_add_(counter.counts, torch.tensor([1, 2]), torch.tensor([float("nan")] * 2), 0.0, 10.0,
                             1.0, 10)
    assert int(bad) == 2 and torch.equal(counter.counts, before)


def test_other_dtypes_take_the_tensor_ops():
    bins = Bins(0, 10, 1)
    fused, plain = ConfusionCounter(10), ConfusionCounter(10)
    pred = torch.tensor([0.5, 3.2, 9.9], dtype=torch.bfloat16)
    fused.add_predictions(torch.tensor([0, 3, 9]), pred, bins)
    plain.add(torch.tensor([0, 3, 9]), bins.index(pred, clamp=True))
    assert torch.equal(fused.counts, plain.counts)


def test_opcheck_and_bad_input():
    counts = torch.zeros(16, dtype=torch.float64)
    true_bin, pred = torch.tensor([0, 3, 1]), torch.tensor([0.2, 3.9, -7.0])
    torch.library.opcheck(OPS.confusion_add_.default, (counts, true_bin, pred, 0.0, 4.0, 1.0, 4))
    with pytest.raises(ValueError, match=r"true_bin must lie in \[0, 4\), got 4 at sample 1"):
        OPS.confusion_add_(counts, torch.tensor([0, 4, 1]), pred, 0.0, 4.0, 1.0, 4)
    with pytest.raises(ValueError, match=r"counts must be contiguous of shape \[16\]"):
        OPS.confusion_add_(torch.zeros(15, dtype=torch.float64), true_bin, pred, 0.0, 4.0, 1.0, 4)
    with pytest.raises(TypeError, match="counts must be float64"):
        OPS.confusion_add_(torch.zeros(16), true_bin, pred, 0.0, 4.0, 1.0, 4)
    with pytest.raises(ValueError, match="one bin per prediction"):
        OPS.confusion_add_(counts, true_bin[:2], pred, 0.0, 4.0, 1.0, 4)
    with pytest.raises(ValueError, match="width must be positive and finite"):
        OPS.confusion_add_(counts, true_bin, pred, 0.0, 4.0, 0.0, 4)
    with pytest.raises(TypeError, match="pred must be float32 or float64"):
        OPS.confusion_add_(counts, true_bin, pred.half(), 0.0, 4.0, 1.0, 4)
