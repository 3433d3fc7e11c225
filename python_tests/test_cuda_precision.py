"""CUDA kernels: low-precision tolerance policy and the properties the device-generic
tests do not show.

Tolerance policy for half / bfloat16 features: against a float64 reference, a kernel's
error is at most twice the error of the same computation written in PyTorch at that
precision (plus a few float32 roundings, which is where the kernels accumulate).
The rest checks bitwise determinism, absent bins never written, and agreement with the
CPU kernels at the benchmark's sizes on every device that runs the CUDA kernels' code
(``gpu_devices()``: the emulated launch, and a GPU where there is one; the emulation
gets smaller sizes where the benchmark's would be slow), and what only a GPU can show:
no host synchronisation, launches on the current stream, the device guard.
"""
import pytest
import torch
from testing import emulated, features, gpu_devices, has_cuda, surrogate_inputs

import irda_ext
from irda_ext import reference as ref

needs_gpu = pytest.mark.skipif(not has_cuda(), reason="needs a GPU and the CUDA kernels")

LOW = [torch.float16, torch.bfloat16]
F32_EPS = torch.finfo(torch.float32).eps


def _err(got, want):
    return (got.double().cpu() - want.double().cpu()).abs().max().item()


def _floor(want):
    """A few float32 roundings of the largest value: the kernels' own accumulation precision."""
    return 8 * F32_EPS * max(want.abs().max().item(), 1.0)


def _torch_moments(z, bin_index, num_bins):
    """Per-bin mean and centred scatter, every step in z's own dtype."""
    onehot = torch.nn.functional.one_hot(bin_index, num_bins).to(z.dtype)
    count = onehot.sum(0)
    mean = (onehot.t() @ z) / count.clamp_min(1)[:, None]
    centred = z - mean[bin_index]
    scatter = torch.einsum("nb,nd,ne->bde", onehot, centred, centred)
    return mean, scatter


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n,D,B", [(97, 33, 7), (256, 130, 100), (1025, 64, 3)])
def test_bin_moments_low_precision_policy(device, dtype, n, D, B):
    z, b = features(n, D, B, device, dtype=torch.float64, offset=3.0)
    z_low = z.to(dtype)
    want_mean, want_scatter = _torch_moments(z_low.double(), b, B)  # float64 of the same inputs
    count, mean, scatter = irda_ext.bin_moments(z_low, b, B)
    assert mean.dtype == scatter.dtype == torch.float32
    torch_mean, torch_scatter = _torch_moments(z_low, b, B)
    assert _err(mean, want_mean) <= 2 * _err(torch_mean, want_mean) + _floor(want_mean)
    assert _err(scatter, want_scatter) <= 2 * _err(torch_scatter, want_scatter) + _floor(want_scatter)
    torch.testing.assert_close(count.cpu(), torch.bincount(b.cpu(), minlength=B))


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("momentum", [None, 0.9])
@pytest.mark.parametrize("D", [96, 130])  # tiles of 16 and of 64
def test_bin_stats_update_low_precision_policy(device, dtype, momentum, D):
    n, B = 256, 20
    stats = irda_ext.BinStats(B, D, momentum=momentum, stats="cumulative" if momentum is None else "batch",
                              dtype=torch.float32, device=device)
    want = (torch.zeros(B, dtype=torch.int64), torch.zeros(B, D, dtype=torch.float64),
            torch.zeros(B, D, D, dtype=torch.float64))
    low = (torch.zeros(B, dtype=torch.int64, device=device), torch.zeros(B, D, dtype=dtype, device=device),
           torch.zeros(B, D, D, dtype=dtype, device=device))
    for step in range(3):
        z, b = features(n, D, B, device, dtype=torch.float64, seed=step, offset=2.0 + step)
        z_low = z.to(dtype)
        stats.update(z_low, b)
        want = ref.bin_stats_update(*want, z_low.double().cpu(), b.cpu(), momentum)
        low = _torch_update(*low, z_low, b, momentum)
    torch.testing.assert_close(stats.count.cpu(), want[0])
    for got, in_torch, truth in ((stats.mean, low[1], want[1]), (stats.cov, low[2], want[2])):
        assert _err(got, truth) <= 2 * _err(in_torch, truth) + _floor(truth)


def _torch_update(count, mean, cov, z, bin_index, momentum):
    """The streaming merge of reference.bin_stats_update with every step in z's dtype."""
    B = mean.shape[0]
    n_b = torch.bincount(bin_index, minlength=B)
    m_b, scatter = _torch_moments(z, bin_index, B)
    count, mean, cov = count.clone(), mean.clone(), cov.clone()
    for b in torch.nonzero(n_b).flatten().tolist():
        nb, n_old = int(n_b[b]), int(count[b])
        if momentum is None or n_old == 0:
            n = n_old + nb
            delta = m_b[b] - mean[b]
            m2 = (cov[b] * (n_old - 1) if n_old >= 2 else torch.zeros_like(cov[b])) + scatter[b] \
                + torch.outer(delta, delta) * (n_old * nb / n)
            mean[b] = mean[b] + delta * (nb / n)
            cov[b] = m2 / (n - 1) if n >= 2 else torch.zeros_like(m2)
        else:
            batch_cov = scatter[b] / (nb - 1) if nb >= 2 else torch.zeros_like(scatter[b])
            mean[b] = momentum * mean[b] + (1 - momentum) * m_b[b]
            cov[b] = momentum * cov[b] + (1 - momentum) * batch_cov
        count[b] += nb
    return count, mean, cov


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("mode", ["exact", "paper"])
def test_surrogate_float32_policy(device, mode):
    """The fused float32 surrogate is as accurate as the dense float32 PyTorch version."""
    args64 = surrogate_inputs(256, 3, 100, "cpu", torch.float64, seed=3, dead_bins=(5, 50))
    want = ref.irda_surrogate(*args64, mode=mode, reduction="none")
    args32 = [a.to(torch.float32) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args64]
    in_torch = ref.irda_surrogate(*args32, mode=mode, reduction="none")
    args_dev = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args32]
    got = irda_ext.irda_surrogate(*args_dev, mode=mode, reduction="none")
    assert _err(got, want) <= 2 * _err(in_torch, want) + _floor(want)


def _irda_step(clamp_targets):
    from torch import nn

    torch.manual_seed(0)
    criterion = irda_ext.IRDALoss(irda_ext.Bins(0, 100, 1), 64, 3, clamp_targets=clamp_targets)
    criterion.fit_prior(torch.rand(2000) * 100)
    criterion, head = criterion.cuda(), nn.Linear(64, 1).cuda()
    features_ = torch.randn(256, 64, device="cuda", requires_grad=True)
    targets = torch.rand(256, device="cuda") * 100

    def step():
        loss = criterion(features_, targets, head)
        loss.backward()

    step()  # warm-up: allocations, lazy initialisation
    return step


@needs_gpu
def test_no_host_synchronisation():
    z, b = features(256, 64, 100, "cuda", dtype=torch.float32)
    count = torch.zeros(100, dtype=torch.int64, device="cuda")
    mean = torch.zeros(100, 64, device="cuda")
    cov = torch.zeros(100, 64, 64, device="cuda")
    S = torch.rand(100, 100, device="cuda")
    args = surrogate_inputs(256, 3, 100, "cuda", torch.float32, requires_grad=True)
    stats = irda_ext.BinStats(100, 64, momentum=0.9, device="cuda")
    irda_step = _irda_step(clamp_targets=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.irda_ext.bin_moments(z, b, 100)
        torch.ops.irda_ext.bin_stats_update_(count, mean, cov, z, b, None)
        torch.ops.irda_ext.bin_stats_update_(count, mean, cov, z, b, 0.9)
        torch.ops.irda_ext.wfds_smooth(S, mean, cov, 2)
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        loss, lse = torch.ops.irda_ext.irda_surrogate(*plain, "exact")
        torch.ops.irda_ext.irda_surrogate_backward(torch.ones_like(loss), *plain, "exact", lse)
        # the Python entry points and a whole IRDALoss step, forward and backward
        irda_ext.bin_moments(z, b, 100)
        stats.update(z, b)
        irda_ext.wfds_smooth(S, mean, cov, 2)
        irda_ext.irda_surrogate(*args).backward()
        irda_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_gpu
def test_no_host_synchronisation_with_target_range_check():
    irda_step = _irda_step(clamp_targets=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        irda_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_gpu
def test_runs_on_the_current_stream():
    z, b = features(300, 40, 9, "cuda", dtype=torch.float32)
    expected = irda_ext.bin_moments(z, b, 9)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # z_late is written on the side stream after a long sleep: a kernel launched on
        # any other stream would read the zeros. (The raw op: the Python wrapper's
        # value checks would synchronise.)
        z_late = torch.zeros_like(z)
        torch.cuda._sleep(50_000_000)
        z_late.copy_(z)
        got = torch.ops.irda_ext.bin_moments(z_late, b, 9)
    torch.cuda.current_stream().wait_stream(side)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.skipif(not has_cuda() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_guard_second_gpu():
    z, b = features(64, 16, 5, "cuda:1", dtype=torch.float32)
    with torch.cuda.device(0):
        got = irda_ext.bin_moments(z, b, 5)
    assert got[1].device == torch.device("cuda:1")
    for g, w in zip(got, ref.bin_moments(z.cpu(), b.cpu(), 5)):
        torch.testing.assert_close(g.cpu(), w)


@pytest.mark.parametrize("device", gpu_devices())
def test_deterministic(device):
    args = surrogate_inputs(256, 4, 60, device, torch.float32, requires_grad=True, seed=1)
    grads = []
    for _ in range(2):
        for t in (args[0], args[6], args[7], args[10]):
            t.grad = None
        irda_ext.irda_surrogate(*args, mode="exact").backward()
        grads.append([args[j].grad.clone() for j in (0, 6, 7, 10)])
    assert all(torch.equal(g, h) for g, h in zip(*grads))
    z, b = features(512, 80, 10, device, dtype=torch.float32)
    first, second = irda_ext.bin_moments(z, b, 10), irda_ext.bin_moments(z, b, 10)
    assert all(torch.equal(f, s) for f, s in zip(first, second))
    assert torch.equal(first[2], first[2].transpose(1, 2))  # exactly symmetric


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_absent_bins_never_written(device, momentum):
    B, D = 12, 70
    stats = [torch.zeros(B, dtype=torch.int64, device=device), torch.full((B, D), float("nan"), device=device),
             torch.full((B, D, D), float("nan"), device=device)]
    present = [1, 4, 11]
    for b in present:
        stats[1][b].zero_()
        stats[2][b].zero_()
    z, b = features(90, D, B, device, dtype=torch.float32, bins=[present[i % 3] for i in range(90)])
    torch.ops.irda_ext.bin_stats_update_(*stats, z, b, momentum)
    absent = [k for k in range(B) if k not in present]
    assert stats[1][absent].isnan().all() and stats[2][absent].isnan().all()
    assert stats[1][present].isfinite().all() and stats[2][present].isfinite().all()
    assert stats[0][absent].eq(0).all() and stats[0][present].eq(30).all()


def _cpu_kernels(fn, *args):
    """fn(*args) with the CPU kernels, also inside an emulated test."""
    if not emulated():
        return fn(*args)
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return fn(*args)


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ["cumulative", "batch", "epoch"])
def test_bin_stats_matches_cpu_at_benchmark_size(device, dtype, estimator):
    n, D, B = (256, 130, 100) if emulated() else (256, 300, 100)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    cpu = irda_ext.BinStats(B, D, stats=estimator, dtype=dtype)
    dev = irda_ext.BinStats(B, D, stats=estimator, dtype=dtype, device=device)
    for step in range(6):
        z, b = features(n, D, B, "cpu", dtype=dtype, seed=step, offset=float(step))
        _cpu_kernels(cpu.update, z, b)
        dev.update(z.to(device), b.to(device))
        if step % 2:
            for stats in (cpu, dev):
                stats.end_epoch()
    for name, value in cpu.state_dict().items():
        torch.testing.assert_close(dev.state_dict()[name].cpu(), value, **tol)
    for got, want in zip(irda_ext.bin_moments(z.to(device), b.to(device), B), _cpu_kernels(irda_ext.bin_moments, z, b, B)):
        torch.testing.assert_close(got.cpu(), want, **tol)


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bandwidth", [0, 1, 2, 3, 4, 7])
def test_wfds_matches_cpu(device, dtype, bandwidth):
    """Every register window (h = 0..4) and the direct band (h = 7), over bin runs that do
    not divide B."""
    B, D = 37, 45
    g = torch.Generator().manual_seed(0)
    S = torch.rand(B, B, generator=g, dtype=torch.float64).to(dtype)
    mean = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)
    cov = torch.randn(B, D, D, generator=g, dtype=torch.float64).to(dtype)
    want = _cpu_kernels(torch.ops.irda_ext.wfds_smooth, S, mean, cov, bandwidth)
    got = torch.ops.irda_ext.wfds_smooth(S.to(device), mean.to(device), cov.to(device), bandwidth)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_.cpu(), w, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", gpu_devices())
@pytest.mark.parametrize("mode", ["exact", "paper"])
@pytest.mark.parametrize("K,B,var_scale", [(1, 5, 1.0), (3, 100, 1.0), (5, 33, 50.0)])
def test_surrogate_matches_cpu(device, mode, K, B, var_scale):
    """Forward and every gradient, including the capped variance (var_scale = 50)."""
    args = surrogate_inputs(97, K, B, "cpu", torch.float64, seed=K, dead_bins=(1,), var_scale=var_scale)
    grad = torch.randn(97, dtype=torch.float64)

    def run(dev):
        a = [x.to(dev) if isinstance(x, torch.Tensor) else x for x in args]
        loss, lse = torch.ops.irda_ext.irda_surrogate(*a, mode)
        grads = torch.ops.irda_ext.irda_surrogate_backward(grad.to(dev), *a, mode, lse)
        return (loss, lse, *grads)

    out = {"cpu": _cpu_kernels(run, "cpu"), "device": run(device)}
    for g_, w in zip(out["device"], out["cpu"]):
        torch.testing.assert_close(g_.cpu(), w, rtol=1e-10, atol=1e-10)


DEVICE_ASSERT_CASES = {  # case: code run on "cuda", the message the device-side assertion prints
    "surrogate_bin_out_of_range": ("a = list(surrogate_inputs(5, 2, 6, 'cuda')); a[2][0] = 6; "
                                   "irda_ext.irda_surrogate(*a)", "bin_index values must lie in"),
    "surrogate_bin_without_prior": ("a = list(surrogate_inputs(5, 2, 6, 'cuda', dead_bins=(3,))); a[2][0] = 3; "
                                    "irda_ext.irda_surrogate(*a)", "log_prior of a sample's own bin"),
    "surrogate_nan_target": ("a = list(surrogate_inputs(5, 2, 6, 'cuda')); a[1][1] = float('nan'); "
                             "irda_ext.irda_surrogate(*a)", "target must be finite"),
    "update_bin_out_of_range": ("z, b = features(9, 3, 4, 'cuda'); irda_ext.BinStats(4, 3, device='cuda')"
                                ".update(z, b + 4)", "bin_index values must lie in"),
    "update_nan_features": ("z, b = features(9, 3, 4, 'cuda'); z[2, 1] = float('nan'); "
                            "irda_ext.BinStats(4, 3, device='cuda').update(z, b)", "z contains NaN or infinite"),
    "merge_negative_batch_count": ("z, b = features(9, 3, 4, 'cuda', dtype=torch.float32); "
                                   "s = irda_ext.BinStats(4, 3, device='cuda'); m = irda_ext.bin_moments(z, b, 4); "
                                   "torch.ops.irda_ext.merge_bin_moments_(s.count, s.mean, s.cov, -m[0], m[1], m[2], "
                                   "None)", "batch_count must be non-negative"),
}


@needs_gpu
@pytest.mark.parametrize("case", DEVICE_ASSERT_CASES)
def test_value_checks_are_device_assertions(case):
    """On a GPU a bad value stops the kernel with a device-side assertion that names the
    input, without a host synchronisation. The CUDA context is lost afterwards, as after
    PyTorch's own index assertions, so every case runs in a process of its own."""
    import os
    import subprocess
    import sys

    code, message = DEVICE_ASSERT_CASES[case]
    here = os.path.dirname(os.path.abspath(__file__))
    script = "\n".join(["import sys, torch", f"sys.path.insert(0, {here!r})",
                        "from testing import features, surrogate_inputs", "import irda_ext", code,
                        "torch.cuda.synchronize()"])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "device-side assert" in out and message in out, out
