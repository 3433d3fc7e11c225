"""The vanilla regressor: the backbone and head trained on the plain loss, the paper's
VANILLA row. As DIR's ``train.py`` (``--loss l1``, from which the paper's DIR rows come)
the default is L1; ``vanilla-mse`` is the MSE one."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, register_method


@register_method("vanilla", aliases=("vanilla-l1",))
class Vanilla(Method):
    """Mean absolute error on the head's predictions (DIR's default base loss)."""

    def loss(self, features, targets, head) -> torch.Tensor:
        return F.l1_loss(head(features).squeeze(-1), targets)


@register_method("vanilla-mse")
class VanillaMSE(Method):
    """Mean squared error on the head's predictions; all hooks are the base defaults."""
