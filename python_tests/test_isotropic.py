"""The isotropic adjustment (SPEC 4)."""
import pytest
import torch

import irda_ext
from irda_ext import reference as ref


def test_matches_reference_and_range():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, 5, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    valid = torch.tensor([True, True, False, True, True, True, False])
    lam, v = irda_ext.isotropic_adjustment(cov, valid)
    lam_r, v_r = ref.isotropic_adjustment(cov, valid)
    torch.testing.assert_close(lam, lam_r)
    torch.testing.assert_close(v, v_r)
    assert v.max() == 1 and v.min() >= 0 and v[~valid].eq(0).all()


def test_isotropic_matrix_gets_zero_and_quadratic_form():
    cov = torch.stack([3 * torch.eye(4), torch.diag(torch.tensor([1.0, 2, 3, 4]))]).double()
    lam, v = irda_ext.isotropic_adjustment(cov)
    torch.testing.assert_close(lam, torch.tensor([3.0, 4.0], dtype=torch.float64))
    # ||diag(1,2,3,4) - 4 I||^2 = 9 + 4 + 1 = 14 is the maximum, so v = [0, 1]
    torch.testing.assert_close(v, torch.tensor([0.0, 1.0], dtype=torch.float64))
    w = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    q = irda_ext.adjusted_quadratic(w, cov, lam, v)
    bar = irda_ext.isotropic_covariance(cov, lam, v)
    torch.testing.assert_close(q, torch.einsum("d,bde,e->b", w, bar, w))
    q.sum().backward()
    torch.testing.assert_close(w.grad, 2 * torch.einsum("bde,e->d", bar, w.detach()))


def test_all_zero_covariances_give_zero_v():
    lam, v = irda_ext.isotropic_adjustment(torch.zeros(3, 2, 2))
    assert lam.eq(0).all() and v.eq(0).all()


def test_bad_covariances_are_refused():
    import pytest

    good = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1)
    for bad_value in (float("nan"), float("inf")):
        cov = good.clone()
        cov[2, 0, 1] = bad_value
        with pytest.raises(ValueError, match="cov contains NaN or infinite values \\(first in bin 2\\)"):
            irda_ext.isotropic_adjustment(cov)
    with pytest.raises(ValueError, match=r"square \[D, D\] matrix per bin, got shape \(3, 4, 5\)"):
        irda_ext.isotropic_adjustment(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \[4\]"):
        irda_ext.isotropic_adjustment(good, torch.ones(3, dtype=torch.bool))


def test_no_bins_gives_empty_results():
    lam, v = irda_ext.isotropic_adjustment(torch.zeros(0, 4, 4))
    assert lam.shape == v.shape == (0,)


def test_adjusted_quadratic_fast_path_matches_and_refuses_a_second_derivative():
    """The training step's once-differentiable product equals the plain one, value and gradient."""
    from irda_ext import adjusted_quadratic

    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, 7, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)  # symmetric
    lam, v = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    w = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, generator=g, dtype=torch.float64)
    slow = adjusted_quadratic(w, cov, lam, v)
    fast = adjusted_quadratic(w, cov, lam, v, twice_differentiable=False)
    torch.testing.assert_close(fast, slow)
    (g_slow,) = torch.autograd.grad((slow * weights).sum(), w)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), w)
    torch.testing.assert_close(g_fast, g_slow)
    assert torch.autograd.gradcheck(lambda x: adjusted_quadratic(x, cov, lam, v, twice_differentiable=False), (w,))
    # a gradient to be differentiated again would miss d(S w)/dw: refused, not silently wrong
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad((adjusted_quadratic(w, cov, lam, v, twice_differentiable=False) * weights).sum(), w,
                            create_graph=True)
