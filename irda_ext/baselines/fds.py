"""Feature Distribution Smoothing (FDS): a feature calibration layer before the head.

Source: Yang, Zha, Chen, Wang, Katabi, "Delving into Deep Imbalanced Regression", ICML
2021, section 3.2 and the reference code (github.com/YyzHarry/imbalanced-regression,
``agedb-dir/fds.py`` and ``calibrate_mean_var`` in ``agedb-dir/utils.py``). Per label bin
``b`` FDS keeps running (momentum) statistics of the features, a mean ``μ_b`` and a per-dimension
variance ``σ²_b`` (diagonal, as in the paper), smooths them over neighbouring bins with
the LDS kernel window ``k`` and recalibrates every training feature of bin ``b``::

    μ_b  ← ρ μ_b + (1 - ρ) mean_{i∈b}(z_i),   σ²_b ← ρ σ²_b + (1 - ρ) var_{i∈b}(z_i)   (end of epoch, ρ = 0.9;
                                                        the first update takes the epoch's statistics)
    μ̃_b  = Σ_{b'} S[b, b'] μ_{b'},            σ̃²_b = Σ_{b'} S[b, b'] σ²_{b'}
    z̃_i  = (z_i - μ_b) * sqrt(clamp(σ̃²_b / σ²_b, 0.1, 10)) + μ̃_b          (training only, epoch ≥ start_smooth)

The running statistics follow ``FDS.update_running_stats``: once per epoch, momentum ``ρ``,
the epoch's unbiased variance (biased, i.e. 0, for a bin with a single sample). The
calibration is ``calibrate_mean_var``'s: a dimension whose running variance is 0 is left
unchanged (no shift, no scale), and so is every dimension of a bin whose running variances
sum to less than 1e-10, e.g. a bin that only ever had one sample.

``S[b, b'] = k(b' - b)`` for ``|b - b'| ≤ kernel_size // 2``, each row normalised to sum
1 (:func:`irda_ext.wfds.kernel_smoothing_matrix` with LDS's window
:func:`irda_ext.wfds.kernel_window`; W-FDS falls back to these rows, SPEC section 3).
Choices, each fixing a known problem of the reference code, written down here:

- The calibration is out of place (the reference code assigns into ``features[mask]``,
  which breaks autograd when the features require grad); gradients flow through ``z_i``.
- Bins come from an integer ``bin_index`` (e.g. ``irda_ext.Bins.index``), so targets
  need not be integers (the reference code indexes its buffers with ``int(label)``).
- Bins never seen in training take no part in the smoothing (each row of ``S`` is
  renormalised over the seen bins) instead of contributing the initial mean 0 /
  variance 1, and their features are left unchanged.
- A bin first seen after the first update epoch takes its epoch's statistics (the
  reference code averages them with the initial mean 0 / variance 1; with a full pass
  over the training set every epoch, as there, this never happens).
- Statistics are accumulated from the (detached, uncalibrated) features of the epoch's
  training batches instead of an extra pass over the training set after the epoch. Sums
  are kept in float64 so the variance ``E[z²] - E[z]²`` does not cancel.
- During epoch ``e`` the calibration uses the running statistics through epoch ``e - 1``
  and their smoothing. The reference code calibrates with the running statistics through
  ``e - 1`` (its ``running_*_last_epoch`` buffers alias the running ones after the first
  copy) but the smoothed ones through ``e - 2``, and at ``start_smooth`` with its initial
  statistics (the identity).

Not yet as the source: at the first and last bins the window is truncated and each row
renormalised, where the reference code pads the running statistics by reflection before
its ``conv1d`` (SPEC 9 asks for the reflection).
"""
from __future__ import annotations

import torch
from torch import nn

from .._validate import check_positive, check_tensor
from ..wfds import kernel_smoothing_matrix


class FDS(nn.Module):
    """Feature Distribution Smoothing layer (Yang et al., ICML 2021).

    Args:
        num_bins: number of label bins ``B``.
        feature_dim: feature dimension ``D``.
        kernel, kernel_size, sigma: smoothing window (gaussian, 5, 2 in the paper).
        momentum: ``ρ`` of the running statistics (0.9).
        start_update: first epoch whose features update the statistics (0).
        start_smooth: first epoch whose training features are calibrated (1).
        clip_min, clip_max: clamp of the variance ratio (0.1, 10).

    Shape:
        features ``[n, D]``, bin_index ``[n]`` (int64) -> ``[n, D]``.

    Use: ``z = fds(z, bin_index, epoch)`` in training (updates the epoch's statistics and,
    from ``start_smooth`` on, calibrates); ``fds.end_epoch(epoch)`` after the epoch; in
    ``eval()`` mode the layer is the identity.
    """

    def __init__(self, num_bins: int, feature_dim: int, kernel: str = "gaussian", kernel_size: int = 5,
                 sigma: float = 2.0, momentum: float = 0.9, start_update: int = 0, start_smooth: int = 1,
                 clip_min: float = 0.1, clip_max: float = 10.0):
        super().__init__()
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        check_positive(clip_min, "clip_min")
        check_positive(clip_max, "clip_max")
        if clip_min > clip_max:
            raise ValueError(f"clip_min ({clip_min}) must not exceed clip_max ({clip_max})")
        if start_smooth < start_update + 1:
            raise ValueError("start_smooth must be after start_update (statistics must exist before smoothing)")
        self.num_bins, self.feature_dim = int(num_bins), int(feature_dim)
        self.momentum, self.start_update, self.start_smooth = float(momentum), int(start_update), int(start_smooth)
        self.clip_min, self.clip_max = float(clip_min), float(clip_max)
        self.register_buffer("kernel_matrix", kernel_smoothing_matrix(self.num_bins, kernel, kernel_size, sigma))
        B, D = self.num_bins, self.feature_dim
        self.register_buffer("running_mean", torch.zeros(B, D))
        self.register_buffer("running_var", torch.ones(B, D))
        self.register_buffer("smoothed_mean", torch.zeros(B, D))
        self.register_buffer("smoothed_var", torch.ones(B, D))
        self.register_buffer("seen", torch.zeros(B, dtype=torch.bool))
        self.register_buffer("_count", torch.zeros(B, dtype=torch.float64))
        self.register_buffer("_sum", torch.zeros(B, D, dtype=torch.float64))
        self.register_buffer("_sumsq", torch.zeros(B, D, dtype=torch.float64))

    def _check(self, features, bin_index):
        check_tensor(features, "features", dim=2)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [n, {self.feature_dim}], got {tuple(features.shape)}")
        if not isinstance(bin_index, torch.Tensor):
            raise TypeError(f"bin_index must be a torch.Tensor, got {type(bin_index).__name__}")
        if bin_index.is_floating_point() or bin_index.dtype == torch.bool or bin_index.is_complex():
            raise TypeError(f"bin_index must be an integer tensor (use Bins.index), got {bin_index.dtype}")
        if bin_index.shape != (features.shape[0],):
            raise ValueError(f"bin_index must be [{features.shape[0]}], got {tuple(bin_index.shape)}")
        if bin_index.numel() and (bin_index.min() < 0 or bin_index.max() >= self.num_bins):
            raise ValueError(f"bin_index must lie in [0, {self.num_bins})")

    @torch.no_grad()
    def update(self, features: torch.Tensor, bin_index: torch.Tensor) -> None:
        """Accumulate the (detached) features of one batch into the epoch's statistics."""
        self._check(features, bin_index)
        z = features.detach().to(torch.float64)
        b = bin_index.long()
        self._count.index_add_(0, b, torch.ones_like(b, dtype=torch.float64))
        self._sum.index_add_(0, b, z)
        self._sumsq.index_add_(0, b, z * z)

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        """Merge the epoch's statistics into the running ones and re-smooth."""
        if epoch >= self.start_update:
            present = self._count > 0
            if present.any():
                n = self._count[present].unsqueeze(1)
                mean = self._sum[present] / n
                # unbiased, except a single sample (variance 0), as the reference code
                denom = torch.where(n > 1, n - 1, n)
                var = ((self._sumsq[present] - n * mean * mean) / denom).clamp_min(0.0)
                first = ~self.seen[present]
                rho = torch.where(first, 0.0, self.momentum).to(torch.float64).unsqueeze(1)
                self.running_mean[present] = (rho * self.running_mean[present].double() + (1 - rho) * mean).to(self.running_mean.dtype)
                self.running_var[present] = (rho * self.running_var[present].double() + (1 - rho) * var).to(self.running_var.dtype)
                self.seen |= present
            self._smooth()
        self._count.zero_()
        self._sum.zero_()
        self._sumsq.zero_()

    def _smooth(self) -> None:
        S = self.kernel_matrix * self.seen.to(self.kernel_matrix.dtype).unsqueeze(0)
        mass = S.sum(dim=1, keepdim=True)
        S = torch.where(mass > 0, S / mass.clamp_min(1e-300), torch.zeros_like(S)).to(self.running_mean.dtype)
        self.smoothed_mean.copy_(S @ self.running_mean)
        self.smoothed_var.copy_(S @ self.running_var)

    def calibrate(self, features: torch.Tensor, bin_index: torch.Tensor) -> torch.Tensor:
        """Out-of-place calibration of ``features`` with the current statistics
        (``calibrate_mean_var``: dimensions without running variance, and bins whose running
        variances sum to less than 1e-10, are left as they are)."""
        self._check(features, bin_index)
        b = bin_index.long()
        var = self.running_var[b]  # [n, D]
        spread = (self.running_var.sum(1) >= 1e-10) & self.seen  # [B]
        valid = (var != 0) & spread[b].unsqueeze(1)
        ratio = self.smoothed_var[b] / torch.where(valid, var, torch.ones_like(var))
        scale = ratio.clamp(self.clip_min, self.clip_max).sqrt().to(features.dtype)
        calibrated = (features - self.running_mean[b].to(features.dtype)) * scale + self.smoothed_mean[b].to(features.dtype)
        return torch.where(valid, calibrated, features)

    def forward(self, features: torch.Tensor, bin_index: torch.Tensor, epoch: int) -> torch.Tensor:
        if not self.training:
            return features
        if epoch >= self.start_update:
            self.update(features, bin_index)
        if epoch >= self.start_smooth and bool(self.seen.any()):
            return self.calibrate(features, bin_index)
        return features
