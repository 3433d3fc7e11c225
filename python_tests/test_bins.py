import pytest
import torch

from irda_ext import Bins


def test_index_and_centers():
    bins = Bins(0, 10, 1)
    assert bins.num_bins == 10
    torch.testing.assert_close(bins.centers, torch.arange(10, dtype=torch.float64) + 0.5)
    assert bins.index(torch.tensor([0.0, 0.99, 1.0, 9.5, 10.0])).tolist() == [0, 0, 1, 9, 9]
    assert Bins(0, 1, 0.1).num_bins == 10
    assert Bins(0, 1, 0.3).num_bins == 4  # the last bin is partly outside


def test_out_of_range_raises_unless_clamped():
    bins = Bins(0, 10, 1)
    with pytest.raises(ValueError, match=r"outside \[0.0, 10.0\]"):
        bins.index(torch.tensor([-0.5, 3.0]))
    with pytest.raises(ValueError, match="outside"):
        bins.index(torch.tensor([float("nan")]))
    assert bins.index(torch.tensor([-0.5, 12.0]), clamp=True).tolist() == [0, 9]


def test_bad_construction():
    with pytest.raises(ValueError, match="width"):
        Bins(0, 1, 0)
    with pytest.raises(ValueError, match="high must exceed low"):
        Bins(1, 1, 0.1)
    with pytest.raises(TypeError, match="finite number"):
        Bins(0, float("inf"), 1)
