"""``IRDALoss``: the IRDA training loss as a module (paper Algorithm 1, SPEC 2-6)."""
from __future__ import annotations

import functools
import math
import os
from typing import Optional, Union

import torch
from torch import nn

from . import distributed, reference
from .bin_stats import BinStats, resolve_estimator
from .binning import Bins
from .clusters import FeatureReservoir
from .confusion import ConfusionCounter
from ._validate import _on_host, check_nonnegative, check_positive
from .isotropic import adjusted_quadratic, isotropic_adjustment, isotropic_from_moments
from .noise_scale import NoiseScale
from ._ops import ops
from .surrogate import MODES, fused_surrogate_loss
from .wfds import kernel_matrix, kernel_smoothing_matrix, restrict_to_bins, wfds_smooth, wfds_weights


def _check_fits_in_memory(num_bins: int, feature_dim: int, dtype: torch.dtype, copies: int = 1) -> None:
    """Refuse, saying how much it would take, a loss whose state exceeds this machine's memory
    (it would otherwise die in the allocator): ``copies`` [D, D] covariances per bin (2 for
    the per-epoch statistics: the running ones and the epoch's) and two [B, B] float64
    matrices (the confusion and the W-FDS weights)."""
    need = copies * num_bins * feature_dim * (feature_dim + 1) * torch.empty((), dtype=dtype).element_size()
    need += 2 * num_bins * num_bins * 8
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ValueError(f"IRDALoss with {num_bins} bins and {feature_dim} features needs about {need / 2**30:.3g} GiB "
                         f"for its per-bin statistics ({copies} x [D, D] per bin) and [B, B] weights, more than this "
                         f"machine's {have / 2**30:.3g} GiB: use wider bins or fewer features")


def upper_triangles(cov: torch.Tensor) -> torch.Tensor:
    """``[B, D (D + 1) / 2]``: the upper triangle of each symmetric ``cov [B, D, D]``, packed row
    by row (row i: columns i .. D-1), as ``irda_head_loss`` reads the smoothed covariances (half
    the bytes of the full blocks, which a training step reads out of cache)."""
    B, D = cov.shape[0], cov.shape[-1]
    return cov.reshape(B, D * D).index_select(1, _upper_positions(D, cov.device))


@functools.lru_cache(maxsize=8)
def _upper_positions(D: int, device: torch.device) -> torch.Tensor:
    rows, cols = torch.triu_indices(D, D, device=device)  # row-major: row 0's columns, then row 1's, ...
    return rows * D + cols


class IRDALoss(nn.Module):
    """Implicit data augmentation for deep imbalanced regression.

    Each step: the batch's detached features update per-bin statistics (by default
    pooled over the epoch and folded into running ones with a momentum at its end, as FDS
    does); the statistics are smoothed across bins with W-FDS
    weights (kernel x confusion of the previous epoch); the smoothed covariance
    gets the isotropic adjustment; and the loss is the fused surrogate of the
    expected ReMSE under the augmentation ``z ~ N(z + alpha (mu_s - mu), beta Sigma_bar)``,
    multiplied by ``2 sigma^2`` (detached) so its gradient has MSE scale.
    ``end_epoch()`` closes the epoch's statistics, re-estimates the confusion matrix from the epoch's
    predictions and the cluster shares ``eta`` by k-means on a reservoir of the
    epoch's features.

    Args:
        bins: the label ``Bins``.
        feature_dim: ``D``, the input size of the linear head.
        num_clusters: ``K``; 1 reduces to the Balanced-MSE family.
        alpha, beta: strengths of the mean shift and of the covariance.
        mode: ``"exact"`` (the Jensen bound) or ``"paper"`` (eq. 22 as printed).
        momentum: ``rho`` of the running statistics (default 0.9, as FDS).
        stats: their estimator (SPEC 2, :class:`BinStats`): ``"epoch"`` (the default: the
            momentum applied once per epoch to the epoch's pooled statistics),
            ``"batch"`` (at every batch; starves the tail bins, kept to measure it) or
            ``"cumulative"`` (everything pooled; ignores ``momentum``). ``None``:
            ``"epoch"``, or ``"cumulative"`` when ``momentum`` is ``None`` (its spelling
            before this argument existed).
        noise_sigma: initial ``sigma`` in label units (default: one bin width).
        learn_sigma: learn ``log sigma`` (``self.noise``, a :class:`NoiseScale`; give
            ``noise.log_sigma`` its own learning rate, ~1e-2, as Balanced-MSE does);
            otherwise fixed.
        ramp_epochs: ramp alpha and beta linearly from 0 over this many
            ``end_epoch()`` calls (as ISDA ramps its strength); ``None``: no ramp.
        isotropic: ``"auto"`` computes ``v_b`` (SPEC 4); a float fixes it for all bins.
        kernel, kernel_size, kernel_sigma: the W-FDS kernel window (one of ``wfds.KERNELS``, LDS/FDS's).
        kmeans_samples: reservoir size for the epoch-end k-means.
        clamp_targets: put out-of-range targets in the edge bins instead of raising.
        seed: unused since the epoch-end k-means became deterministic (``irda_ext.clusters.kmeans``);
            accepted so that existing calls keep working.

    Example:
        >>> bins = Bins(0, 30, 1)
        >>> backbone, head = nn.Linear(8, 16), nn.Linear(16, 1)
        >>> criterion = IRDALoss(bins, feature_dim=16, num_clusters=2)
        >>> criterion.fit_prior(torch.rand(500) * 30)
        >>> x, y = torch.randn(32, 8), torch.rand(32) * 30
        >>> loss = criterion(backbone(x), y, head)
        >>> loss.backward()
        >>> criterion.end_epoch()
    """

    def __init__(self, bins: Bins, feature_dim: int, num_clusters: int = 3, alpha: float = 0.5, beta: float = 0.75,
                 mode: str = "exact", momentum: Optional[float] = 0.9, stats: Optional[str] = None,
                 noise_sigma: Optional[float] = None,
                 learn_sigma: bool = True, ramp_epochs: Optional[int] = None, isotropic: Union[str, float] = "auto",
                 kernel: str = "gaussian", kernel_size: int = 5, kernel_sigma: float = 2.0,
                 kmeans_samples: int = 20000, clamp_targets: bool = False, seed: int = 0,
                 stats_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(bins, Bins):
            raise TypeError(f"bins must be an irda_ext.Bins, got {type(bins).__name__}")
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive int, got {num_clusters!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (isotropic == "auto" or (isinstance(isotropic, (int, float)) and 0 <= isotropic <= 1)):
            raise ValueError(f"isotropic must be 'auto' or a number in [0, 1], got {isotropic!r}")
        if ramp_epochs is not None and (not isinstance(ramp_epochs, int) or ramp_epochs < 1):
            raise ValueError(f"ramp_epochs must be None or a positive int, got {ramp_epochs!r}")
        noise_sigma = check_positive(bins.width if noise_sigma is None else noise_sigma, "noise_sigma")
        B = bins.num_bins
        self.bins, self.feature_dim, self.num_clusters = bins, feature_dim, num_clusters
        self.alpha, self.beta = check_nonnegative(alpha, "alpha"), check_nonnegative(beta, "beta")
        self.mode = mode
        self.ramp_epochs, self.isotropic = ramp_epochs, isotropic
        self.kernel, self.kernel_size, self.kernel_sigma = kernel, kernel_size, kernel_sigma
        self.bandwidth = kernel_size // 2
        self.clamp_targets, self.seed = clamp_targets, seed
        self.epochs_done = 0
        kernel_matrix(1, kernel, kernel_size, kernel_sigma)  # validates the kernel arguments now

        estimator, momentum = resolve_estimator(stats, momentum, "IRDALoss")
        _check_fits_in_memory(B, feature_dim, stats_dtype, copies=2 if estimator == "epoch" else 1)
        self.stats = BinStats(B, feature_dim, momentum=momentum, stats=estimator, dtype=stats_dtype)
        self.confusion_counter = ConfusionCounter(B)
        self.reservoir = FeatureReservoir(kmeans_samples, feature_dim, dtype=stats_dtype) if num_clusters > 1 else None
        self.register_buffer("centers", bins.centers.clone())
        self.register_buffer("confusion", torch.eye(B, dtype=torch.float64))
        self.register_buffer("smoothing", wfds_weights(self.confusion, kernel, kernel_size, kernel_sigma))
        self.register_buffer("eta", torch.full((num_clusters, B), 1.0 / num_clusters, dtype=torch.float64))
        # Last epoch end's k-means centres, the next one's warm start (NaN: none yet). In the
        # state dict, so that a resumed run clusters as the uninterrupted one would.
        self.register_buffer("kmeans_centres", torch.full((num_clusters, feature_dim), math.nan, dtype=torch.float64))
        # Uniform until fit_prior(): no prior correction.
        self.register_buffer("log_prior", torch.full((B,), -math.log(B), dtype=torch.float64))
        self.noise = NoiseScale(noise_sigma, learn=learn_sigma)
        self._restricted = None  # (smoothing version, has_data, weights): see restricted_smoothing
        self._smoothed = None  # (key, (mean_s, cov_s, lam, v)): see smoothed_statistics
        self._in_dtype = None  # (key, (centers, eta, log_prior) in a dtype): see constants
        self._head_terms = None  # ((statistics key, mode), (offset, cov_upper, keep, iso)): see head_terms
        self._fds = None  # FDS's kernel rows: see _kernel_rows

    # ----- set-up and epoch-level estimates -------------------------------------------------
    @torch.no_grad()
    def fit_prior(self, train_targets: torch.Tensor, smooth: bool = False) -> None:
        """``log pi_b`` from the training labels (bins without samples: ``-inf``, they drop out).

        ``smooth=True`` convolves the histogram with the W-FDS kernel first (LDS)."""
        counts = self.bins.counts(torch.as_tensor(train_targets), clamp=self.clamp_targets).to(torch.float64)
        if counts.sum() == 0:
            raise ValueError("fit_prior: no training targets given")
        if smooth:
            k = kernel_matrix(self.bins.num_bins, self.kernel, self.kernel_size, self.kernel_sigma)
            counts = torch.where(counts > 0, k @ counts, counts)
        prior = counts / counts.sum()
        self.log_prior.copy_(torch.log(prior).to(self.log_prior.device))

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Closes the epoch's feature statistics (``BinStats.end_epoch``), re-estimates the confusion
        (hence the W-FDS weights) and the cluster shares, and advances the ramp."""
        self.stats.end_epoch()  # the epoch's moments are already every rank's (merged per step)
        distributed.all_reduce_sum_(self.confusion_counter.counts)  # issue 7: every rank's predictions
        self.confusion.copy_(self.confusion_counter.confusion())
        self.confusion_counter.reset()
        self.smoothing.copy_(wfds_weights(self.confusion, self.kernel, self.kernel_size, self.kernel_sigma,
                                          fds=self._kernel_rows()))
        if self.reservoir is not None:
            # issue 7: k-means on every rank's reservoir (once, on rank 0), eta broadcast
            eta = distributed.synced_cluster_shares(self.reservoir, self.num_clusters, self.bins.num_bins,
                                                    centres=self.kmeans_centres)
            self.eta.copy_(eta.to(self.eta.device))
            self.reservoir.reset()
        self.epochs_done += 1
        if self._head_terms is not None:
            # The fused step's per-bin terms of the new statistics, now rather than in the next
            # epoch's first step: they change here, once an epoch (a bin's first sample aside),
            # and the caches hold the statistics just merged. Only where the fused step ran
            # (it made the cache): Meta-IRDA's steps never read them.
            self.head_terms()

    def _kernel_rows(self) -> torch.Tensor:
        """FDS's kernel rows (``kernel_smoothing_matrix``) for ``wfds_weights``, kept: they depend
        on the bins and the kernel only (rebuilt, they took ~0.05 ms of each abalone epoch end's
        ~3 ms, a dozen small tensor ops)."""
        confusion = self.confusion
        kept = self._fds
        if kept is None or kept.dtype != confusion.dtype or kept.device != confusion.device:
            kept = kernel_smoothing_matrix(confusion.shape[0], self.kernel, self.kernel_size, self.kernel_sigma,
                                           confusion.dtype, confusion.device)
            self._fds = kept
        return kept

    def strength(self):
        """The current ``(alpha, beta)`` after the ramp."""
        ramp = 1.0 if self.ramp_epochs is None else min(1.0, self.epochs_done / self.ramp_epochs)
        return self.alpha * ramp, self.beta * ramp

    # ----- the loss --------------------------------------------------------------------------
    def restricted_smoothing(self, has_data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The W-FDS weights restricted to the bins with data (``restrict_to_bins``), in ``dtype``.

        They change only at an epoch end and when a bin gets its first sample, but they are a
        dense ``[B, B]`` matrix: rebuilding them every step cost 280 ms of a 300 ms step at
        B = 3000. On the CPU they are kept until the smoothing or the set of bins with data
        changes (comparing ``B`` flags is free there); on a GPU, where the comparison would be
        a host synchronisation and the rebuild is cheap, and while ``torch.compile`` traces,
        they are rebuilt."""
        if not _on_host(has_data):
            return restrict_to_bins(self.smoothing, has_data, self.bandwidth, dtype)
        cached = self._restricted
        version = (self.smoothing._version, self.smoothing.data_ptr(), dtype)
        if cached is None or cached[0] != version or not torch.equal(cached[1], has_data):
            cached = (version, has_data.clone(), restrict_to_bins(self.smoothing, has_data, self.bandwidth, dtype))
            self._restricted = cached
        return cached[2]

    def smoothed_statistics(self):
        """``(mean_s, cov_s, lam, v)``: the W-FDS-smoothed statistics (SPEC 3) and the isotropic
        adjustment's ``lambda_b`` and ``v_b`` (SPEC 4) of the current per-bin statistics.

        They depend on the statistics and the smoothing weights only, not on the head, and under
        the default epoch statistics those change at epoch ends (and while a bin has its first
        epoch): smoothing the ``[B, D, D]`` covariances every step took 1.8 ms of a 13 ms
        profiled abalone IRDA step. On the CPU they are kept until ``BinStats.revision``, a buffer's
        version or the smoothing changes; on a GPU and while ``torch.compile`` traces (where
        the comparison would read device values, and the work is cheap) they are recomputed."""
        stats = self.stats
        key = None
        if _on_host(stats.mean):
            key = self._statistics_key()
            if self._smoothed is not None and self._smoothed[0] == key:
                return self._smoothed[1]
        has_data = stats.count > 0
        weights = self.restricted_smoothing(has_data, stats.mean.dtype)
        mean_s, cov_s = wfds_smooth(weights, stats.mean, stats.cov, self.bandwidth)
        lam, v = isotropic_adjustment(cov_s, valid=has_data)
        if self.isotropic != "auto":
            v = torch.full_like(lam, float(self.isotropic))
        result = (mean_s, cov_s, lam, v)
        if key is not None:
            self._smoothed = (key, result)
        return result

    def _statistics_key(self):
        """What the smoothed statistics depend on, compared on the host: the statistics'
        revision (count moves every step, but which bins have data changes only with one), their
        buffers' versions and storage, and the smoothing weights'."""
        # read from the modules' dicts: through nn.Module.__getattr__ these seven reads cost
        # 15 us a step, most of the key's time
        stats = self._modules["stats"]
        mean, cov, smoothing = stats._buffers["mean"], stats._buffers["cov"], self._buffers["smoothing"]
        return (stats.revision, mean._version, cov._version, mean.data_ptr(), cov.data_ptr(), smoothing._version,
                smoothing.data_ptr())

    def constants(self, dtype: torch.dtype):
        """``(centers, eta, log_prior)`` in ``dtype`` for the surrogate: the float64 buffers
        change at epoch ends (and ``fit_prior``), so on the CPU their copies are kept until a
        buffer's version changes, instead of three copies a step (on a GPU, where a copy is an
        asynchronous kernel, and while ``torch.compile`` traces, they are copied)."""
        own = self._buffers  # not through nn.Module.__getattr__: this runs every step
        buffers = (own["centers"], own["eta"], own["log_prior"])
        if not _on_host(buffers[1]):
            return tuple(t.to(dtype) for t in buffers)
        key = (dtype,) + tuple((t._version, t.data_ptr(), t.device) for t in buffers)
        if self._in_dtype is None or self._in_dtype[0] != key:
            self._in_dtype = (key, tuple(t.to(dtype) for t in buffers))
        return self._in_dtype[1]

    def head_terms(self):
        """``(offset, cov_upper, keep, iso)``, the per-bin statistics ``irda_head_loss`` reads:
        ``offset = mu_s - mu`` (mode ``"exact"``) or ``mu_s`` (``"paper"``), the smoothed
        covariances' packed upper triangles (``upper_triangles``' layout), ``keep = 1 - v`` and
        ``iso = v lambda`` (SPEC 4), those of ``smoothed_statistics`` to rounding (the sums of
        squares read each triangle once). The fused path's own (host-only): ``wfds_smooth_upper``
        smooths straight into the triangles with the diagonals and sums of squares the
        adjustment needs, one pass over half of each covariance where the full smoothed blocks,
        the adjustment and the packing took three over all of it (2.9 ms at abalone's sizes, in
        each epoch's first step when that step computed them). Kept until the statistics or the
        smoothing change; ``end_epoch`` computes them for the next epoch where the fused step ran."""
        key = (self._statistics_key(), self.mode)
        cached = self._head_terms
        if cached is None or cached[0] != key:
            stats = self.stats
            has_data = stats.count > 0
            weights = self.restricted_smoothing(has_data, stats.mean.dtype)
            mean_s, cov_upper, diag, sum_sq = ops.wfds_smooth_upper(weights, stats.mean, stats.cov, self.bandwidth)
            lam, v = isotropic_from_moments(diag, sum_sq, valid=has_data)
            if self.isotropic != "auto":
                v = torch.full_like(lam, float(self.isotropic))
            offset = mean_s - stats.mean if self.mode == "exact" else mean_s
            cached = (key, (offset, cov_upper, 1 - v, v * lam))
            self._head_terms = cached
        return cached[1]

    def fused_step(self, pred: torch.Tensor, targets: torch.Tensor, head_weight: torch.Tensor,
                   head_bias: Optional[torch.Tensor], reduction: str, weight, lookahead: bool, gates) -> bool:
        """Whether ``head_loss`` takes ``irda_head_loss``, the fused CPU op (csrc/cpu/irda_head.cpp):
        a gradient will follow (grad mode, something to differentiate), on the CPU, eager and
        without a dispatch mode (fake tensors, the tests' emulated CUDA: they see the unfused ops),
        for the plain loss (no look-ahead, no Meta-IRDA gates, no per-sample weight, a bias, constant
        targets). Elsewhere the same loss by small tensor ops."""
        return (torch.is_grad_enabled() and not lookahead and not gates and weight is None and head_bias is not None
                and reduction in ("mean", "sum", "none") and not targets.requires_grad
                and (pred.requires_grad or head_weight.requires_grad or head_bias.requires_grad
                     or self.noise.log_sigma.requires_grad)
                and _on_host(pred) and self._modules["stats"]._buffers["mean"].device.type == "cpu"
                and torch._C._len_torch_dispatch_stack() == 0)

    def augmentation(self, head_weight: torch.Tensor, head_bias: torch.Tensor, mean_gate=None, cov_gate=None,
                     v=None, twice_differentiable: bool = True, smoothed_prediction: bool = True):
        """Per-bin ``shift_b = w (mu_s - mu)_b``, the smoothed-mean prediction
        ``w mu_s_b + w0`` (``None`` with ``smoothed_prediction=False``: exact mode does not
        use it) and ``q_b = w Sigma_bar_b w`` for the current statistics and the
        head ``w = head_weight [1, D]``, ``w0 = head_bias [1]``.

        ``mean_gate``, ``cov_gate`` (``[B]``, scale ``mu_s - mu`` and ``Sigma_s``) and ``v``
        (``[B]``, replaces the computed ``v_b``) let Meta-IRDA learn the augmentation;
        all three are differentiable. ``twice_differentiable``: ``q``'s gradient in the head is
        itself differentiable (a look-ahead step); ``False`` takes the faster once-differentiable
        product."""
        stats = self.stats
        mean_s, cov_s, lam, v_stats = self.smoothed_statistics()
        v = v_stats if v is None else v
        w = head_weight.reshape(-1).to(stats.mean.dtype)
        delta = mean_s - stats.mean
        shift = delta @ w
        if mean_gate is not None:
            shift = mean_gate * shift
            mean_s = stats.mean + mean_gate[:, None] * delta
        smoothed_pred = mean_s @ w + head_bias.reshape(()).to(w.dtype) if smoothed_prediction else None
        q = adjusted_quadratic(w, cov_s, lam, v, twice_differentiable=twice_differentiable)
        if cov_gate is not None:
            q = cov_gate * q
        return shift, smoothed_pred, q

    def forward(self, features: torch.Tensor, targets: torch.Tensor, head: nn.Linear, reduction: str = "mean",
                weight: Optional[torch.Tensor] = None, update: bool = True, **gates) -> torch.Tensor:
        """The IRDA loss of a batch.

        Args:
            features: ``[n, D]`` backbone features (the head's input).
            targets: ``[n]`` (or ``[n, 1]``) labels.
            head: the ``nn.Linear(D, 1)`` regressor; predictions are ``head(features)``.
            reduction, weight: as in ``irda_surrogate``.
            update: merge this batch into the statistics and the epoch's records
                (``False`` for a look-ahead step that must not count twice).
            gates: ``mean_gate``, ``cov_gate``, ``v`` for Meta-IRDA (see ``augmentation``).
        """
        if not isinstance(head, nn.Linear) or head.out_features != 1 or head.in_features != self.feature_dim:
            raise TypeError(f"head must be nn.Linear({self.feature_dim}, 1), got {head!r}")
        if head.bias is None:
            raise ValueError("head must have a bias (the paper's g(z) = w z + w0)")
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != self.feature_dim:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must have shape [n, {self.feature_dim}], got {got}")
        targets = targets.reshape(-1) if isinstance(targets, torch.Tensor) else torch.as_tensor(targets)
        if targets.shape[0] != features.shape[0]:
            raise ValueError(f"targets must have {features.shape[0]} entries (one per feature row), "
                             f"got shape {tuple(targets.shape)}")
        bin_index = self.bins.index(targets, clamp=self.clamp_targets)
        if bin_index.device != features.device:  # (a no-op .to() is still a dispatch, ~10 us a step)
            bin_index = bin_index.to(features.device)
        pred = head(features).reshape(-1)  # once per step: the loss and the confusion both read it
        if update:
            with torch.no_grad():
                z = features.detach()
                modules = self._modules  # not through nn.Module.__getattr__, every step
                modules["stats"].update(z, bin_index)
                modules["confusion_counter"].add_predictions(bin_index, pred.detach(), self.bins)
                reservoir = modules.get("reservoir")  # None (a plain attribute) with one cluster
                if reservoir is not None:
                    reservoir.add(z, bin_index)
        return self.head_loss(features, targets, head.weight, head.bias, reduction=reduction, weight=weight,
                              bin_index=bin_index, pred=pred, **gates)

    def head_loss(self, features: torch.Tensor, targets: torch.Tensor, head_weight: torch.Tensor,
                  head_bias: torch.Tensor, reduction: str = "mean", weight: Optional[torch.Tensor] = None,
                  lookahead: bool = False, bin_index: Optional[torch.Tensor] = None,
                  pred: Optional[torch.Tensor] = None, **gates) -> torch.Tensor:
        """The IRDA loss of the linear head ``g(z) = head_weight z + head_bias`` on a batch,
        with the current statistics; nothing is recorded (``forward`` records, then calls this).

        The surrogate (SPEC 6) of the predictions ``g(z_i)``, with the per-sample mean shift
        ``w (mu_s - mu)_{b_i}`` (mode ``"exact"``) or the residual ``|g(mu_s_{b_i}) - y_i|`` of
        the smoothed mean (mode ``"paper"``, eq. 20), the variance ``q_{b_i} = w Sigma_bar w``
        and the current strength, multiplied by ``2 sigma^2`` (detached) so that its gradient
        has the scale of MSE's (Balanced MSE's scaling).

        Args:
            features: ``[n, D]``. targets: ``[n]``.
            head_weight, head_bias: ``[1, D]`` and ``[1]``: an ``nn.Linear``'s parameters, or
                tensors computed from them (Meta-IRDA's virtual head).
            reduction, weight: as in ``irda_surrogate``.
            lookahead: for Meta-IRDA's virtual step: the loss is evaluated with the dense
                ``irda_ext.reference.irda_surrogate`` (pure PyTorch), whose gradient is itself
                differentiable, which the fused op's backward is not; and ``sigma`` is a
                constant, as the virtual step moves the head only.
            bin_index: the targets' bins, if the caller has them already.
            pred: ``[n]`` the head's predictions of ``features``, if the caller has them
                already (``forward`` does: the head is applied once per step).
            gates: ``mean_gate``, ``cov_gate``, ``v`` (see ``augmentation``).
        """
        targets = targets.reshape(-1)
        if bin_index is None:
            bin_index = self.bins.index(targets.detach(), clamp=self.clamp_targets).to(features.device)
        if pred is None:
            pred = nn.functional.linear(features.to(head_weight.dtype), head_weight, head_bias)
        pred = pred.reshape(-1)
        dtype = pred.dtype if pred.dtype in (torch.float32, torch.float64) else torch.float32
        alpha, beta = self.strength()
        if self.fused_step(pred, targets, head_weight, head_bias, reduction, weight, lookahead, gates):
            # the same loss in one op: ~40 small autograd ops fewer a training step
            offset, cov_upper, keep, iso = self.head_terms()
            centers, eta, log_prior = self.constants(dtype)
            if targets.dtype != dtype or targets.device != pred.device:
                targets = targets.to(device=pred.device, dtype=dtype)
            return ops.irda_head_loss(pred if pred.dtype == dtype else pred.to(dtype), targets, bin_index,
                                      head_weight, head_bias, offset, cov_upper, keep, iso, centers, eta, log_prior,
                                      alpha, beta, self.noise.log_sigma, self.mode, reduction)[0]
        shift_b, smoothed_pred, q = self.augmentation(head_weight, head_bias, twice_differentiable=lookahead,
                                                      smoothed_prediction=self.mode == "paper", **gates)
        y = targets.to(device=pred.device, dtype=dtype)
        if self.mode == "exact":
            shift = shift_b[bin_index]
        else:  # eq. 20: the residual of the smoothed mean of the sample's bin
            shift = (smoothed_pred[bin_index].to(dtype) - y).abs()
        var = q[bin_index].clamp_min(0)
        noise_var = self.noise.var.to(dtype)
        centers, eta, log_prior = self.constants(dtype)
        args = (pred.to(dtype), y, bin_index, centers, eta, log_prior, shift.to(dtype), var.to(dtype), alpha, beta)
        if lookahead:
            loss = reference.irda_surrogate(*args, noise_var.detach(), mode=self.mode, reduction=reduction,
                                            weight=weight)
        else:
            # the fused op without irda_ext.irda_surrogate's checks: the inputs are built above
            # (the kernel still checks their values), only `weight` comes from the caller
            loss = fused_surrogate_loss(*args, noise_var, self.mode, reduction, weight)
        # Balanced-MSE's scaling: the gradient in pred then has the scale of MSE's.
        return loss * (2 * noise_var).detach()

    # ----- checkpointing ---------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The statistics are per bin: a state saved with other bins (another range or width of
        # the same count) would load without complaint and mean something else.
        saved = state_dict.get(prefix + "centers")
        if isinstance(saved, torch.Tensor):
            ours = self.centers
            if saved.shape != ours.shape or not torch.allclose(saved.to(ours), ours, rtol=1e-9, atol=1e-12):
                def span(c):
                    return (f"{c.numel()} bins centred at {float(c[0]):g}..{float(c[-1]):g}" if c.numel()
                            else "no bins")
                raise ValueError(f"IRDALoss.load_state_dict: the state was saved with {span(saved)}, this loss has "
                                 f"{self.bins} ({span(ours)}); build the loss with the bins it was trained with")
        # A state from before the warm start: k-means starts afresh at the next epoch end.
        state_dict.setdefault(prefix + "kmeans_centres", torch.full_like(self.kmeans_centres, math.nan))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self):
        return {"epochs_done": self.epochs_done}

    def set_extra_state(self, state):
        self.epochs_done = int(state["epochs_done"])

    def extra_repr(self) -> str:
        return (f"bins={self.bins}, feature_dim={self.feature_dim}, num_clusters={self.num_clusters}, "
                f"alpha={self.alpha}, beta={self.beta}, mode={self.mode!r}, stats={self.stats.estimator!r}, "
                f"momentum={self.stats.momentum}, ramp_epochs={self.ramp_epochs}")
