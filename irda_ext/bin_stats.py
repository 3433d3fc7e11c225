"""Per-bin feature statistics (SPEC 2): batch moments, their streaming merge and the
running statistics per epoch, per batch or pooled."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from . import distributed
from ._ops import ops
from ._validate import _on_host, check_bin_index, check_tensor


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


ESTIMATORS = ("epoch", "batch", "cumulative")

# BinStats applies its deferred covariance updates once this many batches wait, or once they
# hold this many bytes (and whenever epoch_cov is read): each row of the covariances is then
# read and written once per DEFERRED_BATCHES batches, and the epoch end has at most that many
# batches' worth left to apply.
DEFERRED_BATCHES = 8
DEFERRED_BYTES = 64 * 2**20


def resolve_estimator(stats: Optional[str], momentum: Optional[float], owner: str) -> Tuple[str, Optional[float]]:
    """``(stats, momentum)`` as :class:`BinStats` keeps them: ``stats=None`` is ``"epoch"``, or
    ``"cumulative"`` when ``momentum`` is ``None`` (the spelling before ``stats`` existed);
    ``"cumulative"`` has no momentum; ``"epoch"`` and ``"batch"`` need one in ``[0, 1)``."""
    if stats is None:
        stats = "cumulative" if momentum is None else "epoch"
    if stats not in ESTIMATORS:
        raise ValueError(f"{owner}: stats must be one of {ESTIMATORS}, got {stats!r}")
    if stats == "cumulative":
        return stats, None
    if momentum is None:
        raise ValueError(f"{owner}: stats={stats!r} needs a momentum in [0, 1) (the pooled estimator without one "
                         f"is stats='cumulative')")
    if isinstance(momentum, bool) or not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
        raise ValueError(f"{owner}: momentum must be None or in [0, 1), got {momentum!r}")
    return stats, float(momentum)


class BinStats(nn.Module):
    """Running per-bin feature mean and (unbiased) covariance (SPEC 2).

    Every batch is merged by Chan's parallel merge (the fused ``bin_stats_update_``:
    exact pooled statistics, only the bins in the batch touched). What the merge feeds
    depends on the estimator ``stats``:

    * ``"epoch"`` (the default; FDS's rule, which the paper follows with momentum 0.9): the
      merge pools the current epoch's moments (``epoch_count``, ``epoch_mean``,
      ``epoch_cov``). :meth:`end_epoch` then, for each bin seen in the epoch, sets
      ``mu <- rho mu + (1 - rho) mu_epoch`` and, where the epoch held at least two of its
      samples, ``cov <- rho cov + (1 - rho) cov_epoch`` (one sample says nothing about
      spread: the covariance is kept); a bin's first epoch takes the epoch's statistics,
      and its covariance's first is the first epoch with two samples (a single sample's
      zero is no estimate to average with). ``mean`` and ``cov`` are those running
      statistics, i.e. those of the epochs before; a bin without a finished epoch reads the
      epoch's pooled statistics so far.
    * ``"cumulative"`` (ISDA's estimator): the pooled statistics of everything seen.
    * ``"batch"``: the momentum applied at every batch a bin appears in
      (``mu <- rho mu + (1 - rho) mu_batch``, ``cov`` likewise with the unbiased batch
      covariance, zero for a single sample; a bin seen for the first time takes the batch
      statistics). Kept to measure it: a tail bin appears with one sample, so each
      appearance shrinks its covariance by ``rho`` and the augmentation starves there.

    ``count`` is the number of samples merged so far (all epochs), so ``count > 0`` marks
    the bins with statistics. Under ``"epoch"`` the epoch moments take a second ``[B, D, D]``
    buffer; the epoch end is one pass over the bins seen, and no step does work for bins
    absent from its batch, nor waits for the device. On the CPU (not synced across ranks) the
    epoch's covariance updates are deferred: a batch merges its counts and means at once and
    leaves the covariance part as a plan (``bin_stats_plan_``); the plans are applied together
    when ``epoch_cov`` is read (the epoch end, a bin's first epoch, a state dict) or when
    :data:`DEFERRED_BATCHES` batches or :data:`DEFERRED_BYTES` wait. ``bin_stats_apply_`` folds
    them into one rank-M update of each bin's block (a matrix product in register tiles, each
    block read and written once, not once per batch); the result is that of one update per
    batch to rounding (the sums run in another order). Where the covariances outgrow the caches
    this saves most of the update's memory traffic, and at small D it is arithmetic done at a
    matrix product's speed (abalone, D = 128, float32, one thread of an AMD EPYC (Zen 5): 7
    batches' updates in 0.34 ms with AVX-512, 0.59 ms with AVX2).

    Args:
        num_bins: ``B``. dim: feature dimension ``D``.
        momentum: ``rho`` in ``[0, 1)`` of ``"epoch"`` and ``"batch"`` (default 0.9);
            ``None`` is the spelling of ``"cumulative"`` from before ``stats`` existed.
        stats: ``"epoch"``, ``"batch"`` or ``"cumulative"``; ``None`` (the default):
            ``"epoch"``, or ``"cumulative"`` when ``momentum`` is ``None``.
            ``"cumulative"`` ignores ``momentum``.
        dtype: float32 or float64 statistics. device: where they live.
        sync: under ``torch.distributed`` with more than one rank, merge the union of
            every rank's batch (``irda_ext.distributed``; under ``"epoch"`` the epoch's
            moments, so the epoch end needs no communication); ``False`` keeps per-rank
            statistics.

    Example:
        >>> stats = BinStats(10, 4)  # "epoch", momentum 0.9
        >>> stats.update(torch.randn(32, 4), torch.randint(0, 10, (32,)))
        >>> stats.end_epoch()
        >>> stats.cov.shape
        torch.Size([10, 4, 4])
    """

    def __init__(self, num_bins: int, dim: int, momentum: Optional[float] = 0.9, stats: Optional[str] = None,
                 dtype: torch.dtype = torch.float32, device=None, sync: bool = True):
        super().__init__()
        for name, value in (("num_bins", num_bins), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BinStats: {name} must be a positive int, got {value!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"BinStats: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.estimator, self.momentum = resolve_estimator(stats, momentum, "BinStats")
        self.num_bins, self.dim = num_bins, dim
        self.sync = bool(sync)
        self._pending, self._pending_bytes = [], 0  # deferred covariance updates (plans) of epoch_cov
        # Bumped whenever mean or cov (what a reader sees) may have changed: the custom ops
        # write in place without bumping the tensors' own version counters. IRDALoss keeps
        # its W-FDS-smoothed statistics while it stays the same.
        self.revision = 0
        self.register_buffer("count", torch.zeros(num_bins, dtype=torch.int64, device=device))
        self.register_buffer("mean", torch.zeros(num_bins, dim, dtype=dtype, device=device))
        self.register_buffer("cov", torch.zeros(num_bins, dim, dim, dtype=dtype, device=device))
        if self.estimator == "epoch":
            # The current epoch's pooled moments; rows with epoch_count == 0 are stale and
            # never read (the merge of a bin with no samples yet does not read them).
            self.register_buffer("epoch_count", torch.zeros_like(self.count))
            self.register_buffer("epoch_mean", torch.zeros_like(self.mean))
            self.register_buffer("epoch_cov", torch.zeros_like(self.cov))
            # cov holds an estimate: some finished epoch held at least two of the bin's samples.
            self.register_buffer("has_cov", torch.zeros(num_bins, dtype=torch.bool, device=device))

    def _merge_(self, count, mean, cov, z, bin_index, momentum) -> None:
        # Multi-process (issue 7): every rank merges the whole global batch; collective.
        if self.sync and distributed.is_distributed():
            distributed.synced_bin_stats_update_(count, mean, cov, z, bin_index, momentum)
        else:
            ops.bin_stats_update_(count, mean, cov, z, bin_index, momentum)

    def _blend_(self, bins: torch.Tensor, rho: float) -> None:
        """For the bins flagged in ``bins [B]`` only: ``mean <- rho mean + (1 - rho) epoch_mean``
        and ``cov`` likewise, in place; ``rho = 0`` copies the epoch's statistics (the old
        values are then never read).

        This is the momentum rule of ``merge_bin_moments_`` (``csrc/merge_math.h``) for a
        batch of two samples whose scatter is ``epoch_cov``: sample weight
        ``(1 - rho) / (2 - 1)``, no mean-difference term. The op touches only the flagged
        bins and needs no host synchronisation to find them (``torch.compile`` keeps one
        graph), where ``index_copy_`` would need their indices."""
        ops.merge_bin_moments_(torch.ones_like(self.count), self.mean, self.cov, 2 * bins.to(torch.int64),
                               self.epoch_mean, self.epoch_cov, float(rho))

    @torch.no_grad()
    def update(self, z: torch.Tensor, bin_index: torch.Tensor) -> None:
        """Merge a batch of features ``z [n, D]`` with bins ``bin_index [n]`` (detached)."""
        z = z.detach()
        check_tensor(z, "z", dim=2)
        if z.shape[1] != self.dim:
            raise ValueError(f"BinStats.update: z must have shape [n, {self.dim}], got {tuple(z.shape)}")
        # the buffers from the dict: through this class's __getattr__ (nn.Module's, after the
        # epoch_cov check) each read cost ~2.5 us, a dozen of them a step
        buffers = self._buffers
        device = buffers["mean"].device
        # The kernels check the bin range and that z is finite (on a GPU without synchronising).
        check_bin_index(bin_index, z.shape[0], self.num_bins, device, values=False)
        if z.device != device:
            raise ValueError(f"BinStats.update: z is on {z.device} but the statistics are on {device}")
        if self.estimator != "epoch":
            self._merge_(self.count, self.mean, self.cov, z, bin_index, self.momentum)
            self.revision += 1
            return
        if _on_host(z) and not (self.sync and distributed.is_distributed()):
            # counts and means now; the covariance part waits for the next read of epoch_cov.
            # One op also adds the batch's counts to the running count and flags the bins with
            # no finished epoch, the bookkeeping below in six tensor ops fewer.
            *plan, first, num_first = ops.bin_stats_epoch_plan_(buffers["count"], buffers["epoch_count"],
                                                                buffers["epoch_mean"], z, bin_index)
            self._pending.append(plan)
            self._pending_bytes += sum(t.numel() * t.element_size() for t in plan)
            if len(self._pending) >= DEFERRED_BATCHES or self._pending_bytes >= DEFERRED_BYTES:
                self.flush()
            if int(num_first):
                self._blend_(first, 0.0)
                self.revision += 1
            return
        before = self.epoch_count.clone()
        self._merge_(self.epoch_count, self.epoch_mean, self.epoch_cov, z, bin_index, None)
        added = self.epoch_count - before  # the global batch's counts (every rank's, when synced)
        # A bin with no finished epoch (nothing merged before this epoch) reads the epoch so far.
        first = (added > 0) & (self.count == before)
        # After the first epoch there is mostly nothing to copy: on the CPU, where asking costs
        # nothing, the op (a scan of B x D rows) is skipped then; elsewhere asking would wait
        # for the device (and break a compiled graph).
        if not _on_host(first) or bool(first.any()):
            self._blend_(first, 0.0)
            self.revision += 1
        self.count.add_(added)

    @torch.no_grad()
    def flush(self) -> None:
        """Applies the deferred covariance updates to ``epoch_cov`` (reading ``epoch_cov`` does this)."""
        pending = self.__dict__.get("_pending")
        if pending:
            self._pending, self._pending_bytes = [], 0
            ops.bin_stats_apply_(self._buffers["epoch_cov"], *[list(part) for part in zip(*pending)])

    def __getattr__(self, name):
        # epoch_cov is a buffer, read through here: it is brought up to date first
        if name == "epoch_cov":
            self.flush()
        return super().__getattr__(name)

    def _save_to_state_dict(self, *args, **kwargs):
        self.flush()
        super()._save_to_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):  # .to(), .double(), ...: the buffers as they should be
        self.flush()
        return super()._apply(*args, **kwargs)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Close the epoch (``"epoch"`` only; the other estimators have nothing to do):
        fold its pooled statistics into the running ones, for the bins seen in it."""
        if self.estimator != "epoch":
            return
        self.flush()  # the epoch's deferred covariance updates
        rho, n = self.momentum, self.epoch_count
        earlier = self.count > n  # bins with a finished epoch before this one
        moved_mean = rho * self.mean + (1 - rho) * self.epoch_mean  # [B, D], before the blends write it
        # Bins in their first epoch already hold the epoch's statistics (update copies them).
        self._blend_(earlier & (n >= 2) & self.has_cov, rho)
        self._blend_(earlier & (n >= 2) & ~self.has_cov, 0.0)  # the covariance's first estimate
        # Every earlier bin seen moves its mean (the blends wrote it too, the copy wrongly).
        self.mean.copy_(torch.where((earlier & (n > 0))[:, None], moved_mean, self.mean))
        self.has_cov |= n >= 2
        n.zero_()
        self.revision += 1

    def reset(self) -> None:
        self._pending, self._pending_bytes = [], 0
        for buffer in self.buffers():
            buffer.zero_()
        self.revision += 1

    def _load_from_state_dict(self, *args, **kwargs):
        self._pending, self._pending_bytes = [], 0  # updates of the state being replaced
        super()._load_from_state_dict(*args, **kwargs)
        self.revision += 1

    def extra_repr(self) -> str:
        return (f"num_bins={self.num_bins}, dim={self.dim}, stats={self.estimator!r}, momentum={self.momentum}, "
                f"dtype={self.mean.dtype}")
