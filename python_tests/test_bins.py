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


def _index_by_tensor_ops(bins, y):
    """The tensor-op version of Bins.index (what CUDA tensors and compiled code run)."""
    idx = torch.floor((y.to(torch.float64) - bins.low) / bins.width)
    return idx.clamp_(0, bins.num_bins - 1).to(torch.int64)


@pytest.mark.parametrize("low,high,width", [(0, 10, 1), (0, 1, 0.1), (-3.7, 12.2, 0.3), (0, 120, 1), (0, 5, 0.01)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.int16, torch.uint8])
def test_the_host_kernel_gives_the_tensor_ops_bins(low, high, width, dtype):
    """On the CPU Bins.index runs one C++ pass (csrc/cpu/bin_index.cpp): the same bins, to the bit, as
    the tensor ops, for random targets, every edge and its float neighbours, in every accepted dtype."""
    bins = Bins(low, high, width)
    g = torch.Generator().manual_seed(0)
    edges = bins.edges()
    y = torch.cat([torch.rand(997, generator=g, dtype=torch.float64) * (high - low) + low, edges,
                   torch.nextafter(edges, edges - 1), torch.nextafter(edges, edges + 1),
                   torch.tensor([low, high], dtype=torch.float64)]).clamp(low, high)
    y = y.to(dtype) if dtype.is_floating_point else y.round().clamp(max(low, 0), high).to(dtype)
    y = y[(y.to(torch.float64) >= low) & (y.to(torch.float64) <= high)]
    wide = torch.cat([y.to(torch.float64), torch.tensor([low - 5.0, high + 5.0, float("inf"), -float("inf")])])
    for targets, clamp in ((y, False), (wide, True)):
        want = _index_by_tensor_ops(bins, targets)
        # the kernel itself (Bins.index falls back to the tensor ops when it reports a bad target)
        index, bad = torch.ops.irda_ext.bin_index(targets, bins.low, bins.high, bins.width, bins.num_bins, clamp)
        assert int(bad) == 0 and index.dtype == torch.int64 and torch.equal(index, want)
        assert torch.equal(bins.index(targets, clamp=clamp), want)


def test_the_host_kernel_keeps_shapes_and_layouts():
    bins = Bins(0, 10, 1)
    y = torch.rand(6, 4, dtype=torch.float64) * 10
    assert torch.equal(bins.index(y), _index_by_tensor_ops(bins, y))  # [n, 1]-style targets keep their shape
    assert torch.equal(bins.index(y.t()), _index_by_tensor_ops(bins, y.t()))  # not contiguous
    assert bins.index(torch.tensor(3.5)).shape == () and int(bins.index(torch.tensor(3.5))) == 3
    assert bins.index(torch.empty(0)).shape == (0,)
    assert bins.index([1.5, 2.5]).tolist() == [1, 2]


def test_the_host_kernel_names_the_bad_target_as_before():
    """A bad target found by the C++ pass is named by the tensor ops: the same messages."""
    bins = Bins(0, 10, 1)
    with pytest.raises(ValueError, match=r"Bins.index: 2 target\(s\) outside \[0.0, 10.0\] or NaN \(e.g. -0.5\); "
                                         r"pass clamp=True"):
        bins.index(torch.tensor([-0.5, 3.0, 11.0]))
    with pytest.raises(ValueError, match=r"1 NaN target\(s\) \(e.g. nan\) \(the predictions of a diverged model\?\)"):
        bins.index(torch.tensor([1.0, float("nan"), 50.0]), clamp=True)
    with pytest.raises(TypeError, match="targets must be a real tensor"):
        bins.index(torch.tensor([True, False]))
    index, bad = torch.ops.irda_ext.bin_index(torch.tensor([-0.5, 3.0, 11.0, float("nan")]), 0.0, 10.0, 1.0, 10, False)
    assert int(bad) == 3 and index[1] == 3  # the kernel counts what the message names
    _, bad = torch.ops.irda_ext.bin_index(torch.tensor([-0.5, 3.0, 11.0, float("nan")]), 0.0, 10.0, 1.0, 10, True)
    assert int(bad) == 1


def test_bin_index_op():
    y = torch.tensor([0.5, 3.2, 9.99, 12.0])
    torch.library.opcheck(torch.ops.irda_ext.bin_index.default, (y, 0.0, 10.0, 1.0, 10, True))
    index, bad = torch.ops.irda_ext.bin_index(y, 0.0, 10.0, 1.0, 10, False)
    assert index[:3].tolist() == [0, 3, 9] and int(bad) == 1
    with pytest.raises(ValueError, match="num_bins must be at least 1"):
        torch.ops.irda_ext.bin_index(y, 0.0, 10.0, 1.0, 0, False)
    with pytest.raises(ValueError, match="width must be positive"):
        torch.ops.irda_ext.bin_index(y, 0.0, 10.0, 0.0, 10, False)
