"""Evaluation metrics of the deep-imbalanced-regression literature (SPEC 8).

Test samples are grouped by the *training* count of their label bin, as in Yang et al.,
"Delving into Deep Imbalanced Regression" (ICML 2021): many-shot bins have more than
``many`` training samples, few-shot bins fewer than ``few``, medium-shot bins the rest.
Per group and overall the errors are pooled over samples (not averaged per bin).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch

GROUPS = ("all", "many", "medium", "few")
#: a zero absolute error is floored here before the logarithm of the geometric mean
GM_FLOOR = 1e-12


def _as_float64(name: str, values) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    elif not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(values).__name__}") from None
    if values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {values.dtype}")
    return values.detach().to("cpu", torch.float64).reshape(-1)


def error_summary(pred, target) -> Dict[str, Optional[float]]:
    """MAE, MSE, RMSE, GM and the sample count of ``pred`` against ``target``.

    An empty selection gives ``count`` 0 and ``None`` for every error (JSON null)."""
    pred, target = _as_float64("pred", pred), _as_float64("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same number of entries, got {pred.numel()} and {target.numel()}")
    count = int(pred.numel())
    if count == 0:
        return {"mae": None, "mse": None, "rmse": None, "gm": None, "count": 0}
    err = (pred - target).abs()
    mse = float((err ** 2).mean())
    return {
        "mae": float(err.mean()),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "gm": float(torch.exp(torch.log(err.clamp_min(GM_FLOOR)).mean())),
        "count": count,
    }


def delta1(pred, target) -> Optional[float]:
    """Depth accuracy: share of pixels with ``max(d/g, g/d) < 1.25`` (``None`` if empty).

    Both depths must be positive; the caller removes invalid pixels first."""
    pred, target = _as_float64("pred", pred), _as_float64("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same number of entries, got {pred.numel()} and {target.numel()}")
    if pred.numel() == 0:
        return None
    if bool((target <= 0).any()):
        raise ValueError("delta1: ground-truth depths must be positive (mask invalid pixels out first)")
    # A non-positive prediction is as wrong as it gets: ratio infinite.
    ratio = torch.where(pred > 0, torch.maximum(pred / target, target / pred.clamp_min(1e-300)),
                        torch.full_like(pred, math.inf))
    return float((ratio < 1.25).double().mean())


def shot_groups(target, train_targets, bins, many: int = 100, few: int = 20) -> Dict[str, torch.Tensor]:
    """Boolean masks over ``target`` for the groups all / many / medium / few.

    ``bins`` is an :class:`irda_ext.Bins`; targets outside its range go to the edge bins."""
    if not (isinstance(many, int) and isinstance(few, int)) or isinstance(many, bool) or isinstance(few, bool):
        raise TypeError(f"shot thresholds must be ints, got many={many!r}, few={few!r}")
    if few < 0 or many < few:
        raise ValueError(f"shot thresholds need 0 <= few <= many, got many={many}, few={few}")
    target = _as_float64("target", target)
    train_counts = bins.counts(_as_float64("train_targets", train_targets), clamp=True)
    count_of_sample = train_counts[bins.index(target, clamp=True)]
    many_mask = count_of_sample > many
    few_mask = count_of_sample < few
    return {
        "all": torch.ones_like(many_mask),
        "many": many_mask,
        "medium": ~many_mask & ~few_mask,
        "few": few_mask,
    }


def shot_metrics(pred, target, train_targets, bins, many: int = 100, few: int = 20,
                 with_delta1: bool = False) -> Dict[str, Dict[str, Optional[float]]]:
    """``{"all"|"many"|"medium"|"few": {"mae", "mse", "rmse", "gm", "count"}}``.

    Args:
        pred, target: predictions and labels of the evaluated samples (or pixels), any shape.
        train_targets: every training label; defines the shot group of each bin.
        bins: the label :class:`irda_ext.Bins`.
        many, few: a bin is many-shot with more than ``many`` training samples,
            few-shot with fewer than ``few``, medium-shot otherwise (DIR: 100 and 20).
        with_delta1: add ``"delta1"`` to each group (depth estimation).

    Example:
        >>> from irda_ext import Bins
        >>> m = shot_metrics([1.0, 5.0], [1.5, 5.0], [1.2] * 200 + [5.1] * 3, Bins(0, 10, 1))
        >>> m["many"]["mae"], m["few"]["count"]
        (0.5, 1)
    """
    pred, target = _as_float64("pred", pred), _as_float64("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same number of entries, got {pred.numel()} and {target.numel()}")
    masks = shot_groups(target, train_targets, bins, many=many, few=few)
    out = {}
    for group in GROUPS:
        mask = masks[group]
        out[group] = error_summary(pred[mask], target[mask])
        if with_delta1:
            out[group]["delta1"] = delta1(pred[mask], target[mask])
    return out


def per_bin_mae(pred, target, bins) -> torch.Tensor:
    """Mean absolute error of each label bin, ``[num_bins]`` float64; NaN for empty bins."""
    pred, target = _as_float64("pred", pred), _as_float64("target", target)
    index = bins.index(target, clamp=True)
    total = torch.zeros(bins.num_bins, dtype=torch.float64).index_add_(0, index, (pred - target).abs())
    count = torch.bincount(index, minlength=bins.num_bins).to(torch.float64)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))
