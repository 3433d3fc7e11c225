"""Rank-N-Contrast (RnC), the contrastive ranking loss behind the SupCR baseline.

Source: Zha, Cao, Zhang, Chen, Feris, Katabi, "Rank-N-Contrast: Learning Continuous
Representations for Regression", NeurIPS 2023 (the published form of "Supervised
Contrastive Regression", SupCR, arXiv 2210.01189), and its reference code
(``loss.py``). For an anchor ``i`` and a positive ``j ≠ i``, every sample whose label is
at least as far from ``y_i`` as ``y_j`` is a negative::

    s(i, j)   = -‖v_i - v_j‖₂ / τ                      (feature similarity, τ = 2)
    S_{i,j}   = {k ≠ i : |y_i - y_k| ≥ |y_i - y_j|}
    L_RnC     = -1/(M(M-1)) Σ_i Σ_{j≠i} log( exp s(i,j) / Σ_{k∈S_{i,j}} exp s(i,k) )

over the ``M`` feature vectors of the batch (``M = 2n`` with two augmented views per
sample, as in the paper; a single view works too). The encoder is trained with this loss
alone, then frozen, and a linear regressor is trained on top (the two-stage protocol of
the paper).
"""
from __future__ import annotations

import torch

from .._validate import check_positive, check_tensor


def rnc_loss(features: torch.Tensor, targets: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """The Rank-N-Contrast loss.

    Args:
        features: ``[n, D]`` (one view) or ``[n, V, D]`` (``V`` views of each sample).
        targets: ``[n]`` or ``[n, L]`` labels; label distance is the L1 norm.
        temperature: ``τ`` (> 0), 2 in the paper.

    Returns:
        the scalar loss. Fewer than 3 feature vectors leave no pair with a negative
        pool to rank and raise ``ValueError``.
    """
    check_tensor(features, "features")
    check_tensor(targets, "targets")
    tau = check_positive(temperature, "temperature")
    if features.dim() == 2:
        features = features.unsqueeze(1)
    if features.dim() != 3:
        raise ValueError(f"features must be [n, D] or [n, V, D], got shape {tuple(features.shape)}")
    n, views, _ = features.shape
    labels = targets.reshape(n, -1) if targets.numel() % max(n, 1) == 0 and targets.shape[0] == n else None
    if labels is None:
        raise ValueError(f"targets must be [n] or [n, L] with n = {n}, got {tuple(targets.shape)}")
    m = n * views
    if m < 3:
        raise ValueError(f"rnc_loss needs at least 3 feature vectors (anchor, positive and a negative pool), got {m}")
    v = features.transpose(0, 1).reshape(m, -1)  # view-major, as the reference code's cat
    y = labels.repeat(views, 1).to(v.dtype)
    label_diff = (y.unsqueeze(1) - y.unsqueeze(0)).abs().sum(-1)  # [m, m]
    logits = -torch.cdist(v, v, p=2) / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    off = ~torch.eye(m, dtype=torch.bool, device=v.device)
    logits = logits[off].view(m, m - 1)
    label_diff = label_diff[off].view(m, m - 1)
    # The negatives of (i, j) are the k with label distance >= that of j: sort each row by
    # label distance, so they form a suffix starting at the first entry of j's tie group,
    # and the denominators are suffix sums (O(m^2 log m) instead of O(m^3)).
    sorted_diff, order = torch.sort(label_diff, dim=1)
    sorted_logits = logits.gather(1, order)
    suffix = sorted_logits.exp().flip(1).cumsum(1).flip(1)
    first = torch.searchsorted(sorted_diff.contiguous(), sorted_diff.contiguous(), right=False)
    log_prob = sorted_logits - suffix.gather(1, first).log()
    return -log_prob.sum() / (m * (m - 1))
