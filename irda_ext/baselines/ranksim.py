"""RankSim: the rank-similarity regulariser.

Source: Gong, Mori, Tung, "RankSim: Ranking Similarity Regularization for Deep Imbalanced
Regression", ICML 2022, and its reference code (``ranksim.py``, ``ranking.py``). For a
batch, the ranking of every sample's neighbours by label distance should match the
ranking by feature similarity::

    S^y[i, j] = -|y_i - y_j|,     S^z[i, j] = cos(z_i, z_j)
    rk(s)_j   = (1 + #{l : s_l > s_j}) / m          (rank of s_j in decreasing order, normalised)
    L_RankSim = Σ_i MSE(rk(S^z[i, :]), rk(S^y[i, :]))
    total     = task loss + γ · L_RankSim              (γ = 100 in the paper)

Ranking is piecewise constant, so its gradient is the blackbox-differentiation one of
Vlastelica et al. (ICLR 2020) with interpolation strength ``λ`` (2 in the paper): for an
incoming gradient ``g`` of the ranks, ``∂L/∂s ≈ -(rk(s) - rk(s + λ g)) / λ``.
As in the reference code the regulariser is computed over a subset of the batch in which
each target value appears once (the first sample of a random permutation per value).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._validate import check_nonnegative, check_positive, check_tensor


def rank_normalised(seq: torch.Tensor) -> torch.Tensor:
    """Row-wise normalised ranks in decreasing order: the largest entry gets ``1/m``,
    the smallest ``1``. ``seq`` ``[r, m]`` -> float ``[r, m]`` (ties: argsort order)."""
    m = seq.shape[1]
    order = torch.argsort(seq, dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(m, device=seq.device).expand_as(order))
    return (ranks + 1).to(seq.dtype if seq.is_floating_point() else torch.float32) / m


class TrueRanker(torch.autograd.Function):
    """Ranks with the blackbox-differentiation backward (Vlastelica et al. 2020)."""

    @staticmethod
    def forward(ctx, sequence: torch.Tensor, lambda_val: float) -> torch.Tensor:
        rank = rank_normalised(sequence)
        ctx.lambda_val = lambda_val
        ctx.save_for_backward(sequence, rank)
        return rank

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        sequence, rank = ctx.saved_tensors
        rank_prime = rank_normalised(sequence + ctx.lambda_val * grad_output)
        return -(rank - rank_prime) / (ctx.lambda_val + 1e-8), None


def blackbox_rank(sequence: torch.Tensor, lambda_val: float = 2.0) -> torch.Tensor:
    """Differentiable (blackbox) normalised ranks of each row of ``sequence`` ``[r, m]``."""
    check_tensor(sequence, "sequence", dim=2)
    lambda_val = check_positive(lambda_val, "lambda_val")
    return TrueRanker.apply(sequence, lambda_val)


def ranksim_loss(features: torch.Tensor, targets: torch.Tensor, lambda_val: float = 2.0,
                 generator: Optional[torch.Generator] = None, dedupe: bool = True) -> torch.Tensor:
    """The RankSim regulariser ``Σ_i MSE(rk(S^z_i), rk(S^y_i))`` (not yet multiplied by γ).

    Args:
        features: ``[n, D]`` (any trailing shape is flattened).
        targets: ``[n]`` or ``[n, 1]``.
        lambda_val: blackbox interpolation strength ``λ``.
        generator: for the choice of one sample per repeated target value.
        dedupe: keep one sample per distinct target (reference behaviour).
    """
    check_tensor(features, "features")
    check_tensor(targets, "targets")
    if features.dim() < 2:
        raise ValueError(f"features must be [n, D], got shape {tuple(features.shape)}")
    y = targets.reshape(-1)
    if y.shape[0] != features.shape[0]:
        raise ValueError(f"targets must hold one value per feature row ({features.shape[0]}), got {tuple(targets.shape)}")
    x = features.reshape(features.shape[0], -1)
    if dedupe:
        perm = torch.randperm(y.shape[0], generator=generator, device="cpu").to(y.device)
        values, inverse = torch.unique(y[perm], return_inverse=True)
        first = torch.full((values.shape[0],), y.shape[0], dtype=torch.long, device=y.device)
        first.scatter_reduce_(0, inverse, torch.arange(y.shape[0], device=y.device), reduce="amin")
        keep = perm[first]
        x, y = x[keep], y[keep]
    if y.shape[0] < 2:
        return features.sum() * 0.0
    xn = F.normalize(x, dim=1)
    sim = xn @ xn.t()
    label_ranks = rank_normalised(-(y.unsqueeze(0) - y.unsqueeze(1)).abs())
    feature_ranks = TrueRanker.apply(sim, check_positive(lambda_val, "lambda_val"))
    return (feature_ranks - label_ranks).pow(2).mean(dim=1).sum()


class RankSim(torch.nn.Module):
    """``gamma * ranksim_loss`` as a module (γ = 100, λ = 2 in the paper)."""

    def __init__(self, gamma: float = 100.0, lambda_val: float = 2.0):
        super().__init__()
        self.gamma = check_nonnegative(gamma, "gamma")
        self.lambda_val = check_positive(lambda_val, "lambda_val")

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.gamma * ranksim_loss(features, targets, self.lambda_val)
