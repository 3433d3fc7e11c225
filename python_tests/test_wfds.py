"""W-FDS weights and the banded smoothing kernel (SPEC 3)."""
import math

import numpy as np
import pytest
import torch
from testing import devices

import irda_ext
from irda_ext import reference as ref
from irda_ext.wfds import KERNELS, kernel_smoothing_matrix, kernel_window, restrict_to_bins


def _dir_lds_kernel_window(kernel, ks, sigma):
    """DIR's ``get_lds_kernel_window`` (Yang et al. 2021, reference code), as written there."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal.windows import triang

    half_ks = (ks - 1) // 2
    if kernel == "gaussian":
        base_kernel = [0.0] * half_ks + [1.0] + [0.0] * half_ks
        return gaussian_filter1d(base_kernel, sigma=sigma) / max(gaussian_filter1d(base_kernel, sigma=sigma))
    if kernel == "triang":
        return triang(ks)
    laplace = lambda x: np.exp(-abs(x) / sigma) / (2.0 * sigma)  # noqa: E731
    return np.array(list(map(laplace, np.arange(-half_ks, half_ks + 1)))) / max(
        map(laplace, np.arange(-half_ks, half_ks + 1)))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ks,sigma", [(1, 1.0), (3, 0.5), (5, 2.0), (7, 1.0), (9, 3.0), (5, 0.2), (11, 1.5)])
def test_kernel_window_is_dirs(kernel, ks, sigma):
    want = torch.as_tensor(np.asarray(_dir_lds_kernel_window(kernel, ks, sigma), dtype=np.float64))
    torch.testing.assert_close(kernel_window(kernel, ks, sigma), want, rtol=1e-13, atol=1e-15)


def _reflect(i, n):
    i = i % (2 * n)
    return i if i < n else 2 * n - 1 - i


def test_gaussian_window_is_the_gaussian_filter_of_a_delta_by_hand():
    # scipy.ndimage.gaussian_filter1d(delta, sigma=2): sampled Gaussian of radius
    # int(4*sigma + 0.5) = 8, normalised, with 'reflect' boundary; written out by hand.
    sigma, n = 2.0, 5
    taps = {t: math.exp(-t * t / (2 * sigma * sigma)) for t in range(-8, 9)}
    total = sum(taps.values())
    delta = [0, 0, 1, 0, 0]
    out = [sum(w / total * delta[_reflect(j - t, n)] for t, w in taps.items()) for j in range(n)]
    expected = torch.tensor(out, dtype=torch.float64) / max(out)
    torch.testing.assert_close(kernel_window("gaussian", 5, 2.0), expected, rtol=1e-12, atol=1e-12)


def test_other_windows_closed_forms():
    torch.testing.assert_close(kernel_window("triang", 5), torch.tensor([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3],
                                                                         dtype=torch.float64))
    torch.testing.assert_close(kernel_window("laplace", 3, 2.0),
                               torch.tensor([math.exp(-0.5), 1, math.exp(-0.5)], dtype=torch.float64))
    assert kernel_window("laplace", 5, 2.0, dtype=torch.float32).dtype == torch.float32


def test_kernel_smoothing_matrix_rows():
    S = kernel_smoothing_matrix(7)
    k = kernel_window("gaussian", 5, 2.0)
    torch.testing.assert_close(S.sum(1), torch.ones(7, dtype=torch.float64))
    assert S[0, 3:].abs().sum() == 0 and S[6, :4].abs().sum() == 0
    torch.testing.assert_close(S[3, 1:6], k / k.sum())
    torch.testing.assert_close(S[0, :3], k[2:] / k[2:].sum())


def test_identity_confusion_gives_identity_weights():
    torch.testing.assert_close(irda_ext.wfds_weights(torch.eye(6, dtype=torch.float64)), torch.eye(6, dtype=torch.float64))


def test_weights_rows_sum_to_one_and_follow_the_formula():
    eps = torch.rand(9, 9, dtype=torch.float64)
    S = irda_ext.wfds_weights(eps, "gaussian", 5, 2.0)
    torch.testing.assert_close(S.sum(1), torch.ones(9, dtype=torch.float64))
    # row 4 by hand: eps[4, b'] k(b' - 4) over |b'-4| <= 2, normalised
    k = kernel_window("gaussian", 5, 2.0)
    raw = torch.tensor([eps[4, j] * k[j - 4 + 2] if abs(j - 4) <= 2 else 0.0 for j in range(9)],
                       dtype=torch.float64)
    torch.testing.assert_close(S[4], raw / raw.sum())
    assert S[0, 3:].eq(0).all() and S[8, :6].eq(0).all()  # banded


def test_row_without_mass_falls_back_to_fds_kernel():
    eps = torch.eye(7, dtype=torch.float64)
    eps[3] = 0.0
    eps[3, 6] = 1.0  # predicted far outside the kernel: no mass within the band
    S = irda_ext.wfds_weights(eps, "gaussian", 5, 2.0)
    k = kernel_window("gaussian", 5, 2.0)
    fds_row = torch.tensor([k[j - 3 + 2] if abs(j - 3) <= 2 else 0.0 for j in range(7)], dtype=torch.float64)
    torch.testing.assert_close(S[3], fds_row / fds_row.sum())
    torch.testing.assert_close(S[3], kernel_smoothing_matrix(7)[3])


def test_weights_from_kept_kernel_rows_are_the_same_bits():
    """IRDALoss keeps FDS's kernel rows and hands them to wfds_weights at each epoch end: the
    weights are those computed from scratch, and rows of other bins, dtype or device are refused."""
    eps = torch.rand(11, 11, dtype=torch.float64)
    eps[4] = 0.0  # a row without mass: the kernel row itself
    fds = kernel_smoothing_matrix(11, "triang", 5, 2.0, torch.float64)
    kept = irda_ext.wfds_weights(eps, "triang", 5, 2.0, fds=fds)
    assert torch.equal(kept, irda_ext.wfds_weights(eps, "triang", 5, 2.0))
    for bad in (fds[:10, :10], fds.float()):
        with pytest.raises(ValueError, match="fds must match confusion"):
            irda_ext.wfds_weights(eps, "triang", 5, 2.0, fds=bad)


def test_restrict_to_bins_drops_empty_columns():
    S = irda_ext.wfds_weights(torch.ones(5, 5, dtype=torch.float64))
    has = torch.tensor([True, False, True, True, False])
    R = restrict_to_bins(S, has)
    assert R[:, 1].eq(0).all() and R[:, 4].eq(0).all()
    torch.testing.assert_close(R.sum(1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("B,D,h", [(1, 1, 0), (1, 3, 2), (6, 4, 2), (97, 3, 2), (10, 97, 1), (5, 2, 7)])
def test_smooth_matches_reference(device, B, D, h):
    g = torch.Generator().manual_seed(B * 100 + D)
    S = torch.rand(B, B, generator=g, dtype=torch.float64).to(device)
    mean = torch.randn(B, D, generator=g, dtype=torch.float64).to(device)
    cov = torch.randn(B, D, D, generator=g, dtype=torch.float64).to(device)
    got = irda_ext.wfds_smooth(S, mean, cov, h)
    want = ref.wfds_smooth(S, mean, cov, h)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", devices())
def test_smooth_gradcheck_and_opcheck(device):
    g = torch.Generator().manual_seed(1)
    B, D = 6, 3
    S = irda_ext.wfds_weights(torch.rand(B, B, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    mean = torch.randn(B, D, generator=g, dtype=torch.float64).to(device).requires_grad_()
    cov = torch.randn(B, D, D, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, m, c: irda_ext.wfds_smooth(s, m, c, 2), (S, mean, cov))
    torch.library.opcheck(torch.ops.irda_ext.wfds_smooth.default, (S, mean, cov, 2))
    torch.library.opcheck(torch.ops.irda_ext.wfds_smooth.default, (S.detach(), mean.detach(), cov.detach(), 0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,D,h", [(1, 1, 0), (1, 3, 2), (6, 4, 2), (97, 3, 2), (10, 97, 1), (5, 2, 7), (3, 0, 1)])
def test_smooth_upper_is_the_smoothing_packed(dtype, B, D, h):
    """wfds_smooth_upper (IRDALoss's fused step, host-only): mean_s and the packed upper triangles
    of cov_s are wfds_smooth's bit for bit, the diagonal too, and the sums of squares those of the
    full symmetric blocks (read from one triangle: the off-diagonal entries twice)."""
    from irda_ext.loss import upper_triangles
    g = torch.Generator().manual_seed(B * 100 + D)
    S = torch.rand(B, B, generator=g, dtype=torch.float64)
    S[:, B // 2] = 0  # an empty bin's column, as restrict_to_bins leaves it
    a = torch.randn(B, D, D, generator=g, dtype=torch.float64)
    S, mean, cov = S.to(dtype), torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype), (a + a.mT).to(dtype)
    mean_s, upper, diag, sum_sq = torch.ops.irda_ext.wfds_smooth_upper(S, mean, cov, h)
    want_mean, want_cov = irda_ext.wfds_smooth(S, mean, cov, h)
    assert upper.shape == (B, D * (D + 1) // 2) and diag.shape == (B, D) and sum_sq.dtype == torch.float64
    assert torch.equal(mean_s, want_mean) and torch.equal(diag, torch.diagonal(want_cov, dim1=1, dim2=2))
    if D:
        assert torch.equal(upper, upper_triangles(want_cov))
    # the smoothed blocks are symmetric to rounding: their full sums of squares, to rounding
    full = want_cov.double().square().sum((1, 2))
    torch.testing.assert_close(sum_sq, full, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    torch.library.opcheck(torch.ops.irda_ext.wfds_smooth_upper.default, (S, mean, cov, h))


def test_smooth_upper_bad_input():
    B, D = 4, 3
    S, mean, cov = torch.rand(B, B), torch.randn(B, D), torch.randn(B, D, D)
    with pytest.raises(ValueError, match=r"cov must have shape \[4, 3, 3\]"):
        torch.ops.irda_ext.wfds_smooth_upper(S, mean, cov[:, :2], 1)
    with pytest.raises(TypeError, match="cov must have the dtype of mean"):
        torch.ops.irda_ext.wfds_smooth_upper(S, mean, cov.double(), 1)
    with pytest.raises(ValueError, match="bandwidth must be non-negative"):
        torch.ops.irda_ext.wfds_smooth_upper(S, mean, cov, -1)


def test_bandwidth_is_inferred_and_outside_entries_ignored():
    B, D = 8, 2
    S = torch.rand(B, B, dtype=torch.float64)
    mean, cov = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, D, dtype=torch.float64)
    band = irda_ext.wfds_weights(torch.rand(B, B, dtype=torch.float64), kernel_size=3)
    torch.testing.assert_close(irda_ext.wfds_smooth(band, mean, cov)[0], band @ mean)
    got = irda_ext.wfds_smooth(S, mean, cov, 1)[0]
    torch.testing.assert_close(got, ref.wfds_smooth(S, mean, cov, 1)[0])
    assert not torch.allclose(got, S @ mean)


@pytest.mark.parametrize("device", devices())
def test_bad_input(device):
    with pytest.raises(ValueError, match="kernel must be one of"):
        irda_ext.wfds_weights(torch.eye(3), kernel="box")
    with pytest.raises(ValueError, match="odd"):
        irda_ext.wfds_weights(torch.eye(3), kernel_size=4)
    with pytest.raises(ValueError, match="square"):
        irda_ext.wfds_weights(torch.ones(3, 4))
    with pytest.raises(ValueError, match="non-negative"):
        irda_ext.wfds_weights(-torch.eye(3))
    eye, zeros = (lambda n, **kw: torch.eye(n, device=device, **kw)), (lambda *s: torch.zeros(*s, device=device))
    with pytest.raises(ValueError, match=r"weights must have shape \[3, 3\]"):
        irda_ext.wfds_smooth(eye(4), zeros(3, 2), zeros(3, 2, 2), 1)
    with pytest.raises(TypeError, match="dtype"):
        irda_ext.wfds_smooth(eye(3, dtype=torch.float64), zeros(3, 2), zeros(3, 2, 2), 1)
    with pytest.raises(ValueError, match="bandwidth"):
        irda_ext.wfds_smooth(eye(3), zeros(3, 2), zeros(3, 2, 2), -1)
    with pytest.raises(ValueError, match="bandwidth"):  # the raw op too
        torch.ops.irda_ext.wfds_smooth(eye(3), zeros(3, 2), zeros(3, 2, 2), -1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bandwidth", [2**62, 2**63 - 1])
def test_huge_bandwidth_is_the_whole_matrix(device, bandwidth):
    """A bandwidth beyond B - 1 is clamped to it before any index arithmetic (b + h and
    (2h + 1) * row overflowed int64 in the CPU kernel)."""
    g = torch.Generator().manual_seed(0)
    S = torch.rand(6, 6, generator=g, dtype=torch.float64).to(device)
    mean = torch.randn(6, 3, generator=g, dtype=torch.float64).to(device)
    cov = torch.randn(6, 3, 3, generator=g, dtype=torch.float64).to(device)
    for got, want in zip(torch.ops.irda_ext.wfds_smooth(S, mean, cov, bandwidth), ref.wfds_smooth(S, mean, cov, 5)):
        torch.testing.assert_close(got, want)



def test_banded_restriction_equals_the_dense_one():
    """restrict_to_bins on the band's diagonals (O(B * bandwidth), what IRDALoss uses per step)
    gives the dense computation's weights, in the dtype asked for."""
    from irda_ext.wfds import restrict_to_bins, wfds_weights

    for B, ks in ((1, 5), (2, 5), (7, 5), (40, 7), (97, 3)):
        g = torch.Generator().manual_seed(B)
        S = wfds_weights(torch.rand(B, B, generator=g, dtype=torch.float64), "gaussian", ks, 2.0)
        for share in (0.0, 0.3, 1.0):
            has_data = torch.rand(B, generator=g) < share
            dense = restrict_to_bins(S, has_data)
            torch.testing.assert_close(restrict_to_bins(S, has_data, ks // 2), dense, rtol=0, atol=1e-15)
            banded32 = restrict_to_bins(S, has_data, ks // 2, torch.float32)
            assert banded32.dtype == torch.float32
            torch.testing.assert_close(banded32, dense.float())


def test_irda_loss_caches_the_restricted_weights_until_they_change():
    from irda_ext import Bins, IRDALoss

    criterion = IRDALoss(Bins(0, 10, 1), 3, 1)
    has = torch.zeros(10, dtype=torch.bool)
    has[:4] = True
    first = criterion.restricted_smoothing(has, torch.float32)
    assert criterion.restricted_smoothing(has.clone(), torch.float32) is first
    has[7] = True  # a bin got its first sample
    second = criterion.restricted_smoothing(has, torch.float32)
    assert second is not first and second[7, 7] > 0
    criterion.smoothing.mul_(1.0)  # the epoch end rewrites the W-FDS weights in place
    assert criterion.restricted_smoothing(has, torch.float32) is not second
