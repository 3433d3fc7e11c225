"""FDS: running statistics, kernel smoothing and the calibration formula, by hand."""
import math

import pytest
import torch

from irda_ext.baselines.fds import FDS
from irda_ext.wfds import kernel_window
from irda_ext.binning import Bins


def test_running_statistics_and_momentum():
    f = FDS(3, 2, momentum=0.9)
    z0 = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 0.0]])
    b0 = torch.tensor([0, 0, 2])
    f(z0, b0, epoch=0)
    f.end_epoch(0)
    assert f.running_mean[0].tolist() == pytest.approx([2.0, 4.0])
    assert f.running_var[0].tolist() == pytest.approx([2.0, 8.0])  # unbiased over 2 samples
    assert f.running_mean[2].tolist() == pytest.approx([5.0, 0.0])
    assert f.running_var[2].tolist() == pytest.approx([0.0, 0.0])  # one sample
    assert f.seen.tolist() == [True, False, True]
    z1 = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    f.train()
    f.update(z1, torch.tensor([0, 0]))
    f.end_epoch(1)
    assert f.running_mean[0].tolist() == pytest.approx([0.9 * 2 + 0.1 * 2, 0.9 * 4 + 0.1 * 0])
    assert f.running_var[0].tolist() == pytest.approx([0.9 * 2 + 0.1 * 8, 0.9 * 8 + 0.1 * 0])
    assert f.running_mean[2].tolist() == pytest.approx([5.0, 0.0])  # untouched


def test_smoothing_ignores_unseen_bins_and_calibration_formula():
    f = FDS(3, 1, clip_min=0.1, clip_max=10.0)
    f.update(torch.tensor([[1.0], [3.0], [10.0], [14.0]]), torch.tensor([0, 0, 2, 2]))
    f.end_epoch(0)
    # bin 1 unseen; bins 0 and 2 are 2 apart, inside the kernel of size 5
    k = kernel_window("gaussian", 5, 2.0).numpy()  # offsets -2..2
    w_self, w_2 = k[2], k[4]
    mean0 = (w_self * 2.0 + w_2 * 12.0) / (w_self + w_2)
    var0 = (w_self * 2.0 + w_2 * 8.0) / (w_self + w_2)
    assert f.smoothed_mean[0].item() == pytest.approx(mean0, rel=1e-6)
    assert f.smoothed_var[0].item() == pytest.approx(var0, rel=1e-6)
    z = torch.tensor([[0.0], [7.0]], requires_grad=True)
    out = f(z, torch.tensor([0, 1]), epoch=1)
    scale = math.sqrt(min(max(var0 / 2.0, 0.1), 10.0))
    assert out[0].item() == pytest.approx((0.0 - 2.0) * scale + mean0, rel=1e-6)
    assert out[1].item() == pytest.approx(7.0)  # unseen bin: unchanged
    # statistics of this epoch are accumulated, not yet merged
    assert f._count[0].item() == 1 and f.running_mean[0].item() == pytest.approx(2.0)


def test_calibration_is_out_of_place_and_differentiable():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    f = FDS(5, 3)
    x = torch.randn(16, 4)
    b = torch.randint(0, 5, (16,))
    f(layer(x).detach(), b, epoch=0)
    f.end_epoch(0)
    z = layer(x)  # non-leaf, requires grad
    z_leaf = z.detach().clone().requires_grad_()
    out = f(z_leaf, b, epoch=1)
    out.sum().backward()
    var = f.running_var[b]
    valid = (var != 0) & (f.running_var.sum(1) >= 1e-10)[b, None]
    ratio = torch.where(valid, (f.smoothed_var[b] / var).clamp(0.1, 10).sqrt(), torch.ones_like(var))
    assert torch.allclose(z_leaf.grad, ratio)  # d z~/d z = calibration scale (1 where left unchanged)
    assert torch.equal(z_leaf.detach(), z.detach())  # input untouched
    f(z, b, epoch=1).pow(2).sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_continuous_labels_eval_identity_and_singleton_bins():
    bins = Bins(0.0, 1.0, 0.1)
    y = torch.tensor([0.05, 0.31, 0.33, 0.97])
    f = FDS(bins.num_bins, 2)
    z = torch.randn(4, 2)
    f(z, bins.index(y), 0)
    f.end_epoch(0)
    out = f(z, bins.index(y), 1)
    assert torch.isfinite(out).all()  # bins of one sample have variance 0: no NaN
    f.eval()
    assert torch.equal(f(z, bins.index(y), 5), z)


def test_no_calibration_before_start_smooth():
    f = FDS(2, 2, start_smooth=2)
    z = torch.randn(4, 2)
    b = torch.tensor([0, 0, 1, 1])
    f(z, b, 0)
    f.end_epoch(0)
    assert torch.equal(f(z, b, 1), z)
    assert not torch.equal(f(z, b, 2), z)


@pytest.mark.parametrize("z, b, exc", [
    (torch.randn(3, 2), torch.tensor([0.0, 1.0, 1.0]), TypeError),   # float labels are not bins
    (torch.randn(3, 2), torch.tensor([0, 1]), ValueError),
    (torch.randn(3, 5), torch.tensor([0, 1, 1]), ValueError),
    (torch.randn(3, 2), torch.tensor([0, 1, 7]), ValueError),
    (torch.randn(3), torch.tensor([0, 1, 1]), ValueError),
])
def test_bad_inputs(z, b, exc):
    with pytest.raises(exc):
        FDS(3, 2)(z, b, 0)


def test_bad_options():
    with pytest.raises(ValueError):
        FDS(3, 2, momentum=1.0)
    with pytest.raises(ValueError):
        FDS(3, 2, start_update=1, start_smooth=1)
    with pytest.raises(ValueError):
        FDS(3, 2, clip_min=2.0, clip_max=1.0)


def calibrate_mean_var(matrix, m1, v1, m2, v2, clip_min=0.1, clip_max=10.0):
    """DIR's ``agedb-dir/utils.py::calibrate_mean_var``, restated from its definition for one
    bin: nothing changes when the variances sum below 1e-10; else only the dimensions with
    ``v1 != 0`` become ``(x - m1) sqrt(clamp(v2 / v1, 0.1, 10)) + m2``."""
    out = list(matrix)
    if sum(v1) < 1e-10:
        return out
    return [(x - a) * math.sqrt(min(max(d / v, clip_min), clip_max)) + c if v != 0 else x
            for x, a, v, c, d in zip(matrix, m1, v1, m2, v2)]


def test_singleton_bins_and_zero_variance_as_calibrate_mean_var():
    """A worked example: bin 0 with two samples, one dimension constant (variance 0); bin 1
    with one sample (all variances 0); bin 2 with two samples. DIR's calibrate_mean_var
    leaves the constant dimension and the whole singleton bin unchanged (this class used to
    scale them by sqrt(10) around the smoothed mean)."""
    f = FDS(3, 2)
    f.update(torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 7.0], [0.0, 1.0], [2.0, 5.0]]),
             torch.tensor([0, 0, 1, 2, 2]))
    f.end_epoch(0)
    mean = [[2.0, 2.0], [5.0, 7.0], [1.0, 3.0]]
    var = [[2.0, 0.0], [0.0, 0.0], [2.0, 8.0]]  # unbiased; one sample: 0
    assert f.running_mean.tolist() == mean and f.running_var.tolist() == var
    k = kernel_window("gaussian", 5, 2.0).tolist()  # offsets -2..2: k[2] the centre
    rows = [[k[2], k[3], k[4]], [k[1], k[2], k[3]], [k[0], k[1], k[2]]]  # S rows before normalising
    smooth_mean = [[sum(w * m[d] for w, m in zip(r, mean)) / sum(r) for d in range(2)] for r in rows]
    smooth_var = [[sum(w * v[d] for w, v in zip(r, var)) / sum(r) for d in range(2)] for r in rows]
    z = torch.tensor([[0.5, 3.0], [6.0, 4.0], [4.0, -1.0]])
    b = torch.tensor([0, 1, 2])
    out = f(z, b, epoch=1)
    for i, bin_ in enumerate(b.tolist()):
        want = calibrate_mean_var(z[i].tolist(), mean[bin_], var[bin_], smooth_mean[bin_], smooth_var[bin_])
        assert out[i].tolist() == pytest.approx(want, rel=1e-6), bin_
    assert out[0, 1].item() == 3.0 and out[1].tolist() == [6.0, 4.0]  # left as they are
    assert out[0, 0].item() != 0.5 and out[2].tolist() != [4.0, -1.0]


def test_variances_summing_below_1e10_leave_the_bin_unchanged():
    f = FDS(2, 2)
    tiny = 1.0 + 2.0 ** -20  # variance 2^-41 in dimension 0, 0 in dimension 1: sum < 1e-10
    f.update(torch.tensor([[1.0, 0.0], [tiny, 0.0], [0.0, 0.0], [4.0, 2.0]]), torch.tensor([0, 0, 1, 1]))
    f.end_epoch(0)
    assert 0 < f.running_var[0, 0].item() < 1e-10
    z = torch.tensor([[3.0, 1.0]])
    assert f(z, torch.tensor([0]), epoch=1).tolist() == [[3.0, 1.0]]


def test_running_statistics_per_epoch_as_update_running_stats():
    """DIR's update_running_stats over three epochs: momentum 0.9 per epoch, the first
    update takes the epoch's statistics, a single sample's variance is 0 (so a bin that
    only ever has one sample keeps variance 0 and is never calibrated)."""
    f = FDS(2, 1, momentum=0.9)
    epochs = [([1.0, 3.0], [4.0]), ([2.0, 6.0, 10.0], [8.0]), ([0.0, 2.0], [2.0])]
    mean, var = [None, None], [None, None]
    for e, (a, single) in enumerate(epochs):
        f.update(torch.tensor(a + single)[:, None], torch.tensor([0] * len(a) + [1]))
        f.end_epoch(e)
        m0 = sum(a) / len(a)
        v0 = sum((x - m0) ** 2 for x in a) / (len(a) - 1)
        factor = 0.0 if e == 0 else 0.9
        mean[0] = m0 if e == 0 else factor * mean[0] + (1 - factor) * m0
        var[0] = v0 if e == 0 else factor * var[0] + (1 - factor) * v0
        mean[1] = single[0] if e == 0 else factor * mean[1] + (1 - factor) * single[0]
        var[1] = 0.0
        assert f.running_mean[:, 0].tolist() == pytest.approx(mean, rel=1e-6)
        assert f.running_var[:, 0].tolist() == pytest.approx(var, rel=1e-6, abs=0)
    assert f(torch.tensor([[9.0]]), torch.tensor([1]), epoch=3).item() == 9.0
