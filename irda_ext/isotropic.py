"""Isotropic adjustment of the smoothed covariances (SPEC 4, paper eq. 23-24)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._validate import _on_host, check_finite, check_tensor


def isotropic_adjustment(cov: torch.Tensor, valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``lambda_b`` and ``v_b`` of ``Sigma_bar_b = (1 - v_b) Sigma_b + v_b lambda_b I``.

    ``lambda_b = max_d Sigma_b[d, d]``; raw ``v_b = ||Sigma_b - lambda_b I||_F^2``
    divided by its maximum over the ``valid`` bins (those with data; all by
    default), so it lies in ``[0, 1]``; ``v_b = 0`` for invalid bins and when
    every raw value is zero. Constants of the step: computed without gradient.

    Shape: cov ``[B, D, D]``, valid ``[B]`` bool. Returns ``lam [B]``, ``v [B]``.

    Raises:
        ValueError: ``cov`` is not ``[B, D, D]`` or holds NaN or infinite values (statistics
            of a diverged model), or ``valid`` is not ``[B]``.
    """
    check_tensor(cov, "cov", dim=3)
    if cov.shape[1] != cov.shape[2]:
        raise ValueError(f"cov must hold a square [D, D] matrix per bin, got shape {tuple(cov.shape)}")
    if valid is not None:
        check_tensor(valid, "valid", dim=1, floating=False)
        if valid.shape[0] != cov.shape[0] or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor of shape [{cov.shape[0]}], got {valid.dtype} "
                             f"{tuple(valid.shape)}")
    with torch.no_grad():
        diag = torch.diagonal(cov, dim1=-2, dim2=-1)
        # ||S - lam I||^2 = sum of all squares - sum diag^2 + sum (diag - lam)^2. The sum of
        # squares is a dot product per bin (no [B, D, D] temporary: at D = 2048 that is 1.6 GB).
        if cov.shape[0] == 0 or cov.shape[1] == 0:
            return isotropic_from_moments(diag, None, valid)
        flat = cov.reshape(cov.shape[0], -1)
        return isotropic_from_moments(diag, torch.linalg.vecdot(flat, flat).to(torch.float64), valid)


def isotropic_from_moments(diag: torch.Tensor, sum_sq: Optional[torch.Tensor],
                           valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``isotropic_adjustment``'s ``(lam, v)`` from each covariance's diagonal ``diag [B, D]`` and
    its sum of squares ``sum_sq [B]`` (float64; may be ``None`` when ``B`` or ``D`` is 0), as
    ``wfds_smooth_upper`` gives them for IRDALoss's fused step on the CPU, without the
    ``[B, D, D]`` blocks. ``valid`` is checked by the caller."""
    if diag.shape[0] == 0 or diag.shape[1] == 0:
        empty = diag.new_zeros(diag.shape[0])
        return empty, empty.clone()
    with torch.no_grad():
        lam = diag.amax(-1)
        # NaN or inf anywhere in a bin's covariance reaches its sum of squares: an O(B) check
        _check_finite_per_bin(sum_sq)
        d64 = diag.to(torch.float64)
        raw = sum_sq - d64.square().sum(-1) + (d64 - lam.to(torch.float64)[:, None]).square().sum(-1)
        raw = raw.clamp_min(0)
        if valid is None:
            valid = torch.ones_like(lam, dtype=torch.bool)
        raw = torch.where(valid, raw, torch.zeros_like(raw))
        top = raw.max() if raw.numel() else raw.new_zeros(())
        v = torch.where(top > 0, raw / top.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(raw))
    return lam, v.to(diag.dtype)


def _check_finite_per_bin(total: torch.Tensor) -> None:
    if _on_host(total):
        bad = ~torch.isfinite(total)
        if bool(bad.any()):
            raise ValueError(f"cov contains NaN or infinite values (first in bin {int(bad.nonzero()[0])}): the "
                             f"statistics of a diverged model?")
    else:
        check_finite(total, "cov (per-bin sum of squares)")


def isotropic_covariance(cov: torch.Tensor, lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Sigma_bar = (1 - v) Sigma + v lambda I`` (materialised; the loss only needs its quadratic form)."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return (1 - v)[:, None, None] * cov + (v * lam)[:, None, None] * eye


class _SymmetricQuadratic(torch.autograd.Function):
    """``w^T S_b w`` for symmetric ``S [B, D, D]`` that need no gradient: one pass over ``S``.

    Forward keeps ``S w`` (``[B, D]``); the gradient ``2 sum_b g_b S_b w`` is then a small
    product, where autograd through ``S w`` makes a second, transposed pass over all of ``S``
    (together 0.7 ms of an abalone step). Differentiable once: a second derivative would miss
    ``d(S w)/dw`` and raises instead."""

    @staticmethod
    def forward(ctx, w, cov):
        sw = (cov.reshape(-1, cov.shape[-1]) @ w).reshape(cov.shape[0], -1)
        ctx.save_for_backward(sw)
        return sw @ w

    @staticmethod
    def backward(ctx, grad):
        # Grad mode is on in a backward only under create_graph=True: a second derivative would
        # silently miss d(S w)/dw (even where the incoming gradient is a constant).
        if torch.is_grad_enabled():
            raise RuntimeError("adjusted_quadratic(twice_differentiable=False) is differentiable once; pass "
                               "twice_differentiable=True for a gradient that is itself differentiated")
        (sw,) = ctx.saved_tensors
        return 2 * (grad @ sw), None


def adjusted_quadratic(w: torch.Tensor, cov: torch.Tensor, lam: torch.Tensor, v: torch.Tensor,
                       twice_differentiable: bool = True) -> torch.Tensor:
    """``q_b = w^T Sigma_bar_b w = (1 - v_b) w^T Sigma_b w + v_b lambda_b ||w||^2``, differentiable in ``w``.

    ``twice_differentiable=False`` (the training step; ``cov`` symmetric and constant) uses one
    pass over ``cov`` forward and none backward; the default builds the product from plain ops,
    whose gradient is itself differentiable (Meta-IRDA's look-ahead)."""
    if not twice_differentiable and not cov.requires_grad:
        quad = _SymmetricQuadratic.apply(w, cov)
    else:
        # One matrix-vector product over all B D rows (an einsum here ran as B small batched
        # products, forward and backward: 1.3 ms of a 13 ms profiled abalone step).
        quad = (cov.reshape(-1, cov.shape[-1]) @ w).reshape(cov.shape[0], -1) @ w
    return (1 - v) * quad + v * lam * w.dot(w)
