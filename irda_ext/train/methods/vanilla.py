"""The vanilla regressor: the backbone and head trained with plain MSE (the paper's
VANILLA row), or with L1 as the DIR benchmarks' other plain baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, register_method


@register_method("vanilla", aliases=("vanilla-mse",))
class Vanilla(Method):
    """Mean squared error on the head's predictions; all hooks are the base defaults."""


@register_method("vanilla-l1")
class VanillaL1(Method):
    """Mean absolute error on the head's predictions."""

    def loss(self, features, targets, head) -> torch.Tensor:
        return F.l1_loss(head(features).squeeze(-1), targets)
