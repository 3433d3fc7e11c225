"""``irda-train``'s command line: the options (the methods' own are generated from their
``Options`` dataclasses), their checks, and the entry point."""
from __future__ import annotations

import argparse
import math
from typing import List, Optional

from .datasets import DATASETS
from .methods import METHODS, add_method_arguments


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
    data.add_argument("--num-bins", type=int, default=None,
                      help="csv/bikeshare: number of equal-width label bins (default 100)")
    data.add_argument("--bin-width", type=float, default=None, help="csv: bin width instead of --num-bins")
    data.add_argument("--cap", type=int, default=None,
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
    output.add_argument("--resume", action="store_true",
                        help="continue from --out/checkpoint.pt, exactly where it stopped; only --stop-after, --no-test, "
                             "--no-progress, --no-plot, --workers, --threads, --device and --out may differ from the "
                             "run that wrote it (any other option that differs is refused, naming it)")
    output.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                        help="stop once this epoch is done and checkpointed, without testing (time-limited jobs: "
                             "continue later with --resume)")
    output.add_argument("--no-progress", action="store_true",
                        help="no progress output (by default: progress bars on a terminal; one line per epoch "
                             "when stderr is a file or a pipe, so a log stays readable)")
    output.add_argument("--no-plot", action="store_true", help="skip the per-bin MAE plot")
    output.add_argument("--no-test", action="store_true",
                        help="evaluate the best-on-validation model on validation only and never read the test set "
                             "(hyperparameter searches: every choice is made on validation, bench/tune.py)")

    methods = parser.add_argument_group("method options (each applies to the methods that use it)")
    add_method_arguments(methods, dict.fromkeys(METHODS.values()))  # each class once, in registration order
    return parser


def check_args(args: argparse.Namespace) -> None:
    """``ValueError`` naming the option for values no run can use (the data set and the
    method check the rest when they are built)."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("epochs", "batch_size", "num_bins", "cap"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")


def main(argv: Optional[List[str]] = None) -> int:
    from .driver import run

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, FloatingPointError) as err:
        parser.exit(2, f"irda-train: error: {err}\n")
    except OSError as err:  # a missing file, a full disk: the message names the file
        parser.exit(2, f"irda-train: error: {err.strerror if err.strerror and not err.filename else err}\n")
    return 0
