"""``irda-train``: train a regressor on imbalanced targets and evaluate it the DIR way.

Run ``irda-train --help`` (or ``python -m irda_ext.train --help``). With no arguments it
trains IRDA on the bundled UCI Abalone data and prints the test table.

What the driver does, in order:

1. loads the data set with its DIR split (balanced validation and test sets, long-tailed
   training set) and its label bins and shot thresholds;
2. standardises the targets with the training mean and standard deviation: the network
   and the method work in these *model units* (the bins are mapped along), every metric is
   reported in label units;
3. builds the backbone, the ``nn.Linear(D, 1)`` head and the method (``--method``, from
   :mod:`irda_ext.methods`), and trains with Adam, ``--lr`` decayed x0.1 at 2/3 and 8/9 of
   the epochs (the paper's 60th and 80th of 90);
4. after every epoch evaluates on validation, keeps the best model (``best.pt``) and
   writes ``checkpoint.pt`` (both atomically: temporary file then ``os.replace``), from
   which ``--resume`` continues exactly where it stopped;
5. evaluates the best-on-validation model once on test and writes ``results.json``, the
   table and ``per_bin_mae.png`` to ``--out``.

Under ``torchrun --nproc_per_node=N -m irda_ext.train ...`` every process trains on its
share of each global batch (``DistributedSampler``; ``--batch-size`` is per process), the
backbone is wrapped in ``DistributedDataParallel``, the head's and the method's gradients
are averaged, IRDA's statistics are synchronised (:mod:`irda_ext.distributed`), and only
rank 0 writes checkpoints and results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from . import distributed
from .atomic import atomic_save_figure, atomic_torch_save, atomic_write_text
from .datasets import DATASETS, load_dataset
from .metrics import per_bin_mae, shot_metrics
from .methods import METHODS, get_method
from .models import build_backbone

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
RESULTS = "results.json"
PLOT = "per_bin_mae.png"
TABLE = "table.txt"
# Options that must match between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = ("dataset", "method", "seed", "epochs", "batch_size", "lr", "csv", "target", "cap", "world_size")
# Methods whose own training (an encoder pre-training, a meta-network) is not synchronised
# across processes yet: refused under torchrun with more than one process.
SINGLE_PROCESS_METHODS = ("supcr", "meta-irda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irda-train",
        description=(
            "Train a regressor on imbalanced targets (deep imbalanced regression) with IRDA or a "
            "baseline, and evaluate it with the DIR protocol: balanced validation and test sets, "
            "MAE / MSE / RMSE / GM over all, many-shot, medium-shot and few-shot label bins. "
            "With no arguments: IRDA on the bundled UCI Abalone data."),
        epilog=(
            "Examples:\n"
            "  irda-train                                     # IRDA on abalone, prints the table\n"
            "  irda-train --dataset bikeshare --method vanilla --epochs 30\n"
            "  irda-train --dataset csv --csv houses.csv --target price --num-bins 50\n"
            "  irda-train --dataset agedb --data-dir /data/agedb --device cuda --pretrained r50.pth\n"
            "  irda-train --out runs/x --resume              # continue an interrupted run\n"
            "  torchrun --nproc_per_node=4 -m irda_ext.train --dataset imdb-wiki --data-dir /data/iw \\\n"
            "      --device cuda --batch-size 64              # 4 GPUs, global batch 256 (README)\n"
            "Outputs in --out: results.json, table.txt, per_bin_mae.png, checkpoint.pt, best.pt."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="abalone",
                      help="data set (default abalone, bundled); agedb, imdb-wiki, skyfinder, nyud2, tuab "
                           "read their on-disk format from --data-dir")
    data.add_argument("--data-dir", default=None, help="root folder of an on-disk data set (see the README for layouts)")
    data.add_argument("--csv", default=None, help="with --dataset csv: the tabular CSV file (.csv or .csv.gz)")
    data.add_argument("--target", default=None, help="with --dataset csv: the column to regress")
    data.add_argument("--num-bins", type=int, default=100,
                      help="csv/bikeshare: number of equal-width label bins (default 100)")
    data.add_argument("--bin-width", type=float, default=None, help="csv: bin width instead of --num-bins")
    data.add_argument("--cap", type=int, default=15,
                      help="balanced split of the tabular and digit data: at most this many samples per bin "
                           "in validation and in test (default 15; a bin of n gives min(n // 3, cap) to each)")
    data.add_argument("--many", type=int, default=None,
                      help="many-shot threshold: bins with more training samples (default: DIR's 100 for the "
                           "paper's benchmarks, 100 scaled by mean count per bin / 120 for the small data sets)")
    data.add_argument("--few", type=int, default=None, help="few-shot threshold (default: 20, scaled likewise)")
    data.add_argument("--image-size", type=int, default=None,
                      help="image side for agedb/imdb-wiki/skyfinder (default 224, as DIR)")
    data.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")

    train = parser.add_argument_group("training")
    train.add_argument("--method", choices=sorted(METHODS), default="irda", help="training method (default irda)")
    train.add_argument("--backbone", default=None,
                       help="override the data set's backbone (mlp, small-cnn, resnet18, resnet50, "
                            "resnet18-depth, resnet50-depth, resnet1d)")
    train.add_argument("--pretrained", default=None, help="local checkpoint to initialise a ResNet backbone (no download)")
    train.add_argument("--epochs", type=int, default=90, help="training epochs (default 90, as the paper)")
    train.add_argument("--batch-size", type=int, default=256,
                       help="mini-batch size per process (default 256, as the paper; under torchrun the global "
                            "batch is this times the number of processes)")
    train.add_argument("--lr", type=float, default=1e-3,
                       help="Adam learning rate (default 1e-3), x0.1 at 2/3 and at 8/9 of the epochs")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the shuffling")
    train.add_argument("--device", default=None,
                       help="torch device (default: cuda if available, else cpu; under torchrun each process "
                            "takes cuda:LOCAL_RANK)")
    train.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default: 1 for the tabular data sets, whose small MLP runs "
                            "several times faster single-threaded; torch's choice otherwise)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<method>-seed<seed>)")
    output.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    output.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                        help="stop once this epoch is done and checkpointed, without testing (time-limited jobs: "
                             "continue later with --resume)")
    output.add_argument("--no-progress", action="store_true",
                        help="no progress output (by default: progress bars on a terminal; one line per epoch "
                             "when stderr is a file or a pipe, so a log stays readable)")
    output.add_argument("--no-plot", action="store_true", help="skip the per-bin MAE plot")

    methods = parser.add_argument_group("method options (each applies to the methods that use it)")
    seen = set()
    for cls in METHODS.values():
        if cls not in seen:
            seen.add(cls)
            cls.add_arguments(methods)
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "num_bins"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.dataset == "csv" and (args.csv is None or args.target is None):
        raise ValueError("--dataset csv needs --csv PATH and --target COLUMN")
    if args.dataset != "csv" and (args.csv is not None or args.target is not None):
        raise ValueError(f"--csv/--target only apply to --dataset csv, not {args.dataset!r}")
    needs_dir = ("agedb", "imdb-wiki", "skyfinder", "nyud2", "tuab")
    if args.dataset in needs_dir and args.data_dir is None:
        raise ValueError(f"--dataset {args.dataset} reads its files from --data-dir, which was not given")


def dataset_options(args: argparse.Namespace) -> dict:
    """The loader's keyword arguments for ``args.dataset``."""
    shots = {"many": args.many, "few": args.few}
    if args.dataset == "abalone":
        return dict(seed=args.seed, cap=args.cap, **shots)
    if args.dataset == "bikeshare":
        return dict(seed=args.seed, cap=args.cap, num_bins=args.num_bins, **shots)
    if args.dataset == "csv":
        return dict(path=args.csv, target=args.target, seed=args.seed, cap=args.cap, num_bins=args.num_bins,
                    bin_width=args.bin_width, **shots)
    if args.dataset == "rotated-digits":
        return dict(seed=args.seed, cap=args.cap, **shots)
    options = dict(data_dir=args.data_dir, **shots)
    if args.dataset in ("agedb", "imdb-wiki", "skyfinder") and args.image_size is not None:
        options["image_size"] = args.image_size
    if args.dataset in ("tuab", "nyud2"):
        options["seed"] = args.seed
    if args.dataset == "tuab":
        options["cap"] = args.cap
    return options


# ----- small utilities ----------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state(loader_generator: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader_generator.get_state()}


def set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_generator.set_state(state["loader"])


def target_standardisation(train_targets: np.ndarray, bins) -> Tuple[float, float]:
    """``(shift, scale)`` with ``(y - shift) / scale`` about zero-mean, unit-variance.

    The shift is the bin edge nearest the training mean and the scale the power of two
    nearest the standard deviation: then a label on a bin edge (an integer age) stays
    exactly on the mapped edge in floating point, so the method's bins in model units
    agree with the protocol's bins in label units sample for sample."""
    shift = bins.low + bins.width * round((float(train_targets.mean()) - bins.low) / bins.width)
    std = float(train_targets.std())
    scale = 2.0 ** round(math.log2(std)) if std > 0 else 1.0
    return float(shift), float(scale)


def model_units_bins(bins, mean: float, scale: float):
    """The label bins mapped to standardised targets ``(y - mean) / scale``."""
    from .binning import Bins

    return Bins((bins.low - mean) / scale, (bins.high - mean) / scale, bins.width / scale)


# ----- one step, one epoch, one evaluation ----------------------------------------------------------
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
                progress: bool) -> float:
    """One pass over ``loader``; returns the mean training loss per target (over every
    process under ``torchrun``). ``model`` may be the DDP-wrapped backbone: the gradients
    of the head and of the method's parameters, which DDP does not own, are averaged
    here."""
    model.train()
    head.train()
    mean, scale = standard
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, unit="batch"):
        features, targets = batch_features(model, batch, kind, device)
        if targets.numel() == 0:
            continue
        y = (targets - mean) / scale
        features = method.transform_features(features, y, epoch, training=True)
        pred = head(features).squeeze(-1)
        loss = method.loss(features, pred, y, head)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch + 1}: the {method.name} loss is {loss.item()}; "
                                     f"try a smaller --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients_outside(model, optimizer)
        optimizer.step()
        total += float(loss.detach()) * targets.numel()
        count += targets.numel()
    total, count = distributed.sum_over_ranks(total, count)
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


# ----- reporting ------------------------------------------------------------------------------------
def _fmt(value: Optional[float], width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:>{width}.3f}"


def format_table(rows: Sequence[Tuple[str, Dict]], title: str = "", with_counts: bool = True) -> str:
    """Rows of ``(name, shot_metrics)`` laid out like the paper's Table 3: MAE and GM for
    All / Many / Med. / Few."""
    groups = ("all", "many", "medium", "few")
    heads = ("All", "Many", "Med.", "Few")
    name_width = max([len("Metrics")] + [len(name) for name, _ in rows]) + 2
    lines = [title] if title else []
    lines.append(f"{'Metrics':<{name_width}}{'MAE':>8}{'':24}  {'GM':>8}")
    lines.append(f"{'Shot':<{name_width}}" + "".join(f"{h:>8}" for h in heads) + "  " + "".join(f"{h:>8}" for h in heads))
    for name, metrics in rows:
        lines.append(f"{name:<{name_width}}" + "".join(_fmt(metrics[g]["mae"]) for g in groups) + "  "
                     + "".join(_fmt(metrics[g]["gm"]) for g in groups))
    if with_counts and rows:
        counts = rows[0][1]
        lines.append(f"{'(samples)':<{name_width}}" + "".join(f"{counts[g]['count']:>8d}" for g in groups))
    return "\n".join(lines)


def plot_per_bin_mae(path: str, pred, target, train_targets, bins, title: str, label: str) -> None:
    """Per-bin test MAE along the label axis over the training label histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = bins.centers.numpy()
    counts = bins.counts(torch.as_tensor(train_targets, dtype=torch.float64), clamp=True).numpy()
    mae = per_bin_mae(pred, target, bins).numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(centers, counts, width=bins.width, color="#c8d3e0", label="training samples per bin")
    ax.set_xlabel(label)
    ax.set_ylabel("training samples")
    ax2 = ax.twinx()
    valid = ~np.isnan(mae)
    ax2.plot(centers[valid], mae[valid], "o-", color="#c0392b", markersize=3, label="test MAE per bin")
    ax2.set_ylabel("test MAE")
    ax2.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


# ----- the driver -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Optional[dict]:
    """Train and evaluate as configured by ``args`` (see :func:`build_parser`); returns
    the results dictionary also written to ``results.json`` (None on ranks other than 0
    under ``torchrun``, and after ``--stop-after``).

    Under ``torchrun`` the process group is created here from the environment and torn
    down on the way out; a group the caller initialised is left alone."""
    check_args(args)
    owns_group = distributed.launched_by_torchrun() and not torch.distributed.is_initialized()
    device = distributed.init_from_env(args.device)
    try:
        return _run(args, device)
    finally:
        if owns_group:
            distributed.destroy()


def _run(args: argparse.Namespace, device: torch.device) -> Optional[dict]:
    world, main_process = distributed.world_size(), distributed.is_main_process()
    args.world_size = world
    if world > 1 and args.method in SINGLE_PROCESS_METHODS:
        raise ValueError(f"--method {args.method} trains a part of itself outside the synchronised loop and runs "
                         f"in one process only; this torchrun has {world} processes")
    out = args.out or os.path.join("runs", f"{args.dataset}-{args.method}-seed{args.seed}")
    if main_process:
        os.makedirs(out, exist_ok=True)
    progress = not args.no_progress and main_process
    # Bars redraw with carriage returns: in a log file (stderr not a terminal) the nested
    # per-batch bar alone wrote thousands of fragments, so there a plain line per epoch.
    bars = progress and sys.stderr.isatty()
    seed_everything(args.seed)  # the same on every rank: identical initial models

    data = load_dataset(args.dataset, **dataset_options(args))
    # A 256-128 MLP is too small to gain from threads: on two cores the default OpenMP
    # threading made the no-argument abalone run 5x slower than a single thread.
    threads = args.threads if args.threads is not None else (1 if data.kind == "tabular" else None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    method_cls = get_method(args.method)
    if method_cls.needs_tabular_inputs and data.kind != "tabular":
        raise ValueError(f"--method {args.method} resamples raw inputs and needs a tabular data set, "
                         f"not {args.dataset!r} ({data.kind})")
    if method_cls.needs_per_sample_targets and data.kind == "depth":
        raise ValueError(f"--method {args.method} needs one target per input, not the dense depth maps of "
                         f"{args.dataset!r}")
    train_set, train_targets = data.train, np.asarray(data.train_targets, dtype=np.float64)

    # Standardised targets for the network; metrics go back to label units.
    mean, scale = target_standardisation(train_targets, data.bins)
    standard = (mean, scale)
    args.label_scale = scale
    args.label_mean = mean
    args.label_bins = data.bins  # label units: methods that hold data out (meta-irda) split by them
    args.out = out
    args.clamp_targets = True  # the bins cover every label by construction; only rounding can step out
    method = method_cls(args)
    if data.kind == "tabular":
        x, y = train_set.tensors
        x, y = method.prepare_training_data(x, y)
        train_set = TensorDataset(x, y.float())
        train_targets = y.double().numpy()
    model_bins = model_units_bins(data.bins, mean, scale)

    backbone_name = args.backbone or data.backbone
    model = build_backbone(backbone_name, input_dim=data.input_dim, pretrained=args.pretrained,
                           image_size=int(data.extra.get("image_size", 12))).to(device)
    head = nn.Linear(model.feature_dim, 1).to(device)
    model_targets = torch.as_tensor((train_targets - mean) / scale, dtype=torch.float32)
    method.setup(model, head, model.feature_dim, model_bins, model_targets, device)

    loader_generator = torch.Generator().manual_seed(args.seed)
    # Under torchrun each rank reads its share of every global batch; the permutation
    # depends only on seed + epoch (sampler.set_epoch), so a resumed run continues exactly.
    sampler = distributed.train_sampler(train_set, seed=args.seed)
    per_rank = len(sampler) if sampler is not None else len(train_set)
    drop_last = per_rank % args.batch_size == 1  # a batch of one breaks batch norm
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None,
                              sampler=sampler, generator=loader_generator, num_workers=args.workers,
                              drop_last=drop_last)
    eval_size = max(args.batch_size, 256) if data.kind != "depth" else args.batch_size
    val_loader = DataLoader(data.val, batch_size=eval_size, num_workers=args.workers)
    test_loader = DataLoader(data.test, batch_size=eval_size, num_workers=args.workers)

    network = list(model.parameters()) + list(head.parameters())
    trained = distributed.wrap_model(model, device)  # DDP under torchrun, else the model itself
    optimizer = torch.optim.Adam([{"params": network, "lr": args.lr, "name": "network"}] + method.param_groups(),
                                 lr=args.lr)
    milestones = sorted({max(1, round(args.epochs * 2 / 3)), max(1, round(args.epochs * 8 / 9))})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    config["out"] = out
    config["world_size"] = world
    start_epoch, best_val, best_epoch, history, pretrain_done, train_seconds = 0, math.inf, -1, [], False, 0.0
    checkpoint_path, best_path = os.path.join(out, CHECKPOINT), os.path.join(out, BEST)
    if args.resume:
        if not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path!r}")
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        for key in RESUME_MUST_MATCH:
            if state["config"].get(key) != config.get(key):
                raise ValueError(f"--resume: the checkpoint was written with --{key.replace('_', '-')} "
                                 f"{state['config'].get(key)!r}, this run has {config.get(key)!r}")
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], loader_generator)
        start_epoch, best_val, best_epoch = state["epoch"], state["best_val"], state["best_epoch"]
        history, pretrain_done, train_seconds = state["history"], state["pretrain_done"], state["train_seconds"]

    if main_process:
        print(data.describe(), file=sys.stderr)
        batch = f"{args.batch_size}" + (f" per process x {world} processes" if world > 1 else "")
        print(f"method {args.method}, backbone {backbone_name} (D={model.feature_dim}), device {device}, "
              f"epochs {args.epochs}, lr {args.lr} (x0.1 at epochs {milestones}), batch {batch}; "
              f"shot thresholds: many > {data.many}, few < {data.few}", file=sys.stderr)

    if not pretrain_done:
        started = time.perf_counter()
        method.pretrain(trained, head, train_loader, device)
        train_seconds += time.perf_counter() - started
        pretrain_done = True

    epochs = tqdm(range(start_epoch, args.epochs), desc=f"{args.method} on {args.dataset}", unit="epoch",
                  disable=not bars, initial=start_epoch, total=args.epochs)
    for epoch in epochs:
        started = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loss = train_epoch(trained, head, method, train_loader, optimizer, epoch, data.kind, device, standard,
                                 bars)
        method.end_epoch(epoch, args.epochs)
        scheduler.step()
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        pred, target = predict(model, head, method, val_loader, epoch, data.kind, device, standard)
        val_mae = float(np.abs(pred - target).mean())
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae, "seconds": epoch_seconds})
        epochs.set_postfix(loss=f"{train_loss:.4f}", val_mae=f"{val_mae:.3f}")
        if progress and not bars:
            print(f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f}, val MAE {val_mae:.3f} "
                  f"({epoch_seconds:.1f} s)", file=sys.stderr, flush=True)
        # Every rank evaluates the same model on the whole validation set, so every rank
        # takes the same decisions; only rank 0 writes.
        if val_mae < best_val:
            best_val, best_epoch = val_mae, epoch + 1
            if main_process:
                atomic_torch_save({"model": model.state_dict(), "head": head.state_dict(),
                                   "method": method.state_dict(), "epoch": epoch + 1}, best_path)
        if main_process:
            atomic_torch_save({
                "config": config, "epoch": epoch + 1, "model": model.state_dict(), "head": head.state_dict(),
                "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(loader_generator), "best_val": best_val,
                "best_epoch": best_epoch, "history": history, "pretrain_done": pretrain_done,
                "train_seconds": train_seconds,
            }, checkpoint_path)
        distributed.barrier()  # the checkpoint is on disk before any rank can stop
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < args.epochs:
            epochs.close()
            if main_process:
                print(f"stopped after epoch {epoch + 1} (--stop-after); continue with --resume", file=sys.stderr)
            return None
    epochs.close()
    if not main_process:
        return None  # rank 0 evaluates on test and writes the results

    # The best-on-validation model, evaluated once on test.
    started = time.perf_counter()
    best = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    head.load_state_dict(best["head"])
    method.load_state_dict(best["method"])
    shots = dict(bins=data.bins, many=data.many, few=data.few, with_delta1=data.kind == "depth")
    val_pred, val_target = predict(model, head, method, val_loader, best["epoch"] - 1, data.kind, device, standard)
    test_pred, test_target = predict(model, head, method, test_loader, best["epoch"] - 1, data.kind, device, standard)
    label_targets = data.train_targets
    results = {
        "config": config,
        "dataset": {"name": data.name, "description": data.describe(), "note": data.note, "label": data.label,
                    "train": len(train_set), "val": len(data.val), "test": len(data.test),
                    "bins": {"low": data.bins.low, "high": data.bins.high, "width": data.bins.width,
                             "num_bins": data.bins.num_bins},
                    "shot_thresholds": {"many": data.many, "few": data.few},
                    "target_standardisation": {"mean": mean, "std": scale}},
        "backbone": backbone_name,
        "best_epoch": best["epoch"],
        "timing": {"train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(len(history), 1),
                   "eval_seconds": time.perf_counter() - started, "device": str(device),
                   "torch_threads": torch.get_num_threads()},
        "val": shot_metrics(val_pred, val_target, label_targets, **shots),
        "test": shot_metrics(test_pred, test_target, label_targets, **shots),
        "history": history,
    }
    atomic_write_text(json.dumps(_json_safe(results), indent=2) + "\n", os.path.join(out, RESULTS))
    title = (f"{data.name} test set ({results['test']['all']['count']} samples; shots: many > {data.many}, "
             f"few < {data.few}; best epoch {best['epoch']}/{args.epochs})" + (f"\n[{data.note}]" if data.note else ""))
    table = format_table([(args.method.upper() + (f" ({args.mode})" if args.method == "irda" else ""),
                           results["test"])], title=title)
    atomic_write_text(table + "\n", os.path.join(out, TABLE))
    print(table)
    if not args.no_plot:
        plot_per_bin_mae(os.path.join(out, PLOT), test_pred, test_target, label_targets, data.bins,
                         f"{args.method} on {data.name}: test MAE per bin" + (f" [{data.note}]" if data.note else ""),
                         data.label)
    print(f"results in {out}/ (train {train_seconds:.1f} s)", file=sys.stderr)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"irda-train: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
