"""The benchmark cases shared by the pytest-benchmark suites and run_benchmarks.py."""
import torch

import irda_ext
from isda_estimator import OneHotEstimator


def stats_batch(n=256, D=512, B=100, seed=0, device="cpu"):
    """A long-tailed batch over B bins, as a DIR batch looks."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.exp(-torch.arange(B, dtype=torch.float64) / (B / 4))
    bins = torch.multinomial(probs, n, replacement=True, generator=g)
    z = torch.randn(n, D, generator=g) + bins[:, None].float() * 0.01
    return z.to(device), bins.to(device)


def warm_stats(B, D, momentum, device="cpu"):
    """BinStats that have seen every bin, so the update reads old covariances: the pooled
    (``momentum=None``) or per-batch estimator, whose update is the fused op alone."""
    stats = irda_ext.BinStats(B, D, momentum=momentum, stats="cumulative" if momentum is None else "batch",
                              device=device)
    z = torch.randn(2 * B, D, device=device)
    stats.update(z, torch.arange(2 * B, device=device) % B)
    return stats


def surrogate_batch(n=256, K=3, B=100, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centers = torch.arange(B, dtype=torch.float64) + 0.5
    probs = torch.exp(-torch.arange(B, dtype=torch.float64) / (B / 4))
    b = torch.multinomial(probs, n, replacement=True, generator=g)
    target = b.double() + torch.rand(n, generator=g, dtype=torch.float64)
    pred = target + torch.randn(n, generator=g, dtype=torch.float64) * 3
    eta = torch.rand(K, B, generator=g, dtype=torch.float64) + 0.1
    eta = eta / eta.sum(0)
    lp = torch.log(probs / probs.sum())
    shift = torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    var = torch.rand(n, generator=g, dtype=torch.float64)
    nv = torch.tensor(4.0, dtype=torch.float64)
    out = [t.to(device=device, dtype=dtype) for t in (pred, target)] + [b.to(device)] + [
        t.to(device=device, dtype=dtype) for t in (centers, eta, lp, shift, var, nv)]
    for j in (0, 6, 7, 8):
        out[j].requires_grad_()
    pred, target, b, centers, eta, lp, shift, var, nv = out
    return pred, target, b, centers, eta, lp, shift, var, 0.5, 0.75, nv


def var_per_bin(args, scale=1.0, seed=1):
    """``args`` (``irda_surrogate``'s) as a list with ``var[i] = v[bin[i]]``, ``v ~ U(0, scale)``
    per bin: the samples of a bin share their var, as ``IRDALoss`` passes ``q_b`` (exact mode's
    denominator tables then apply). ``var`` keeps its ``requires_grad``."""
    args = list(args)
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(args[3].shape[0], generator=g, dtype=torch.float64) * scale
    args[7] = v.to(args[7])[args[2]].detach().requires_grad_(args[7].requires_grad)
    return args


def fwd_bwd(fn, args, mode):
    loss = fn(*args, mode=mode)
    grads = torch.autograd.grad(loss, [args[0], args[6], args[7], args[10]])
    return loss, grads


def check_stats_agree(n, D, B, device="cpu"):
    """BinStats against ISDA's one-hot estimator in float64 (its biased covariance
    rescaled): the two implementations a benchmark times must compute the same thing."""
    ours = irda_ext.BinStats(B, D, momentum=None, dtype=torch.float64, device=device)
    isda = OneHotEstimator(B, D, dtype=torch.float64, device=device)
    for seed in range(2):
        z, b = stats_batch(n, D, B, seed=seed, device=device)
        ours.update(z.double(), b)
        isda.update(z.double(), b)
    cnt = ours.count.double()
    unbiased = isda.cov * (cnt / (cnt - 1).clamp_min(1))[:, None, None]
    seen = cnt >= 2
    assert torch.allclose(ours.cov[seen], unbiased[seen], atol=1e-8), "BinStats and ISDA disagree"
    assert torch.allclose(ours.mean[cnt > 0], isda.ave[cnt > 0], atol=1e-10)


def warmed_irda_loss(num_bins, dim, batch, clusters=3, batches_per_epoch=20):
    """An ``IRDALoss`` on uniform labels after one epoch of steps and ``end_epoch()`` (the W-FDS
    weights and the clusters in place), for timing steps: ``(criterion, head, z, batches, step,
    end_epoch_seconds)`` with ``step(y)`` one forward + backward on the fixed features ``z``."""
    import time

    from irda_ext import Bins, IRDALoss

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(max(batches_per_epoch * batch, 4 * num_bins), generator=g) * num_bins
    criterion = IRDALoss(Bins(0, num_bins, 1), dim, clusters)
    criterion.fit_prior(labels)
    head = torch.nn.Linear(dim, 1)
    z = torch.randn(batch, dim, generator=g)
    batches = [labels[i:i + batch] for i in range(0, labels.numel() - batch + 1, batch)]

    def step(y):
        criterion(z, y, head).backward()

    for y in batches:  # one epoch: every bin gets data
        step(y)
    started = time.perf_counter()
    criterion.end_epoch()
    end_epoch = time.perf_counter() - started
    step(batches[0])
    return criterion, head, z, batches, step, end_epoch
