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


def test_nan_targets_are_an_error_even_when_clamped():
    """NaN (a diverged model's predictions) used to become bin -2**63 under clamp=True."""
    bins = Bins(0, 10, 1)
    with pytest.raises(ValueError, match=r"1 NaN target\(s\) \(e.g. nan\)"):
        bins.index(torch.tensor([1.0, float("nan")]), clamp=True)


def test_compiled_code_rejects_what_eager_rejects():
    bins = Bins(0, 30, 1)

    def index(y):
        return bins.index(y) * 2

    compiled = torch.compile(index, fullgraph=True, backend="inductor")
    assert compiled(torch.tensor([3.0, 29.5])).tolist() == [6, 58]
    with pytest.raises(RuntimeError, match=r"Bins.index: target\(s\) outside \[0.0, 30.0\] or NaN"):
        compiled(torch.tensor([3.0, 55.0]))


def test_a_bin_count_that_cannot_fit_is_refused_with_its_memory():
    with pytest.raises(ValueError, match=r"1e\+09 bins; their centres alone would take 7.45 GiB"):
        Bins(0, 1e6, 1e-3)
    assert Bins(0, 1e3, 1e-3).num_bins == 10 ** 6
