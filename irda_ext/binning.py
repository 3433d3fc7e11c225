"""Uniform label bins (SPEC 1): one bin per label granularity."""
from __future__ import annotations

import math

import torch

from ._ops import ops
from ._validate import _on_host

# A bin costs IRDA a [D, D] covariance and a row of two [B, B] matrices; past this many bins
# the label grid alone (8 bytes a centre) passes a gigabyte, which is a units mistake
# (--bin-width 1e-5), not a data set.
MAX_BINS = 1 << 27


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
        count = (self.high - self.low) / self.width - 1e-9
        if count >= MAX_BINS:
            raise ValueError(f"Bins: [{low}, {high}] in bins of {width} makes {math.ceil(count):.3g} bins; their "
                             f"centres alone would take {math.ceil(count) * 8 / 2**30:.3g} GiB (and IRDA keeps "
                             f"a covariance per bin): choose a wider width (at most {MAX_BINS} bins)")
        self.num_bins = max(1, math.ceil(count))
        self.centers = self.low + self.width * (torch.arange(self.num_bins, dtype=torch.float64) + 0.5)

    def edges(self) -> torch.Tensor:
        return self.low + self.width * torch.arange(self.num_bins + 1, dtype=torch.float64)

    def index(self, y: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """The bin of every target, as int64.

        Targets outside ``[low, high]`` are an error unless ``clamp=True`` puts them in the
        edge bins; NaN is an error either way (no bin holds it: the predictions of a
        diverged model). Eager CPU tensors raise ``ValueError`` naming a bad value; CUDA
        tensors and code under ``torch.compile`` check without a host synchronisation
        (``torch._assert_async``), so a bad target stops the run with a ``RuntimeError``
        there instead of being clamped silently."""
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y, dtype=torch.float64)
        if not (y.is_floating_point() or y.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
            raise TypeError(f"Bins.index: targets must be a real tensor, got dtype {y.dtype}")
        if _on_host(y):
            # one pass in C++ (csrc/cpu/bin_index.cpp), the same arithmetic; the tensor ops below
            # name a bad target
            index, bad = ops.bin_index(y, self.low, self.high, self.width, self.num_bins, clamp)
            if not int(bad):
                return index
        y64 = y.to(torch.float64)
        bad = torch.isnan(y64)
        if not clamp:
            bad = bad | (y64 < self.low) | (y64 > self.high)
        what = "NaN target(s)" if clamp else f"target(s) outside [{self.low}, {self.high}] or NaN"
        if _on_host(y64):
            if bool(bad.any()):
                first = y64[bad][0].item()
                hint = " (the predictions of a diverged model?)" if clamp else "; pass clamp=True to put targets " \
                                                                               "outside the range in the edge bins"
                raise ValueError(f"Bins.index: {int(bad.sum())} {what} (e.g. {first}){hint}")
        elif y64.numel():
            torch._assert_async(~bad.any(), f"Bins.index: {what}")
        idx = torch.floor((y64 - self.low) / self.width)
        return idx.clamp_(0, self.num_bins - 1).to(torch.int64)

    def counts(self, y: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """Number of targets per bin, ``[num_bins]`` int64."""
        return torch.bincount(self.index(y, clamp=clamp).reshape(-1).cpu(), minlength=self.num_bins)

    def __repr__(self) -> str:
        return f"Bins(low={self.low}, high={self.high}, width={self.width}, num_bins={self.num_bins})"
