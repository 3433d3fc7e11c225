"""ISDA-R (eq. 27) and RISDA-R (eq. 28) against the printed formulas, by hand."""
import math

import pytest
import torch

from irda_ext.baselines.isda import ISDARLoss, RISDARLoss, isda_r_loss, risda_r_loss, risda_tail_weight
from irda_ext.binning import Bins

CENTERS = [0.5, 1.5, 2.5, 3.5]


def _eq27(pred, y, b, q, beta):
    """log(1 + Σ_{b'≠b} exp(ΔZ + β q)),  ΔZ = -(c_b' - ŷ)² + (y - ŷ)²  (the printed form)."""
    s = sum(math.exp(-(c - pred) ** 2 + (y - pred) ** 2 + beta * q) for j, c in enumerate(CENTERS) if j != b)
    return math.log(1 + s)


def test_isda_r_is_eq27_as_printed_at_half_noise_variance():
    pred, y, b, q = [0.9, 2.2, 3.0], [1.2, 2.9, 3.6], [1, 2, 3], [0.3, 0.0, 1.1]
    beta = 0.5
    out = isda_r_loss(torch.tensor(pred, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                      torch.tensor(b), torch.tensor(CENTERS, dtype=torch.float64),
                      torch.tensor(q, dtype=torch.float64), beta, noise_var=0.5, reduction="none")
    assert out.tolist() == pytest.approx([_eq27(*args, beta) for args in zip(pred, y, b, q)], rel=1e-12)


def test_isda_r_units_scale_with_the_targets():
    # targets x s, variances x s², noise variance x s²: the loss (times 2σ²) scales by s²
    args = dict(bin_index=torch.tensor([0, 2]), var=torch.tensor([0.4, 0.9], dtype=torch.float64), beta=0.75)
    base = isda_r_loss(torch.tensor([0.3, 2.0], dtype=torch.float64), torch.tensor([0.6, 2.4], dtype=torch.float64),
                       centers=torch.tensor(CENTERS, dtype=torch.float64), noise_var=0.7, **args)
    s = 3.0
    args["var"] = args["var"] * s * s
    scaled = isda_r_loss(torch.tensor([0.3, 2.0], dtype=torch.float64) * s,
                         torch.tensor([0.6, 2.4], dtype=torch.float64) * s,
                         centers=torch.tensor(CENTERS, dtype=torch.float64) * s, noise_var=0.7 * s * s, **args)
    assert scaled.item() == pytest.approx(base.item() * s * s, rel=1e-10)


def test_augmentation_raises_the_loss_and_penalises_w_sigma_w():
    q = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    args = (torch.tensor([1.0], dtype=torch.float64), torch.tensor([1.2], dtype=torch.float64), torch.tensor([1]),
            torch.tensor(CENTERS, dtype=torch.float64))
    plain = isda_r_loss(*args, torch.zeros(1, dtype=torch.float64), beta=0.5)
    aug = isda_r_loss(*args, q, beta=0.5)
    aug.backward()
    assert aug > plain and q.grad.item() > 0


def test_risda_tail_weight():
    w = risda_tail_weight(torch.tensor([0, 1, 2, 3, 50]), gamma=0.5)
    assert w.tolist() == pytest.approx([0.0, 1.0, 0.5 / 0.75, 0.5 / 0.875, 0.5 / (1 - 0.5 ** 50)])


def test_risda_r_is_eq28_as_printed():
    pred, y, b = [0.9, 2.2], [1.2, 2.9], [1, 2]
    var, shift = [0.3, 0.8], [0.25, 0.6]
    is_tail = torch.tensor([False, False, True, True])
    gamma_b = risda_tail_weight(torch.tensor([200, 150, 3, 1]))
    alpha, beta = 0.5, 0.75
    head = _eq27(pred[0], y[0], b[0], 0.0, 0.0)  # head bin: no augmentation, weight 1
    s = sum(math.exp(-(c - pred[1]) ** 2 + (y[1] - pred[1]) ** 2 + alpha * shift[1] + beta * var[1])
            for j, c in enumerate(CENTERS) if j != b[1])
    tail = gamma_b[2].item() * math.log(1 + s)
    out = risda_r_loss(torch.tensor(pred, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                       torch.tensor(b), torch.tensor(CENTERS, dtype=torch.float64),
                       torch.tensor(var, dtype=torch.float64), torch.tensor(shift, dtype=torch.float64),
                       is_tail, gamma_b, alpha, beta, noise_var=0.5, reduction="none")
    assert out.tolist() == pytest.approx([head, tail], rel=1e-12)


def test_isda_module_uses_the_pooled_bin_covariance():
    torch.manual_seed(0)
    bins = Bins(0, 4, 1)
    head = torch.nn.Linear(3, 1).double()
    z = torch.randn(10, 3, dtype=torch.float64)
    y = torch.tensor([0.5, 0.7, 1.2, 1.4, 1.9, 2.1, 2.2, 2.8, 3.3, 3.6], dtype=torch.float64)
    crit = ISDARLoss(bins, 3, beta=0.5, noise_sigma=0.5 ** 0.5, learn_sigma=False)
    pred = head(z).squeeze(-1)
    loss = crit(z, pred, y, head)
    b = bins.index(y)
    w = head.weight.detach().reshape(-1)
    q = torch.stack([w @ torch.cov(z[b == k].T) @ w for k in b.tolist()])
    expected = isda_r_loss(pred, y, b, bins.centers, q, 0.5, 0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert head.weight.grad is not None


def test_risda_module_confusion_and_tail_split():
    torch.manual_seed(0)
    bins = Bins(0, 4, 1)
    y = torch.tensor([0.5, 0.6, 0.7, 1.5, 1.6, 2.5, 3.5, 3.6])
    counts = bins.counts(y)
    crit = RISDARLoss(bins, 2, counts, tail_max_count=2)
    assert crit.is_tail.tolist() == [False, True, True, True]
    head = torch.nn.Linear(2, 1)
    z = torch.randn(8, 2, requires_grad=True)
    loss = crit(z, head(z).squeeze(-1), y, head)
    loss.backward()
    assert torch.isfinite(loss) and z.grad is not None and crit.noise.log_sigma.grad is not None
    crit.end_epoch()
    assert torch.allclose(crit.epsilon.sum(1), torch.ones(4))


@pytest.mark.parametrize("call, exc", [
    (lambda: isda_r_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0, 1]), torch.zeros(3), torch.zeros(2), -1.0), ValueError),
    (lambda: isda_r_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0.0, 1.0]), torch.zeros(3), torch.zeros(2), 1.0), TypeError),
    (lambda: isda_r_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0, 5]), torch.zeros(3), torch.zeros(2), 1.0), ValueError),
    (lambda: isda_r_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0, 1]), torch.zeros(3), torch.zeros(3), 1.0), ValueError),
    (lambda: isda_r_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0, 1]), torch.zeros(3), torch.zeros(2), 1.0, noise_var=0.0), ValueError),
    (lambda: risda_tail_weight(torch.tensor([1]), gamma=1.0), ValueError),
    (lambda: RISDARLoss(Bins(0, 4, 1), 2, torch.ones(3)), ValueError),
    (lambda: ISDARLoss("bins", 2), TypeError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()


def test_prior_adjusted_isda_r_without_augmentation_is_bni():
    # targets at bin centres: with no augmentation, eq. 27 with the logit adjustment
    # log(pi_b'/pi_b) equals BNI minus the constant 2 sigma^2 log pi_b
    from irda_ext.baselines.balanced_mse import bni_loss

    prior = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    b = torch.tensor([0, 1, 3])
    target = torch.tensor(CENTERS, dtype=torch.float64)[b]
    pred = torch.tensor([0.9, 1.1, 2.0], dtype=torch.float64)
    sigma2 = 0.8
    ours = isda_r_loss(pred, target, b, torch.tensor(CENTERS, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                       0.5, sigma2, reduction="none", log_prior=prior.log())
    bni = bni_loss(pred, target, sigma2, torch.tensor(CENTERS, dtype=torch.float64), prior, reduction="none")
    assert torch.allclose(ours, bni - 2 * sigma2 * prior[b].log(), atol=1e-12)


def test_modules_prior_switch():
    bins = Bins(0, 4, 1)
    y = torch.tensor([0.5, 0.6, 1.5, 2.5, 3.5, 3.6])
    with_prior = RISDARLoss(bins, 2, bins.counts(y))
    printed = RISDARLoss(bins, 2, bins.counts(y), prior=False)
    assert printed.log_prior is None
    assert torch.allclose(with_prior.log_prior.exp(), torch.tensor([2, 1, 1, 2]) / 6.0)
    assert ISDARLoss(bins, 2).log_prior is None
    with pytest.raises(ValueError):
        ISDARLoss(bins, 2, train_counts=torch.zeros(4))
