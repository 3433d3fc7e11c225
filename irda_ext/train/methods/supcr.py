"""SupCR / Rank-N-Contrast (Zha et al., NeurIPS 2023) as ``--method supcr``: the RnC loss
(:mod:`irda_ext.baselines.rnc`) pre-trains the encoder, then a linear head is trained with
MSE on the frozen features, the paper's SupCR(MSE) row."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from irda_ext.baselines.rnc import rnc_loss

from .base import Method, check_at_least, check_positive, option, register_method


@dataclass(frozen=True)
class SupCROptions:
    supcr_epochs: Optional[int] = option(None, "SupCR: encoder pre-training epochs (default: --epochs)", type=int)
    supcr_temperature: float = option(2.0, "SupCR: Rank-N-Contrast temperature (default 2)")
    supcr_noise: float = option(0.1, "SupCR: std of the input noise that makes the two views (default 0.1)")
    supcr_lr: Optional[float] = option(None, "SupCR: encoder learning rate (default: --lr)", type=float)


@register_method("supcr")
class SupCR(Method):
    """The encoder is first trained with the RnC loss alone (``pretrain``), then frozen (its
    features are detached) while the linear head is trained with MSE. The two views of each
    sample differ by Gaussian input noise (``--supcr-noise``), our stand-in for the image
    augmentations of the paper."""

    Options = SupCROptions
    needs_per_sample_targets = True

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        check_at_least(self.options, supcr_epochs=1, supcr_noise=0)
        check_positive(self.options, "supcr_temperature", "supcr_lr")

    def pretrain(self, model, head, train_loader, device) -> None:
        o = self.options
        epochs = o.supcr_epochs if o.supcr_epochs is not None else self.context.epochs
        lr = o.supcr_lr if o.supcr_lr is not None else self.context.lr
        optimiser = torch.optim.Adam(model.parameters(), lr=float(lr))
        model.train()
        for _ in range(int(epochs)):
            for batch in train_loader:
                x, y = batch[0].to(device), batch[1].to(device)
                if x.shape[0] < 2:
                    continue
                views = [model(x + o.supcr_noise * torch.randn_like(x) if x.is_floating_point() and o.supcr_noise > 0
                               else x) for _ in range(2)]
                if views[0].dim() != 2:
                    raise ValueError(f"supcr needs one feature vector per sample, the backbone gives "
                                     f"{tuple(views[0].shape)} (dense targets are not supported)")
                loss = rnc_loss(torch.stack(views, dim=1).reshape(x.shape[0], 2, -1), y,
                                temperature=o.supcr_temperature)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()

    def transform_features(self, features, targets, epoch, training):
        return features.detach()
