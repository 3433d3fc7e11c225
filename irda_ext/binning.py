"""Uniform label bins (SPEC 1): one bin per label granularity."""
from __future__ import annotations

import math

import torch


class Bins:
    """Uniform bins of ``width`` covering ``[low, high]``.

    Bin ``b`` is ``[low + b*width, low + (b+1)*width)``; the last bin also holds
    ``high`` itself. Its centre is ``centers[b]``.

    Args:
        low, high: the label range; targets outside it are an error unless clamped.
        width: the label granularity (1 year for ages, 0.1 m for depth).

    Example:
        >>> bins = Bins(0, 100, 1)
        >>> bins.num_bins, bins.index(torch.tensor([0.0, 42.7, 100.0])).tolist()
        (100, [0, 42, 99])
    """

    def __init__(self, low: float, high: float, width: float):
        for name, value in (("low", low), ("high", high), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"Bins: {name} must be a finite number, got {value!r}")
        if width <= 0:
            raise ValueError(f"Bins: width must be positive, got {width}")
        if not high > low:
            raise ValueError(f"Bins: high must exceed low, got low={low}, high={high}")
        self.low, self.high, self.width = float(low), float(high), float(width)
        # A small tolerance so that e.g. (0, 1, 0.1) gives 10 bins, not 11.
        self.num_bins = max(1, math.ceil((self.high - self.low) / self.width - 1e-9))
        self.centers = self.low + self.width * (torch.arange(self.num_bins, dtype=torch.float64) + 0.5)

    def edges(self) -> torch.Tensor:
        return self.low + self.width * torch.arange(self.num_bins + 1, dtype=torch.float64)

    def index(self, y: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """The bin of every target, as int64. Raises ``ValueError`` for targets
        outside ``[low, high]`` (or NaN) unless ``clamp=True``."""
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y, dtype=torch.float64)
        if not (y.is_floating_point() or y.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
            raise TypeError(f"Bins.index: targets must be a real tensor, got dtype {y.dtype}")
        y64 = y.to(torch.float64)
        if not clamp and not torch.compiler.is_compiling():
            bad = torch.isnan(y64) | (y64 < self.low) | (y64 > self.high)
            if bool(bad.any()):
                first = y64[bad][0].item()
                raise ValueError(
                    f"Bins.index: {int(bad.sum())} target(s) outside [{self.low}, {self.high}] "
                    f"(e.g. {first}); pass clamp=True to put them in the edge bins"
                )
        idx = torch.floor((y64 - self.low) / self.width)
        return idx.clamp_(0, self.num_bins - 1).to(torch.int64)

    def counts(self, y: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """Number of targets per bin, ``[num_bins]`` int64."""
        return torch.bincount(self.index(y, clamp=clamp).reshape(-1).cpu(), minlength=self.num_bins)

    def __repr__(self) -> str:
        return f"Bins(low={self.low}, high={self.high}, width={self.width}, num_bins={self.num_bins})"
