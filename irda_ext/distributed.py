"""IRDA's statistics synchronised across ``torch.distributed`` ranks (SPEC 2, 5).

Under data parallelism every rank sees ``n`` of the ``W * n`` samples of a step, but the
per-bin statistics must describe the whole batch. This module makes every epoch-level and
step-level estimate global:

- :func:`synced_bin_stats_update_` merges the union of every rank's batch into
  ``BinStats`` (``BinStats.update`` calls it when a process group with more than one rank
  is initialised; under ``stats="epoch"`` it merges into the epoch's pooled moments, so the
  epoch end needs no communication), so ``W`` ranks with ``n`` samples each keep the
  statistics of one process with ``W * n``. Two equivalent ways, chosen per step by
  communication volume:

  * ``"moments"``: per-bin batch moments all-reduced before the merge
    (:func:`all_reduce_bin_moments_`: counts summed, the global mean from summed per-bin
    sums, the global scatter as ``sum_r [M_r + n_r (m_r - m)(m_r - m)^T]``, never
    ``E[zz^T] - mu mu^T``), then :func:`merge_bin_moments_`, the formulas of the fused
    update (``csrc/merge_math.h``) for dense moments. Sends ``P * D^2`` numbers for ``P``
    bins present in the global batch.
  * ``"gather"``: the features themselves all-gathered (``W * n * D`` numbers), each rank
    then runs the fused update on the concatenated batch: the same rows in the same order as
    one process given ``torch.cat`` of the ranks' batches (bitwise the same result on the CPU). With ResNet-50 features (``D = 2048``)
    and more than a handful of bins present this is far cheaper.

  ``"auto"`` (the default) takes the smaller volume; both give the same statistics.
- :func:`all_reduce_sum_` sums the epoch's confusion counts over ranks.
- :func:`synced_cluster_shares` gathers every rank's feature reservoir, runs k-means once
  on rank 0 (on the rows in a canonical order, so the arrival order does not matter) and
  broadcasts ``eta``, so every rank uses the same cluster shares.
- The prior needs nothing: every rank loads the full training labels.

Every function is a no-op (or the single-process computation) when no process group with
more than one rank is initialised. Collectives must be called by every rank in the same
order: each rank calls ``BinStats.update`` once per step and ``IRDALoss.end_epoch`` once
per epoch, which ``DistributedSampler`` (equal batch counts on all ranks) guarantees.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from ._ops import ops

STRATEGIES = ("auto", "moments", "gather")


# ----- process group -------------------------------------------------------------------------
def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, results and logs."""
    return rank() == 0


@torch.no_grad()
def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (the epoch's confusion counts); no-op on one rank."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s value of ``tensor`` on every rank, in place; no-op on one rank."""
    if is_distributed():
        dist.broadcast(tensor, src)
    return tensor


# ----- per-bin statistics (SPEC 2) -------------------------------------------------------------
@torch.no_grad()
def all_reduce_bin_moments_(count: torch.Tensor, mean: torch.Tensor, scatter: torch.Tensor,
                            global_count: Optional[torch.Tensor] = None):
    """Turn one rank's batch moments into those of the union of every rank's batch, in place.

    ``count [B]`` int64, ``mean [B, D]``, ``scatter [B, D, D]`` as :func:`irda_ext.bin_moments`
    returns them. The global count is the sum of the counts; the global mean ``m`` comes from
    the summed per-bin sums ``n_r m_r``; the global scatter is
    ``sum_r [M_r + n_r (m_r - m)(m_r - m)^T]``, every term centred (numerically stable).
    Only the bins present somewhere are communicated. ``global_count`` (the summed counts,
    if the caller already has them) saves one all-reduce. Returns ``(count, mean, scatter)``.
    """
    if not is_distributed():
        return count, mean, scatter
    if global_count is None:
        global_count = count.clone()
        dist.all_reduce(global_count)
    present = torch.nonzero(global_count > 0).reshape(-1)
    n_local = count.index_select(0, present).to(mean.dtype)  # [P]
    n_total = global_count.index_select(0, present).to(mean.dtype)
    local_mean = mean.index_select(0, present)  # [P, D]
    sums = local_mean * n_local[:, None]
    dist.all_reduce(sums)
    global_mean = sums / n_total[:, None]
    delta = local_mean - global_mean  # a rank without samples of the bin has n_local = 0: no term
    terms = scatter.index_select(0, present) + n_local[:, None, None] * delta[:, :, None] * delta[:, None, :]
    dist.all_reduce(terms)
    count.copy_(global_count)
    mean.zero_().index_copy_(0, present, global_mean)
    scatter.zero_().index_copy_(0, present, terms)
    return count, mean, scatter


@torch.no_grad()
def merge_bin_moments_(count: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, batch_count: torch.Tensor,
                       batch_mean: torch.Tensor, batch_scatter: torch.Tensor, momentum: Optional[float]) -> None:
    """Merge dense batch moments into running ``(count, mean, cov)`` in place: the op
    ``irda_ext::merge_bin_moments_``, whose kernels apply the formulas of the fused
    ``bin_stats_update_`` (``csrc/merge_math.h``: Chan's merge, or the momentum average
    with first-seen bins taking the batch statistics); only bins with ``batch_count > 0``
    are touched. The batch moments are cast to the statistics' dtype."""
    ops.merge_bin_moments_(count, mean, cov, batch_count, batch_mean.to(mean.dtype), batch_scatter.to(mean.dtype),
                           momentum)


def _gather_rows(x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
    """``torch.cat`` of every rank's ``x [n_r, ...]`` (rank order), padded for ``all_gather``."""
    longest = max(sizes)
    if longest == 0:
        return x[:0]
    padded = x.new_zeros((longest,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def choose_strategy(rank_counts: torch.Tensor, dim: int) -> str:
    """``"gather"`` when all-gathering the features sends fewer numbers than all-reducing
    the present bins' moments, else ``"moments"``. ``rank_counts [W, B]`` is identical on
    every rank, so is the choice."""
    world = rank_counts.shape[0]
    longest = int(rank_counts.sum(1).max())
    present = int((rank_counts.sum(0) > 0).sum())
    gather = world * longest * (dim + 1)
    moments = present * dim * (dim + 1)
    return "gather" if gather < moments else "moments"


@torch.no_grad()
def synced_bin_stats_update_(count: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z: torch.Tensor,
                             bin_index: torch.Tensor, momentum: Optional[float], strategy: str = "auto") -> str:
    """``bin_stats_update_`` with the union of every rank's batch (see the module docstring).

    Inputs are validated by the caller (``BinStats.update``). Returns the strategy used.
    On one rank it is the fused update itself."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not is_distributed():
        ops.bin_stats_update_(count, mean, cov, z, bin_index, momentum)
        return "local"
    num_bins, dim = mean.shape
    local_count = torch.bincount(bin_index, minlength=num_bins).to(torch.int64)
    rank_counts = [torch.empty_like(local_count) for _ in range(world_size())]
    dist.all_gather(rank_counts, local_count)
    rank_counts = torch.stack(rank_counts)  # [W, B]
    if int(rank_counts.sum()) == 0:  # nothing in the global batch: nothing to merge
        return strategy
    if strategy == "auto":
        strategy = choose_strategy(rank_counts, dim)
    if strategy == "gather":
        # Each rank's rows sorted by bin (stably): the bins of the gathered rows follow from
        # the counts, and within a bin the order is that of torch.cat of the ranks' batches,
        # so the fused update sees exactly what one process would.
        order = torch.argsort(bin_index, stable=True)
        sizes = [int(s) for s in rank_counts.sum(1).tolist()]
        z_all = _gather_rows(z.index_select(0, order), sizes)
        labels = torch.arange(num_bins, device=bin_index.device)
        bins_all = torch.cat([torch.repeat_interleave(labels, c.to(bin_index.device)) for c in rank_counts])
        ops.bin_stats_update_(count, mean, cov, z_all.contiguous(), bins_all, momentum)
        return strategy
    batch_count, batch_mean, batch_scatter = ops.bin_moments(z.to(mean.dtype), bin_index, num_bins)
    all_reduce_bin_moments_(batch_count, batch_mean, batch_scatter, global_count=rank_counts.sum(0))
    merge_bin_moments_(count, mean, cov, batch_count, batch_mean, batch_scatter, momentum)
    return strategy


# ----- cluster shares (SPEC 5) -----------------------------------------------------------------
@torch.no_grad()
def gather_reservoir(reservoir) -> Tuple[torch.Tensor, torch.Tensor]:
    """The union of every rank's reservoir sample, at most ``reservoir.capacity`` rows.

    When the ranks together hold more, each rank contributes a random share proportional to
    the number of features it saw (a uniform sample of the union of the epochs' streams).
    Same result on every rank."""
    features, bins = reservoir.sample()
    if not is_distributed():
        return features, bins
    info = torch.tensor([features.shape[0], int(reservoir.seen)], dtype=torch.int64, device=bins.device)
    infos = [torch.empty_like(info) for _ in range(world_size())]
    dist.all_gather(infos, info)
    held = [int(i[0]) for i in infos]
    seen = [int(i[1]) for i in infos]
    if sum(held) > reservoir.capacity:
        total_seen = max(sum(seen), 1)
        keep = [min(h, math.floor(reservoir.capacity * s / total_seen)) for h, s in zip(held, seen)]
        generator = torch.Generator().manual_seed(int(reservoir.seen) * 7919 + rank())
        chosen = torch.randperm(held[rank()], generator=generator)[: keep[rank()]].to(bins.device)
        features, bins = features.index_select(0, chosen), bins.index_select(0, chosen)
        held = keep
    return _gather_rows(features, held), _gather_rows(bins, held)


def canonical_order(features: torch.Tensor, bins: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The rows sorted by bin, then by a fixed projection of the feature (float64), then by
    position: k-means (whose seeding picks rows by index) then gives the same ``eta`` whatever
    order the rows arrived in, one process or several ranks. On the host, in one op
    (``canonical_order``, csrc/cpu/canonical_order.cpp); ``features`` [N, D] float32 or
    float64, ``bins`` [N] int64, both on the CPU."""
    return ops.canonical_order(features, bins)


@torch.no_grad()
def synced_cluster_shares(reservoir, num_clusters: int, num_bins: int,
                          centres: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``eta [K, B]`` (float64, on the reservoir's device) from k-means on the gathered
    reservoirs (in :func:`canonical_order`): computed once on rank 0, broadcast to the
    others. On one rank it is :func:`irda_ext.clusters.cluster_shares` of the reservoir's
    sample in canonical order. ``centres`` is the warm start and receives the new centres
    (:func:`irda_ext.clusters.cluster_shares`), on rank 0; the other ranks leave it alone."""
    from .clusters import cluster_shares

    features, bins = gather_reservoir(reservoir)
    device = bins.device
    # k-means reads the features in float64 as it goes (the kmeans op): no float64 copy here
    features, bins = canonical_order(features.to("cpu"), bins.cpu())
    if not is_distributed():
        return cluster_shares(features, bins, num_clusters, num_bins, centres=centres).to(device)
    if is_main_process():
        eta = cluster_shares(features, bins, num_clusters, num_bins, centres=centres).to(device)
    else:
        eta = torch.empty(num_clusters, num_bins, dtype=torch.float64, device=device)
    return broadcast_(eta)
