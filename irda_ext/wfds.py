"""W-FDS: confusion-weighted kernel smoothing of per-bin statistics (SPEC 3, paper eq. 5-6),
and the kernel window it shares with LDS and FDS (``irda_ext.baselines``)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._ops import ops
from ._validate import check_tensor

KERNELS = ("gaussian", "triang", "laplace")
"""The kernel names of LDS/FDS (DIR's ``get_lds_kernel_window``), also those of W-FDS."""

# scipy.ndimage.gaussian_filter1d samples the Gaussian up to truncate * sigma (truncate = 4).
_GAUSSIAN_TRUNCATE = 4.0


def _reflected(i: torch.Tensor, n: int) -> torch.Tensor:
    """Positions outside ``0 .. n-1`` folded back as scipy.ndimage's ``mode="reflect"``
    does (``d c b a | a b c d | d c b a``), for any distance."""
    i = i % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def kernel_window(kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The kernel window of LDS and FDS over bin distance ``-(ks//2) .. ks//2``, peak 1.

    DIR's ``get_lds_kernel_window`` (Yang et al., "Delving into Deep Imbalanced
    Regression", ICML 2021, reference code), each window divided by its maximum:

    - ``gaussian``: ``scipy.ndimage.gaussian_filter1d`` of a unit impulse at the centre of
      ``ks`` bins: the Gaussian sampled at ``|t| <= int(4 sigma + 0.5)``, normalised, with
      the taps beyond the window folded back by the reflecting boundary (which changes the
      outer weights by a few per cent from ``exp(-x^2 / (2 sigma^2))``);
    - ``triang``: ``scipy.signal.windows.triang(ks)``, for odd ``ks`` ``1 - |x| / (ks//2 + 1)``;
    - ``laplace``: ``exp(-|x| / sigma) / (2 sigma)``, i.e. ``exp(-|x| / sigma)``.

    Computed here in closed form (tested against the scipy calls), so the core needs no scipy.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    half = kernel_size // 2
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    if kernel == "gaussian":
        radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
        taps = torch.arange(-radius, radius + 1)
        weights = torch.exp(-0.5 * taps.to(torch.float64) ** 2 / sigma**2)
        weights = weights / weights.sum()
        # output[i] = sum_t weights[t] * impulse[reflect(i + t)]: the taps landing on the centre
        lands = _reflected(torch.arange(kernel_size)[:, None] + taps[None, :], kernel_size) == half
        window = (weights[None, :] * lands).sum(1)
    elif kernel == "triang":
        window = 1.0 - x.abs() / (half + 1)
    else:
        window = torch.exp(-x.abs() / sigma) / (2.0 * sigma)
    return (window / window.max()).to(dtype)


def kernel_matrix(num_bins: int, kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0,
                  dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """``k(b, b') = window[b' - b + ks//2]`` as a banded ``[B, B]`` matrix (zero beyond ``ks//2``)."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    window = kernel_window(kernel, kernel_size, sigma, dtype)
    half = kernel_size // 2
    b = torch.arange(num_bins)
    dist = b[None, :] - b[:, None]
    inside = dist.abs() <= half
    k = torch.where(inside, window[(dist + half).clamp(0, kernel_size - 1)], torch.zeros((), dtype=dtype))
    return k.to(device)


def kernel_smoothing_matrix(num_bins: int, kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0,
                            dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """FDS's smoothing weights: :func:`kernel_matrix` with every row normalised to sum 1
    (truncated at the first and last bins). W-FDS falls back to these rows (SPEC 3)."""
    k = kernel_matrix(num_bins, kernel, kernel_size, sigma, dtype, device)
    return k / k.sum(1, keepdim=True)


def wfds_weights(confusion: torch.Tensor, kernel: str = "gaussian", kernel_size: int = 5,
                 sigma: float = 2.0, fds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Row-normalised W-FDS weights ``S[b, b'] = eps[b, b'] k(b, b') / sum_b'' (...)``.

    A row with no mass falls back to the normalised kernel row, which is FDS's
    smoothing. ``confusion`` is ``eps [B, B]`` (paper eq. 6): the share of bin-b
    training samples predicted in bin b'; the identity gives ``S = I``.

    ``fds``: :func:`kernel_smoothing_matrix` of these bins and kernel in ``confusion``'s dtype
    and device, if the caller keeps it (it depends on neither the confusion nor the epoch).

    Returns:
        ``S [B, B]`` in the dtype and on the device of ``confusion``, banded with
        bandwidth ``kernel_size // 2``.
    """
    check_tensor(confusion, "confusion", dim=2)
    if confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square [B, B], got {tuple(confusion.shape)}")
    if not torch.compiler.is_compiling() and bool((confusion < 0).any() | ~torch.isfinite(confusion).all()):
        raise ValueError("confusion must be finite and non-negative")
    # Each row of eps * k is renormalised, so k's rows may be scaled first: FDS's normalised
    # rows serve as the kernel and as the fallback of a row without mass.
    if fds is None:
        fds = kernel_smoothing_matrix(confusion.shape[0], kernel, kernel_size, sigma, confusion.dtype,
                                      confusion.device)
    elif fds.shape != confusion.shape or fds.dtype != confusion.dtype or fds.device != confusion.device:
        raise ValueError(f"fds must match confusion ({tuple(confusion.shape)}, {confusion.dtype}, {confusion.device}), "
                         f"got ({tuple(fds.shape)}, {fds.dtype}, {fds.device})")
    s = confusion * fds
    mass = s.sum(1, keepdim=True)
    return torch.where(mass > 0, s / mass.clamp_min(torch.finfo(s.dtype).tiny), fds)


def restrict_to_bins(weights: torch.Tensor, has_data: torch.Tensor, bandwidth: Optional[int] = None,
                     dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Drops the columns of bins without data and renormalises the rows.

    A bin with no statistics has a zero mean and covariance, which would drag its
    neighbours' smoothed statistics towards zero. A row left without mass keeps
    only its own bin (its statistics are then whatever that bin has).

    With ``bandwidth`` (the half-width of the band of ``weights``; entries outside it are
    taken as zero) the work is ``O(B * bandwidth)`` on the band's diagonals instead of
    ``O(B^2)`` on the dense matrix, which matters for thousands of bins; ``dtype`` is the
    result's (default: that of ``weights``), written directly without a dense copy.
    """
    mask = has_data.to(weights.dtype)
    if bandwidth is None:
        s = weights * mask[None, :]
        mass = s.sum(1, keepdim=True)
        eye = torch.eye(weights.shape[0], dtype=weights.dtype, device=weights.device)
        return torch.where(mass > 0, s / mass.clamp_min(torch.finfo(s.dtype).tiny), eye).to(dtype or weights.dtype)
    B = weights.shape[0]
    offsets = range(-min(bandwidth, B - 1), min(bandwidth, B - 1) + 1)
    # diagonal k holds weights[b, b + k]: rows max(0, -k).., columns max(0, k)..
    diagonals = {k: torch.diagonal(weights, k) * mask[max(0, k):B + min(0, k)] for k in offsets}
    mass = torch.zeros(B, dtype=weights.dtype, device=weights.device)
    for k, d in diagonals.items():
        mass[max(0, -k):B - max(0, k)] += d
    scale = torch.where(mass > 0, 1 / mass.clamp_min(torch.finfo(weights.dtype).tiny), torch.zeros_like(mass))
    out = torch.zeros_like(weights, dtype=dtype or weights.dtype)
    for k, d in diagonals.items():
        torch.diagonal(out, k).copy_(d * scale[max(0, -k):B - max(0, k)])
    torch.diagonal(out).add_((mass <= 0).to(out.dtype))  # rows without mass: their own bin
    return out


def bandwidth_of(weights: torch.Tensor) -> int:
    """The largest ``|b - b'|`` with a non-zero weight (reads the values)."""
    nz = torch.nonzero(weights)
    return int((nz[:, 0] - nz[:, 1]).abs().max()) if nz.numel() else 0


def wfds_smooth(weights: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                bandwidth: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Smoothed statistics ``mean_s = S @ mean`` and ``cov_s[b] = sum_b' S[b, b'] cov[b']``.

    Args:
        weights: ``S [B, B]``, banded (``wfds_weights``).
        mean: ``[B, D]``. cov: ``[B, D, D]``.
        bandwidth: the band half-width; entries of ``S`` outside it are ignored.
            ``None`` reads it off ``S`` (a host read).

    Differentiable in all three tensors.
    """
    check_tensor(weights, "weights", dim=2)
    check_tensor(mean, "mean", dim=2)
    check_tensor(cov, "cov", dim=3)
    if bandwidth is None:
        bandwidth = bandwidth_of(weights)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
        raise ValueError(f"bandwidth must be a non-negative int, got {bandwidth!r}")
    return ops.wfds_smooth(weights, mean, cov, bandwidth)
