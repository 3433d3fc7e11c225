"""The bin confusion matrix of paper eq. 6: ``eps[b, b']`` = share of bin-b samples predicted in bin b'."""
from __future__ import annotations

import torch
from torch import nn


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

    def confusion(self) -> torch.Tensor:
        c = self.counts.view(self.num_bins, self.num_bins)
        total = c.sum(1, keepdim=True)
        eye = torch.eye(self.num_bins, dtype=c.dtype, device=c.device)
        return torch.where(total > 0, c / total.clamp_min(1.0), eye)

    def reset(self) -> None:
        self.counts.zero_()
