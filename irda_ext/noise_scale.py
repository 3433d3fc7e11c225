"""The noise scale ``sigma`` of Balanced MSE's likelihood ``N(y; pred, sigma^2)``, learned as
``log sigma`` by every loss that has one (SPEC 9)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_positive


class NoiseScale(nn.Module):
    """``sigma`` (label units) of the regression likelihood ``N(y; pred, sigma^2)`` of Balanced
    MSE (Ren et al., CVPR 2022), held as ``log_sigma`` (float64).

    IRDA (``IRDALoss``), BMC/GAI/BNI (``BalancedMSELoss``) and ISDA-R/RISDA-R each own one,
    so they learn the same parameter the same way: ``log sigma`` keeps ``sigma`` positive
    without a clamp, and an optimiser step changes ``sigma`` by a factor, the same at any
    label scale. Give a learned ``log_sigma`` its own optimiser group (Balanced MSE uses
    lr 1e-2).

    Args:
        init_sigma: the initial ``sigma > 0``.
        learn: ``log_sigma`` is an ``nn.Parameter``; otherwise a buffer (fixed, but saved).

    Example:
        >>> noise = NoiseScale(0.5)
        >>> noise.var.item()
        0.25
        >>> [name for name, _ in noise.named_parameters()]
        ['log_sigma']
    """

    def __init__(self, init_sigma: float, learn: bool = True):
        super().__init__()
        log_sigma = torch.tensor(math.log(check_positive(init_sigma, "init_sigma")), dtype=torch.float64)
        if learn:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def learn(self) -> bool:
        return isinstance(self.log_sigma, nn.Parameter)

    @property
    def sigma(self) -> torch.Tensor:
        return torch.exp(self.log_sigma)

    @property
    def var(self) -> torch.Tensor:
        """``sigma^2 = exp(2 log sigma)``, differentiable in ``log_sigma`` when learned."""
        return torch.exp(2 * self.log_sigma)

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma):.4g}, learn={self.learn}"
