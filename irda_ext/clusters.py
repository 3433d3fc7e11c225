"""Cluster shares ``eta[k, b] = P(cluster k | bin b)`` from k-means on an epoch's features (SPEC 5)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ._ops import ops
from ._validate import _on_host


class FeatureReservoir(nn.Module):
    """A uniform sample (Vitter's algorithm R) of at most ``capacity`` (feature, bin) pairs.

    Written with tensor ops only (no data-dependent shapes), so it can live inside
    a compiled training step. Items that are not kept are written to a spare last
    row. Two items of one batch drawing the same slot keep one of them, which
    leaves the sample uniform enough for k-means.
    """

    def __init__(self, capacity: int, dim: int, dtype=torch.float32, device=None):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        # Not part of the state dict: checkpoints are taken at epoch ends, when it is empty.
        self.register_buffer("features", torch.zeros(capacity + 1, dim, dtype=dtype, device=device), persistent=False)
        self.register_buffer("bins", torch.zeros(capacity + 1, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64, device=device), persistent=False)

    @torch.no_grad()
    def add(self, z: torch.Tensor, bin_index: torch.Tensor) -> None:
        if _on_host(self.seen) and z.device.type == "cpu" and bin_index.device.type == "cpu":
            # one op (csrc/cpu/reservoir.cpp) for the five below: the same rows, bins and
            # random stream; ~0.1 ms of an abalone step as tensor ops
            ops.reservoir_add_(self.features, self.bins, self.seen, z, bin_index)
            return
        n = z.shape[0]
        # Drawn on every call, whichever way the rows are written below: the random stream
        # (and so the rest of a training run) does not depend on the path.
        uniform = torch.rand(n, device=z.device, dtype=torch.float64)
        position = self.seen + torch.arange(n, device=z.device)
        draw = (uniform * (position + 1)).floor().to(torch.int64)
        slot = torch.where(position < self.capacity, position, draw)
        slot = torch.where(slot < self.capacity, slot, torch.full_like(slot, self.capacity))
        self.features.index_copy_(0, slot, z.to(self.features.dtype))
        self.bins.index_copy_(0, slot, bin_index)
        self.seen.add_(n)

    def sample(self):
        size = int(min(int(self.seen), self.capacity))
        return self.features[:size], self.bins[:size]

    def reset(self) -> None:
        self.seen.zero_()


KMEANS_TOLERANCE = 1e-4  # scikit-learn's KMeans default, relative to the features' mean variance


def kmeans(x: torch.Tensor, num_clusters: int, init: Optional[torch.Tensor] = None,
           max_iter: int = 100) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the rows of ``x [N, D]`` (float32 or float64, computed in float64):
    ``(labels [N], centres [K, D] float64)``, on the CPU.

    Deterministic, and continuous in the data, so that two runs whose features differ a little
    (two ranks against one process; one sample more) find the same clusters:

    * they start from ``init [K, D]`` when given (the driver passes last epoch's centres: the
      features move little between epochs), else from the PCA-part split (Su and Dy 2007): the
      rows sorted along their first principal direction (power iteration) and cut into ``K``
      groups of equal size, whose means start Lloyd. Random seeding (k-means++) sent the two
      runs above to different local optima;
    * Lloyd iterates until no label changes or the centres move less than scikit-learn's
      tolerance (``1e-4`` of the features' mean variance), at most ``max_iter`` times, on every
      row (fitting a subsample let the two runs above part by a percent of the loss); a
      cluster left empty keeps its centre.

    The iterations run in the ``kmeans`` op (``csrc/cpu/kmeans.cpp``): Lloyd's iterates
    (:func:`irda_ext.reference.kmeans_lloyd`), with Hamerly's bounds sparing the distances
    that cannot change a label. A warm start still took some 60 iterations on abalone's
    features: 30-50 ms of an epoch end as torch ops, about 2 ms in the op.
    """
    x = x.to("cpu").contiguous()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float64)
    n = x.shape[0]
    if init is not None:
        centres = init.to("cpu", torch.float64).clone()
    else:
        x = x.to(torch.float64)  # the first epoch end only: later ones start from its centres
        centred = x - x.mean(0)
        direction = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        for _ in range(30):
            direction = centred.t() @ (centred @ direction)
            norm = direction.norm()
            if not bool(norm > 0):  # every row equal: any split will do
                direction = torch.ones_like(direction)
                break
            direction = direction / norm
        order = torch.argsort(centred @ direction, stable=True)
        group = torch.empty_like(order)
        group[order] = torch.arange(n, device=x.device) * num_clusters // n
        centres = torch.zeros(num_clusters, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, group, x)
        centres = centres / torch.bincount(group, minlength=num_clusters).clamp_min(1).to(x.dtype)[:, None]
    # scikit-learn's tolerance: 1e-4 of the features' mean variance, which the op computes in
    # its first pass (a pass of its own in torch took 0.75 ms of an abalone epoch end)
    return ops.kmeans(x, centres, int(max_iter), KMEANS_TOLERANCE, True)


def cluster_shares(features: torch.Tensor, bins: torch.Tensor, num_clusters: int, num_bins: int,
                   centres: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``eta [K, B]`` (float64) from :func:`kmeans` with ``K`` clusters on ``features``.

    ``eta[k, b]`` is the share of bin-b samples in cluster k; a bin without
    samples gets the overall cluster shares. ``K = 1`` gives ones. Every column
    sums to 1. Fewer samples than clusters gives uniform shares.

    ``centres [K, D]`` (float64), when given, starts k-means if it holds finite values and
    receives the new centres (the warm start of the next epoch end).
    """
    if num_clusters == 1:
        return torch.ones(1, num_bins, dtype=torch.float64)
    n = features.shape[0]
    if n < num_clusters:
        return torch.full((num_clusters, num_bins), 1.0 / num_clusters, dtype=torch.float64)
    x = features.detach().to("cpu")  # float32 stays float32: the op reads it as float64
    init = None
    if centres is not None and centres.shape == (num_clusters, x.shape[1]) and bool(torch.isfinite(centres).all()):
        init = centres.detach().to("cpu", torch.float64)
    labels, found = kmeans(x, num_clusters, init=init)
    if centres is not None:
        centres.copy_(found.to(centres))
    b = bins.detach().to("cpu", torch.int64)
    joint = torch.zeros(num_clusters * num_bins, dtype=torch.float64)
    joint.index_add_(0, labels * num_bins + b, torch.ones(n, dtype=torch.float64))
    joint = joint.reshape(num_clusters, num_bins)
    per_bin = joint.sum(0)
    overall = joint.sum(1) / joint.sum()
    return torch.where(per_bin > 0, joint / per_bin.clamp_min(1.0), overall[:, None])
