"""One training epoch and one evaluation pass of the driver."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import launch


def batch_features(model: nn.Module, batch, kind: str, device, training: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(features [n, D], targets [n])`` of a batch, targets in label units.

    Depth maps give one row per valid pixel: in training the depth map and its mask are
    resized (nearest) to the feature grid; in evaluation the features are upsampled
    (bilinear) to the full depth map, which for a linear head is upsampling the predicted
    depth, as DIR evaluates."""
    if kind == "depth":
        images, depth, mask = (t.to(device) for t in batch)
        features = model(images)
        if training:
            size = features.shape[-2:]
            depth = F.interpolate(depth[:, None], size=size, mode="nearest")[:, 0]
            mask = F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        else:
            features = F.interpolate(features, size=depth.shape[-2:], mode="bilinear", align_corners=False)
        return features.permute(0, 2, 3, 1)[mask], depth[mask]
    inputs, targets = batch[0].to(device), batch[1].to(device)
    return model(inputs), targets.reshape(-1).float()


class TrainingDiverged(FloatingPointError):
    """The loss or the features stopped being finite numbers."""


def _diverged(what: str, epoch: int, step: int, lr: float) -> TrainingDiverged:
    return TrainingDiverged(f"training diverged at epoch {epoch + 1}, step {step + 1}: {what}; the learning rate "
                            f"(--lr {lr:g}) is likely too large, try {lr / 10:g}")


def _finite_parameters(*modules: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def _quadratic_overflow(features: torch.Tensor, head: nn.Linear) -> bool:
    """True when the head's quadratic forms of the features (``w' z z' w``, what every
    augmentation variance is made of) can overflow the features' dtype."""
    with torch.no_grad():
        scale = float(features.abs().max()) * float(head.weight.abs().max())
    return scale * scale * features.shape[-1] > torch.finfo(features.dtype).max / 16


def _overflowed(state) -> bool:
    """True when a method's state holds NaN or +inf (running statistics that overflowed;
    -inf is a legitimate log prior of an empty bin)."""
    if isinstance(state, dict):
        return any(_overflowed(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_overflowed(v) for v in state)
    if torch.is_tensor(state) and state.is_floating_point():
        return bool(torch.isnan(state).any() or torch.isposinf(state).any())
    return False


def train_epoch(model, head, method, loader, optimizer, epoch: int, kind: str, device, standard: Tuple[float, float],
                bars: bool, lr: float = float("nan")) -> float:
    """One pass over ``loader``; returns the mean training loss per target (over every
    process under ``torchrun``). ``model`` may be the DDP-wrapped backbone: the gradients
    of the head and of the method's parameters, which DDP does not own, are averaged
    here. A loss or features that stop being finite raise :class:`TrainingDiverged` naming the
    epoch and the step."""
    model.train()
    head.train()
    mean, scale = standard
    total, count = 0.0, 0
    for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not bars,
                                      unit="batch")):
        features, targets = batch_features(model, batch, kind, device)
        if targets.numel() == 0:
            continue
        y = (targets - mean) / scale
        features = method.transform_features(features, y, epoch, training=True)
        if not bool(torch.isfinite(features).all()):
            raise _diverged("the backbone's features are not finite", epoch, step, lr)
        try:
            loss = method.loss(features, y, head)
        except ValueError as err:  # a method's own input checks meeting a diverged model
            if not _finite_parameters(model, head):
                raise _diverged(f"the model's weights are not finite ({err})", epoch, step, lr) from err
            if _overflowed(method.state_dict()):
                raise _diverged(f"the {method.name} statistics overflowed ({err})", epoch, step, lr) from err
            if _quadratic_overflow(features, head):
                raise _diverged(f"the features and the head's weights grew too large for {features.dtype} "
                                f"({err})", epoch, step, lr) from err
            raise
        if not torch.isfinite(loss):
            raise _diverged(f"the {method.name} loss is {loss.item()}", epoch, step, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        launch.average_gradients_outside(model, optimizer)
        optimizer.step()
        total += float(loss.detach()) * targets.numel()
        count += targets.numel()
    total, count = launch.sum_over_ranks(total, count)
    return total / max(count, 1)


@torch.no_grad()
def predict(model, head, method, loader, epoch: int, kind: str, device, standard: Tuple[float, float]):
    """``(predictions, targets)`` in label units, as float64 numpy arrays."""
    model.eval()
    head.eval()
    mean, scale = standard
    preds, targets = [], []
    for batch in loader:
        features, target = batch_features(model, batch, kind, device, training=False)
        features = method.transform_features(features, None, epoch, training=False)
        preds.append((head(features).squeeze(-1).double() * scale + mean).cpu())
        targets.append(target.double().cpu())
    return torch.cat(preds).numpy(), torch.cat(targets).numpy()
