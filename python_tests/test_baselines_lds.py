"""LDS weights: the smoothed inverse square-root histogram, computed by hand."""
import math

import pytest
import torch

from irda_ext.baselines.lds import lds_bin_weights, lds_weights
from irda_ext.binning import Bins


def test_weights_on_a_known_histogram():
    counts = [0, 4, 9, 16, 1, 0, 0]
    labels = torch.tensor([b + 0.5 for b, c in enumerate(counts) for _ in range(c)], dtype=torch.float64)
    bins = Bins(0, 7, 1)
    k = [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3]
    root = [math.sqrt(c) for c in counts]
    smoothed = [sum(k[d + 2] * root[b + d] for d in range(-2, 3) if 0 <= b + d < 7) for b in range(7)]
    # hand values of the convolution
    assert smoothed[:5] == pytest.approx([7 / 3, 16 / 3, 22 / 3, 22 / 3, 14 / 3])
    raw = [1 / smoothed[int(y)] for y in labels.tolist()]
    scale = len(raw) / sum(raw)
    w = lds_weights(labels, bins, kernel="triang")
    assert w.dtype == torch.float32 and w.shape == labels.shape
    assert torch.allclose(w.double(), torch.tensor(raw, dtype=torch.float64) * scale, rtol=1e-6)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    # rarer bins get larger weights
    assert w[labels == 4.5][0] > w[labels == 3.5][0]


def test_continuous_targets_and_bin_index_agree():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(200, generator=g) ** 2  # skewed, continuous in [0, 1)
    bins = Bins(0.0, 1.0, 0.1)
    a = lds_weights(y, bins)
    b = lds_weights(y, bin_index=bins.index(y), num_bins=bins.num_bins)
    assert torch.equal(a, b)


def test_inverse_reweight_clips_and_no_smoothing():
    w = lds_bin_weights(torch.tensor([1.0, 2000.0, 50.0]), reweight="inverse", smooth=False)
    assert torch.allclose(w, torch.tensor([1 / 5, 1 / 1000, 1 / 50], dtype=torch.float64))
    w = lds_bin_weights(torch.tensor([4.0, 0.0, 9.0]), smooth=False)
    assert torch.allclose(w, torch.tensor([0.5, 0.0, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize("kwargs, exc", [
    (dict(kernel="box"), ValueError),
    (dict(kernel_size=4), ValueError),
    (dict(sigma=0.0), ValueError),
    (dict(reweight="log"), ValueError),
])
def test_bad_options(kwargs, exc):
    with pytest.raises(exc):
        lds_weights(torch.tensor([0.5, 1.5]), Bins(0, 2, 1), **kwargs)


def test_bad_inputs():
    with pytest.raises(TypeError):
        lds_weights([0.5], Bins(0, 1, 1))
    with pytest.raises(ValueError):
        lds_weights(torch.tensor([0.5]))
    with pytest.raises(TypeError):
        lds_weights(torch.tensor([0.5]), bin_index=torch.tensor([0.0]), num_bins=2)
    with pytest.raises(ValueError):
        lds_weights(torch.tensor([0.5]), bin_index=torch.tensor([3]), num_bins=2)
    with pytest.raises(ValueError):
        lds_bin_weights(torch.tensor([1.0, -1.0]))
