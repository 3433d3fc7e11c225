"""Pure-PyTorch versions of every kernel: the readable truth for tests and benchmarks.

Dense and slow on purpose: each function is the formula of the SPEC written
directly, with autograd for the gradients. Training uses two of them, both in
Meta-IRDA: the look-ahead (``IRDALoss.head_loss(..., lookahead=True)``) evaluates
:func:`irda_surrogate`, whose gradient is itself differentiable (the fused op's backward
is not), and the meta-network's per-bin inputs (``irda_ext.meta.meta_net.BinInputs``)
read :func:`remse_loss`. Everything else trains on the kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .wfds import kernel_matrix  # noqa: F401  (re-exported: the kernel is part of the truth)


def bin_moments(z: torch.Tensor, bin_index: torch.Tensor, num_bins: int):
    """SPEC 2: per-bin count, batch mean and centred scatter, by one-hot sums."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(acc)
    onehot = torch.nn.functional.one_hot(bin_index, num_bins).to(acc)  # [n, B]
    count = onehot.sum(0)
    mean = onehot.t() @ z / count.clamp_min(1)[:, None]
    centred = z - mean[bin_index]
    scatter = torch.einsum("nb,nd,ne->bde", onehot, centred, centred)
    return count.to(torch.int64), mean, scatter


def merge_bin_moments(count, mean, cov, batch_count, batch_mean, batch_scatter, momentum: Optional[float] = None):
    """SPEC 2: the streaming merge of one batch's per-bin moments into ``(count, mean, cov)``
    (``stats="cumulative"``, or ``"batch"`` with a momentum), returning new tensors (no
    in-place). Chan's pooled merge (``momentum=None``, or a bin seen for the first time),
    else the momentum average of the mean and of the unbiased batch covariance (zero for a
    single sample); bins without samples are kept."""
    count, mean, cov = count.clone(), mean.clone(), cov.clone()
    batch_mean, batch_scatter = batch_mean.to(mean.dtype), batch_scatter.to(mean.dtype)
    for b in range(mean.shape[0]):
        nb = int(batch_count[b])
        if nb == 0:
            continue
        n_old = int(count[b])
        if momentum is None or n_old == 0:
            n = n_old + nb
            delta = batch_mean[b] - mean[b]
            m2 = (cov[b] * (n_old - 1) if n_old >= 2 else torch.zeros_like(cov[b])) + batch_scatter[b] \
                + torch.outer(delta, delta) * (n_old * nb / n)
            mean[b] = mean[b] + delta * (nb / n)
            cov[b] = m2 / (n - 1) if n >= 2 else torch.zeros_like(m2)
        else:
            batch_cov = batch_scatter[b] / (nb - 1) if nb >= 2 else torch.zeros_like(batch_scatter[b])
            mean[b] = momentum * mean[b] + (1 - momentum) * batch_mean[b]
            cov[b] = momentum * cov[b] + (1 - momentum) * batch_cov
        count[b] += nb
    return count, mean, cov


def bin_stats_update(count, mean, cov, z, bin_index, momentum: Optional[float] = None):
    """SPEC 2: the streaming merge of a batch of features, returning new ``(count, mean, cov)``."""
    return merge_bin_moments(count, mean, cov, *bin_moments(z.to(mean.dtype), bin_index, mean.shape[0]), momentum)


def pooled_statistics(z: torch.Tensor, bin_index: torch.Tensor, num_bins: int):
    """Per-bin count, mean and unbiased covariance (zero below two samples) of all of ``z``
    at once: what the streaming merge of its batches must give."""
    count, mean, scatter = bin_moments(z, bin_index, num_bins)
    cov = torch.zeros_like(scatter)
    for b in range(num_bins):
        if count[b] >= 2:
            cov[b] = scatter[b] / (int(count[b]) - 1)
    return count, mean, cov


def epoch_statistics(epochs, num_bins: int, momentum: float, dtype: torch.dtype = torch.float64):
    """SPEC 2, ``stats="epoch"``: the running ``(count, mean, cov)`` after the finished
    epochs ``[(z, bin_index), ...]`` (each epoch's features ``[N, D]``, all of them, in any
    order), from scratch.

    Per bin: the mean is the pooled mean of the first epoch that held one of its samples,
    moved by every later such epoch as ``mu <- rho mu + (1 - rho) mu_epoch``; the covariance
    likewise from the first epoch that held two (the unbiased pooled covariance; a single
    sample says nothing about spread), zero before; ``count`` all samples seen."""
    rho, dim = momentum, epochs[0][0].shape[1]
    count = torch.zeros(num_bins, dtype=torch.int64)
    mean = torch.zeros(num_bins, dim, dtype=dtype)
    cov = torch.zeros(num_bins, dim, dim, dtype=dtype)
    has_cov = [False] * num_bins
    for z, bin_index in epochs:
        n, epoch_mean, epoch_cov = pooled_statistics(z.to(dtype).cpu(), bin_index.cpu(), num_bins)
        for b in range(num_bins):
            if n[b] >= 1:
                mean[b] = epoch_mean[b] if count[b] == 0 else rho * mean[b] + (1 - rho) * epoch_mean[b]
            if n[b] >= 2:
                cov[b] = rho * cov[b] + (1 - rho) * epoch_cov[b] if has_cov[b] else epoch_cov[b]
                has_cov[b] = True
        count += n
    return count, mean, cov


def wfds_smooth(weights: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, bandwidth: Optional[int] = None):
    """SPEC 3, dense: ``S @ mean`` and ``sum_b' S[b, b'] cov[b']`` (entries beyond ``bandwidth`` dropped)."""
    if bandwidth is not None:
        b = torch.arange(weights.shape[0], device=weights.device)
        weights = weights * ((b[:, None] - b[None, :]).abs() <= bandwidth).to(weights.dtype)
    return weights @ mean, torch.einsum("bc,cde->bde", weights, cov)


def isotropic_adjustment(cov: torch.Tensor, valid: Optional[torch.Tensor] = None):
    """SPEC 4 written directly with the matrix ``Sigma - lambda I``."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    lam = torch.diagonal(cov, dim1=-2, dim2=-1).amax(-1)
    raw = (cov - lam[:, None, None] * eye).square().sum((-2, -1))
    if valid is not None:
        raw = torch.where(valid, raw, torch.zeros_like(raw))
    top = raw.max()
    v = raw / top if top > 0 else torch.zeros_like(raw)
    return lam, v


def _label_grid(target, bin_index, centers):
    """``t[i, b'] = c_b'``, except ``t[i, b_i] = y_i``."""
    t = centers[None, :].expand(target.shape[0], -1).clone()
    t[torch.arange(target.shape[0], device=target.device), bin_index] = target
    return t


def _valid_competitors(log_prior, bin_index):
    """``[n, B]``: bins with a finite log-prior, and always the sample's own bin."""
    valid = torch.isfinite(log_prior)[None, :].expand(bin_index.shape[0], -1).clone()
    valid[torch.arange(bin_index.shape[0], device=bin_index.device), bin_index] = True
    return valid


def irda_surrogate(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var,
                   mode: str = "exact", reduction: str = "mean", weight=None):
    """SPEC 6 with the whole grid materialised (``[n, K, K, B]`` exact, ``[n, K, B]`` paper)."""
    n = pred.shape[0]
    K, B = eta.shape
    if not isinstance(noise_var, torch.Tensor):
        noise_var = torch.tensor(float(noise_var), dtype=pred.dtype)
    u = 1.0 / (2.0 * noise_var)
    eh = eta * u  # eta_hat [K, B]
    t = _label_grid(target, bin_index, centers)  # [n, B]
    valid = _valid_competitors(log_prior, bin_index)  # [n, B]
    lp = torch.where(valid, log_prior[None, :].expand(n, -1), torch.zeros((), dtype=pred.dtype))
    rows = torch.arange(n, device=pred.device)
    y = target
    if mode == "exact":
        m = pred + alpha * shift
        eh_own = eh[:, bin_index].t()  # [n, K]: eta_hat[k, b_i]
        a = eh_own[:, :, None, None] - eh[None, None, :, :]  # [n, k, k', b']
        c = 2 * (eh[None, None] * t[:, None, None, :] - (eh_own * y[:, None])[:, :, None, None])
        d = (eh_own * y[:, None] ** 2)[:, :, None, None] - eh[None, None] * t[:, None, None, :] ** 2 \
            + (lp - lp[rows, bin_index][:, None])[:, None, None, :]
        # the cap: s^2 <= (1 - 1e-3) / (2 max a) over the valid competitors
        a_valid = torch.where(valid[:, None, None, :], a, torch.full_like(a, -torch.inf))
        a_max = a_valid.amax((1, 2, 3))
        s2 = beta * var
        # (a safe denominator where no cap applies keeps NaN out of the gradient of where())
        cap = (1 - 1e-3) / (2 * torch.where(a_max > 0, a_max, torch.ones_like(a_max)))
        s2 = torch.where(a_max > 0, torch.minimum(s2, cap), s2)[:, None, None, None]
        mm = m[:, None, None, None]
        r = 1 - 2 * a * s2
        F = -0.5 * torch.log(r) + d + (a * mm**2 + c * mm + 0.5 * c**2 * s2) / r
        F = torch.where(valid[:, None, None, :], F, torch.full_like(F, -torch.inf))
        loss = torch.logsumexp(F.flatten(2), -1).mean(1)
    elif mode == "paper":
        eh_own = eh[:, bin_index].t()[:, :, None]  # [n, k, 1]: eta_hat[k, b_i]
        lin = eh[None] * t[:, None, :] - eh_own * y[:, None, None]  # [n, k, b']
        de = eh_own - eh[None]
        r1 = de + 2 * lin
        r2 = lin**2 + de**2 / 4
        Z = -eh[None] * (t[:, None, :] - pred[:, None, None]) ** 2 + alpha * r1 * shift[:, None, None] \
            + beta * r2 * var[:, None, None] + lp[:, None, :]
        Z = torch.where(valid[:, None, :], Z, torch.full_like(Z, -torch.inf))
        own = Z[rows, :, bin_index]  # [n, K]
        loss = torch.logsumexp(Z.flatten(1), -1) - own.mean(1)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        return loss.sum() / max(n, 1)
    if reduction == "sum":
        return loss.sum()
    return loss


def remse_loss(pred, target, bin_index, centers, eta, log_prior, noise_var):
    """The un-augmented ReMSE loss of paper eq. 15 with the prior of eq. 21, per sample:
    ``mean_k [LSE_{k',b'} (-eta_hat[k',b'] (t_b' - pred)^2 + l_b') - (-eta_hat[k,b] (y - pred)^2 + l_b)]``.
    The Monte-Carlo check of the exact mode averages it over sampled augmentations."""
    return irda_surrogate(pred, target, bin_index, centers, eta, log_prior, torch.zeros_like(pred),
                          torch.zeros_like(pred), 0.0, 0.0, noise_var, mode="paper", reduction="none")


def kmeans_lloyd(x: torch.Tensor, init: torch.Tensor, max_iter: int, tol: float):
    """SPEC 5: Lloyd's k-means from ``init [K, D]`` on the rows of ``x [N, D]``: each row takes
    its nearest centre (``argmin_k ||c_k||^2 - 2 x.c_k``, the first on a tie), each centre the
    mean of its rows (an empty cluster keeps its centre), until no label changes or the centres
    move (squared, summed) at most ``tol``, at most ``max_iter`` times. ``(labels, centres)``,
    the labels of the final centres, computed in float64. What the ``kmeans`` op computes
    with Hamerly's bounds."""
    x = x.to(torch.float64)
    def nearest(centres):
        return torch.addmm((centres * centres).sum(1)[None, :], x, centres.t(), alpha=-2).argmin(1)

    centres, labels = init.clone(), None
    for _ in range(max_iter):
        new = nearest(centres)
        if labels is not None and torch.equal(new, labels):
            return new, centres
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        sizes = torch.bincount(labels, minlength=centres.shape[0]).to(x.dtype)
        moved = torch.where(sizes[:, None] > 0, sums / sizes.clamp_min(1)[:, None], centres)
        shift = float((moved - centres).square().sum())
        centres = moved
        if shift <= tol:
            break
    return nearest(centres), centres
