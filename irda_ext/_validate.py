"""Input checks of every Python entry point, the core's and the baselines': messages say
what was expected and what came.

One argument order throughout: the value first, then its name or what it must match
(``check_tensor(z, "z", dim=2)``, ``check_positive(sigma, "sigma")``).

Shape and dtype checks cost nothing. Value checks of tensors (index range, NaN) read the
data, which on a GPU would stop the host until the device catches up (a synchronisation
per step). So ``check_bin_index``, ``check_finite`` and ``check_noise_var`` read values on
the host only for CPU tensors in eager mode (raising ``ValueError``); for other devices, and
while ``torch.compile`` traces, they queue ``torch._assert_async`` instead, which fails at
the device (a device-side assertion on CUDA) and stays in a compiled graph. The kernels
check their own inputs the same way (on the CPU inline, on CUDA on the device), so the
wrappers of the ops skip the value checks the kernels make.
"""
from __future__ import annotations

from typing import Optional

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_tensor(value, name: str, *, dim: Optional[int] = None, floating: bool = True) -> torch.Tensor:
    """``value`` is a tensor (floating-point unless ``floating=False``) with ``dim`` dimensions;
    returns it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(value.shape)}")
    return value


def _on_host(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values costs no device synchronisation and no graph break."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_bin_index(bin_index, n: int, num_bins: int, device, values: bool = True) -> None:
    """``bin_index`` is ``[n]`` int64 on ``device`` with values in ``[0, num_bins)`` (the values
    are left to the caller's kernel with ``values=False``)."""
    check_tensor(bin_index, "bin_index", floating=False)
    if bin_index.dtype != torch.int64:
        raise TypeError(f"bin_index must be int64, got {bin_index.dtype}")
    if bin_index.dim() != 1 or bin_index.shape[0] != n:
        raise ValueError(f"bin_index must have shape [{n}] (one bin per sample), got {tuple(bin_index.shape)}")
    if bin_index.device != device:
        raise ValueError(f"bin_index is on {bin_index.device}, expected {device}")
    if not values or n == 0:
        return
    if _on_host(bin_index):
        lo, hi = int(bin_index.min()), int(bin_index.max())
        if lo < 0 or hi >= num_bins:
            raise ValueError(f"bin_index values must be in [0, {num_bins}), got range [{lo}, {hi}]")
    else:
        torch._assert_async(((bin_index >= 0) & (bin_index < num_bins)).all(),
                            f"bin_index values must be in [0, {num_bins})")


def check_finite(t: torch.Tensor, name: str) -> None:
    """``t`` has no NaN or infinite value."""
    if _on_host(t):
        if t.numel() > 0 and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    else:
        torch._assert_async(torch.isfinite(t).all(), f"{name} contains NaN or infinite values")


def check_in_range(t: torch.Tensor, name: str, low: float, high: float) -> None:
    """``t``'s values lie in ``[low, high]`` (NaN does not), as :func:`check_finite` checks:
    on the host for CPU tensors in eager mode, by ``torch._assert_async`` otherwise, which
    survives ``torch.compile``."""
    if _on_host(t):
        bad = torch.isnan(t) | (t < low) | (t > high)
        if bool(bad.any()):
            raise ValueError(f"{int(bad.sum())} value(s) of {name} outside [{low}, {high}] "
                             f"(e.g. {t[bad][0].item()})")
    else:
        torch._assert_async(((t >= low) & (t <= high)).all(), f"{name} has values outside [{low}, {high}] or NaN")


def check_pred_target(pred, target) -> None:
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def check_weight(weight, like: torch.Tensor) -> None:
    """Optional per-sample weights of the shape of ``like``."""
    if weight is None:
        return
    check_tensor(weight, "weight")
    if weight.shape != like.shape:
        raise ValueError(
            f"weight must have the per-sample shape {tuple(like.shape)}, got {tuple(weight.shape)}"
        )


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses reduced as ``reduction`` (one of :data:`REDUCTIONS`) says."""
    check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_nonnegative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_noise_var(noise_var, like: torch.Tensor) -> torch.Tensor:
    """``σ²`` as a scalar tensor (a float, or a 1-element tensor kept in the graph), > 0."""
    if isinstance(noise_var, torch.Tensor):
        if noise_var.numel() != 1:
            raise ValueError(f"noise_var must be a scalar, got shape {tuple(noise_var.shape)}")
        nv = noise_var.reshape(())
    elif isinstance(noise_var, (int, float)) and not isinstance(noise_var, bool):
        nv = torch.tensor(float(noise_var), dtype=like.dtype, device=like.device)
    else:
        raise TypeError(f"noise_var must be a float or a scalar tensor, got {type(noise_var).__name__}")
    if _on_host(nv):
        if not bool(nv.detach() > 0):
            raise ValueError(f"noise_var must be > 0, got {float(nv)}")
    else:
        torch._assert_async(nv.detach() > 0, "noise_var must be > 0")
    return nv
