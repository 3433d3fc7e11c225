"""What IRDA costs in a real training step, against MSE, on the bundled abalone MLP.

    python bench/step_cost.py                  # abalone, 1 thread, 30 epochs a method
    python bench/step_cost.py --dataset bikeshare --threads 2
    python bench/step_cost.py --isa-build /tmp/avx2    # also an IRDA_CPU_ISA=avx2 build, as on an AVX2 machine

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
  the epoch, applied in one pass, the statistics' epoch merge, the W-FDS weights, k-means on
  the feature reservoir, and the fused step's per-bin terms of the new statistics, which the
  next epoch's steps read). Work a step defers is paid here: the epoch ratio is the whole cost.

Then IRDA's own arithmetic in such a step, each piece timed alone on the inputs of a real step
(``capture_step``: a separate 3-epoch run of the same configuration), best of many calls with hot
caches and with cold ones: the fused loss of the head's forward and backward ops (those autograd
runs on the CPU: ``irda_head_loss``, whose fused surrogate and quadratic forms ``w^T Sigma_b w``
over the smoothed covariances are most of it, and ``irda_head_loss_backward``), and
``BinStats.update`` (a step's share of an epoch's updates and the flush of the deferred work).
The MSE step plus their hot sum, over the MSE step, is the smallest step ratio these kernels
allow whatever the glue around them; the rest of the measured IRDA step is glue (autograd nodes,
the records a step keeps, the optimizer's second parameter group) and caches.

Targets (issue 16): an IRDA step at most 1.5x an MSE step; ``end_epoch`` at most 10% of an epoch.
Writes bench/results/step_cost.{md,json}.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from machine import AVX2_MACHINE, cpu_description, describe  # noqa: E402
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


def best_time(fn, reps: int = 200, cold: bool = False) -> float:
    """The fastest of ``reps`` calls (after 3 warm-up calls), in seconds: the hot cost, or with
    ``cold`` each call after writing 64 MiB elsewhere (the caches as a training step leaves them
    for the next: its other work evicts the data a kernel read last step)."""
    evict = torch.empty(16 << 20, dtype=torch.float32) if cold else None
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(reps):
        if evict is not None:
            evict.fill_(1.0)
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def capture_step(dataset: str, threads: int, epochs: int = 3) -> SimpleNamespace:
    """The driver's IRDA run (CLI defaults) trained ``epochs`` epochs by the driver's
    ``train_epoch``, the last without its ``end_epoch`` (statistics, shares and prior in place, the
    ramp under way), and what its kernels were given in that last epoch: ``op_args``, a full
    batch's inputs of ``irda_head_loss`` (the op ``head_loss`` calls); ``updates``, every step's
    ``(z, bin_index)`` passed to ``BinStats.update``; ``stats_before``, the statistics before them.
    Also ``run`` (``build_run``'s) and ``criterion`` (the ``IRDALoss``)."""
    from irda_ext import _ops
    from irda_ext.train import build_parser
    from irda_ext.train.driver import build_run
    from irda_ext.train.loop import train_epoch

    with tempfile.TemporaryDirectory() as out:
        args = build_parser().parse_args(["--dataset", dataset, "--method", "irda", "--epochs", str(epochs),
                                          "--seed", "0", "--out", out, "--no-progress", "--no-plot",
                                          "--threads", str(threads)])
        torch.set_num_threads(threads)
        r = build_run(args, torch.device("cpu"), out)
        crit = r.method.criterion
        seen = SimpleNamespace(run=r, criterion=crit, op_args=None, updates=[], stats_before=None)
        head_loss, update = _ops.ops.irda_head_loss, crit.stats.update

        def keep_head_loss(*op_args):  # a full batch's inputs kept (the epoch's last batch is short)
            if op_args[0].shape[0] == args.batch_size:
                seen.op_args = [a.detach().clone() if torch.is_tensor(a) else a for a in op_args]
            return head_loss(*op_args)

        def keep_update(z, bin_index):
            seen.updates.append((z.clone(), bin_index.clone()))
            return update(z, bin_index)

        _ops.ops.irda_head_loss = keep_head_loss
        try:
            for epoch in range(epochs):
                last = epoch == epochs - 1
                if last:  # the copy first: it must not carry the hook
                    seen.stats_before = copy.deepcopy(crit.stats)
                    crit.stats.update = keep_update
                train_epoch(r.trained, r.head, r.method, r.train_loader, r.optimizer, epoch, r.data.kind, r.device,
                            r.standard, False)
                if not last:
                    r.method.end_epoch(epoch, epochs)
        finally:
            _ops.ops.irda_head_loss = head_loss
            crit.stats.__dict__.pop("update", None)
    if seen.op_args is None:
        raise RuntimeError(f"no full batch of {args.batch_size} in {dataset}'s last epoch")
    return seen


def kernel_floor(step: SimpleNamespace) -> dict:
    """IRDA's arithmetic in one step of ``step`` (``capture_step``'s), in seconds, each piece
    alone, hot and cold (``best_time``): the fused loss's forward and backward ops on the captured
    inputs (the pair autograd runs on the CPU: the forward, with the per-bin shift and quadratic
    forms of the head and the surrogate's partials, and the O(n + B D) backward), and the
    epoch's ``BinStats.update`` calls with the flush, per step, on a copy of the statistics."""
    op_args = step.op_args
    (pred, target, bin_index, weight, bias, offset, cov_upper, keep, iso, centers, eta, log_prior, alpha, beta,
     log_sigma, mode, reduction) = op_args
    head = torch.ops.irda_ext.irda_head_loss
    with torch.no_grad():
        loss, bin_shift, bin_var, cov_w, partials = head(*op_args)
    grad = torch.ones_like(loss)
    backward_args = (grad, target, bin_index, weight, bias, offset, keep, iso, bin_shift, bin_var, cov_w, partials,
                     alpha, beta, log_sigma, eta.shape[0], mode, reduction)

    def forward():
        with torch.no_grad():
            head(*op_args)

    timed = {"head_forward_s": forward,
             "head_backward_s": lambda: torch.ops.irda_ext.irda_head_loss_backward(*backward_args)}
    hot = {key: best_time(fn) for key, fn in timed.items()}
    cold = {key: best_time(fn, reps=50, cold=True) for key, fn in timed.items()}

    def epoch_of_updates():
        stats = copy.deepcopy(step.stats_before)
        t0 = time.perf_counter()
        for z, bin_index in step.updates:
            stats.update(z, bin_index)
        stats.flush()
        return time.perf_counter() - t0

    hot["stats_update_s"] = min(epoch_of_updates() for _ in range(20)) / len(step.updates)
    cold["stats_update_s"] = hot["stats_update_s"]  # an epoch's updates: the caches as in training
    bins_in_batch = int(torch.unique(bin_index).numel())  # the op reads these bins' triangles only
    return {"hot": hot, "cold": cold, "floor_s": sum(hot.values()), "cold_floor_s": sum(cold.values()),
            "batch": pred.shape[0], "covariance_dtype": str(cov_upper.dtype).replace("torch.", ""),
            "covariance_mib": cov_upper.numel() * cov_upper.element_size() / 2**20,
            "bins": cov_upper.shape[0], "bins_in_batch": bins_in_batch,
            "covariance_read_mib": bins_in_batch * cov_upper.shape[1] * cov_upper.element_size() / 2**20}


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


def step_table(rows: dict, base_method: str) -> list:
    base = rows[base_method]
    lines = ["| method | step (ms) | step / MSE step | epoch (ms) | epoch / MSE epoch | end_epoch (ms) | "
             "end_epoch share of the epoch |", "|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['step_s'] * 1e3:.2f} | {r['step_s'] / base['step_s']:.2f}x | "
                     f"{r['epoch_s'] * 1e3:.1f} | {r['epoch_s'] / base['epoch_s']:.2f}x | "
                     f"{r['end_epoch_s'] * 1e3:.2f} | {r['end_epoch_s'] / r['epoch_s']:.1%} |")
    return lines


def check_rows(rows: dict, base_method: str, build: str) -> list:
    base, lines = rows[base_method], []
    for m, r in rows.items():
        if m == base_method:
            continue
        ratio, share = r["step_s"] / base["step_s"], r["end_epoch_s"] / r["epoch_s"]
        lines.append(f"| {build} | {m} step / {base_method} step | {ratio:.2f}x | <= {TARGETS['step_ratio']}x | "
                     f"{'yes' if ratio <= TARGETS['step_ratio'] else '**no**'} |")
        lines.append(f"| {build} | {m} end_epoch / epoch | {share:.1%} | <= {TARGETS['end_epoch_share']:.0%} | "
                     f"{'yes' if share <= TARGETS['end_epoch_share'] else '**no**'} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="abalone")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per method (the first is not timed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["vanilla-mse", "irda"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--isa-build", action="append", default=[], metavar="DIR",
                        help="also measure an AVX2-only build of this tree (IRDA_CPU_ISA=avx2) in DIR, in a "
                             "subprocess whose PyTorch kernels are held to AVX2: what a machine without AVX-512 gets")
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess mode
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch is not timed), got {args.epochs}")
    if args.json_only:
        print(json.dumps({"rows": measure(args.dataset, args.methods, args.epochs, args.threads),
                          "capability": torch.backends.cpu.get_cpu_capability()}))
        return 0
    rows = measure(args.dataset, args.methods, args.epochs, args.threads)
    builds = {}
    for build in args.isa_build:
        # the build's own copy of this script: it puts its tree first on the path
        command = [sys.executable, os.path.join(build, "bench", "step_cost.py"), "--json-only", "--dataset",
                   args.dataset, "--epochs", str(args.epochs), "--threads", str(args.threads), "--methods",
                   *args.methods]
        proc = subprocess.run(command, env=dict(os.environ, PYTHONPATH=os.path.abspath(build), **AVX2_MACHINE),
                              cwd=build, check=True, capture_output=True, text=True)
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        builds[build] = (data["rows"], data["capability"])
    floor = kernel_floor(capture_step(args.dataset, args.threads)) if "irda" in args.methods else None
    env = cpu_description()
    env["torch_threads"] = args.threads
    base = rows[args.methods[0]]
    lines = [f"# One training step: IRDA against MSE on {args.dataset} ({time.strftime('%Y-%m-%d')})", "",
             f"Generated by `bench/step_cost.py`. Machine: {describe(env)}. The driver's run for {args.dataset} "
             f"(backbone features D = {base['feature_dim']}, {base['bins']} bins, batch {base['batch_size']}, "
             f"{base['steps_per_epoch']} steps an epoch), every method at its CLI defaults"
             + "".join(f" ({m}: K = {r['clusters']} clusters)" for m, r in rows.items() if r.get("clusters"))
             + f"; a step is the mean over an epoch's steps; medians over epochs 2-{args.epochs}, the methods' epochs "
               "interleaved.", "", *step_table(rows, args.methods[0])]
    checks = check_rows(rows, args.methods[0], "this build")
    for build, (other, capability) in builds.items():
        lines += ["", f"The same run on `{build}`, an AVX2-only build of this tree (IRDA_CPU_ISA=avx2), in a "
                      f"subprocess whose PyTorch kernels are held to AVX2 too ({capability}; AVX2_MACHINE in "
                      "bench/machine.py): what a machine without AVX-512 gets.", "",
                  *step_table(other, args.methods[0])]
        checks += check_rows(other, args.methods[0], f"{build} (AVX2)")
    lines += ["", "| build | check | measured | target | met |", "|---|---|---|---|---|", *checks]
    if floor is not None:
        irda, mse = rows["irda"], base["step_s"]
        lines += ["", f"IRDA's own arithmetic in one step (a full batch of {floor['batch']}), each piece timed alone "
                      f"on a real step's inputs, {env['torch_threads']} thread(s): hot (best of 200 calls) and cold "
                      "(best of 50, each after 64 MiB written elsewhere, as a step's other work leaves the caches); "
                      "BinStats.update is an epoch's updates and the flush, per step, in both:", "",
                  "| piece | hot (ms) | cold (ms) | cold, share of the MSE step |", "|---|---|---|---|"]
        names = {"head_forward_s": f"fused loss, forward (the surrogate with partials; w^T Sigma_b w for the "
                                   f"{floor['bins_in_batch']} of {floor['bins']} bins in the batch: "
                                   f"{floor['covariance_read_mib']:.1f} of {floor['covariance_mib']:.1f} MiB of "
                                   f"{floor['covariance_dtype']} covariances, their packed upper triangles)",
                 "head_backward_s": "fused loss, backward", "stats_update_s": "BinStats.update"}
        for key, name in names.items():
            hot, cold = floor["hot"][key], floor["cold"][key]
            lines.append(f"| {name} | {hot * 1e3:.2f} | {cold * 1e3:.2f} | {cold / mse:.0%} |")
        lines.append(f"| **sum** | **{floor['floor_s'] * 1e3:.2f}** | **{floor['cold_floor_s'] * 1e3:.2f}** | "
                     f"**{floor['cold_floor_s'] / mse:.0%}** |")
        # glue: what the measured step has beyond the MSE step and IRDA's kernels, counted against
        # the hot floor (at most) and the cold one (the caches as training leaves them)
        glue_hot = irda["step_s"] - mse - floor["floor_s"]
        glue_cold = max(irda["step_s"] - mse - floor["cold_floor_s"], 0.0)
        lines += ["", f"With these kernels as they are, an IRDA step cannot go under (MSE step + sum) / MSE step = "
                      f"{(mse + floor['floor_s']) / mse:.2f}x with every cache hot, "
                      f"{(mse + floor['cold_floor_s']) / mse:.2f}x with cold ones; the measured step is "
                      f"{irda['step_s'] / mse:.2f}x, so at most {glue_hot * 1e3:.2f} ms of it ({glue_hot / mse:.0%} of "
                      f"an MSE step) is glue ({glue_cold * 1e3:.2f} ms against the cold floor): the head's and the "
                      "loss's autograd nodes, the records a step keeps (bins, confusion, reservoir), the optimizer's "
                      "second parameter group, and the MLP's own work slowed by the caches IRDA's data takes."]
    write_results(args.out, "step_cost", lines, {"env": env, "dataset": args.dataset, "rows": rows,
                                                 "isa_builds": {b: {"rows": r, "torch_capability": c}
                                                                for b, (r, c) in builds.items()},
                                                 "kernel_floor": floor})
    return 0


if __name__ == "__main__":
    sys.exit(main())
