"""Per-sample regression losses of the plain baselines: MSE, L1 and Focal-R, each with an
optional per-sample weight (how LDS re-weighting plugs in).

Focal-R — Yang, Zha, Chen, Wang, Katabi, "Delving into Deep Imbalanced Regression",
ICML 2021 (section 4 and the reference code's ``weighted_focal_l1_loss``): the regression
analogue of the focal loss (Lin et al. 2017), which scales each absolute error by a
continuous, error-aware weight::

    e_i      = pred_i - target_i
    loss_i   = w_i * |e_i| * (2 * sigmoid(beta * |e_i|) - 1) ** gamma       (activation="sigmoid")
    loss_i   = w_i * |e_i| * tanh(beta * |e_i|) ** gamma                      (activation="tanh")

with ``beta = 0.2``, ``gamma = 1`` as in the paper. ``2*sigmoid(x) - 1 = tanh(x/2)``, so
the two activations differ only in the scale of ``beta``. Samples with a small error are
down-weighted (the factor tends to 0), hard samples keep weight ~1.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validate import check_nonnegative, check_positive, check_pred_target, check_reduction, check_weight, reduce

FOCAL_ACTIVATIONS = ("sigmoid", "tanh")


def weighted_mse_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                      reduction: str = "mean") -> torch.Tensor:
    """``w_i * (pred_i - target_i)^2`` reduced over samples (mean of the weighted terms, as
    the DIR code does; LDS weights are scaled to average 1 so the scale of MSE is kept)."""
    check_pred_target(pred, target)
    check_weight(weight, pred)
    check_reduction(reduction)
    loss = (pred - target).pow(2)
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


def weighted_l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                     reduction: str = "mean") -> torch.Tensor:
    """``w_i * |pred_i - target_i|`` reduced over samples."""
    check_pred_target(pred, target)
    check_weight(weight, pred)
    check_reduction(reduction)
    loss = (pred - target).abs()
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


def focal_r_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                 beta: float = 0.2, gamma: float = 1.0, activation: str = "sigmoid",
                 reduction: str = "mean") -> torch.Tensor:
    """Focal-R (Focal-L1) loss, ``|e| * (2*sigmoid(beta*|e|) - 1)^gamma`` per sample.

    Args:
        pred, target: ``[n]`` (any matching shape) predictions and targets.
        weight: optional per-sample weights (e.g. LDS), same shape.
        beta: scale of the error inside the activation (> 0), 0.2 in the paper.
        gamma: exponent of the modulating factor (>= 0), 1 in the paper; 0 gives L1.
        activation: ``"sigmoid"`` (paper) or ``"tanh"`` (the code's alternative).
        reduction: ``"none" | "mean" | "sum"``.

    Example:
        >>> focal_r_loss(torch.tensor([3.0]), torch.tensor([0.0]))  # 3*(2*sigmoid(0.6)-1)
        tensor(0.8739)
    """
    check_pred_target(pred, target)
    check_weight(weight, pred)
    check_reduction(reduction)
    beta = check_positive(beta, "beta")
    gamma = check_nonnegative(gamma, "gamma")
    if activation not in FOCAL_ACTIVATIONS:
        raise ValueError(f"activation must be one of {FOCAL_ACTIVATIONS}, got {activation!r}")
    err = (pred - target).abs()
    if activation == "sigmoid":
        factor = 2.0 * torch.sigmoid(beta * err) - 1.0
    else:
        factor = torch.tanh(beta * err)
    loss = err * factor.pow(gamma)
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


class FocalRLoss(nn.Module):
    """Module form of :func:`focal_r_loss` (Yang et al., ICML 2021)."""

    def __init__(self, beta: float = 0.2, gamma: float = 1.0, activation: str = "sigmoid",
                 reduction: str = "mean"):
        super().__init__()
        check_positive(beta, "beta")
        check_nonnegative(gamma, "gamma")
        check_reduction(reduction)
        if activation not in FOCAL_ACTIVATIONS:
            raise ValueError(f"activation must be one of {FOCAL_ACTIVATIONS}, got {activation!r}")
        self.beta, self.gamma, self.activation, self.reduction = float(beta), float(gamma), activation, reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return focal_r_loss(pred, target, weight, self.beta, self.gamma, self.activation, self.reduction)
