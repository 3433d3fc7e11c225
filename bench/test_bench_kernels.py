"""pytest-benchmark suites of the CPU kernels: `pytest bench/ --benchmark-only`.

The side-by-side ratios against the targets are printed and saved by
bench/run_benchmarks.py; these suites give pytest-benchmark's statistics."""
import pytest
import torch
from cases import fwd_bwd, stats_batch, surrogate_batch, warm_stats
from isda_estimator import OneHotEstimator

import irda_ext
from irda_ext import reference as ref

N, D, B = 256, 512, 100


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_binstats_update(benchmark, momentum):
    z, b = stats_batch(N, D, B)
    stats = warm_stats(B, D, momentum)
    benchmark(stats.update, z, b)


def test_isda_onehot_update(benchmark):
    z, b = stats_batch(N, D, B)
    est = OneHotEstimator(B, D)
    benchmark.pedantic(est.update, (z, b), rounds=3, iterations=1)


def test_touched_bins_read_write_pass(benchmark):
    z, b = stats_batch(N, D, B)
    cov = warm_stats(B, D, None).cov
    present = torch.unique(b).tolist()

    def one_pass():
        for k in present:
            cov[k].mul_(1.0)

    benchmark(one_pass)


@pytest.mark.parametrize("mode", ["exact", "paper"])
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_surrogate_forward_backward(benchmark, mode, impl):
    args = surrogate_batch(256, 3, 100)
    fn = irda_ext.irda_surrogate if impl == "fused" else ref.irda_surrogate
    benchmark(fwd_bwd, fn, args, mode)
