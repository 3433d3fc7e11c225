"""Input checks shared by the baseline losses and transforms: one message format that
says what was expected and what came."""
from __future__ import annotations

from typing import Optional

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_tensor(name: str, value, *, dim: Optional[int] = None, floating: bool = True) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    return value


def check_pred_target(pred, target) -> None:
    check_tensor("pred", pred)
    check_tensor("target", target)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def check_weight(weight, like: torch.Tensor) -> None:
    if weight is None:
        return
    check_tensor("weight", weight)
    if weight.shape != like.shape:
        raise ValueError(
            f"weight must have the per-sample shape {tuple(like.shape)}, got {tuple(weight.shape)}"
        )


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_noise_var(noise_var, like: torch.Tensor) -> torch.Tensor:
    """``σ²`` as a scalar tensor (a float, or a 1-element tensor kept in the graph), > 0."""
    if isinstance(noise_var, torch.Tensor):
        if noise_var.numel() != 1:
            raise ValueError(f"noise_var must be a scalar, got shape {tuple(noise_var.shape)}")
        nv = noise_var.reshape(())
    elif isinstance(noise_var, (int, float)) and not isinstance(noise_var, bool):
        nv = torch.tensor(float(noise_var), dtype=like.dtype, device=like.device)
    else:
        raise TypeError(f"noise_var must be a float or a scalar tensor, got {type(noise_var).__name__}")
    if not bool(nv.detach() > 0):
        raise ValueError(f"noise_var must be > 0, got {float(nv)}")
    return nv
