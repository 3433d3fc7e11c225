"""Input checks shared by the Python wrappers: messages say what was expected and what came.

Shape and dtype checks cost nothing. Value checks (index range, NaN) read the
data: the CPU kernels do them inline, so here they run only for other devices,
and never while ``torch.compile`` traces.
"""
from __future__ import annotations

import torch


def check_tensor(t, name: str, dim: int | None = None, floating: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(t.shape)}")


def _reads_values(t: torch.Tensor) -> bool:
    return t.device.type != "cpu" and not torch.compiler.is_compiling()


def check_bin_index(bin_index, n: int, num_bins: int, device) -> None:
    check_tensor(bin_index, "bin_index")
    if bin_index.dtype != torch.int64:
        raise TypeError(f"bin_index must be int64, got {bin_index.dtype}")
    if bin_index.dim() != 1 or bin_index.shape[0] != n:
        raise ValueError(f"bin_index must have shape [{n}] (one bin per sample), got {tuple(bin_index.shape)}")
    if bin_index.device != device:
        raise ValueError(f"bin_index is on {bin_index.device}, expected {device}")
    if _reads_values(bin_index) and n > 0:
        lo, hi = int(bin_index.min()), int(bin_index.max())
        if lo < 0 or hi >= num_bins:
            raise ValueError(f"bin_index values must be in [0, {num_bins}), got range [{lo}, {hi}]")


def check_finite(t: torch.Tensor, name: str) -> None:
    if _reads_values(t) and t.numel() > 0 and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
