"""Balanced MSE: BMC, GAI and BNI.

Source: Ren, Zhang, Chen, Liu, "Balanced MSE for Imbalanced Visual Regression", CVPR
2022, section 3 and the reference code (``balanced_mse.py``). The regression is read as
the likelihood ``N(y; ŷ, σ²)`` of a noise model; Balanced MSE divides the training
likelihood by the training label prior ``p_train(y)`` so the balanced-test posterior is
learnt::

    loss_i = -log N(y_i; ŷ_i, σ²) + log ∫ N(y'; ŷ_i, σ²) p_train(y') dy'

and each implementation approximates the integral differently (all three multiply the
loss by ``2σ²`` detached so the gradient keeps the scale of MSE; ``log σ`` is a learnable
parameter with its own learning rate unless fixed):

- **BMC** (batch-based Monte Carlo): the labels of the batch are samples of
  ``p_train``, so the loss is the cross-entropy over the batch of the logits
  ``-(ŷ_i - y_j)² / (2σ²)`` with the true pair ``j = i``::

      loss = 2σ²·mean_i CE_i,   CE_i = -log softmax_j(-(ŷ_i - y_j)² / (2σ²))[i]

- **GAI** (GMM-based analytical integration): ``p_train`` is a Gaussian mixture
  ``Σ_k φ_k N(m_k, v_k)`` (fitted to the training labels with scikit-learn), so::

      loss_i = (ŷ_i - y_i)²/(2σ²) + ½ log σ² + logsumexp_k[log φ_k - ½ log(v_k + σ²) - (ŷ_i - m_k)²/(2(v_k + σ²))]

- **BNI** (bin-based numerical integration): ``p_train`` is the label histogram over
  bin centres ``c_b`` with shares ``p_b``::

      loss_i = (ŷ_i - y_i)²/(2σ²) + logsumexp_b[log p_b - (ŷ_i - c_b)²/(2σ²)]

**BMC at batch size 1.** The cross-entropy over a single logit is identically 0, so the
loss carries no signal at all. :func:`bmc_loss` raises ``ValueError`` for ``n < 2``
unless ``allow_single=True``, which returns that exact 0 (connected to the graph, with
zero gradient): for a driver whose last batch can hold one sample.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_noise_var, check_positive, check_pred_target, check_reduction, check_tensor, reduce
from ..noise_scale import NoiseScale

NoiseVar = Union[float, torch.Tensor]


def _flat(pred, target):
    check_pred_target(pred, target)
    if pred.dim() == 2 and pred.shape[1] == 1:
        pred, target = pred.squeeze(1), target.squeeze(1)
    if pred.dim() != 1:
        raise ValueError(f"pred and target must be [n] or [n, 1], got {tuple(pred.shape)}")
    return pred, target


def bmc_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: NoiseVar, reduction: str = "mean",
             allow_single: bool = False) -> torch.Tensor:
    """Balanced MSE, batch-based Monte Carlo (BMC). ``pred``, ``target``: ``[n]`` or ``[n, 1]``.

    Returns ``2σ²`` (detached) times the cross-entropy of ``-(pred_i - target_j)²/(2σ²)``
    over ``j`` with label ``i``; ``reduction="none"`` gives the ``[n]`` per-sample terms.
    """
    pred, target = _flat(pred, target)
    check_reduction(reduction)
    nv = check_noise_var(noise_var, pred)
    n = pred.shape[0]
    if n == 0:
        raise ValueError("bmc_loss got an empty batch")
    if n < 2:
        if not allow_single:
            raise ValueError(
                "bmc_loss needs at least 2 samples in the batch: with one sample the batch "
                "cross-entropy is identically 0 (pass allow_single=True to accept that 0, "
                "or drop the last incomplete batch)"
            )
        return reduce(pred * 0.0 * nv, reduction)
    logits = -(pred.unsqueeze(1) - target.unsqueeze(0)).pow(2) / (2 * nv)  # [n, n]
    ce = F.cross_entropy(logits, torch.arange(n, device=pred.device), reduction="none")
    return reduce(ce * (2 * nv).detach(), reduction)


def gai_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: NoiseVar, gmm_means: torch.Tensor,
             gmm_variances: torch.Tensor, gmm_weights: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Balanced MSE, GMM-based analytical integration (GAI); the GMM is ``[K]`` means,
    variances and mixing weights of ``p_train(y)``."""
    pred, target = _flat(pred, target)
    check_reduction(reduction)
    nv = check_noise_var(noise_var, pred)
    for name, t in (("gmm_means", gmm_means), ("gmm_variances", gmm_variances), ("gmm_weights", gmm_weights)):
        check_tensor(t, name, dim=1)
    if not (gmm_means.shape == gmm_variances.shape == gmm_weights.shape):
        raise ValueError("gmm_means, gmm_variances and gmm_weights must all be [K]")
    if (gmm_variances < 0).any() or (gmm_weights <= 0).any():
        raise ValueError("GMM variances must be >= 0 and weights > 0")
    mse_term = (pred - target).pow(2) / (2 * nv) + 0.5 * nv.log()
    sum_var = gmm_variances.unsqueeze(0) + nv  # [1, K]
    balancing = (-0.5 * sum_var.log() - 0.5 * (pred.unsqueeze(1) - gmm_means.unsqueeze(0)).pow(2) / sum_var
                 + gmm_weights.log().unsqueeze(0))
    loss = mse_term + torch.logsumexp(balancing, dim=1)
    return reduce(loss * (2 * nv).detach(), reduction)


def bni_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: NoiseVar, bin_centers: torch.Tensor,
             bin_weights: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Balanced MSE, bin-based numerical integration (BNI); ``bin_weights`` ``[B]`` is the
    training label histogram's shares (bins with share 0 drop out)."""
    pred, target = _flat(pred, target)
    check_reduction(reduction)
    nv = check_noise_var(noise_var, pred)
    check_tensor(bin_centers, "bin_centers", dim=1)
    check_tensor(bin_weights, "bin_weights", dim=1)
    if bin_centers.shape != bin_weights.shape:
        raise ValueError(f"bin_centers and bin_weights must both be [B], got {tuple(bin_centers.shape)} and {tuple(bin_weights.shape)}")
    if (bin_weights < 0).any() or not (bin_weights > 0).any():
        raise ValueError("bin_weights must be >= 0 with at least one positive entry")
    keep = bin_weights > 0
    centers, log_w = bin_centers[keep], bin_weights[keep].log()
    mse_term = (pred - target).pow(2) / (2 * nv)
    balancing = -(pred.unsqueeze(1) - centers.unsqueeze(0)).pow(2) / (2 * nv) + log_w.unsqueeze(0)
    loss = mse_term + torch.logsumexp(balancing, dim=1)
    return reduce(loss * (2 * nv).detach(), reduction)


def fit_label_gmm(targets: torch.Tensor, num_components: int = 8, seed: int = 0):
    """Fit ``p_train(y)`` with a 1-D Gaussian mixture (scikit-learn), as the reference
    ``preprocess_gmm.py`` (K = 8). Returns float32 tensors ``(means, variances, weights)``."""
    from sklearn.mixture import GaussianMixture

    check_tensor(targets, "targets")
    y = targets.detach().reshape(-1).cpu().double().numpy()
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"num_components must be a positive int, got {num_components!r}")
    if len(np.unique(y)) < num_components:
        raise ValueError(
            f"cannot fit a {num_components}-component GMM on {len(np.unique(y))} distinct target values"
        )
    gmm = GaussianMixture(n_components=num_components, random_state=seed).fit(y.reshape(-1, 1))
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1), dtype=torch.float32)
    return as_t(gmm.means_), as_t(gmm.covariances_), as_t(gmm.weights_)


class BalancedMSELoss(nn.Module):
    """Balanced MSE with a learnable noise scale ``σ``, learned as ``log σ`` (``self.noise``,
    a :class:`irda_ext.noise_scale.NoiseScale`, as IRDA's; the reference code learns ``σ``
    itself). Put ``loss.noise.log_sigma`` in its own optimiser group (the reference uses
    lr 1e-2).

    Args:
        method: ``"bmc" | "gai" | "bni"``.
        init_noise_sigma: initial ``σ`` in target units.
        learn_sigma: False keeps ``σ`` fixed (a buffer).
        gmm: ``(means, variances, weights)`` for GAI (see :func:`fit_label_gmm`).
        bin_centers, bin_weights: the label histogram for BNI.
        allow_single: BMC only, see the module docstring.
    """

    METHODS = ("bmc", "gai", "bni")

    def __init__(self, method: str = "bmc", init_noise_sigma: float = 1.0, learn_sigma: bool = True,
                 gmm=None, bin_centers: Optional[torch.Tensor] = None, bin_weights: Optional[torch.Tensor] = None,
                 reduction: str = "mean", allow_single: bool = False):
        super().__init__()
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        check_positive(init_noise_sigma, "init_noise_sigma")
        check_reduction(reduction)
        self.method, self.reduction, self.allow_single = method, reduction, bool(allow_single)
        self.noise = NoiseScale(init_noise_sigma, learn=learn_sigma)
        if method == "gai":
            if gmm is None or len(gmm) != 3:
                raise ValueError("method 'gai' needs gmm=(means, variances, weights)")
            for name, t in zip(("gmm_means", "gmm_variances", "gmm_weights"), gmm):
                self.register_buffer(name, check_tensor(t, name, dim=1).detach().clone().float())
        if method == "bni":
            if bin_centers is None or bin_weights is None:
                raise ValueError("method 'bni' needs bin_centers and bin_weights")
            self.register_buffer("bin_centers", check_tensor(bin_centers, "bin_centers", dim=1).detach().clone().float())
            self.register_buffer("bin_weights", check_tensor(bin_weights, "bin_weights", dim=1).detach().clone().float())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nv = self.noise.var
        if self.method == "bmc":
            return bmc_loss(pred, target, nv, self.reduction, self.allow_single)
        if self.method == "gai":
            return gai_loss(pred, target, nv, self.gmm_means, self.gmm_variances, self.gmm_weights, self.reduction)
        return bni_loss(pred, target, nv, self.bin_centers, self.bin_weights, self.reduction)
