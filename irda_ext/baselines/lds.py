"""Label Distribution Smoothing (LDS) re-weighting.

Source: Yang, Zha, Chen, Wang, Katabi, "Delving into Deep Imbalanced Regression", ICML
2021, section 3.1 and the reference code (``get_lds_kernel_window``,
``_prepare_weights``). The empirical label histogram is convolved with a symmetric kernel
to get the *effective* label density, and each training sample is weighted by its
inverse::

    h_b        = #{i : bin(y_i) = b}                       (bins of the label granularity)
    h_b        ← sqrt(h_b)            (reweight="sqrt_inv", the paper's default)
               | clip(h_b, 5, 1000)   (reweight="inverse")
    h̃_b       = Σ_{b'} k(b - b') h_{b'}                  (1-D convolution, zero padding)
    w_i        = 1 / h̃_{bin(y_i)},  then scaled so that mean_i w_i = 1

with the kernel window ``k`` of size 5 and σ = 2 (:func:`irda_ext.wfds.kernel_window`, the
reference code's windows reproduced exactly, shared with FDS and W-FDS):
``gaussian``  = a unit impulse filtered by ``scipy.ndimage.gaussian_filter1d(σ)``,
``triang``    = ``scipy.signal.windows.triang(ks)``,
``laplace``   = ``exp(-|x|/σ)`` on ``x = -ks//2 .. ks//2``,
each divided by its maximum.

Unlike the reference code, labels need not be integers: the bin of a target comes from
:class:`irda_ext.Bins`-like binning (``bins.index(y, clamp=True)``) or from an explicit
integer ``bin_index``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.ndimage import convolve1d

from ..wfds import kernel_window

LDS_REWEIGHTS = ("sqrt_inv", "inverse")


def lds_bin_weights(counts, reweight: str = "sqrt_inv", kernel: str = "gaussian", kernel_size: int = 5,
                    sigma: float = 2.0, smooth: bool = True) -> torch.Tensor:
    """Per-bin inverse smoothed density ``1 / h̃_b`` (unnormalised), ``[B]`` float64.

    Bins whose smoothed density is 0 (far from every training label) get weight 0: no
    training sample falls there, so the value is never used for a loss.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).detach().cpu()
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D histogram, got shape {tuple(counts.shape)}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    if reweight not in LDS_REWEIGHTS:
        raise ValueError(f"reweight must be one of {LDS_REWEIGHTS}, got {reweight!r}")
    h = counts.numpy()
    h = np.sqrt(h) if reweight == "sqrt_inv" else np.clip(h, 5, 1000)
    if smooth:
        h = convolve1d(h, weights=kernel_window(kernel, kernel_size, sigma).numpy(), mode="constant")
    h = torch.from_numpy(np.asarray(h, dtype=np.float64))
    return torch.where(h > 0, 1.0 / h.clamp_min(1e-300), torch.zeros_like(h))


def lds_weights(targets: torch.Tensor, bins=None, bin_index: Optional[torch.Tensor] = None,
                num_bins: Optional[int] = None, reweight: str = "sqrt_inv", kernel: str = "gaussian",
                kernel_size: int = 5, sigma: float = 2.0, smooth: bool = True) -> torch.Tensor:
    """LDS per-sample weights of the training targets, ``[N]``, mean 1, float32.

    Args:
        targets: ``[N]`` training targets (continuous values are fine).
        bins: an object with ``num_bins`` and ``index(y, clamp=True)`` (``irda_ext.Bins``);
            or give ``bin_index`` ``[N]`` (int) and ``num_bins`` instead.
        reweight: ``"sqrt_inv"`` (paper default) or ``"inverse"``.
        kernel, kernel_size, sigma: the smoothing window (gaussian, 5, 2 in the paper).
        smooth: False gives plain (sqrt-)inverse-frequency weights (no LDS).
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() != 1 or targets.numel() == 0:
        raise ValueError(f"targets must be a non-empty 1-D tensor, got shape {tuple(targets.shape)}")
    if bin_index is None:
        if bins is None:
            raise ValueError("give either bins or bin_index (with num_bins)")
        bin_index = bins.index(targets, clamp=True)
        num_bins = int(bins.num_bins)
    else:
        if not isinstance(bin_index, torch.Tensor):
            raise TypeError(f"bin_index must be a torch.Tensor, got {type(bin_index).__name__}")
        if bin_index.is_floating_point() or bin_index.is_complex() or bin_index.dtype == torch.bool:
            raise TypeError(f"bin_index must be an integer tensor, got {bin_index.dtype}")
        if num_bins is None:
            raise ValueError("num_bins is required with bin_index")
        if bin_index.shape != targets.shape:
            raise ValueError(f"bin_index must have shape {tuple(targets.shape)}, got {tuple(bin_index.shape)}")
    bin_index = bin_index.long().cpu()
    if bin_index.min() < 0 or bin_index.max() >= num_bins:
        raise ValueError(f"bin_index must lie in [0, {num_bins}), got [{int(bin_index.min())}, {int(bin_index.max())}]")
    counts = torch.bincount(bin_index, minlength=num_bins)
    per_bin = lds_bin_weights(counts, reweight, kernel, kernel_size, sigma, smooth)
    w = per_bin[bin_index]
    w = w * (w.numel() / w.sum())
    return w.to(torch.float32).to(targets.device)
