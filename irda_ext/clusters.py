"""Cluster shares ``eta[k, b] = P(cluster k | bin b)`` from k-means on an epoch's features (SPEC 5)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


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
        n = z.shape[0]
        position = self.seen + torch.arange(n, device=z.device)
        draw = (torch.rand(n, device=z.device, dtype=torch.float64) * (position + 1)).floor().to(torch.int64)
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


def cluster_shares(features: torch.Tensor, bins: torch.Tensor, num_clusters: int, num_bins: int,
                   seed: int = 0) -> torch.Tensor:
    """``eta [K, B]`` from k-means (scikit-learn) with ``K`` clusters on ``features``.

    ``eta[k, b]`` is the share of bin-b samples in cluster k; a bin without
    samples gets the overall cluster shares. ``K = 1`` gives ones. Every column
    sums to 1. Fewer samples than clusters gives uniform shares.
    """
    if num_clusters == 1:
        return torch.ones(1, num_bins, dtype=torch.float64)
    n = features.shape[0]
    if n < num_clusters:
        return torch.full((num_clusters, num_bins), 1.0 / num_clusters, dtype=torch.float64)
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = features.detach().to("cpu", torch.float64).numpy()
    # scikit-learn's OpenMP threads and torch's spin against each other (40x slower on
    # two cores); k-means on the reservoir is fast on one.
    with threadpool_limits(limits=1, user_api="openmp"):
        labels = KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit_predict(x)
    b = bins.detach().cpu().numpy()
    joint = np.zeros((num_clusters, num_bins))
    np.add.at(joint, (labels, b), 1.0)
    per_bin = joint.sum(0)
    overall = joint.sum(1) / joint.sum()
    eta = np.where(per_bin > 0, joint / np.maximum(per_bin, 1.0), overall[:, None])
    return torch.from_numpy(eta)
