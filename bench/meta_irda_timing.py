"""Time per epoch of Meta-IRDA over IRDA with the training driver (same data, seed and options).

    OMP_NUM_THREADS=1 python bench/meta_irda_timing.py --epochs 12 --repeats 2

Runs ``irda-train`` for ``irda`` and ``meta-irda`` alternately (so a change in machine load
hits both), takes each run's per-epoch wall time from ``results.json`` without the first
epoch (imports, first k-means), and writes the medians and their ratio as markdown
(default ``bench/results/meta_irda_timing.md``). The meta set is held out of training
(``args.label_bins``) as ``meta-irda`` is meant to run.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile

import torch

from irda_ext.train.datasets import load_dataset
from irda_ext.train import build_parser, run


def time_method(method: str, epochs: int, seed: int, dataset: str, out: str, extra) -> list:
    args = build_parser().parse_args(["--dataset", dataset, "--method", method, "--epochs", str(epochs),
                                      "--seed", str(seed), "--no-progress", "--no-plot", "--out", out, *extra])
    args.label_bins = load_dataset(dataset, seed=seed, cap=args.cap, many=None, few=None).bins
    results = run(args)
    return [h["seconds"] for h in results["history"][1:]], results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="abalone")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "meta_irda_timing.md"))
    parser.add_argument("extra", nargs="*", help="further irda-train options given to both runs (after --)")
    opts = parser.parse_args()
    seconds = {"irda": [], "meta-irda": []}
    maes = {"irda": [], "meta-irda": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(opts.repeats):
            for method in ("irda", "meta-irda"):
                per_epoch, results = time_method(method, opts.epochs, opts.seed, opts.dataset,
                                                 os.path.join(tmp, f"{method}-{rep}"), opts.extra)
                seconds[method] += per_epoch
                maes[method].append(results["test"]["all"]["mae"])
    med = {m: statistics.median(s) for m, s in seconds.items()}
    ratio = med["meta-irda"] / med["irda"]
    lines = [
        "# Meta-IRDA: time per epoch over IRDA",
        "",
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python bench/meta_irda_timing.py "
        f"--dataset {opts.dataset} --epochs {opts.epochs} --repeats {opts.repeats}"
        + (" -- " + " ".join(opts.extra) if opts.extra else "") + "`",
        "",
        f"Driver `irda-train` defaults otherwise (batch 256, Adam 1e-3, MLP backbone, exact mode, K=3, "
        f"alpha/beta ramped); meta-irda at its defaults (meta step every step, meta batch 256, "
        f"10 meta samples per bin held out). CPU `{platform.processor() or platform.machine()}`, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); runs alternated, the first epoch "
        f"of each run dropped; {opts.repeats} run(s) x {opts.epochs - 1} epochs per method.",
        "",
        "| method | median s/epoch | min | max | test MAE (all) |",
        "|---|---|---|---|---|",
    ]
    for m in ("irda", "meta-irda"):
        lines.append(f"| {m} | {med[m]:.3f} | {min(seconds[m]):.3f} | {max(seconds[m]):.3f} | "
                     + ", ".join(f"{x:.3f}" for x in maes[m]) + " |")
    best = min(seconds["meta-irda"]) / min(seconds["irda"])
    lines += ["", f"**Meta-IRDA / IRDA time per epoch: {ratio:.2f}x** (median; {best:.2f}x between the fastest "
              "epochs, the figure least disturbed by other load on the machine)", ""]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(opts.output), exist_ok=True)
    with open(opts.output, "w") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
