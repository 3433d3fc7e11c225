"""NYUD2-DIR (Yang et al., ICML 2021): monocular depth estimation, dense targets.

On-disk format, as the DIR repository's ``nyud2-dir/data`` folder after
``download_nyud2.py``: ``nyu2_train.csv`` and ``nyu2_test.csv`` without a header, one
``rgb_path,depth_path`` pair per line, paths starting with a folder name that the DIR loader
drops (``data/nyu2_train/x/1.jpg`` is read as ``<data-dir>/nyu2_train/x/1.jpg``); and
``test_balanced_mask.npy``, a boolean array ``[test images, 228, 304]`` selecting the
balanced test pixels. Training depth PNGs are 8-bit (depth = value / 255 * 10 m), test
depth PNGs 16-bit millimetres (depth = value / 1000 m); the PIL mode tells them apart.

Geometry as DIR: images scaled to 320x240 and centre-cropped to 304x228 (training adds a
random horizontal flip). Bins of 0.1 m over [0, 10] m. The network's per-pixel features
are at half resolution: training compares them with the depth map resized to that grid
(nearest), evaluation upsamples them (bilinear) to the full test depth map, as DIR
upsamples its output. DIR has no validation set: ``val_images`` training images (seeded)
are held out for model selection.

Shot groups: DIR fixes them from the training pixel histogram of the whole data set; its
many-shot bins hold more than ~0.77 % of the training pixels and its few-shot bins fewer than
~0.30 %. Here the histogram comes from ``stat_images`` training depth maps and the same
shares give the thresholds.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ...binning import Bins
from .splits import DatasetSplits, require_file

LAYOUT = ("--data-dir holding nyu2_train.csv and nyu2_test.csv (no header; lines 'rgb_path,depth_path' whose first "
          "path component is dropped, as the DIR loader does) and test_balanced_mask.npy (bool [test images, 228, 304])")
CROP_W, CROP_H = 304, 228
SCALE_W, SCALE_H = 320, 240
MAX_DEPTH = 10.0
MANY_SHARE, FEW_SHARE = 0.0077, 0.0030


def _read_pairs(path: str):
    require_file(path, "NYUD2-DIR list", LAYOUT)
    pairs = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(",")
            if len(parts) != 2:
                raise ValueError(f"{path}: line {number}: expected 'rgb_path,depth_path', got {line!r}. "
                                 f"Expected layout: {LAYOUT}")
            pairs.append(tuple(p.strip() for p in parts))
    if not pairs:
        raise ValueError(f"{path}: no image pairs. Expected layout: {LAYOUT}")
    return pairs


def _resolve(data_dir: str, listed: str) -> str:
    parts = listed.replace("\\", "/").split("/")
    return os.path.join(data_dir, *parts[1:]) if len(parts) > 1 else os.path.join(data_dir, listed)


def load_depth_png(path: str) -> np.ndarray:
    """Depth in metres from a NYUD2-DIR PNG (8-bit: /255*10; 16-bit: millimetres)."""
    from PIL import Image

    require_file(path, "NYUD2-DIR depth map", LAYOUT)
    with Image.open(path) as image:
        mode = image.mode
        array = np.asarray(image, dtype=np.float64)
    if mode == "L":
        return array / 255.0 * MAX_DEPTH
    if mode in ("I;16", "I;16B", "I", "I;16L"):
        return array / 1000.0
    raise ValueError(f"{path}: depth PNG mode {mode!r}; expected 8-bit 'L' (training) or 16-bit (test, millimetres)")


def _geometry(image, resample):
    """DIR's test geometry: scale to 320x240, centre-crop 304x228."""
    image = image.resize((SCALE_W, SCALE_H), resample)
    left, top = (SCALE_W - CROP_W) // 2, (SCALE_H - CROP_H) // 2
    return image.crop((left, top, left + CROP_W, top + CROP_H))


class DepthPairs(Dataset):
    """``(image [3, 228, 304] normalised, depth [228, 304] metres, mask [228, 304] bool)``."""

    MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def __init__(self, pairs, train: bool, mask: Optional[np.ndarray] = None, seed: int = 0):
        self.pairs, self.train, self.mask = pairs, train, mask
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def depth(self, index: int) -> np.ndarray:
        from PIL import Image

        depth = load_depth_png(self.pairs[index][1])
        return np.asarray(_geometry(Image.fromarray(depth.astype(np.float32), mode="F"), Image.NEAREST))

    def __getitem__(self, index: int):
        from PIL import Image

        rgb_path, _ = self.pairs[index]
        require_file(rgb_path, "NYUD2-DIR image", LAYOUT)
        with Image.open(rgb_path) as image:
            rgb = np.asarray(_geometry(image.convert("RGB"), Image.BILINEAR), dtype=np.float32) / 255.0
        depth = self.depth(index).astype(np.float32)
        if self.train and self.rng.random() < 0.5:
            rgb, depth = rgb[:, ::-1], depth[:, ::-1]
        image = (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1) - self.MEAN) / self.STD
        depth = torch.from_numpy(np.ascontiguousarray(depth))
        valid = (depth > 0) & (depth <= MAX_DEPTH)
        if self.mask is not None:
            valid &= torch.from_numpy(self.mask[index])
        return image, depth, valid


def load_nyud2(data_dir: str, seed: int = 0, val_images: int = 200, stat_images: int = 1000,
               many: Optional[int] = None, few: Optional[int] = None) -> DatasetSplits:
    train_pairs = [(_resolve(data_dir, a), _resolve(data_dir, b))
                   for a, b in _read_pairs(os.path.join(data_dir, "nyu2_train.csv"))]
    test_pairs = [(_resolve(data_dir, a), _resolve(data_dir, b))
                  for a, b in _read_pairs(os.path.join(data_dir, "nyu2_test.csv"))]
    mask_path = require_file(os.path.join(data_dir, "test_balanced_mask.npy"), "NYUD2-DIR balanced test mask", LAYOUT)
    mask = np.load(mask_path)
    if mask.shape != (len(test_pairs), CROP_H, CROP_W):
        raise ValueError(f"{mask_path}: expected a bool array of shape ({len(test_pairs)}, {CROP_H}, {CROP_W}) "
                         f"(one mask per nyu2_test.csv line), got {mask.shape}")
    mask = mask.astype(bool)
    if len(train_pairs) < 2:
        raise ValueError(f"nyu2_train.csv: need at least 2 training pairs (one is held out for validation)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_pairs))
    n_val = min(val_images, max(1, len(train_pairs) // 10))
    val_pairs = [train_pairs[i] for i in order[:n_val]]
    train_pairs = [train_pairs[i] for i in order[n_val:]]
    train = DepthPairs(train_pairs, train=True, seed=seed)

    # The label histogram from a sample of training depth maps (all of them is 50K PNGs).
    sample = rng.permutation(len(train_pairs))[:stat_images]
    pixels = np.concatenate([train.depth(int(i)).reshape(-1) for i in sample])
    pixels = pixels[(pixels > 0) & (pixels <= MAX_DEPTH)]
    if pixels.size == 0:
        raise ValueError("nyu2_train.csv: the sampled training depth maps hold no valid depth (all 0 or > 10 m)")
    many = int(round(MANY_SHARE * pixels.size)) if many is None else many
    few = int(round(FEW_SHARE * pixels.size)) if few is None else few
    return DatasetSplits(
        name="nyud2", kind="depth", train=train, val=DepthPairs(val_pairs, train=False),
        test=DepthPairs(test_pairs, train=False, mask=mask), train_targets=pixels.astype(np.float64),
        bins=Bins(0.0, MAX_DEPTH, 0.1), many=many, few=max(0, min(few, many)), backbone="resnet50-depth",
        input_dim=3, label="depth (m)", note=f"shot groups from {len(sample)} training depth maps",
    )
