"""Shared test helpers: the devices to run on and random inputs in each op's layout.

The devices: "cpu"; "emulated", the CUDA kernels' code run on the CPU by the emulated
launch (``torch.ops.irda_ext_emulated``, csrc/emulated), so that every device-parametrised
test runs the CUDA code paths on a machine without a GPU; "cuda" where a GPU and the CUDA
kernels exist. An emulated test sees device "cpu" (its tensors live there) while
:class:`EmulatedCuda`, entered by conftest.py, sends every irda_ext op to its emulated
twin; :func:`emulated` says whether it is on.
"""
import contextlib
import importlib.util
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import irda_ext

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def has_cuda():
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "irda_ext::bin_moments", "CUDA")


EMULATED = pytest.param("cpu", id="emulated", marks=pytest.mark.emulated)


def devices():
    """CPU, the emulated CUDA kernels, and CUDA where a GPU and the CUDA kernels exist."""
    return ["cpu", EMULATED] + (["cuda"] if has_cuda() else [])


def gpu_devices():
    """The devices that run the CUDA kernels' code: the emulation, and CUDA where it exists."""
    return [EMULATED] + (["cuda"] if has_cuda() else [])


class EmulatedCuda(TorchDispatchMode):
    """Sends every ``irda_ext`` op to ``irda_ext_emulated``, below autograd: the Python
    wrappers and the registered autograd run as they are, the kernels are the CUDA ones."""

    active = 0
    supports_higher_order_operators = True  # auto_functionalized of the in-place ops (opcheck)

    @staticmethod
    def _twin(op):
        # host-only ops (no emulated twin: kmeans, BinStats' deferred updates on CPU tensors)
        # run their CPU kernel, as they do next to a GPU
        if (isinstance(op, torch._ops.OpOverload) and op.namespace == "irda_ext"
                and hasattr(torch.ops.irda_ext_emulated, op._opname)):
            return getattr(getattr(torch.ops.irda_ext_emulated, op._opname), op._overloadname)
        return op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if isinstance(func, torch._ops.HigherOrderOperator):
            args = tuple(self._twin(a) for a in args)
        return self._twin(func)(*args, **(kwargs or {}))


@contextlib.contextmanager
def emulated_cuda():
    EmulatedCuda.active += 1
    try:
        with EmulatedCuda():
            yield
    finally:
        EmulatedCuda.active -= 1


def emulated():
    """Whether the irda_ext ops run the emulated CUDA kernels now."""
    return EmulatedCuda.active > 0


def surrogate_inputs(n, K, B, device="cpu", dtype=torch.float64, requires_grad=False, seed=0, dead_bins=(),
                     var_scale=1.0, noise_var=1.3):
    """Positional inputs of ``irda_surrogate`` with realistic values: targets in the bin
    range, eta columns summing to one, some bins without prior (``dead_bins``)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.arange(B, dtype=dtype) + 0.5
    lp = torch.log(torch.rand(B, generator=g, dtype=dtype) + 0.05)
    lp = lp - torch.logsumexp(lp, 0)
    live = [b for b in range(B) if b not in dead_bins]
    for b in dead_bins:
        lp[b] = -torch.inf
    bin_index = torch.tensor(live)[torch.randint(0, len(live), (n,), generator=g)]
    target = bin_index.to(dtype) + torch.rand(n, generator=g, dtype=dtype)
    pred = target + torch.randn(n, generator=g, dtype=dtype) * 2
    eta = torch.rand(K, B, generator=g, dtype=dtype) + 0.1
    eta = eta / eta.sum(0)
    shift = torch.randn(n, generator=g, dtype=dtype)
    var = torch.rand(n, generator=g, dtype=dtype) * var_scale
    nv = torch.tensor(noise_var, dtype=dtype)
    tensors = [pred, target, bin_index, centers, eta, lp, shift, var, nv]
    tensors = [t.to(device) for t in tensors]
    if requires_grad:
        for j in (0, 6, 7, 8):
            tensors[j].requires_grad_()
    pred, target, bin_index, centers, eta, lp, shift, var, nv = tensors
    return pred, target, bin_index, centers, eta, lp, shift, var, 0.5, 0.75, nv


def features(n, D, B, device="cpu", dtype=torch.float64, seed=0, offset=0.0, bins=None):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, D, generator=g, dtype=torch.float64) + offset).to(dtype)
    b = torch.randint(0, B, (n,), generator=g) if bins is None else torch.as_tensor(bins)
    return z.to(device), b.to(device)


def load_bench(name: str):
    """``bench/<name>.py`` as a module (bench/ on the path, as its scripts import their neighbours)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


__all__ = ["devices", "gpu_devices", "emulated", "emulated_cuda", "has_cuda", "surrogate_inputs", "features",
           "irda_ext", "load_bench"]
