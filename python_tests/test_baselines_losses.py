"""Focal-R and the weighted plain losses against hand computations."""
import math

import pytest
import torch

from irda_ext.baselines.losses import FocalRLoss, focal_r_loss, weighted_l1_loss, weighted_mse_loss


def test_focal_r_closed_form():
    pred = torch.tensor([3.0, 0.5, -2.0], dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # 2*sigmoid(x) - 1 = tanh(x/2): an identity independent of the implementation
    expected = [abs(e) * math.tanh(0.2 * abs(e) / 2) for e in (3.0, 0.5, -3.0)]
    out = focal_r_loss(pred, target, reduction="none")
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert focal_r_loss(pred, target).item() == pytest.approx(sum(expected) / 3, abs=1e-12)


def test_focal_r_gamma_and_activation():
    pred, target = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 0.0])
    g2 = focal_r_loss(pred, target, gamma=2.0, reduction="none")
    assert torch.allclose(g2, torch.tensor([2 * math.tanh(0.2) ** 2, math.tanh(0.1) ** 2]), atol=1e-6)
    assert torch.allclose(focal_r_loss(pred, target, gamma=0.0, reduction="none"), torch.tensor([2.0, 1.0]))
    th = focal_r_loss(pred, target, activation="tanh", reduction="none")
    assert torch.allclose(th, torch.tensor([2 * math.tanh(0.4), math.tanh(0.2)]), atol=1e-6)


def test_focal_r_downweights_easy_samples_gradient():
    pred = torch.tensor([0.1, 10.0], requires_grad=True)
    focal_r_loss(pred, torch.zeros(2), reduction="sum").backward()
    # d/de [e * tanh(beta e / 2)] = tanh(beta e/2) + e * beta/2 * sech^2(beta e/2)
    for e, g in zip((0.1, 10.0), pred.grad.tolist()):
        t = math.tanh(0.1 * e)
        assert g == pytest.approx(t + e * 0.1 * (1 - t * t), rel=1e-5)
    assert pred.grad[0] < 0.05 * pred.grad[1]


def test_weights_and_module():
    pred, target, w = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.5])
    assert weighted_mse_loss(pred, target, w).item() == pytest.approx((2 * 1 + 0.5 * 4) / 2)
    assert weighted_l1_loss(pred, target, w, reduction="sum").item() == pytest.approx(2 * 1 + 0.5 * 2)
    m = FocalRLoss(reduction="sum")
    assert m(pred, target, w).item() == pytest.approx(focal_r_loss(pred, target, w, reduction="sum").item())


@pytest.mark.parametrize("call, exc", [
    (lambda: focal_r_loss(torch.zeros(3), torch.zeros(2)), ValueError),
    (lambda: focal_r_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)), TypeError),
    (lambda: focal_r_loss([1.0], torch.zeros(1)), TypeError),
    (lambda: focal_r_loss(torch.zeros(2), torch.zeros(2), beta=0.0), ValueError),
    (lambda: focal_r_loss(torch.zeros(2), torch.zeros(2), gamma=-1.0), ValueError),
    (lambda: focal_r_loss(torch.zeros(2), torch.zeros(2), activation="relu"), ValueError),
    (lambda: focal_r_loss(torch.zeros(2), torch.zeros(2), reduction="avg"), ValueError),
    (lambda: weighted_mse_loss(torch.zeros(2), torch.zeros(2), torch.ones(3)), ValueError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()
