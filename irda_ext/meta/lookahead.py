"""The one-step look-ahead of Meta-IRDA (Meta-Weight-Net / MetaSAug, SPEC 7).

With the head ``theta = (w, w0)`` and the per-bin gates ``g = MetaNet(inputs; phi)``:

    theta'(phi) = theta - lr * d/dtheta L_IRDA(theta; g(phi))      (virtual SGD step)
    L_meta(phi) = mean_j (w'.z_j + w0' - y_j)^2                    (meta batch, MSE)

and ``dL_meta/dphi`` is a real second-order gradient: it flows through the virtual step's
gradient, which depends on the gates through the mean shift and the covariance term.

Why the dense reference surrogate: the fused ``irda_ext.irda_surrogate`` has a custom
backward that is not itself differentiable, so ``d/dphi (d/dtheta L)`` cannot pass
through it. The look-ahead therefore evaluates the loss with ``IRDALoss.head_loss(...,
lookahead=True)``, the loss ``IRDALoss.forward`` computes, with
``irda_ext.reference.irda_surrogate`` (pure PyTorch, twice differentiable) in place of
the fused op. Only the linear head takes the virtual step and the batch is capped
(``--meta-batch-size``), so the dense ``[n, K, K, B]`` grid stays small; the real training step
still uses the fused op.
The statistics, the W-FDS smoothing and ``lambda_b`` are constants of the step (no
gradient), exactly as in ``IRDALoss``; the gates enter through
``IRDALoss.augmentation``, which is plain PyTorch in the head and the gates.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch


def lookahead_irda_loss(criterion, features: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor, gates: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``IRDALoss.forward(features, targets, head, update=False, **gates)`` for the head
    ``(weight [1, D], bias [1])``, twice differentiable in the head and the gates:
    ``IRDALoss.head_loss`` with ``lookahead=True``.

    ``features`` are treated as constants (detach them): only the head steps."""
    return criterion.head_loss(features, targets, weight, bias, lookahead=True, **gates)


def virtual_step(criterion, features: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 gates: Dict[str, torch.Tensor], lr: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The head after one SGD step of ``lr`` on the look-ahead IRDA loss, keeping the
    graph (``create_graph=True``) so that it is differentiable in ``gates``."""
    weight = weight if weight.requires_grad else weight.detach().requires_grad_()
    bias = bias if bias.requires_grad else bias.detach().requires_grad_()
    loss = lookahead_irda_loss(criterion, features.detach(), targets, weight, bias, gates)
    grad_w, grad_b = torch.autograd.grad(loss, (weight, bias), create_graph=True)
    return weight - lr * grad_w, bias - lr * grad_b


def meta_objective(criterion, meta_net, inputs: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
                   weight: torch.Tensor, bias: torch.Tensor, meta_features: torch.Tensor,
                   meta_targets: torch.Tensor, lr: float) -> torch.Tensor:
    """``L_meta(phi)``: MSE on the meta batch of the head after the virtual step driven by
    ``meta_net(inputs)`` (``inputs`` in the meta-network's dtype). Backpropagating it
    fills ``meta_net``'s gradients."""
    dtype = weight.dtype
    gates = {k: v.to(dtype) for k, v in meta_net(inputs).items()}
    w1, b1 = virtual_step(criterion, features, targets, weight.detach(), bias.detach(), gates, lr)
    pred = meta_features.detach().to(dtype) @ w1.reshape(-1) + b1.reshape(())
    return (pred - meta_targets.reshape(-1).to(dtype)).square().mean()
