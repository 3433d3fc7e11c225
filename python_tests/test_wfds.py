"""W-FDS weights and the banded smoothing kernel (SPEC 3)."""
import math

import pytest
import torch
from testing import devices

import irda_ext
from irda_ext import reference as ref
from irda_ext.wfds import kernel_window, restrict_to_bins


def test_kernel_windows_closed_forms():
    g = kernel_window("gaussian", 5, 2.0)
    torch.testing.assert_close(g, torch.tensor([math.exp(-4 / 8), math.exp(-1 / 8), 1, math.exp(-1 / 8),
                                                math.exp(-4 / 8)], dtype=torch.float64))
    torch.testing.assert_close(kernel_window("triangular", 5), torch.tensor([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3],
                                                                             dtype=torch.float64))
    torch.testing.assert_close(kernel_window("laplace", 3, 2.0),
                               torch.tensor([math.exp(-0.5), 1, math.exp(-0.5)], dtype=torch.float64))


def test_identity_confusion_gives_identity_weights():
    torch.testing.assert_close(irda_ext.wfds_weights(torch.eye(6, dtype=torch.float64)), torch.eye(6, dtype=torch.float64))


def test_weights_rows_sum_to_one_and_follow_the_formula():
    eps = torch.rand(9, 9, dtype=torch.float64)
    S = irda_ext.wfds_weights(eps, "gaussian", 5, 2.0)
    torch.testing.assert_close(S.sum(1), torch.ones(9, dtype=torch.float64))
    # row 4 by hand: eps[4, b'] exp(-(b'-4)^2 / 8) over |b'-4| <= 2, normalised
    raw = torch.tensor([eps[4, j] * math.exp(-((j - 4) ** 2) / 8.0) if abs(j - 4) <= 2 else 0.0 for j in range(9)],
                       dtype=torch.float64)
    torch.testing.assert_close(S[4], raw / raw.sum())
    assert S[0, 3:].eq(0).all() and S[8, :6].eq(0).all()  # banded


def test_row_without_mass_falls_back_to_fds_kernel():
    eps = torch.eye(7, dtype=torch.float64)
    eps[3] = 0.0
    eps[3, 6] = 1.0  # predicted far outside the kernel: no mass within the band
    S = irda_ext.wfds_weights(eps, "gaussian", 5, 2.0)
    k = torch.tensor([math.exp(-((j - 3) ** 2) / 8.0) if abs(j - 3) <= 2 else 0.0 for j in range(7)],
                     dtype=torch.float64)
    torch.testing.assert_close(S[3], k / k.sum())


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


def test_bandwidth_is_inferred_and_outside_entries_ignored():
    B, D = 8, 2
    S = torch.rand(B, B, dtype=torch.float64)
    mean, cov = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, D, dtype=torch.float64)
    band = irda_ext.wfds_weights(torch.rand(B, B, dtype=torch.float64), kernel_size=3)
    torch.testing.assert_close(irda_ext.wfds_smooth(band, mean, cov)[0], band @ mean)
    got = irda_ext.wfds_smooth(S, mean, cov, 1)[0]
    torch.testing.assert_close(got, ref.wfds_smooth(S, mean, cov, 1)[0])
    assert not torch.allclose(got, S @ mean)


def test_bad_input():
    with pytest.raises(ValueError, match="kernel must be one of"):
        irda_ext.wfds_weights(torch.eye(3), kernel="box")
    with pytest.raises(ValueError, match="odd"):
        irda_ext.wfds_weights(torch.eye(3), kernel_size=4)
    with pytest.raises(ValueError, match="square"):
        irda_ext.wfds_weights(torch.ones(3, 4))
    with pytest.raises(ValueError, match="non-negative"):
        irda_ext.wfds_weights(-torch.eye(3))
    with pytest.raises(ValueError, match=r"weights must have shape \[3, 3\]"):
        irda_ext.wfds_smooth(torch.eye(4), torch.zeros(3, 2), torch.zeros(3, 2, 2), 1)
    with pytest.raises(TypeError, match="dtype"):
        irda_ext.wfds_smooth(torch.eye(3, dtype=torch.float64), torch.zeros(3, 2), torch.zeros(3, 2, 2), 1)
    with pytest.raises(ValueError, match="bandwidth"):
        irda_ext.wfds_smooth(torch.eye(3), torch.zeros(3, 2), torch.zeros(3, 2, 2), -1)
