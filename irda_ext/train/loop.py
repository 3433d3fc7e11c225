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


def train_epoch(model, head, method, loader, optimizer, epoch: int, kind: str, device, standard: Tuple[float, float],
                bars: bool) -> float:
    """One pass over ``loader``; returns the mean training loss per target (over every
    process under ``torchrun``). ``model`` may be the DDP-wrapped backbone: the gradients
    of the head and of the method's parameters, which DDP does not own, are averaged
    here."""
    model.train()
    head.train()
    mean, scale = standard
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not bars, unit="batch"):
        features, targets = batch_features(model, batch, kind, device)
        if targets.numel() == 0:
            continue
        y = (targets - mean) / scale
        features = method.transform_features(features, y, epoch, training=True)
        loss = method.loss(features, y, head)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch + 1}: the {method.name} loss is {loss.item()}; "
                                     f"try a smaller --lr")
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
