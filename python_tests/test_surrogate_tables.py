"""Exact mode's denominator tables (csrc/cpu/irda_surrogate.cpp, DenominatorPlan and
ThreadDenominators): when the samples of a bin share their var, as IRDALoss gives them, the
CPU kernel computes a, 1 / r and -log(r) / 2 once per (bin, s2) and thread instead of once per
sample. The results must be the per-sample path's bit for bit, and the reference's."""
import os
import sys

import pytest
import torch
from testing import surrogate_inputs

import irda_ext
from irda_ext import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from cases import var_per_bin  # noqa: E402  (the benchmark's IRDALoss case)

OPS = torch.ops.irda_ext


def with_strangers(args, extra, seed=2):
    """``args`` followed by ``extra`` samples, each with a var of its own: more distinct
    (bin, s2) pairs than half the samples, so no table is built and every sample, the first
    ones included, takes the per-sample path."""
    g = torch.Generator().manual_seed(seed)
    n, B = args[0].shape[0], args[3].shape[0]
    live = torch.isfinite(args[5]).nonzero().reshape(-1)
    bins = live[torch.randint(0, live.numel(), (extra,), generator=g)]
    out = list(args)
    per_sample = {0: bins.to(args[0]) + 0.3, 1: bins.to(args[1]) + 0.5, 6: torch.zeros(extra, dtype=args[6].dtype),
                  7: (torch.arange(extra, dtype=torch.float64) + 1).to(args[7]) * 1e-3}
    for j, tail in per_sample.items():
        out[j] = torch.cat([args[j], tail])
    out[2] = torch.cat([args[2], bins])
    assert out[0].shape[0] == n + extra and B == args[3].shape[0]
    return out


def raw(args, grad=None):
    pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv = [a.detach() if torch.is_tensor(a) else a
                                                                       for a in args]
    loss, lse = OPS.irda_surrogate(pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv, "exact")
    grad = torch.linspace(0.5, 1.5, loss.shape[0], dtype=loss.dtype) if grad is None else grad
    grads = OPS.irda_surrogate_backward(grad, pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv, "exact",
                                        lse)
    return loss, lse, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,K,B", [(2, 1, 1), (40, 3, 7), (97, 2, 11), (64, 5, 29)])
@pytest.mark.parametrize("var_scale", [0.3, 50.0])  # 50: the cap on s2 is active in some bins
def test_tables_give_the_per_sample_bits(dtype, n, K, B, var_scale):
    args = var_per_bin(surrogate_inputs(n, K, B, dtype=dtype, dead_bins=(B // 2,) if B > 2 else ()), var_scale)
    loss, lse, grads = raw(args)  # tables (at most B distinct (bin, s2) pairs for n samples)
    strangers = with_strangers(args, extra=3 * n)
    grad = torch.cat([torch.linspace(0.5, 1.5, n, dtype=dtype), torch.ones(3 * n, dtype=dtype)])
    loss2, lse2, grads2 = raw(strangers, grad)  # no tables
    assert torch.equal(loss, loss2[:n]) and torch.equal(lse, lse2[:n])
    for g, g2 in zip(grads, grads2):
        assert torch.equal(g, g2[:n])


@pytest.mark.parametrize("n,K,B", [(1, 1, 1), (40, 3, 7), (97, 2, 11)])
def test_tables_match_the_reference(n, K, B):
    args = var_per_bin(surrogate_inputs(n, K, B, requires_grad=True, dead_bins=(B // 2,) if B > 2 else ()), 3.0)
    got = irda_ext.irda_surrogate(*args, mode="exact", reduction="none")
    want = ref.irda_surrogate(*args, mode="exact", reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    wrt = [args[0], args[6], args[7], args[10]]
    for a, b in zip(torch.autograd.grad(got.sum(), wrt), torch.autograd.grad(want.sum(), wrt)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_gradcheck_with_a_var_per_bin():
    # gradcheck moves one var at a time: that sample leaves its bin's table for one of its own
    args = var_per_bin(surrogate_inputs(12, 2, 5, requires_grad=True, dead_bins=(3,)), 0.5)

    def f(pred, shift, var, nv):
        return irda_ext.irda_surrogate(pred, args[1], args[2], args[3], args[4], args[5], shift, var, args[8],
                                       args[9], nv, mode="exact", reduction="none")

    inputs = [args[0].detach().requires_grad_(), args[6].detach().requires_grad_(),
              args[7].detach().requires_grad_(), args[10].detach().requires_grad_()]
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("per_bin", [True, False])
def test_threads_give_the_same_bits(per_bin):
    # two threads split the bin-sorted samples in the middle of a bin: both compute that
    # bin's table, to the same bits
    args = surrogate_inputs(97, 3, 11, dtype=torch.float32, dead_bins=(5,))
    args = var_per_bin(args, 2.0) if per_bin else list(args)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = raw(args)
        torch.set_num_threads(2)
        two = raw(args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    for a, b in zip(one[2], two[2]):
        assert torch.equal(a, b)
