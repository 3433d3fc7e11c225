"""ISDA-R and RISDA-R: the regression versions of ISDA and RISDA defined in the IRDA paper.

Sources:
- ISDA: Wang, Pan, Song, Zhang, Wu, Huang, "Implicit Semantic Data Augmentation for Deep
  Networks", NeurIPS 2019 (class-conditional covariance estimator, strength ``λ0·t/T``).
- RISDA: Chen, Wang, Chen, Li, Ke, Wu, "Imagine by Reasoning: A Reasoning-Based Implicit
  Semantic Data Augmentation for Long-Tailed Classification", AAAI 2022.
- The regression forms: Zhu, Wu, Yang, "IRDA: Implicit Data Augmentation for Deep
  Imbalanced Regression", section 4.3.1, eq. 27 and 28.

With the Balanced-MSE bin logits ``u_{b'}(z_i) = -(t_{b'} - ŷ_i)²`` (``t_{b'}`` the centre of
bin ``b'``, and ``t_{b_i} = y_i``) and ``ΔZ_i^{b'} = u_{b'}(z_i) - u_{b_i}(z_i)``::

    ISDA-R  (27):  ℓ_i = log(1 + Σ_{b' ≠ b_i} exp(ΔZ_i^{b'} + β wᵀΣ_{b_i}w))
    RISDA-R (28):  ℓ_i = log(1 + Σ_{b' ≠ b_i} exp(ΔZ_i^{b'}))                               b_i ∈ H (head)
                   ℓ_i = γ_b · log(1 + Σ_{b' ≠ b_i} exp(ΔZ_i^{b'} + α|g(μ̂_b) - y_i| + β wᵀΣ̂_b w))   b_i ∈ T (tail)
                   μ̂_b = Σ_{b'} ε[b, b'] μ_{b'},   Σ̂_b = Σ_b + Σ_{b'} ε[b, b'] Σ_{b'},
                   γ_b = (1 - γ) / (1 - γ^{N_b}),  γ = 0.5

``Σ_b``, ``μ_b`` are the per-bin feature statistics *before* W-FDS (ISDA's cumulative
estimator, :class:`irda_ext.BinStats` with ``stats="cumulative"``), ``ε`` the bin confusion
matrix of the previous epoch (paper eq. 6, identity at first), ``N_b`` the training count
of bin ``b`` and ``g(z) = wᵀz + w0`` the head. Written down where the paper is silent or
loose:

- **Units.** The printed logits carry no noise scale, so they depend on the unit of the
  targets. We read eq. 27/28 as written for targets measured in units of ``√(2σ²)``
  (``σ²`` the Balanced-MSE noise variance; ``σ² = ½`` is the formula exactly as printed):
  ``ΔZ`` is divided by ``2σ²``, ``wᵀΣw`` (a squared target unit) by ``2σ²`` and
  ``|g(μ̂) - y|`` by ``√(2σ²)``. As in Balanced MSE the loss is multiplied by ``2σ²``
  detached and ``σ`` can be learnt (as ``log σ``, the :class:`irda_ext.noise_scale.NoiseScale`
  of IRDA and Balanced MSE).
- **Training prior.** RISDA-R is described as "changing the CE loss into BMSE", but the
  printed logits leave out BMSE's label prior; on a dense bin grid the bin
  cross-entropy without it is close to plain MSE. The modules (and the driver) add the
  logit adjustment ``log π_{b'} - log π_{b_i}`` to every competitor (``π`` the training
  bin shares; bins with ``π = 0`` drop out), which with no augmentation is exactly BNI
  up to a constant. ``log_prior=None`` in the functions (``prior=False`` in the modules,
  ``--isda-no-prior`` in the driver) gives the formula as printed.
- ``Σ_b (1/N_b) Σ_{i∈b}`` is read as the average over the batch (as in eq. 16 of the
  paper, where re-weighting is a separate step); pass ``weight`` for anything else.
- ``μ̂_b`` sums ``μ_{b'}`` (the paper prints ``μ_b``), and the confusion rows are
  restricted to bins with training data (a bin without data has no statistics).
- The tail set ``T`` is the bins with ``N_b ≤ tail_max_count`` (few + medium shot of
  the DIR convention at 100).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .._validate import check_noise_var, check_nonnegative, check_positive, check_pred_target, check_reduction, check_tensor, check_weight, reduce
from ..noise_scale import NoiseScale

NoiseVar = Union[float, torch.Tensor]


def augmented_bmse(pred: torch.Tensor, target: torch.Tensor, bin_index: torch.Tensor, centers: torch.Tensor,
                   extra: torch.Tensor, noise_var: NoiseVar, weight: Optional[torch.Tensor] = None,
                   reduction: str = "mean", log_prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``2σ²·log(1 + Σ_{b'≠b_i} exp(ΔZ_i^{b'}/(2σ²) + ℓ_{b'} - ℓ_{b_i} + extra_i))`` (``2σ²`` detached).

    The common core of eq. 27 and 28: ``extra`` ``[n]`` is the augmentation term already
    in logit units, added to every competitor logit; ``log_prior`` ``[B]`` is ``ℓ`` (None:
    no prior, the printed form). The own bin of every sample must have a finite ``ℓ``.
    """
    check_pred_target(pred, target)
    if pred.dim() != 1:
        raise ValueError(f"pred must be [n], got {tuple(pred.shape)}")
    check_tensor(centers, "centers", dim=1)
    check_tensor(extra, "extra", dim=1)
    if extra.shape != pred.shape:
        raise ValueError(f"extra must be [n] = {tuple(pred.shape)}, got {tuple(extra.shape)}")
    if not isinstance(bin_index, torch.Tensor) or bin_index.dtype != torch.int64 or bin_index.shape != pred.shape:
        raise TypeError("bin_index must be an int64 tensor of shape [n]")
    if bin_index.numel() and (bin_index.min() < 0 or bin_index.max() >= centers.shape[0]):
        raise ValueError(f"bin_index must lie in [0, {centers.shape[0]})")
    check_weight(weight, pred)
    check_reduction(reduction)
    nv = check_noise_var(noise_var, pred)
    c = centers.to(pred.dtype).unsqueeze(0)  # [1, B]
    u_other = -(c - pred.unsqueeze(1)).pow(2) / (2 * nv)  # [n, B]
    u_own = -(target - pred).pow(2) / (2 * nv)  # [n]
    logits = u_other - u_own.unsqueeze(1) + extra.unsqueeze(1)
    if log_prior is not None:
        check_tensor(log_prior, "log_prior", dim=1)
        if log_prior.shape != centers.shape:
            raise ValueError(f"log_prior must be [B] = {tuple(centers.shape)}, got {tuple(log_prior.shape)}")
        lp = log_prior.to(pred.dtype)
        logits = logits + lp.unsqueeze(0) - lp[bin_index].unsqueeze(1)
    own = torch.nn.functional.one_hot(bin_index, centers.shape[0]).bool()
    logits = logits.masked_fill(own, float("-inf"))
    zero = torch.zeros_like(pred).unsqueeze(1)
    loss = torch.logsumexp(torch.cat([zero, logits], dim=1), dim=1)
    if weight is not None:
        loss = loss * weight
    return reduce(loss * (2 * nv).detach(), reduction)


def isda_r_loss(pred: torch.Tensor, target: torch.Tensor, bin_index: torch.Tensor, centers: torch.Tensor,
                var: torch.Tensor, beta: float, noise_var: NoiseVar = 0.5, weight: Optional[torch.Tensor] = None,
                reduction: str = "mean", log_prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ISDA-R, eq. 27. ``var`` ``[n]`` is ``wᵀΣ_{b_i}w`` (differentiable in ``w``)."""
    check_tensor(var, "var", dim=1)
    beta = check_nonnegative(beta, "beta")
    nv = check_noise_var(noise_var, pred)
    return augmented_bmse(pred, target, bin_index, centers, beta * var / (2 * nv), nv, weight, reduction, log_prior)


def risda_tail_weight(counts: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """RISDA's strength ``γ_b = (1 - γ)/(1 - γ^{N_b})`` per bin (0 where ``N_b = 0``)."""
    if not (isinstance(gamma, (int, float)) and 0.0 < gamma < 1.0):
        raise ValueError(f"gamma must be in (0, 1), got {gamma!r}")
    n = torch.as_tensor(counts, dtype=torch.float64)
    if (n < 0).any():
        raise ValueError("counts must be non-negative")
    return torch.where(n > 0, (1 - gamma) / (1 - gamma ** n.clamp_min(1)), torch.zeros_like(n))


def risda_r_loss(pred: torch.Tensor, target: torch.Tensor, bin_index: torch.Tensor, centers: torch.Tensor,
                 var: torch.Tensor, shift: torch.Tensor, is_tail: torch.Tensor, tail_weight: torch.Tensor,
                 alpha: float, beta: float, noise_var: NoiseVar = 0.5, reduction: str = "mean",
                 log_prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RISDA-R, eq. 28, per sample. ``var`` ``[n]`` = ``wᵀΣ̂_{b_i}w``, ``shift`` ``[n]`` =
    ``|g(μ̂_{b_i}) - y_i|``, ``is_tail`` ``[B]`` bool, ``tail_weight`` ``[B]`` = ``γ_b``."""
    check_tensor(var, "var", dim=1)
    check_tensor(shift, "shift", dim=1)
    alpha, beta = check_nonnegative(alpha, "alpha"), check_nonnegative(beta, "beta")
    if not isinstance(is_tail, torch.Tensor) or is_tail.dtype != torch.bool or is_tail.shape != centers.shape:
        raise TypeError("is_tail must be a bool tensor of shape [B]")
    check_tensor(tail_weight, "tail_weight", dim=1)
    nv = check_noise_var(noise_var, pred)
    tail = is_tail[bin_index]
    extra = alpha * shift.abs() / torch.sqrt(2 * nv) + beta * var / (2 * nv)
    extra = torch.where(tail, extra, torch.zeros_like(extra))
    weight = torch.where(tail, tail_weight.to(pred.dtype)[bin_index], torch.ones_like(pred))
    return augmented_bmse(pred, target, bin_index, centers, extra, nv, weight, reduction, log_prior)


def head_quadratic(head: nn.Linear, cov: torch.Tensor, bins_needed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``q[b] = wᵀ cov[b] w`` for the bins in ``bins_needed`` (``[U]`` -> ``[U]``; all of ``cov``'s
    when None), differentiable in ``w``."""
    w = head.weight.reshape(-1)
    c = (cov if bins_needed is None else cov[bins_needed]).to(w.dtype)
    return torch.einsum("d,ude,e->u", w, c, w)


class _AugmentedBMSEBase(nn.Module):
    def __init__(self, bins, feature_dim: int, noise_sigma: float, learn_sigma: bool, train_counts=None):
        super().__init__()
        from irda_ext.bin_stats import BinStats

        if not hasattr(bins, "num_bins") or not hasattr(bins, "centers"):
            raise TypeError(f"bins must be an irda_ext.Bins, got {type(bins).__name__}")
        check_positive(noise_sigma, "noise_sigma")
        self.bins = bins
        self.register_buffer("centers", bins.centers.detach().clone().float())
        self.stats = BinStats(bins.num_bins, int(feature_dim), stats="cumulative")
        if train_counts is None:
            self.log_prior = None
        else:
            counts = torch.as_tensor(train_counts).detach().cpu().double()
            if counts.shape != (bins.num_bins,) or (counts < 0).any() or counts.sum() <= 0:
                raise ValueError(f"train_counts must be [{bins.num_bins}] non-negative with a positive total")
            self.register_buffer("log_prior", (counts / counts.sum()).log().float())
        self.noise = NoiseScale(noise_sigma, learn=learn_sigma)

    def _update(self, features: torch.Tensor, bin_index: torch.Tensor) -> None:
        # ISDA updates its estimator with the batch before computing the loss.
        self.stats.update(features.detach().float(), bin_index)


class ISDARLoss(_AugmentedBMSEBase):
    """ISDA-R (IRDA paper eq. 27) with ISDA's cumulative per-bin covariance estimator.

    ``forward(features, pred, target, head, beta=None)``: ``beta`` overrides the module's
    (for ISDA's ramp ``β·t/T``). ``train_counts`` ``[B]`` adds the training prior's logit
    adjustment (None: the formula as printed).
    """

    def __init__(self, bins, feature_dim: int, beta: float = 0.5, noise_sigma: float = 1.0, learn_sigma: bool = True,
                 train_counts: Optional[torch.Tensor] = None):
        super().__init__(bins, feature_dim, noise_sigma, learn_sigma, train_counts)
        self.beta = check_nonnegative(beta, "beta")

    def forward(self, features, pred, target, head, beta: Optional[float] = None) -> torch.Tensor:
        bin_index = self.bins.index(target.detach(), clamp=True).to(target.device)
        self._update(features, bin_index)
        uniq, inverse = torch.unique(bin_index, return_inverse=True)
        var = head_quadratic(head, self.stats.cov, uniq)[inverse]
        return isda_r_loss(pred, target, bin_index, self.centers, var, self.beta if beta is None else beta,
                           self.noise.var, log_prior=self.log_prior)


class RISDARLoss(_AugmentedBMSEBase):
    """RISDA-R (IRDA paper eq. 28): tail bins augmented with confusion-enriched statistics,
    weighted by ``γ_b``; head bins get the plain Balanced-MSE bin loss. ``prior=False``
    drops the training prior's logit adjustment (the formula as printed).

    ``forward`` also counts the batch's (true bin, predicted bin) pairs; :meth:`end_epoch`
    turns the epoch's counts into the ``ε`` used during the next epoch.
    """

    def __init__(self, bins, feature_dim: int, train_counts: torch.Tensor, alpha: float = 0.5, beta: float = 0.5,
                 gamma: float = 0.5, tail_max_count: int = 100, noise_sigma: float = 1.0, learn_sigma: bool = True,
                 prior: bool = True):
        super().__init__(bins, feature_dim, noise_sigma, learn_sigma, train_counts if prior else None)
        from irda_ext.confusion import ConfusionCounter

        counts = torch.as_tensor(train_counts).detach().cpu()
        if counts.shape != (bins.num_bins,):
            raise ValueError(f"train_counts must be [{bins.num_bins}], got {tuple(counts.shape)}")
        self.alpha, self.beta = check_nonnegative(alpha, "alpha"), check_nonnegative(beta, "beta")
        self.register_buffer("train_counts", counts.to(torch.int64))
        self.register_buffer("is_tail", (counts > 0) & (counts <= int(tail_max_count)))
        self.register_buffer("tail_weight", risda_tail_weight(counts, gamma).float())
        self.register_buffer("epsilon", torch.eye(bins.num_bins))
        self.confusion = ConfusionCounter(bins.num_bins)

    @torch.no_grad()
    def end_epoch(self) -> None:
        from irda_ext.wfds import restrict_to_bins

        eps = self.confusion.confusion().to(self.epsilon.dtype)
        self.epsilon.copy_(restrict_to_bins(eps, self.train_counts.to(eps.device) > 0))
        self.confusion.reset()

    def forward(self, features, pred, target, head, alpha: Optional[float] = None,
                beta: Optional[float] = None) -> torch.Tensor:
        bin_index = self.bins.index(target.detach(), clamp=True).to(target.device)
        self._update(features, bin_index)
        self.confusion.add_predictions(bin_index, pred.detach(), self.bins)
        uniq, inverse = torch.unique(bin_index, return_inverse=True)
        eps = self.epsilon[uniq].to(self.stats.mean.dtype)  # [U, B]
        mean_hat = eps @ self.stats.mean  # [U, D]
        cov_hat = self.stats.cov[uniq] + torch.einsum("ub,bde->ude", eps, self.stats.cov)
        var = head_quadratic(head, cov_hat)[inverse]
        shift = (head(mean_hat.to(head.weight.dtype)).reshape(-1)[inverse] - target).abs()
        return risda_r_loss(pred, target, bin_index, self.centers, var, shift, self.is_tail, self.tail_weight,
                            self.alpha if alpha is None else alpha, self.beta if beta is None else beta, self.noise.var,
                            log_prior=self.log_prior)
