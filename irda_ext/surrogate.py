"""The functional IRDA surrogate loss (SPEC 6)."""
from __future__ import annotations

from typing import Optional

import torch

from ._ops import ops
from ._validate import check_bin_index, check_nonnegative, check_reduction, check_tensor, check_weight

MODES = ("exact", "paper")


def irda_surrogate(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var,
                   mode: str = "exact", reduction: str = "mean", weight: Optional[torch.Tensor] = None):
    """Per-sample IRDA surrogate, streamed over the (cluster, bin) grid by a fused kernel.

    With ``eta_hat = eta / (2 sigma^2)``, targets on the label grid ``t_b' = c_b'``
    except ``t_b = y_i`` for the sample's own bin, and ``l_b' = log pi_b'`` (bins
    with ``pi = 0``, i.e. ``log_prior = -inf``, drop out):

    * ``mode="exact"`` (the Jensen bound, SPEC 6.2): with ``m = pred + alpha*shift``
      and ``s^2 = beta*var`` (capped to ``(1-1e-3)/(2 max a)`` where the
      expectation would not exist), for each numerator cluster ``k``
      ``loss_ik = logsumexp_{k',b'} [-log(1-2as^2)/2 + d + (am^2 + cm + c^2 s^2/2)/(1-2as^2)]``
      with ``a = eta_hat[k,b] - eta_hat[k',b']``, ``c = 2(eta_hat[k',b'] t_b' - eta_hat[k,b] y)``,
      ``d = eta_hat[k,b] y^2 - eta_hat[k',b'] t_b'^2 + l_b' - l_b``; ``loss_i = mean_k loss_ik``.
      It bounds ``E[ReMSE(z_tilde)]`` from above and is exact as ``s^2 -> 0``.
    * ``mode="paper"`` (eq. 22 as printed, SPEC 6.1): ``loss_i = mean_k [LSE_{k',b'} Z - Z[k, b]]``.

    Args:
        pred, target, shift, var: ``[n]`` of one float dtype; ``var >= 0``.
        bin_index: ``[n]`` int64, each sample's bin (its log-prior must be finite).
        centers: ``[B]`` bin centres. eta: ``[K, B]``, columns sum to 1. log_prior: ``[B]``.
        alpha, beta: augmentation strengths (floats).
        noise_var: ``sigma^2``, a positive scalar tensor (differentiable) or float.
        mode: ``"exact"`` or ``"paper"``. reduction: ``"none" | "mean" | "sum"``.
        weight: optional per-sample weights ``[n]`` (``mean`` divides by ``n``; an empty batch gives 0).

    Differentiable in ``pred``, ``shift``, ``var`` and ``noise_var``; the others are constants.
    There is no ``2 sigma^2`` factor here (``IRDALoss`` applies it).

    Example:
        >>> n, K, B = 4, 2, 10
        >>> pred = torch.randn(n, requires_grad=True)
        >>> eta = torch.full((K, B), 1.0 / K)
        >>> loss = irda_surrogate(pred, torch.rand(n) * 10, torch.arange(n), torch.arange(B) + 0.5,
        ...                       eta, torch.full((B,), -2.3), torch.zeros(n), torch.ones(n), 0.5, 0.75,
        ...                       torch.tensor(1.0))
        >>> loss.backward()
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_reduction(reduction)
    alpha, beta = check_nonnegative(alpha, "alpha"), check_nonnegative(beta, "beta")
    check_tensor(pred, "pred", dim=1)
    if not isinstance(noise_var, torch.Tensor):
        noise_var = torch.tensor(float(noise_var), dtype=pred.dtype, device=pred.device)
    for name, t in (("target", target), ("centers", centers), ("eta", eta), ("log_prior", log_prior)):
        check_tensor(t, name)
        if t.requires_grad:
            raise ValueError(f"irda_surrogate is not differentiable in {name}; pass it detached")
    # The kernels check the values (bin range, finite inputs, var >= 0, noise_var > 0, a prior
    # for every sample's bin): on the CPU inline, on a GPU on the device, without synchronising.
    check_bin_index(bin_index, pred.shape[0], centers.shape[0] if centers.dim() == 1 else -1, pred.device,
                    values=False)
    return fused_surrogate_loss(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var,
                                mode, reduction, weight)


def fused_surrogate_loss(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var,
                         mode: str, reduction: str, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``irda_surrogate`` without its checks (the kernels still check the values): the fused op
    and ``reduce_loss``, or, unweighted and reduced, ``irda_surrogate_reduced``: the same bits in
    one op, and on the CPU one autograd node where the op and the reduction take two."""
    check_reduction(reduction)
    if weight is None and reduction != "none":
        return ops.irda_surrogate_reduced(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                          noise_var, mode, reduction)
    loss, _ = ops.irda_surrogate(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                 noise_var, mode)
    return reduce_loss(loss, reduction, weight)


def reduce_loss(loss: torch.Tensor, reduction: str, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The per-sample ``loss [n]`` weighted (``weight [n]``, optional) and reduced as
    ``irda_surrogate`` does: ``"mean"`` divides by ``n`` (an empty batch gives 0, not NaN)."""
    check_reduction(reduction)
    if weight is not None:
        check_weight(weight, loss)
        loss = loss * weight
    if reduction == "mean":  # an empty batch gives 0 where mean() would give NaN
        return loss.mean() if loss.shape[0] > 0 else loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss
