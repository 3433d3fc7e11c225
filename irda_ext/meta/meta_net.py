"""The meta-network of Meta-IRDA and its per-bin inputs (SPEC 7, paper 3.5.2).

Per bin ``b`` the network reads ``[N_b / N_max, rho_b, U_b, Lbar_b]`` and gives three
per-bin outputs that drive :class:`irda_ext.IRDALoss`: a gate on the W-FDS mean shift
``mu_s - mu`` in (0, 2), a gate on the smoothed covariance in (0, 2) and the isotropic
weight ``v_b`` in (0, 1).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

#: Order of the per-bin inputs (columns of :meth:`BinInputs.inputs`).
INPUT_NAMES = ("count", "density", "uncertainty", "loss")
#: Order of the outputs and the keyword each has in ``IRDALoss.forward``.
GATE_NAMES = ("mean_gate", "cov_gate", "v")


class MetaNet(nn.Module):
    """Two-layer MLP ``4 -> hidden -> 3`` applied to every bin independently.

    The last layer starts at zero, so before any meta step every bin gets
    ``mean_gate = cov_gate = 1`` (plain IRDA statistics) and ``v_b = 0.5``.

    Shape: inputs ``[B, 4]``; returns a dict of three ``[B]`` tensors keyed by
    :data:`GATE_NAMES`, ready to be passed as ``IRDALoss(..., **gates)``.

    Example:
        >>> net = MetaNet()
        >>> gates = net(torch.rand(10, 4))
        >>> sorted(gates), gates["v"].shape
        (['cov_gate', 'mean_gate', 'v'], torch.Size([10]))
    """

    def __init__(self, hidden: int = 32, in_features: int = len(INPUT_NAMES)):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, len(GATE_NAMES)))
        nn.init.zeros_(self.body[2].weight)
        nn.init.zeros_(self.body[2].bias)

    def forward(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        if inputs.dim() != 2 or inputs.shape[1] != self.body[0].in_features:
            raise ValueError(f"MetaNet: inputs must be [B, {self.body[0].in_features}], got {tuple(inputs.shape)}")
        out = torch.sigmoid(self.body(inputs))
        return {"mean_gate": 2 * out[:, 0], "cov_gate": 2 * out[:, 1], "v": out[:, 2]}


def region_density(counts: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """``rho_b = sum_{|b' - b| <= radius} N_b' / N`` (paper 3.5.2; 0 everywhere when ``N = 0``)."""
    counts = counts.to(torch.float64)
    padded = torch.nn.functional.pad(counts[None, None], (radius, radius))
    window = torch.nn.functional.conv1d(padded, torch.ones(1, 1, 2 * radius + 1, dtype=torch.float64))[0, 0]
    return window / counts.sum().clamp_min(1)


def remse_bin_logits(pred: torch.Tensor, centers: torch.Tensor, eta: torch.Tensor, log_prior: torch.Tensor,
                     noise_var: torch.Tensor) -> torch.Tensor:
    """``[n, B]`` log-probabilities of the bins under ReMSE (paper eq. 15 with the prior):
    the cluster mixture ``log (1/K) sum_k exp(-eta_hat[k, b](c_b - pred)^2) + log pi_b``,
    normalised over the bins with a finite prior. With ``K = 1`` these are Balanced-MSE's
    logits on the bin grid."""
    eh = eta / (2 * noise_var)  # [K, B]
    z = -eh[None] * (centers[None, None, :] - pred[:, None, None]) ** 2  # [n, K, B]
    logits = torch.logsumexp(z, 1) - math.log(eta.shape[0]) + log_prior[None, :]
    return torch.log_softmax(logits, -1)


class BinInputs:
    """Running per-bin inputs of the meta-network.

    ``N_b`` are the training counts (fixed at construction; ``N_max`` the largest);
    ``U_b`` and ``Lbar_b`` are running means (momentum ``momentum`` per batch in which the
    bin occurs; a bin's first batch sets them) of, over the bin's training samples:

    * ``U``: entropy of the softmax over bins of the ReMSE logits
      (:func:`remse_bin_logits`), divided by ``log`` of the number of bins with data so it
      lies in [0, 1];
    * ``Lbar``: the un-augmented ReMSE loss (``irda_ext.reference.remse_loss``, the loss
      IRDA augments), divided by the same ``log`` (a uniform guess scores 1).

    A bin not seen yet reads ``U = Lbar = 1`` (no knowledge). All inputs are constants
    for the meta-network (no gradient flows into the model through them). The running
    values live on ``device`` (that of the training batches), so observing a batch
    never waits for the device.
    """

    def __init__(self, counts: torch.Tensor, momentum: float = 0.9, device: Optional[torch.device] = None):
        counts = torch.as_tensor(counts).to(device=device, dtype=torch.float64).reshape(-1)
        if counts.numel() == 0 or bool((counts < 0).any()):
            raise ValueError("BinInputs: counts must be a non-empty vector of non-negative numbers")
        if not 0 <= momentum < 1:
            raise ValueError(f"BinInputs: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.counts = counts
        self.scale = math.log(max(2, int((counts > 0).sum())))
        self.uncertainty = torch.ones_like(counts)
        self.loss = torch.ones_like(counts)
        self.seen = torch.zeros_like(counts, dtype=torch.bool)

    @property
    def num_bins(self) -> int:
        return self.counts.numel()

    @torch.no_grad()
    def observe(self, pred: torch.Tensor, target: torch.Tensor, bin_index: torch.Tensor, criterion) -> None:
        """Fold a training batch (``pred``, ``target`` in model units) into ``U`` and ``Lbar``,
        using ``criterion``'s bin centres, cluster shares, prior and current noise."""
        from irda_ext.reference import remse_loss

        dtype = torch.float64
        pred, target = pred.detach().reshape(-1).to(dtype), target.detach().reshape(-1).to(dtype)
        centers, eta = criterion.centers.to(dtype), criterion.eta.to(dtype)
        log_prior, noise_var = criterion.log_prior.to(dtype), criterion.noise.var.detach().to(dtype)
        logp = remse_bin_logits(pred, centers, eta, log_prior, noise_var)
        entropy = -(logp.exp() * torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))).sum(-1)
        loss = remse_loss(pred, target, bin_index, centers, eta, log_prior, noise_var)
        bin_index = bin_index.to(self.counts.device)
        n_b = torch.zeros_like(self.counts).index_add_(0, bin_index, torch.ones_like(entropy).to(self.counts.device))
        present = n_b > 0
        mean_u = torch.zeros_like(self.counts).index_add_(0, bin_index, entropy.to(self.counts.device)) / n_b.clamp_min(1)
        mean_l = torch.zeros_like(self.counts).index_add_(0, bin_index, loss.to(self.counts.device)) / n_b.clamp_min(1)
        for running, batch in ((self.uncertainty, mean_u / self.scale), (self.loss, mean_l / self.scale)):
            blended = torch.where(self.seen, self.momentum * running + (1 - self.momentum) * batch, batch)
            running.copy_(torch.where(present, blended, running))
        self.seen |= present

    def inputs(self, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[B, 4]``: ``N_b / N_max``, ``rho_b``, ``U_b``, ``Lbar_b``."""
        count = self.counts / self.counts.max().clamp_min(1)
        x = torch.stack([count, region_density(self.counts), self.uncertainty, self.loss], 1)
        return x.to(device=device, dtype=dtype)

    def state_dict(self) -> dict:
        return {"uncertainty": self.uncertainty.clone(), "loss": self.loss.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("uncertainty", "loss", "seen"):
            value = state[name]
            if value.shape != getattr(self, name).shape:
                raise ValueError(f"BinInputs: {name} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(getattr(self, name).shape)}")
            getattr(self, name).copy_(value.to(self.counts.device))
