"""What IRDA costs in a real training step, against MSE, on the bundled abalone MLP.

    python bench/step_cost.py                  # abalone, 1 thread, 30 epochs a method
    python bench/step_cost.py --dataset bikeshare --threads 2

In one run, for ``--method vanilla-mse`` (MSE) and ``--method irda`` (the CLI defaults), the
driver builds the run exactly as ``irda-train`` does (``irda_ext.train.driver.build_run``: model,
head, method, optimizer, loader), then trains ``--epochs`` epochs with the body of the driver's
``train_epoch`` (its checks included) and the method's ``end_epoch``, the methods' epochs
interleaved (a shared machine's slow spells fall on both), timing:

* **one step**: the batch's features, the loss, ``zero_grad``, ``backward`` and ``optimizer.step``,
  the mean over an epoch's steps (a step that applies deferred work counts), median over every
  epoch but the first;
* **one epoch**: its steps (loader included) plus the method's ``end_epoch``, and
  ``end_epoch`` alone as a share of it (IRDA: the covariance updates ``BinStats`` deferred during
  the epoch, applied in one pass, the statistics' epoch merge, the W-FDS weights and k-means on
  the feature reservoir). Work a step defers is paid here: the epoch ratio is the whole cost.

Targets (issue 16): an IRDA step at most 1.5x an MSE step; ``end_epoch`` at most 10% of an epoch.
Writes bench/results/step_cost.{md,json}.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from machine import cpu_description, describe  # noqa: E402
from report import write_results  # noqa: E402

TARGETS = {"step_ratio": 1.5, "end_epoch_share": 0.10}


def epochs_of(dataset: str, method: str, epochs: int, threads: int, out: str):
    """Trains ``method`` on ``dataset`` as the driver does, one epoch per ``next()``; yields the
    epoch's step times, its time and its ``end_epoch``'s (seconds), then the run's sizes."""
    from irda_ext.train import build_parser
    from irda_ext.train.driver import build_run
    from irda_ext.train.loop import batch_features

    args = build_parser().parse_args(["--dataset", dataset, "--method", method, "--epochs", str(epochs),
                                      "--seed", "0", "--out", out, "--no-progress", "--no-plot",
                                      "--threads", str(threads)])
    torch.set_num_threads(threads)
    r = build_run(args, torch.device("cpu"), out)
    mean, scale = r.standard
    for epoch in range(epochs):
        # the body of irda_ext.train.loop.train_epoch, each step timed
        r.model.train()
        started = time.perf_counter()
        steps = []
        for batch in r.train_loader:
            t0 = time.perf_counter()
            features, targets = batch_features(r.trained, batch, r.data.kind, r.device)
            y = (targets - mean) / scale
            features = r.method.transform_features(features, y, epoch, training=True)
            if not bool(torch.isfinite(features).all()):
                raise RuntimeError("features are not finite")
            loss = r.method.loss(features, y, r.head)
            r.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            r.optimizer.step()
            float(loss.detach())
            steps.append(time.perf_counter() - t0)
        trained = time.perf_counter()
        r.method.end_epoch(epoch, epochs)
        ended = time.perf_counter()
        yield steps, ended - started, ended - trained
    yield {"batch_size": args.batch_size, "steps_per_epoch": len(r.train_loader), "feature_dim": r.model.feature_dim,
           "bins": r.data.bins.num_bins, "clusters": args.clusters if method in ("irda", "meta-irda") else None}


def measure(dataset: str, methods, epochs: int, threads: int) -> dict:
    """Every method's median step, epoch and ``end_epoch`` over epochs 2.., the methods'
    epochs interleaved (an epoch of each in turn), so that a slow spell of a shared machine
    falls on all of them alike rather than on whichever ran then."""
    with tempfile.TemporaryDirectory() as out:
        runs = {m: epochs_of(dataset, m, epochs, threads, os.path.join(out, m)) for m in methods}
        times = {m: {"steps": [], "epochs": [], "ends": []} for m in methods}
        for epoch in range(epochs):
            for m in methods:
                steps, epoch_s, end_s = next(runs[m])
                if epoch == 0:
                    continue  # the first epoch: no statistics yet, no augmentation (ramp at 0)
                times[m]["steps"].append(statistics.fmean(steps))
                times[m]["epochs"].append(epoch_s)
                times[m]["ends"].append(end_s)
        rows = {}
        for m in methods:
            sizes = next(runs[m])
            rows[m] = {"step_s": statistics.median(times[m]["steps"]), "epoch_s": statistics.median(times[m]["epochs"]),
                       "end_epoch_s": statistics.median(times[m]["ends"]), **sizes}
        return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="abalone")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per method (the first is not timed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["vanilla-mse", "irda"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch is not timed), got {args.epochs}")
    rows = measure(args.dataset, args.methods, args.epochs, args.threads)
    env = cpu_description()
    env["torch_threads"] = args.threads
    base = rows[args.methods[0]]
    lines = [f"# One training step: IRDA against MSE on {args.dataset} ({time.strftime('%Y-%m-%d')})", "",
             f"Generated by `bench/step_cost.py`. Machine: {describe(env)}. The driver's run for {args.dataset} "
             f"(backbone features D = {base['feature_dim']}, {base['bins']} bins, batch {base['batch_size']}, "
             f"{base['steps_per_epoch']} steps an epoch), every method at its CLI defaults"
             + "".join(f" ({m}: K = {r['clusters']} clusters)" for m, r in rows.items() if r.get("clusters"))
             + f"; a step is the mean over an epoch's steps; medians over epochs 2-{args.epochs}, the methods' epochs "
               "interleaved.", "",
             "| method | step (ms) | step / MSE step | epoch (ms) | epoch / MSE epoch | end_epoch (ms) | "
             "end_epoch share of the epoch |",
             "|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['step_s'] * 1e3:.2f} | {r['step_s'] / base['step_s']:.2f}x | "
                     f"{r['epoch_s'] * 1e3:.1f} | {r['epoch_s'] / base['epoch_s']:.2f}x | {r['end_epoch_s'] * 1e3:.2f} | "
                     f"{r['end_epoch_s'] / r['epoch_s']:.1%} |")
    lines += ["", "| check | measured | target | met |", "|---|---|---|---|"]
    for m, r in rows.items():
        if m == args.methods[0]:
            continue
        ratio, share = r["step_s"] / base["step_s"], r["end_epoch_s"] / r["epoch_s"]
        lines.append(f"| {m} step / {args.methods[0]} step | {ratio:.2f}x | <= {TARGETS['step_ratio']}x | "
                     f"{'yes' if ratio <= TARGETS['step_ratio'] else '**no**'} |")
        lines.append(f"| {m} end_epoch / epoch | {share:.1%} | <= {TARGETS['end_epoch_share']:.0%} | "
                     f"{'yes' if share <= TARGETS['end_epoch_share'] else '**no**'} |")
    write_results(args.out, "step_cost", lines, {"env": env, "dataset": args.dataset, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
