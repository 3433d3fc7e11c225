"""How one IRDALoss training step (forward + backward) grows with the number of label bins.

    python bench/step_scaling.py                              # B = 100, 1000, 3000; D = 16, n = 256
    python bench/step_scaling.py --baseline /path/to/checkout  # also an earlier version, same run

Each B: a fresh IRDALoss on uniform labels, one epoch of steps and ``end_epoch()`` (the W-FDS
weights and clusters are then in place), then the median time of ``--repeat`` steps, one
thread. Everything outside the surrogate should be O(B * bandwidth) per step; the surrogate
itself is O(n K^2 B). ``--baseline`` runs the same measurement on another checkout in a
subprocess of this run (its compiled ``irda_ext._C`` in place), so before and after are
compared on the same machine at the same time. Writes bench/results/step_scaling.{md,json}.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import warmed_irda_loss  # noqa: E402
from machine import cpu_description, describe  # noqa: E402
from report import write_results  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(bins_list, dim, batch, repeat, clusters=3):
    times = {}
    for B in bins_list:
        _, _, _, batches, step, _ = warmed_irda_loss(B, dim, batch, clusters)
        samples = []
        for i in range(repeat):
            started = time.perf_counter()
            step(batches[i % len(batches)])
            samples.append(time.perf_counter() - started)
        times[B] = statistics.median(samples)
    return times

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bins", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default=None, help="a checkout of an earlier version (with its _C built in place)")
    parser.add_argument("--baseline-label", default="before")
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)  # the baseline subprocess
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = measure(args.bins, args.dim, args.batch, args.repeat)
    if args.json_only:
        print(json.dumps({str(b): t for b, t in times.items()}))
        return 0
    rows = {"this version": times}
    if args.baseline:
        command = [sys.executable, os.path.abspath(__file__), "--json-only", "--bins", *map(str, args.bins),
                   "--dim", str(args.dim), "--batch", str(args.batch), "--repeat", str(args.repeat),
                   "--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline))
        done = subprocess.run(command, env=env, cwd=os.path.abspath(args.baseline), capture_output=True, text=True,
                              check=True)
        rows = {args.baseline_label: {int(b): t for b, t in json.loads(done.stdout.splitlines()[-1]).items()},
                **rows}
    env = cpu_description()
    low = min(args.bins)
    lines = [f"# IRDALoss step time against the number of bins ({time.strftime('%Y-%m-%d')})", "",
             f"Measured on {describe(env)}; D = {args.dim}, n = {args.batch}, K = 3, forward + backward, median of "
             f"{args.repeat} steps after one epoch.", "",
             "| version | " + " | ".join(f"B = {b} (ms)" for b in args.bins) + f" | B = {max(args.bins)} / B = {low} |",
             "|---|" + "---|" * (len(args.bins) + 1)]
    for label, t in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{t[b] * 1e3:.1f}" for b in args.bins)
                     + f" | {t[max(args.bins)] / t[low]:.1f}x |")
    if len(rows) == 2:
        before, after = rows.values()
        lines += ["", f"B = {max(args.bins)}: {before[max(args.bins)] / after[max(args.bins)]:.1f}x faster than "
                      f"{args.baseline_label}; the growth from B = {low} shrank from "
                      f"{before[max(args.bins)] / before[low]:.1f}x to {after[max(args.bins)] / after[low]:.1f}x."]
    write_results(args.out, "step_scaling", lines, {
        "env": env, "dim": args.dim, "batch": args.batch,
        "seconds": {label: {str(b): s for b, s in t.items()} for label, t in rows.items()}}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
