"""Balanced MSE (BMC, GAI, BNI) against hand formulas and the integral they approximate."""
import math

import pytest
import torch
from scipy import integrate

from irda_ext.baselines.balanced_mse import BalancedMSELoss, bmc_loss, bni_loss, fit_label_gmm, gai_loss


def test_bmc_is_batch_cross_entropy_scaled_by_two_sigma_squared():
    pred, target, sigma2 = [0.3, 1.7, -0.4], [0.0, 2.0, 1.0], 0.8
    expected = []
    for i, p in enumerate(pred):
        logits = [-(p - t) ** 2 / (2 * sigma2) for t in target]
        ce = -logits[i] + math.log(sum(math.exp(l) for l in logits))
        expected.append(2 * sigma2 * ce)
    out = bmc_loss(torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64), sigma2,
                   reduction="none")
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    col = bmc_loss(torch.tensor(pred).view(-1, 1), torch.tensor(target).view(-1, 1), sigma2)
    assert col.item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_bmc_scale_factor_is_detached():
    pred = torch.tensor([0.3, 1.7, -0.4], dtype=torch.float64)
    target = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)
    sigma = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    bmc_loss(pred, target, sigma ** 2).backward()
    s2 = torch.tensor(0.81, dtype=torch.float64, requires_grad=True)
    logits = -(pred[:, None] - target[None, :]) ** 2 / (2 * s2)
    ce = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    (2 * 0.81 * ce).backward()  # constant factor: only the CE is differentiated
    assert sigma.grad.item() == pytest.approx(s2.grad.item() * 2 * 0.9, rel=1e-10)


def test_bmc_batch_of_one():
    p = torch.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="at least 2"):
        bmc_loss(p, torch.tensor([0.0]), 1.0)
    out = bmc_loss(p, torch.tensor([0.0]), 1.0, allow_single=True)
    out.backward()
    assert out.item() == 0.0 and p.grad.item() == 0.0


def _balancing_integral(pred, sigma2, density):
    """log ∫ N(y'; pred, σ²) p_train(y') dy' by quadrature."""
    f = lambda y: math.exp(-(y - pred) ** 2 / (2 * sigma2)) / math.sqrt(2 * math.pi * sigma2) * density(y)
    val, _ = integrate.quad(f, -30, 30, limit=200, points=[pred])
    return math.log(val)


def test_gai_equals_the_balanced_likelihood_of_a_gmm_prior():
    means, variances, weights = [0.0, 3.0], [1.0, 0.25], [0.7, 0.3]
    density = lambda y: sum(w * math.exp(-(y - m) ** 2 / (2 * v)) / math.sqrt(2 * math.pi * v)
                            for m, v, w in zip(means, variances, weights))
    sigma2 = 0.5
    for pred, target in ((0.4, 1.0), (2.5, 3.2), (-1.0, 0.0)):
        nll = (target - pred) ** 2 / (2 * sigma2) + 0.5 * math.log(2 * math.pi * sigma2)
        expected = 2 * sigma2 * (nll + _balancing_integral(pred, sigma2, density))
        out = gai_loss(torch.tensor([pred], dtype=torch.float64), torch.tensor([target], dtype=torch.float64),
                       sigma2, torch.tensor(means, dtype=torch.float64), torch.tensor(variances, dtype=torch.float64),
                       torch.tensor(weights, dtype=torch.float64))
        assert out.item() == pytest.approx(expected, rel=1e-7)


def test_bni_hand_two_bins_and_dead_bins():
    pred, target, sigma2 = 0.8, 1.0, 0.5
    centers, shares = [0.5, 1.5, 2.5], [0.75, 0.25, 0.0]
    bal = math.log(sum(w * math.exp(-(pred - c) ** 2 / (2 * sigma2)) for c, w in zip(centers, shares) if w > 0))
    expected = 2 * sigma2 * ((target - pred) ** 2 / (2 * sigma2) + bal)
    out = bni_loss(torch.tensor([pred], dtype=torch.float64), torch.tensor([target], dtype=torch.float64), sigma2,
                   torch.tensor(centers, dtype=torch.float64), torch.tensor(shares, dtype=torch.float64))
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_gmm_fit_and_modules():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.randn(300, generator=g), torch.randn(100, generator=g) * 0.5 + 5])
    means, variances, weights = fit_label_gmm(y, num_components=2)
    assert sorted(means.tolist()) == pytest.approx([0.0, 5.0], abs=0.2)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5) and (variances > 0).all()
    pred, target = torch.randn(8, generator=g), torch.randn(8, generator=g)
    gai = BalancedMSELoss("gai", init_noise_sigma=0.7, gmm=(means, variances, weights))
    assert gai(pred, target).item() == pytest.approx(gai_loss(pred, target, 0.49, means, variances, weights).item(), abs=1e-5)
    gai(pred, target).backward()
    assert gai.noise.log_sigma.grad is not None
    bni = BalancedMSELoss("bni", learn_sigma=False, bin_centers=torch.arange(3.0), bin_weights=torch.ones(3) / 3)
    assert list(bni.parameters()) == []
    assert bni(pred, target).item() == pytest.approx(
        bni_loss(pred, target, 1.0, torch.arange(3.0), torch.ones(3) / 3).item(), rel=1e-6)


def test_bmc_learns_noise_towards_the_residual_scale():
    # With fixed predictions, maximising the balanced likelihood moves sigma; check that
    # a gradient step on log sigma changes the loss in the predicted direction.
    crit = BalancedMSELoss("bmc", init_noise_sigma=1.0)
    g = torch.Generator().manual_seed(1)
    target = torch.randn(64, generator=g)
    pred = target + 0.1 * torch.randn(64, generator=g)
    loss = crit(pred, target)
    loss.backward()
    with torch.no_grad():
        before = loss.item() / (2 * crit.noise.var.item())
        crit.noise.log_sigma -= 1e-3 * crit.noise.log_sigma.grad.sign()
        after = (crit(pred, target) / (2 * crit.noise.var)).item()
    assert after < before


@pytest.mark.parametrize("call, exc", [
    (lambda: bmc_loss(torch.zeros(3), torch.zeros(3), 0.0), ValueError),
    (lambda: bmc_loss(torch.zeros(0), torch.zeros(0), 1.0, allow_single=True), ValueError),
    (lambda: bmc_loss(torch.zeros(3), torch.zeros(3), "1"), TypeError),
    (lambda: bmc_loss(torch.zeros(3, 2), torch.zeros(3, 2), 1.0), ValueError),
    (lambda: bmc_loss(torch.zeros(3), torch.zeros(2), 1.0), ValueError),
    (lambda: bni_loss(torch.zeros(2), torch.zeros(2), 1.0, torch.zeros(3), torch.ones(2)), ValueError),
    (lambda: bni_loss(torch.zeros(2), torch.zeros(2), 1.0, torch.zeros(2), torch.zeros(2)), ValueError),
    (lambda: gai_loss(torch.zeros(2), torch.zeros(2), 1.0, torch.zeros(2), torch.ones(2), -torch.ones(2)), ValueError),
    (lambda: BalancedMSELoss("mse"), ValueError),
    (lambda: BalancedMSELoss("gai"), ValueError),
    (lambda: BalancedMSELoss("bni"), ValueError),
    (lambda: fit_label_gmm(torch.tensor([1.0, 1.0, 2.0]), num_components=3), ValueError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()
