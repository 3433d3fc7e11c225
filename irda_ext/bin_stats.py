"""Per-bin feature statistics (SPEC 2): batch moments and their streaming merge."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from . import distributed
from ._ops import ops
from ._validate import check_bin_index, check_tensor


def bin_moments(z: torch.Tensor, bin_index: torch.Tensor, num_bins: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin count, mean and scatter of one batch of features.

    ``scatter[b] = sum_{i in b} (z_i - mean_b)(z_i - mean_b)^T``, centred within the
    batch (two-pass), never ``E[zz^T] - mu mu^T``. Empty bins give zeros.

    Shape:
        z: ``[n, D]`` (half/bfloat16 accumulate in float32), bin_index: ``[n]`` int64.
        Returns ``count [B]`` int64, ``mean [B, D]``, ``scatter [B, D, D]``.
    """
    check_tensor(z, "z", dim=2)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"bin_moments: num_bins must be a positive int, got {num_bins!r}")
    # The kernels check the bin range and that z is finite (on a GPU without synchronising).
    check_bin_index(bin_index, z.shape[0], num_bins, z.device, values=False)
    return ops.bin_moments(z, bin_index, num_bins)


class BinStats(nn.Module):
    """Running per-bin feature mean and (unbiased) covariance.

    ``momentum=None`` keeps the exact pooled statistics of everything seen
    (Chan's parallel merge, as ISDA's estimator); ``momentum=rho`` keeps an
    exponential moving average as FDS does: for each bin in the batch
    ``mu <- rho mu + (1 - rho) mu_batch`` and ``cov <- rho cov + (1 - rho) cov_batch``
    (``cov_batch`` unbiased, zero for a single sample); a bin seen for the first
    time takes the batch statistics. Only bins present in a batch are touched.

    Args:
        num_bins: ``B``. dim: feature dimension ``D``.
        momentum: ``None`` or a float in ``[0, 1)``.
        dtype: float32 or float64 statistics. device: where they live.
        sync: under ``torch.distributed`` with more than one rank, merge the union of
            every rank's batch (``irda_ext.distributed``); ``False`` keeps per-rank statistics.

    Example:
        >>> stats = BinStats(10, 4)
        >>> stats.update(torch.randn(32, 4), torch.randint(0, 10, (32,)))
        >>> stats.cov.shape
        torch.Size([10, 4, 4])
    """

    def __init__(self, num_bins: int, dim: int, momentum: Optional[float] = None,
                 dtype: torch.dtype = torch.float32, device=None, sync: bool = True):
        super().__init__()
        for name, value in (("num_bins", num_bins), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BinStats: {name} must be a positive int, got {value!r}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"BinStats: momentum must be None or in [0, 1), got {momentum!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"BinStats: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_bins, self.dim = num_bins, dim
        self.momentum = None if momentum is None else float(momentum)
        self.sync = bool(sync)
        self.register_buffer("count", torch.zeros(num_bins, dtype=torch.int64, device=device))
        self.register_buffer("mean", torch.zeros(num_bins, dim, dtype=dtype, device=device))
        self.register_buffer("cov", torch.zeros(num_bins, dim, dim, dtype=dtype, device=device))

    @torch.no_grad()
    def update(self, z: torch.Tensor, bin_index: torch.Tensor) -> None:
        """Merge a batch of features ``z [n, D]`` with bins ``bin_index [n]`` (detached)."""
        z = z.detach()
        check_tensor(z, "z", dim=2)
        if z.shape[1] != self.dim:
            raise ValueError(f"BinStats.update: z must have shape [n, {self.dim}], got {tuple(z.shape)}")
        # The kernels check the bin range and that z is finite (on a GPU without synchronising).
        check_bin_index(bin_index, z.shape[0], self.num_bins, self.mean.device, values=False)
        if z.device != self.mean.device:
            raise ValueError(f"BinStats.update: z is on {z.device} but the statistics are on {self.mean.device}")
        # Multi-process (issue 7): every rank merges the whole global batch; collective.
        if self.sync and distributed.is_distributed():
            distributed.synced_bin_stats_update_(self.count, self.mean, self.cov, z, bin_index, self.momentum)
            return
        ops.bin_stats_update_(self.count, self.mean, self.cov, z, bin_index, self.momentum)

    def reset(self) -> None:
        self.count.zero_()
        self.mean.zero_()
        self.cov.zero_()

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, dim={self.dim}, momentum={self.momentum}, dtype={self.mean.dtype}"
