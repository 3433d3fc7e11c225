"""NoiseScale: the one learned noise scale (log sigma) of IRDA, Balanced MSE and ISDA-R/RISDA-R (SPEC 9)."""
import math

import pytest
import torch
from torch import nn

from irda_ext import Bins, IRDALoss
from irda_ext.baselines import BalancedMSELoss, ISDARLoss, RISDARLoss, bmc_loss, isda_r_loss
from irda_ext.noise_scale import NoiseScale

F64 = torch.float64


def test_log_sigma_parameter_or_buffer():
    learned = NoiseScale(0.5)
    assert learned.learn and [n for n, _ in learned.named_parameters()] == ["log_sigma"]
    assert learned.log_sigma.dtype == F64 and learned.log_sigma.item() == pytest.approx(math.log(0.5))
    assert learned.sigma.item() == pytest.approx(0.5) and learned.var.item() == pytest.approx(0.25)
    fixed = NoiseScale(2.0, learn=False)
    assert not fixed.learn and list(fixed.parameters()) == [] and "log_sigma" in fixed.state_dict()
    other = NoiseScale(1.0)
    other.load_state_dict(learned.state_dict())
    assert other.sigma.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="init_sigma must be > 0"):
        NoiseScale(0.0)
    with pytest.raises(TypeError, match="init_sigma must be a number"):
        NoiseScale("1")


def _criteria():
    """Every loss that learns a noise scale, built with the initial sigma 0.7."""
    bins = Bins(0, 4, 1)
    counts = torch.tensor([5, 3, 1, 2])
    return {
        "irda": IRDALoss(bins, 3, num_clusters=1, noise_sigma=0.7),
        "bmc": BalancedMSELoss("bmc", init_noise_sigma=0.7),
        "isda-r": ISDARLoss(bins, 3, noise_sigma=0.7),
        "risda-r": RISDARLoss(bins, 3, counts, noise_sigma=0.7),
    }


@pytest.mark.parametrize("name", ["irda", "bmc", "isda-r", "risda-r"])
def test_every_method_learns_log_sigma_the_same_way(name):
    crit = _criteria()[name]
    assert isinstance(crit.noise, NoiseScale)
    assert [n for n, p in crit.named_parameters() if p.requires_grad] == ["noise.log_sigma"]
    assert crit.noise.sigma.item() == pytest.approx(0.7)


def test_gradient_is_the_chain_rule_through_log_sigma():
    """d/dlog(sigma) = 2 sigma^2 d/d(sigma^2): the losses see sigma^2 = exp(2 log sigma)."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(16, generator=g, dtype=F64), torch.randn(16, generator=g, dtype=F64)
    crit = BalancedMSELoss("bmc", init_noise_sigma=0.7)
    crit(pred, target).backward()
    nv = torch.tensor(0.49, dtype=F64, requires_grad=True)
    (d_nv,) = torch.autograd.grad(bmc_loss(pred, target, nv), nv)
    assert crit.noise.log_sigma.grad.item() == pytest.approx(2 * 0.49 * d_nv.item(), rel=1e-10)

    bins = Bins(0, 4, 1)
    head = nn.Linear(3, 1).double()
    z = torch.randn(12, 3, generator=g, dtype=F64)
    y = torch.rand(12, generator=g, dtype=F64) * 4
    isda = ISDARLoss(bins, 3, noise_sigma=0.7)
    isda(z, head(z).reshape(-1), y, head).backward()
    b = bins.index(y)
    w = head.weight.detach().reshape(-1)
    q = torch.einsum("d,nde,e->n", w, isda.stats.cov[b].double(), w)
    nv = torch.tensor(0.49, dtype=F64, requires_grad=True)
    loss = isda_r_loss(head(z).reshape(-1).detach(), y, b, bins.centers, q, 0.5, nv)
    (d_nv,) = torch.autograd.grad(loss, nv)
    assert isda.noise.log_sigma.grad.item() == pytest.approx(2 * 0.49 * d_nv.item(), rel=1e-5)
