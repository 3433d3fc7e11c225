"""The training driver: one run of ``irda-train``, from the parsed options to ``results.json``.

What a run does, in order:

1. loads the data set with its DIR split (balanced validation and test sets, long-tailed
   training set) and its label bins and shot thresholds;
2. standardises the targets (:mod:`.units`): the network and the method work in *model
   units*, every metric is reported in label units;
3. builds the method (``--method``, from :mod:`.methods`) with its options and a
   :class:`~.methods.RunContext`, the backbone and the ``nn.Linear(D, 1)`` head, and trains
   with Adam, ``--lr`` decayed x0.1 at 2/3 and 8/9 of the epochs (the paper's 60th and 80th
   of 90);
4. after every epoch evaluates on validation, keeps the best model (``best.pt``) and writes
   ``checkpoint.pt`` (:mod:`.checkpoint`), from which ``--resume`` continues exactly;
5. evaluates the best-on-validation model once on test and writes ``results.json``, the
   table and ``per_bin_mae.png`` to ``--out`` (:mod:`.report`).

Under ``torchrun --nproc_per_node=N -m irda_ext.train ...`` every process trains on its
share of each global batch (``DistributedSampler``; ``--batch-size`` is per process), the
backbone is wrapped in ``DistributedDataParallel``, the head's and the method's gradients
are averaged (:mod:`.launch`), IRDA's statistics are synchronised
(:mod:`irda_ext.distributed`), and only rank 0 writes checkpoints and results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..atomic import atomic_write_text
from ..metrics import shot_metrics
from . import launch
from .checkpoint import (BEST, CHECKPOINT, Progress, load_for_resume, read_checked, restore, save_best,
                         save_checkpoint, seed_everything)
from .cli import check_args
from .datasets import load_dataset, loader_options
from .datasets.splits import DatasetSplits
from .loop import predict, train_epoch
from .methods import Method, RunContext, get_method, options_from_args
from .models import build_backbone
from .output import OutputFolder
from .report import format_table, json_safe, plot_per_bin_mae
from .units import model_units_bins, target_standardisation

RESULTS = "results.json"
PLOT = "per_bin_mae.png"
TABLE = "table.txt"
# Methods whose own training (an encoder pre-training, a meta-network) is not synchronised
# across processes yet: refused under torchrun with more than one process.
SINGLE_PROCESS_METHODS = ("supcr", "meta-irda")


@dataclass
class Run:
    """Everything one run trains, evaluates and checkpoints."""

    args: argparse.Namespace
    device: torch.device
    out: str
    data: DatasetSplits
    standard: tuple  # (shift, scale): model units = (label - shift) / scale
    method: Method
    backbone_name: str
    model: nn.Module  # the backbone, unwrapped: evaluation and checkpoints
    trained: nn.Module  # the backbone as trained: DDP-wrapped under torchrun
    head: nn.Linear
    train_size: int
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    sampler: object
    loader_generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: object
    milestones: list
    config: dict
    main_process: bool


def run(args: argparse.Namespace) -> Optional[dict]:
    """Train and evaluate as configured by ``args`` (see :func:`irda_ext.train.build_parser`);
    returns the results dictionary also written to ``results.json`` (None on ranks other than
    0 under ``torchrun``, and after ``--stop-after``).

    Under ``torchrun`` the process group is created here from the environment and torn
    down on the way out; a group the caller initialised is left alone."""
    check_args(args)
    owns_group = launch.launched_by_torchrun() and not torch.distributed.is_initialized()
    device = launch.init_from_env(args.device)
    try:
        out = args.out or os.path.join("runs", f"{args.dataset}-{args.method}-seed{args.seed}")
        if not launch.is_main_process():  # rank 0 alone writes, and holds the folder
            return _run(args, device, out)
        with OutputFolder(out):
            return _run(args, device, out)
    finally:
        if owns_group:
            launch.destroy()


def _run(args: argparse.Namespace, device: torch.device, out: str) -> Optional[dict]:
    world = launch.world_size()
    if world > 1 and args.method in SINGLE_PROCESS_METHODS:
        raise ValueError(f"--method {args.method} trains a part of itself outside the synchronised loop and runs "
                         f"in one process only; this torchrun has {world} processes")
    seed_everything(args.seed)  # the same on every rank: identical initial models
    r = build_run(args, device, out)
    progress = start_or_resume(r)
    describe(r)
    if not progress.pretrain_done:
        started = time.perf_counter()
        r.method.pretrain(r.trained, r.head, r.train_loader, device)
        progress.train_seconds += time.perf_counter() - started
        progress.pretrain_done = True
    if not train(r, progress) or not r.main_process:
        return None  # stopped early (--stop-after), or not rank 0, which evaluates on test alone
    return evaluate_and_report(r, progress)


# ----- building ---------------------------------------------------------------------------------------
def load_data(args: argparse.Namespace) -> DatasetSplits:
    given = {"path": args.csv, "target": args.target, "data_dir": args.data_dir, "cap": args.cap,
             "num_bins": args.num_bins, "bin_width": args.bin_width, "many": args.many, "few": args.few,
             "image_size": args.image_size}
    data = load_dataset(args.dataset, **loader_options(args.dataset, given, seed=args.seed))
    # A 256-128 MLP is too small to gain from threads: on two cores the default OpenMP
    # threading made the no-argument abalone run 5x slower than a single thread.
    threads = args.threads if args.threads is not None else (1 if data.kind == "tabular" else None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return data


def build_method(args: argparse.Namespace, data: DatasetSplits, standard: tuple, out: str) -> Method:
    cls = get_method(args.method)
    if cls.needs_tabular_inputs and data.kind != "tabular":
        raise ValueError(f"--method {args.method} resamples raw inputs and needs a tabular data set, "
                         f"not {args.dataset!r} ({data.kind})")
    if cls.needs_per_sample_targets and data.kind == "depth":
        raise ValueError(f"--method {args.method} needs one target per input, not the dense depth maps of "
                         f"{args.dataset!r}")
    shift, scale = standard
    context = RunContext(label_scale=scale, label_shift=shift, label_bins=data.bins, epochs=args.epochs, lr=args.lr,
                         seed=args.seed, many_shot=args.many, out_dir=out, dataset=args.dataset,
                         plot=not args.no_plot,
                         clamp_targets=True)  # the bins cover every label by construction; only rounding steps out
    return cls(options_from_args(cls, args), context)


def build_run(args: argparse.Namespace, device: torch.device, out: str) -> Run:
    main_process = launch.is_main_process()
    data = load_data(args)
    train_targets = np.asarray(data.train_targets, dtype=np.float64)
    standard = target_standardisation(train_targets, data.bins)
    method = build_method(args, data, standard, out)
    train_set = data.train
    if data.kind == "tabular":
        x, y = method.prepare_training_data(*train_set.tensors)
        train_set = TensorDataset(x, y.float())
        train_targets = y.double().numpy()

    backbone_name = args.backbone or data.backbone
    model = build_backbone(backbone_name, input_dim=data.input_dim, pretrained=args.pretrained,
                           image_size=int(data.extra.get("image_size", 12))).to(device)
    head = nn.Linear(model.feature_dim, 1).to(device)
    shift, scale = standard
    model_targets = torch.as_tensor((train_targets - shift) / scale, dtype=torch.float32)
    method.setup(model, head, model.feature_dim, model_units_bins(data.bins, shift, scale), model_targets, device)

    loader_generator = torch.Generator().manual_seed(args.seed)
    # Under torchrun each rank reads its share of every global batch; the permutation
    # depends only on seed + epoch (sampler.set_epoch), so a resumed run continues exactly.
    sampler = launch.train_sampler(train_set, seed=args.seed)
    per_rank = len(sampler) if sampler is not None else len(train_set)
    drop_last = per_rank % args.batch_size == 1  # a batch of one breaks batch norm
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                              generator=loader_generator, num_workers=args.workers, drop_last=drop_last)
    eval_size = max(args.batch_size, 256) if data.kind != "depth" else args.batch_size
    val_loader = DataLoader(data.val, batch_size=eval_size, num_workers=args.workers)
    test_loader = DataLoader(data.test, batch_size=eval_size, num_workers=args.workers)

    network = list(model.parameters()) + list(head.parameters())
    trained = launch.wrap_model(model, device)  # DDP under torchrun, else the model itself
    optimizer = torch.optim.Adam([{"params": network, "lr": args.lr, "name": "network"}] + method.param_groups(),
                                 lr=args.lr)
    milestones = sorted({max(1, round(args.epochs * 2 / 3)), max(1, round(args.epochs * 8 / 9))})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    config.update(out=out, world_size=launch.world_size())
    return Run(args=args, device=device, out=out, data=data, standard=standard, method=method,
               backbone_name=backbone_name, model=model, trained=trained, head=head, train_size=len(train_set),
               train_loader=train_loader, val_loader=val_loader, test_loader=test_loader, sampler=sampler,
               loader_generator=loader_generator, optimizer=optimizer, scheduler=scheduler, milestones=milestones,
               config=config, main_process=main_process)


def start_or_resume(r: Run) -> Progress:
    if not r.args.resume:
        return Progress()
    state = load_for_resume(os.path.join(r.out, CHECKPOINT), r.config, r.device)
    return restore(state, r.model, r.head, r.method, r.optimizer, r.scheduler, r.loader_generator)


def describe(r: Run) -> None:
    if not r.main_process:
        return
    world, args = launch.world_size(), r.args
    batch = f"{args.batch_size}" + (f" per process x {world} processes" if world > 1 else "")
    print(r.data.describe(), file=sys.stderr)
    print(f"method {args.method}, backbone {r.backbone_name} (D={r.model.feature_dim}), device {r.device}, "
          f"epochs {args.epochs}, lr {args.lr} (x0.1 at epochs {r.milestones}), batch {batch}; "
          f"shot thresholds: many > {r.data.many}, few < {r.data.few}", file=sys.stderr)


# ----- training -------------------------------------------------------------------------------------------
def train(r: Run, progress: Progress) -> bool:
    """Train from ``progress.epoch`` on; False when ``--stop-after`` stopped the run early."""
    args = r.args
    shown = not args.no_progress and r.main_process
    # Bars redraw with carriage returns: in a log file (stderr not a terminal) the nested
    # per-batch bar alone wrote thousands of fragments, so there a plain line per epoch.
    bars = shown and sys.stderr.isatty()
    epochs = tqdm(range(progress.epoch, args.epochs), desc=f"{args.method} on {args.dataset}", unit="epoch",
                  disable=not bars, initial=progress.epoch, total=args.epochs)
    try:
        for epoch in epochs:
            train_loss, val_mae, seconds = train_one_epoch(r, progress, epoch, bars)
            epochs.set_postfix(loss=f"{train_loss:.4f}", val_mae=f"{val_mae:.3f}")
            if shown and not bars:
                print(f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f}, val MAE {val_mae:.3f} "
                      f"({seconds:.1f} s)", file=sys.stderr, flush=True)
            if args.stop_after is not None and args.stop_after <= epoch + 1 < args.epochs:
                if r.main_process:
                    print(f"stopped after epoch {epoch + 1} (--stop-after); continue with --resume", file=sys.stderr)
                return False
    finally:
        epochs.close()
    return True


def train_one_epoch(r: Run, progress: Progress, epoch: int, bars: bool):
    """One epoch, its validation and its checkpoints; returns (train loss, val MAE, seconds)."""
    started = time.perf_counter()
    if r.sampler is not None:
        r.sampler.set_epoch(epoch)
    train_loss = train_epoch(r.trained, r.head, r.method, r.train_loader, r.optimizer, epoch, r.data.kind, r.device,
                             r.standard, bars, r.args.lr)
    r.method.end_epoch(epoch, r.args.epochs)
    r.scheduler.step()
    seconds = time.perf_counter() - started
    progress.train_seconds += seconds
    pred, target = predict(r.model, r.head, r.method, r.val_loader, epoch, r.data.kind, r.device, r.standard)
    val_mae = float(np.abs(pred - target).mean())
    progress.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae, "seconds": seconds})
    progress.epoch = epoch + 1
    # Every rank evaluates the same model on the whole validation set, so every rank takes
    # the same decisions; only rank 0 writes.
    if val_mae < progress.best_val:
        progress.best_val, progress.best_epoch = val_mae, epoch + 1
        if r.main_process:
            save_best(os.path.join(r.out, BEST), epoch + 1, r.model, r.head, r.method)
    if r.main_process:
        save_checkpoint(os.path.join(r.out, CHECKPOINT), r.config, progress, r.model, r.head, r.method, r.optimizer,
                        r.scheduler, r.loader_generator)
    launch.barrier()  # the checkpoint is on disk before any rank can stop
    return train_loss, val_mae, seconds


# ----- the test set, once -----------------------------------------------------------------------------------
def evaluate_and_report(r: Run, progress: Progress) -> dict:
    """The best-on-validation model, evaluated once on test; writes and returns the results."""
    started = time.perf_counter()
    best = read_checked(os.path.join(r.out, BEST), r.device)
    r.model.load_state_dict(best["model"])
    r.head.load_state_dict(best["head"])
    r.method.load_state_dict(best["method"])
    data, args = r.data, r.args
    shots = dict(bins=data.bins, many=data.many, few=data.few, with_delta1=data.kind == "depth")
    epoch = best["epoch"] - 1
    val_pred, val_target = predict(r.model, r.head, r.method, r.val_loader, epoch, data.kind, r.device, r.standard)
    shift, scale = r.standard
    results = {
        "config": r.config,
        "dataset": {"name": data.name, "description": data.describe(), "note": data.note, "label": data.label,
                    "train": r.train_size, "val": len(data.val), "test": len(data.test),
                    "bins": {"low": data.bins.low, "high": data.bins.high, "width": data.bins.width,
                             "num_bins": data.bins.num_bins},
                    "shot_thresholds": {"many": data.many, "few": data.few},
                    "target_standardisation": {"mean": shift, "std": scale}},
        "backbone": r.backbone_name,
        "best_epoch": best["epoch"],
        "timing": {"train_seconds": progress.train_seconds,
                   "seconds_per_epoch": progress.train_seconds / max(len(progress.history), 1),
                   "eval_seconds": time.perf_counter() - started, "device": str(r.device),
                   "torch_threads": torch.get_num_threads()},
        "val": shot_metrics(val_pred, val_target, data.train_targets, **shots),
        "history": progress.history,
    }
    if args.no_test:  # a search run: the test set is not read
        atomic_write_text(json.dumps(json_safe(results), indent=2) + "\n", os.path.join(r.out, RESULTS))
        print(f"validation MAE {results['val']['all']['mae']:.4f} (best epoch {best['epoch']}; --no-test: the test "
              f"set was not read); results in {r.out}/", file=sys.stderr)
        return results
    test_pred, test_target = predict(r.model, r.head, r.method, r.test_loader, epoch, data.kind, r.device, r.standard)
    results["test"] = shot_metrics(test_pred, test_target, data.train_targets, **shots)
    atomic_write_text(json.dumps(json_safe(results), indent=2) + "\n", os.path.join(r.out, RESULTS))
    title = (f"{data.name} test set ({results['test']['all']['count']} samples; shots: many > {data.many}, "
             f"few < {data.few}; best epoch {best['epoch']}/{args.epochs})" + (f"\n[{data.note}]" if data.note else ""))
    name = args.method.upper() + (f" ({args.mode})" if args.method == "irda" else "")
    table = format_table([(name, results["test"])], title=title)
    atomic_write_text(table + "\n", os.path.join(r.out, TABLE))
    print(table)
    if not args.no_plot:
        plot_per_bin_mae(os.path.join(r.out, PLOT), test_pred, test_target, data.train_targets, data.bins,
                         f"{args.method} on {data.name}: test MAE per bin" + (f" [{data.note}]" if data.note else ""),
                         data.label)
    print(f"results in {r.out}/ (train {progress.train_seconds:.1f} s)", file=sys.stderr)
    return results
