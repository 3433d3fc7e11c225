"""Value checks without host synchronisation (review, fix 6).

Reading a CUDA tensor's values on the host (``int(t.min())``, ``bool(t.all())``) stops the
host until the GPU has caught up: once per check per training step. The library reads values
on the host only for CPU tensors; elsewhere the kernels check on the device and irda_ext._validate
queues torch._assert_async. Under FakeTensorMode, CUDA tensors need no GPU and any host read
of a value raises DataDependentOutputException: these tests run the CUDA path's Python on any
machine and fail on every host read (the autograd engine needs a real device, so backward
passes are left to test_cuda_precision.py::test_no_host_synchronisation, which checks the
whole step on a GPU with torch.cuda.set_sync_debug_mode("error")).
"""
import pytest
import torch
from testing import features, surrogate_inputs
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import irda_ext
from irda_ext import Bins, IRDALoss, _validate


def _criterion(clamp_targets):
    torch.manual_seed(0)
    criterion = IRDALoss(Bins(0, 30, 1), 16, 2, clamp_targets=clamp_targets, kmeans_samples=64)
    criterion.fit_prior(torch.rand(500) * 30)
    return criterion, nn.Linear(16, 1)


def test_ops_read_no_cuda_value_on_the_host():
    with FakeTensorMode(allow_non_fake_inputs=True):
        z, b = (t.to("cuda") for t in features(256, 64, 100, dtype=torch.float32))
        irda_ext.bin_moments(z, b, 100)
        stats = irda_ext.BinStats(100, 64, momentum=0.9, device="cuda")
        stats.update(z, b)
        irda_ext.wfds_smooth(torch.rand(100, 100, device="cuda"), stats.mean, stats.cov, 2)
        args = [a.to("cuda") if isinstance(a, torch.Tensor) else a
                for a in surrogate_inputs(256, 3, 100, dtype=torch.float32)]
        for mode in ("exact", "paper"):
            irda_ext.irda_surrogate(*args, mode=mode)
            loss, lse = torch.ops.irda_ext.irda_surrogate(*args, mode)
            torch.ops.irda_ext.irda_surrogate_backward(torch.ones_like(loss), *args, mode, lse)


def test_irda_loss_forward_reads_no_cuda_value_on_the_host():
    """One IRDALoss step (statistics update, confusion, reservoir, W-FDS, isotropic
    adjustment, surrogate) on CUDA tensors, with targets clamped into the bins (Bins.index
    reads them otherwise: the next test)."""
    criterion, head = _criterion(clamp_targets=True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        criterion, head = criterion.to("cuda"), head.to("cuda")
        criterion(torch.randn(32, 16, device="cuda"), torch.rand(32, device="cuda") * 30, head)


def test_irda_loss_forward_checks_the_target_range_on_the_device():
    criterion, head = _criterion(clamp_targets=False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        criterion, head = criterion.to("cuda"), head.to("cuda")
        criterion(torch.randn(32, 16, device="cuda"), torch.rand(32, device="cuda") * 30, head)


def test_validate_reads_no_cuda_value_on_the_host():
    """The checks other modules call keep their names and arguments and queue device asserts."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        t = torch.rand(8, device="cuda")
        _validate.check_bin_index(torch.zeros(8, dtype=torch.int64, device="cuda"), 8, 3, t.device)
        _validate.check_finite(t, "t")
        _validate.check_in_range(t, "t", 0.0, 1.0)
        _validate.check_noise_var(torch.tensor(2.0, device="cuda"), t)


def test_validate_on_cpu_raises_value_errors():
    with pytest.raises(ValueError, match=r"bin_index values must be in \[0, 3\)"):
        _validate.check_bin_index(torch.tensor([0, 3]), 2, 3, torch.device("cpu"))
    _validate.check_bin_index(torch.tensor([0, 3]), 2, 3, torch.device("cpu"), values=False)  # the kernel's job
    with pytest.raises(ValueError, match="t contains NaN or infinite"):
        _validate.check_finite(torch.tensor([0.0, float("inf")]), "t")
    with pytest.raises(ValueError, match=r"1 value\(s\) of y outside \[0.0, 30.0\] \(e.g. 55.0\)"):
        _validate.check_in_range(torch.tensor([1.0, 55.0]), "y", 0.0, 30.0)
    with pytest.raises(ValueError, match="outside"):
        _validate.check_in_range(torch.tensor([float("nan")]), "y", 0.0, 30.0)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        _validate.check_noise_var(torch.tensor(0.0), torch.zeros(1))


def test_check_in_range_survives_compile():
    """A compiled step keeps the check (as torch._assert_async), where a host read would be
    skipped or break the graph."""
    def step(y):
        _validate.check_in_range(y, "targets", 0.0, 30.0)
        return y * 2

    compiled = torch.compile(step, fullgraph=True)
    assert compiled(torch.tensor([1.0, 29.0])).tolist() == [2.0, 58.0]
    with pytest.raises(RuntimeError, match=r"targets has values outside \[0.0, 30.0\]"):
        compiled(torch.tensor([1.0, 55.0]))


def test_compiled_irda_step_rejects_out_of_range_targets():
    """Eager IRDALoss raises for y = 55 with Bins(0, 30, 1); the compiled step must not clamp it silently."""
    torch.manual_seed(0)
    backbone = nn.Linear(5, 16)
    criterion, head = _criterion(clamp_targets=False)

    def step(x, y):
        return criterion(backbone(x), y, head)

    x, y = torch.randn(4, 5), torch.tensor([1.0, 2.0, 3.0, 55.0])
    with pytest.raises(ValueError, match="outside"):
        step(x, y)
    with pytest.raises((ValueError, RuntimeError), match="outside"):
        torch.compile(step, fullgraph=True)(x, y)
