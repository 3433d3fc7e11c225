"""The balanced meta set of Meta-IRDA: a few training samples of every bin, held out."""
from __future__ import annotations

from typing import Tuple

import torch


def balanced_meta_indices(bin_index: torch.Tensor, num_bins: int, per_bin: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted, int64) of a balanced meta set drawn from samples with bins ``bin_index``.

    Bin ``b`` with ``N_b`` samples gives ``min(per_bin, N_b // 2)`` of them, drawn at
    random: at most ``per_bin`` per bin as SPEC 7 asks, and never more than half of a bin,
    so holding the meta set out of training never empties a bin (a bin of one sample keeps
    it for training and has no meta sample).

    Example:
        >>> balanced_meta_indices(torch.tensor([0, 0, 0, 0, 1, 2, 2]), 3, per_bin=1).numel()
        2
    """
    if isinstance(per_bin, bool) or not isinstance(per_bin, int) or per_bin < 0:
        raise ValueError(f"per_bin must be a non-negative int, got {per_bin!r}")
    bin_index = torch.as_tensor(bin_index).reshape(-1).cpu()
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(bin_index.numel(), generator=generator)
    shuffled = bin_index[order]
    counts = torch.bincount(bin_index, minlength=num_bins)
    take = torch.clamp(counts // 2, max=per_bin)
    # rank of each shuffled sample within its bin: position minus the bin's first position
    sorted_bins, by_bin = torch.sort(shuffled, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_bin)
    rank[by_bin] = torch.arange(by_bin.numel()) - starts[sorted_bins]
    chosen = order[rank < take[shuffled]]
    return torch.sort(chosen).values


def split_meta_set(x: torch.Tensor, y: torch.Tensor, bins, per_bin: int, seed: int = 0,
                   clamp: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_meta, y_meta)``: the meta set of :func:`balanced_meta_indices`
    over ``bins`` (an :class:`irda_ext.Bins` in the units of ``y``) and the rest, in order."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    idx = balanced_meta_indices(bins.index(y.reshape(-1).cpu(), clamp=clamp), bins.num_bins, per_bin, seed)
    keep = torch.ones(y.shape[0], dtype=torch.bool)
    keep[idx] = False
    keep = keep.to(x.device)
    return x[keep], y[keep], x[~keep], y[~keep]
