"""Loads the compiled operator library and attaches fake kernels and autograd.

The schemas live in ``csrc/ops.cpp``; the CPU kernels in ``csrc/cpu`` and the CUDA
kernels in ``csrc/cuda`` register themselves when ``irda_ext._C`` is imported. The
fake (meta) kernels below give every op shapes without data, which makes
``torch.compile`` and ``torch.library.opcheck`` work; backward passes are
themselves ops (``irda_surrogate_backward``) or compositions of ops. The autograd of
``irda_ext::irda_surrogate`` is registered in C++ (``csrc/autograd.cpp``: no Python on
the training step's path); the emulated twin keeps the same rule in Python here.

``torch.ops.irda_ext_emulated`` has the same ops, with the same fake kernels and
autograd: the CUDA kernels' code run on CPU tensors by an emulated launch
(``csrc/emulated``), a debug backend for the tests (``python_tests/testing.py``).
"""
from __future__ import annotations

import functools

import torch

from ._cuda_check import check_cuda_version

# Before loading: a library compiled for another CUDA release fails to load with an
# obscure missing-symbol error, or loads and misbehaves; this names both releases.
check_cuda_version()

from . import _C  # noqa: E402,F401  (loads the library: registers schemas and kernels)

ops = torch.ops.irda_ext
NAMESPACES = ("irda_ext", "irda_ext_emulated")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake(name):
    """Registers a function as the fake kernel of op ``name`` in both namespaces."""

    def register(fn):
        for namespace in NAMESPACES:
            torch.library.register_fake(f"{namespace}::{name}")(fn)
        return fn

    return register


@_fake("bin_moments")
def _bin_moments_fake(z, bin_index, num_bins):
    acc = _acc_dtype(z.dtype)
    d = z.shape[1]
    return (
        z.new_empty((num_bins,), dtype=torch.int64),
        z.new_empty((num_bins, d), dtype=acc),
        z.new_empty((num_bins, d, d), dtype=acc),
    )


@torch.library.register_fake("irda_ext::kmeans")  # host-only: no emulated twin
def _kmeans_fake(x, init, max_iter, tol, relative=False):
    return x.new_empty((x.shape[0],), dtype=torch.int64), init.new_empty(init.shape)


@torch.library.register_fake("irda_ext::bin_stats_plan_")  # host-only
def _bin_stats_plan_fake(count, mean, z, bin_index, momentum):
    n, (B, D) = z.shape[0], mean.shape
    S = min(n, B)
    return (count.new_empty((S,)), count.new_empty((S + 1,)), mean.new_empty((n + S, D)), mean.new_empty((n + S,)),
            mean.new_empty((S,)))


@torch.library.register_fake("irda_ext::bin_stats_apply_")  # host-only
def _bin_stats_apply_fake(cov, bins, vec_offset, vecs, weights, keep):
    return None


@torch.library.register_fake("irda_ext::bin_stats_epoch_plan_")  # host-only
def _bin_stats_epoch_plan_fake(count, epoch_count, epoch_mean, z, bin_index):
    plan = _bin_stats_plan_fake(epoch_count, epoch_mean, z, bin_index, None)
    return (*plan, count.new_empty(count.shape, dtype=torch.bool), count.new_empty(()))


@torch.library.register_fake("irda_ext::confusion_add_")  # host-only (ConfusionCounter.add_predictions)
def _confusion_add_fake(counts, true_bin, pred, low, high, width, num_bins):
    return true_bin.new_empty((), dtype=torch.int64)


@torch.library.register_fake("irda_ext::canonical_order")  # host-only (the epoch-end k-means' rows)
def _canonical_order_fake(features, bins):
    return torch.empty_like(features), torch.empty_like(bins)


@torch.library.register_fake("irda_ext::wfds_smooth_upper")  # host-only (IRDALoss.head_terms on the CPU)
def _wfds_smooth_upper_fake(weights, mean, cov, bandwidth):
    B, D = mean.shape
    return (mean.new_empty((B, D)), mean.new_empty((B, D * (D + 1) // 2)), mean.new_empty((B, D)),
            mean.new_empty((B,), dtype=torch.float64))


@torch.library.register_fake("irda_ext::reservoir_add_")  # host-only (FeatureReservoir.add on CPU tensors)
def _reservoir_add_fake(features, bins, seen, z, bin_index):
    return None


@torch.library.register_fake("irda_ext::bin_index")  # host-only (Bins.index on CPU tensors)
def _bin_index_fake(y, low, high, width, num_bins, clamp):
    return y.new_empty(y.shape, dtype=torch.int64), y.new_empty((), dtype=torch.int64)


@torch.library.register_fake("irda_ext::irda_surrogate_with_partials")  # host-only (csrc/autograd.cpp's CPU path)
def _irda_surrogate_with_partials_fake(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                       noise_var, mode):
    loss, lse = _irda_surrogate_fake(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                     noise_var, mode)
    return loss, lse, pred.new_empty((pred.shape[0], 5))


@torch.library.register_fake("irda_ext::irda_surrogate_partials_backward")  # host-only
def _irda_surrogate_partials_backward_fake(grad_loss, partials, alpha, beta, noise_var, num_clusters, mode):
    return tuple(partials.new_empty((partials.shape[0],)) for _ in range(4))


@torch.library.register_fake("irda_ext::irda_head_loss")  # host-only (IRDALoss.head_loss on the CPU)
def _irda_head_loss_fake(pred, target, bin_index, weight, bias, offset, cov_upper, keep, iso, centers, eta, log_prior,
                         alpha, beta, log_sigma, mode, reduction):
    n, (B, D) = pred.shape[0], offset.shape
    loss = pred.new_empty(() if reduction in ("mean", "sum") else (n,))
    return loss, pred.new_empty((B,)), offset.new_empty((B,)), offset.new_empty((B, D)), pred.new_empty((n, 5))


@torch.library.register_fake("irda_ext::irda_head_loss_backward")  # host-only
def _irda_head_loss_backward_fake(grad, target, bin_index, weight, bias, offset, keep, iso, bin_shift, bin_var, cov_w,
                                  partials, alpha, beta, log_sigma, num_clusters, mode, reduction):
    return target.new_empty(target.shape), torch.empty_like(weight), torch.empty_like(bias), torch.empty_like(log_sigma)


@_fake("bin_stats_update_")
def _bin_stats_update_fake(count, mean, cov, z, bin_index, momentum):
    return None


@_fake("merge_bin_moments_")
def _merge_bin_moments_fake(count, mean, cov, batch_count, batch_mean, batch_scatter, momentum):
    return None


@_fake("wfds_smooth")
def _wfds_smooth_fake(weights, mean, cov, bandwidth):
    return torch.empty_like(mean), torch.empty_like(cov)


def _banded_weight_grad(grad_mean, mean, grad_cov, cov, bandwidth):
    """d/dS of sum(grad_mean * S@mean) + sum(grad_cov * S.cov), zero outside the band."""
    num_bins = mean.shape[0]
    grad = mean.new_zeros((num_bins, num_bins))
    for offset in range(-bandwidth, bandwidth + 1):
        lo, hi = max(0, -offset), min(num_bins, num_bins - offset)
        if lo >= hi:
            continue
        rows = torch.arange(lo, hi, device=mean.device)
        value = mean.new_zeros((hi - lo,))
        if grad_mean is not None:
            value = value + (grad_mean[lo:hi] * mean[lo + offset : hi + offset]).sum(-1)
        if grad_cov is not None:
            value = value + (grad_cov[lo:hi] * cov[lo + offset : hi + offset]).sum((-2, -1))
        grad = grad.index_put((rows, rows + offset), value)
    return grad


def _wfds_smooth_setup(ctx, inputs, output):
    weights, mean, cov, bandwidth = inputs
    ctx.save_for_backward(weights, mean, cov)
    ctx.bandwidth = bandwidth


def _wfds_smooth_backward(namespace_ops, ctx, grad_mean, grad_cov):
    weights, mean, cov = ctx.saved_tensors
    h = ctx.bandwidth
    if grad_mean is None:
        grad_mean = torch.zeros_like(mean)
    if grad_cov is None:
        grad_cov = torch.zeros_like(cov)
    d_weights = d_mean = d_cov = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # The transpose of a band matrix is a band matrix of the same width.
        d_mean, d_cov = namespace_ops.wfds_smooth(weights.t().contiguous(), grad_mean, grad_cov, h)
    if ctx.needs_input_grad[0]:
        d_weights = _banded_weight_grad(grad_mean, mean, grad_cov, cov, h)
    return d_weights, d_mean, d_cov, None




@_fake("irda_surrogate")
def _irda_surrogate_fake(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                         noise_var, mode):
    n = pred.shape[0]
    lse_width = eta.shape[0] if mode == "exact" else 1
    return pred.new_empty((n,)), pred.new_empty((n, lse_width))


@_fake("irda_surrogate_backward")
def _irda_surrogate_backward_fake(grad_loss, pred, target, bin_index, centers, eta, log_prior, shift, var,
                                  alpha, beta, noise_var, mode, lse):
    n = pred.shape[0]
    return tuple(pred.new_empty((n,)) for _ in range(4))


def _irda_surrogate_setup(ctx, inputs, output):
    pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode = inputs
    _, lse = output
    ctx.save_for_backward(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, lse)
    ctx.alpha, ctx.beta, ctx.mode = alpha, beta, mode


def _irda_surrogate_backward(namespace_ops, ctx, grad_loss, grad_lse):
    pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, lse = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros_like(pred)
    g_pred, g_shift, g_var, g_noise = namespace_ops.irda_surrogate_backward(
        grad_loss, pred, target, bin_index, centers, eta, log_prior, shift, var,
        ctx.alpha, ctx.beta, noise_var, ctx.mode, lse,
    )
    # Per-sample contributions summed here, in a fixed order: deterministic.
    g_noise = g_noise.sum().reshape(noise_var.shape)
    return g_pred, None, None, None, None, None, g_shift, g_var, None, None, g_noise, None


def _irda_surrogate_backward_setup(ctx, inputs, output):
    pass


def _irda_surrogate_double_backward(ctx, *grads):
    raise RuntimeError(
        "the fused irda_ext.irda_surrogate is differentiable once: its backward has no derivative. For "
        "second derivatives (a look-ahead step, a gradient penalty) use irda_ext.reference.irda_surrogate, the "
        "dense PyTorch version, which is twice differentiable (IRDALoss.head_loss(lookahead=True) uses it)")


for _namespace in NAMESPACES:
    _namespace_ops = getattr(torch.ops, _namespace)
    torch.library.register_autograd(f"{_namespace}::wfds_smooth",
                                    functools.partial(_wfds_smooth_backward, _namespace_ops),
                                    setup_context=_wfds_smooth_setup)
    if _namespace != "irda_ext":  # irda_ext's is in C++ (csrc/autograd.cpp), the same rule without Python
        torch.library.register_autograd(f"{_namespace}::irda_surrogate",
                                        functools.partial(_irda_surrogate_backward, _namespace_ops),
                                        setup_context=_irda_surrogate_setup)
    # A second derivative through the fused op raises, instead of silently giving zeros.
    torch.library.register_autograd(f"{_namespace}::irda_surrogate_backward", _irda_surrogate_double_backward,
                                    setup_context=_irda_surrogate_backward_setup)
# irda_head_loss's autograd is in C++ (csrc/autograd.cpp); a backward that builds a graph runs
# its backward op through this, which raises at a second derivative.
torch.library.register_autograd("irda_ext::irda_head_loss_backward", _irda_surrogate_double_backward,
                                setup_context=_irda_surrogate_backward_setup)

# The ops with a CUDA kernel and an emulated twin; the host-only ones (``kmeans``, the epoch-end
# k-means, csrc/cpu/kmeans.cpp; ``canonical_order``, its rows' order, csrc/cpu/canonical_order.cpp;
# ``bin_stats_plan_``, ``bin_stats_epoch_plan_`` and
# ``bin_stats_apply_``, BinStats' deferred covariance updates, csrc/cpu/bin_stats.cpp;
# ``bin_index`` and ``confusion_add_``, Bins.index and the confusion counts on CPU tensors,
# csrc/cpu/bin_index.cpp; ``reservoir_add_``, FeatureReservoir.add on CPU tensors,
# csrc/cpu/reservoir.cpp; ``wfds_smooth_upper``, IRDALoss' smoothed statistics for its fused
# step, csrc/cpu/wfds_smooth.cpp; ``irda_surrogate_with_partials`` and
# ``irda_surrogate_partials_backward``, the surrogate's autograd path on the CPU,
# csrc/autograd.cpp; ``irda_head_loss`` and its backward, IRDALoss's training step on the CPU,
# csrc/cpu/irda_head.cpp) have a CPU kernel only.
OP_NAMES = ("bin_moments", "bin_stats_update_", "merge_bin_moments_", "wfds_smooth", "irda_surrogate",
            "irda_surrogate_backward")
