"""The bin confusion matrix of paper eq. 6: ``eps[b, b']`` = share of bin-b samples predicted in bin b'."""
from __future__ import annotations

import torch
from torch import nn

from ._ops import ops
from ._validate import _on_host


class ConfusionCounter(nn.Module):
    """Counts (true bin, predicted bin) pairs over an epoch; ``confusion()`` normalises the rows.

    A bin that was never seen gets an identity row (no smoothing from it).
    """

    def __init__(self, num_bins: int, device=None):
        super().__init__()
        self.num_bins = num_bins
        self.register_buffer("counts", torch.zeros(num_bins * num_bins, dtype=torch.float64, device=device))

    @torch.no_grad()
    def add(self, true_bin: torch.Tensor, pred_bin: torch.Tensor) -> None:
        flat = true_bin * self.num_bins + pred_bin
        self.counts.index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))

    @torch.no_grad()
    def add_predictions(self, true_bin: torch.Tensor, pred: torch.Tensor, bins) -> None:
        """``add(true_bin, bins.index(pred, clamp=True))``: on the host one op
        (``confusion_add_``, csrc/cpu/bin_index.cpp) instead of six; a NaN prediction is named
        by ``Bins.index``, which raises, and counts nothing."""
        counts = self._buffers["counts"]  # every step: not through nn.Module.__getattr__
        if (_on_host(pred) and counts.device.type == "cpu" and true_bin.device == pred.device
                and pred.dtype in (torch.float32, torch.float64) and true_bin.dtype == torch.int64):
            if not int(ops.confusion_add_(counts, true_bin, pred, bins.low, bins.high, bins.width, bins.num_bins)):
                return
        self.add(true_bin, bins.index(pred, clamp=True).to(true_bin.device))

    def confusion(self) -> torch.Tensor:
        c = self.counts.view(self.num_bins, self.num_bins)
        total = c.sum(1, keepdim=True)
        eye = torch.eye(self.num_bins, dtype=c.dtype, device=c.device)
        return torch.where(total > 0, c / total.clamp_min(1.0), eye)

    def reset(self) -> None:
        self.counts.zero_()
