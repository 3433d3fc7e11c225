"""How far the fused CPU surrogate is from the core's arithmetic bound, and how it uses the cores.

    python bench/surrogate_bound.py                         # this build, 1 and 2 threads
    python bench/surrogate_bound.py --isa-build /tmp/avx2   # also a copy built with IRDA_CPU_ISA=avx2

In one run, at n = 256, K = 3, B = 100, float32 (SPEC 6):

* the **work**: the number of (sample, cluster, competitor) terms each mode evaluates on the CPU
  kernel's padded grid, times the floating-point operations of one term forward and backward
  (:data:`FLOPS_PER_TERM`, counted from ``csrc/surrogate_math.h`` and ``csrc/cpu/simd.h``);
* the **peak**: ``bench/native/peak_flops.c``, a tight loop of independent vector FMAs (and of
  separate multiplies and adds, which is what the kernels get under ``-ffp-contract=off``), compiled
  with ``cc`` for AVX2 and, where the CPU has it, AVX-512, on one thread; the bound uses the higher
  of the two;
* the **time**: the raw ops of the training path (``irda_surrogate_with_partials`` then
  ``irda_surrogate_partials_backward``, what autograd runs on the CPU) and of the forward and the
  recomputing backward (``irda_surrogate`` then ``irda_surrogate_backward``), each against its own
  flop count; the autograd path a training step takes (``irda_ext.irda_surrogate`` +
  ``torch.autograd.grad``), and the dense reference (``irda_ext.reference``, autograd) on one
  thread; then the training path's ops on every thread count up to ``--max-threads``.

``--isa-build DIR`` runs the same measurement in a subprocess on another build of this tree (its
``irda_ext/_C*.so`` in place), one compiled with ``IRDA_CPU_ISA=avx2``, to see what an AVX2
machine gets: the subprocess also holds PyTorch's own kernels (the dense reference's) to AVX2
(``AVX2_MACHINE`` in bench/machine.py), as they would be on such a machine. All of it is
repeated ``--rounds`` times, every build in each round, and each time reported is the median
over the rounds (on a shared machine one run's figures moved by 30%).
Writes bench/results/surrogate_bound.{md,json}.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run_benchmarks  # noqa: E402
from cases import surrogate_batch, var_per_bin  # noqa: E402
from machine import AVX2_MACHINE, cpu_description, describe  # noqa: E402
from report import write_results  # noqa: E402

# Floating-point operations per term (float32), counted from the source; selects, compares
# used as masks and bit manipulation are not counted, a division counts as one, a fused multiply-add
# (mul_add in csrc/cpu/simd.h, where the CPU has FMA) as two.
#   Exact mode (csrc/cpu/irda_surrogate.cpp, exact_parts and exact_row_terms): a term's
#   denominators a, 1 / r and -log(r) / 2 (exact_term_denominator, surrogate_math.h) 27 (eta's
#   difference 1, a 1, r 3, the division 1, log_positive 20 (simd.h), the halving 1), then F
#   from the sample's rows 11; forward's log-sum-exp: a max (1) and exp_clamped of the
#   difference with the sum (26). Backward recomputes F (38) and adds the four derivatives
#   (20), then in one pass the maximum (1), exp_clamped(F - max) (25) with its sum (1) and three
#   weighted sums (6), divided by the sum per (sample, numerator cluster) (exact_partials_impl:
#   one exponential a term). A competitor's target, its products P and S and its log-prior
#   difference (8) are computed once per sample, forward and backward (fill_sample_rows), and
#   read by its K numerator clusters.
#   Paper mode's Z (paper_cell, csrc/cpu/irda_surrogate.cpp): 18 (lin 3; de, 2 lin and diff 3;
#   R1 1; R2' 3; ed and ed diff 2; Z's three multiply-adds 6; the own-bin shares are filled per
#   sample), whose intermediates ed, ed diff, R1 and R2' are the factors of its derivatives;
#   forward's log-sum-exp 27; backward recomputes Z (18), then the same one pass: the maximum
#   (1), exp_clamped(Z - max) (25) with its sum (1) and four weighted sums (8)
#   (paper_partials_impl).
#   With a var per bin (IRDALoss's case) exact mode reads a, 1 / r and -log(r) / 2 from a table
#   built once per (bin, s2) and thread (DenominatorPlan, ThreadDenominators in
#   csrc/cpu/irda_surrogate.cpp; this count takes one per (bin, s2), the one-thread case): a term then
#   skips those 27, forward and backward, and each table costs them per (numerator cluster,
#   competitor), once forward and once backward.
#   The training path (irda_surrogate_with_partials, what autograd runs on the CPU) evaluates
#   each term once with its derivatives (exact 58, paper 18), then the one pass of the backward
#   (exact 33, paper 35), which also gives the log-sum-exp; the sample rows and the tables once;
#   its backward is O(n). (Training and the recomputing backward run the same code.)
FLOPS_PER_TERM = {"exact": {"forward": 65, "backward": 91, "training": 91},
                  "paper": {"forward": 45, "backward": 53, "training": 53},
                  "exact, var per bin": {"forward": 38, "backward": 64, "training": 64}}
TABLE_FLOPS = 27  # per table entry, forward and backward each (the training path: once)
ROW_FLOPS = 8  # exact mode, per (sample, competitor), forward and backward each (the training path: once)
MODES = {"exact": "exact", "paper": "paper", "exact, var per bin": "exact"}
TARGETS = {"exact_bound": 4.0, "exact_dense": 15.0, "paper_dense": 15.0}


def median_time(fn):
    return run_benchmarks.median_time(fn, min_time=0.5, max_reps=400, warmup=3)


def table_entries(args):
    """Entries of exact mode's denominator tables: (distinct bins) x K x the padded grid."""
    return int(torch.unique(args[2]).numel()) * grid_terms(args, "exact") // args[0].shape[0]


def grid_terms(args, mode):
    """Terms on the CPU kernel's grid: K * V competitors (V = bins with a prior) padded to 16."""
    n, K = args[0].shape[0], args[4].shape[0]
    V = int(torch.isfinite(args[5]).sum())
    padded = -(-K * V // 16) * 16
    return n * (K if mode == "exact" else 1) * padded


def measure(max_threads):
    import irda_ext
    from irda_ext import reference

    torch.set_num_threads(1)
    out = {"env": cpu_description(), "modes": {}}
    for label, mode in MODES.items():
        args = surrogate_batch(256, 3, 100)
        if label == "exact, var per bin":
            args = var_per_bin(args)
        plain = [a.detach() if torch.is_tensor(a) else a for a in args]
        pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv = plain
        grad = torch.ones_like(pred)

        def raw():
            loss, lse = torch.ops.irda_ext.irda_surrogate(pred, target, b, centers, eta, lp, shift, var, alpha, beta,
                                                          nv, mode)
            torch.ops.irda_ext.irda_surrogate_backward(grad, pred, target, b, centers, eta, lp, shift, var, alpha,
                                                       beta, nv, mode, lse)

        def raw_forward():
            torch.ops.irda_ext.irda_surrogate(pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv, mode)

        def training():  # the ops autograd runs on the CPU
            loss, lse, partials = torch.ops.irda_ext.irda_surrogate_with_partials(
                pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv, mode)
            torch.ops.irda_ext.irda_surrogate_partials_backward(grad, partials, alpha, beta, nv, eta.shape[0], mode)

        def through(fn):
            def step():
                loss = fn(*args, mode=mode).sum()
                torch.autograd.grad(loss, [args[0], args[6], args[7], args[10]])
            return step

        fused_loss = irda_ext.irda_surrogate(*args, mode=mode)
        dense_loss = reference.irda_surrogate(*args, mode=mode)
        torch.testing.assert_close(fused_loss, dense_loss, rtol=1e-4, atol=1e-4)
        terms = grid_terms(args, mode)
        flops = terms * (FLOPS_PER_TERM[label]["forward"] + FLOPS_PER_TERM[label]["backward"])
        train_flops = terms * FLOPS_PER_TERM[label]["training"]
        if mode == "exact":  # the sample's rows: terms / K (sample, competitor) pairs
            flops += 2 * ROW_FLOPS * terms // args[4].shape[0]
            train_flops += ROW_FLOPS * terms // args[4].shape[0]
        if label == "exact, var per bin":
            flops += 2 * TABLE_FLOPS * table_entries(args)
            train_flops += TABLE_FLOPS * table_entries(args)
        row = {"terms": terms, "flops": flops, "train_flops": train_flops, "raw_ms": 1e3 * median_time(raw),
               "train_ms": 1e3 * median_time(training),
               "raw_forward_ms": 1e3 * median_time(raw_forward), "autograd_ms": 1e3 * median_time(through(
                   irda_ext.irda_surrogate)), "dense_ms": 1e3 * median_time(through(reference.irda_surrogate)),
               "threads": {}}
        for threads in range(1, max_threads + 1):
            torch.set_num_threads(threads)
            row["threads"][threads] = 1e3 * median_time(training)
        torch.set_num_threads(1)
        out["modes"][label] = row
    out["env"]["torch_threads"] = 1
    out["env"]["torch_capability"] = torch.backends.cpu.get_cpu_capability()  # the dense reference's kernels
    return out


def peak_flops():
    """{isa: {"fma_gflops", "mul_add_gflops", "width"}} for the ISAs this CPU runs; {} without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    flags = set(cpu_description()["vector_extensions"])
    result = {}
    if cc is None:
        return result
    with tempfile.TemporaryDirectory() as tmp:
        for isa, cflags, need in (("avx2", ["-mavx2", "-mfma"], {"avx2", "fma"}),
                                  ("avx512f", ["-mavx512f"], {"avx512f"})):
            if not need <= flags:
                continue
            exe = os.path.join(tmp, isa)
            subprocess.run([cc, "-O2", *cflags, os.path.join(HERE, "native", "peak_flops.c"), "-o", exe], check=True)
            result[isa] = json.loads(subprocess.run([exe], check=True, capture_output=True, text=True).stdout)
    return result


def table(label, data, peak_gflops):
    lines = [f"### {label}", "", "| mode | terms | training path: MFLOP | ms | GFLOP/s | x flop bound | "
             "forward + recomputing backward: MFLOP | ms | GFLOP/s | x flop bound | forward only (ms) | "
             "through autograd (ms) | dense reference (ms) | dense / fused |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in data["modes"].items():
        train_gflops = r["train_flops"] / r["train_ms"] / 1e6
        gflops = r["flops"] / r["raw_ms"] / 1e6
        lines.append(f"| {mode} | {r['terms']} | {r['train_flops'] / 1e6:.1f} | {r['train_ms']:.3f} | "
                     f"{train_gflops:.1f} | {peak_gflops / train_gflops:.1f} | {r['flops'] / 1e6:.1f} | "
                     f"{r['raw_ms']:.3f} | {gflops:.1f} | {peak_gflops / gflops:.1f} | {r['raw_forward_ms']:.3f} | "
                     f"{r['autograd_ms']:.3f} | {r['dense_ms']:.2f} | {r['dense_ms'] / r['autograd_ms']:.1f}x |")
    lines += ["", "Training path's raw ops by thread count (ms): " + "; ".join(
        f"{mode}: " + ", ".join(f"{t} thread{'s' if int(t) > 1 else ''} {ms:.3f}" for t, ms in r["threads"].items())
        + (f" (speed-up {r['threads'][1] / r['threads'][max(r['threads'])]:.2f}x)" if len(r["threads"]) > 1 else "")
        for mode, r in data["modes"].items())]
    return lines


def median_of_rounds(rounds):
    """One measurement whose every time is the median of that time over ``rounds``."""
    out = {"env": rounds[0]["env"], "modes": {}, "rounds": len(rounds)}
    for mode, first in rounds[0]["modes"].items():
        row = dict(first)
        for key in ("raw_ms", "train_ms", "raw_forward_ms", "autograd_ms", "dense_ms"):
            row[key] = statistics.median(r["modes"][mode][key] for r in rounds)
        row["threads"] = {t: statistics.median(r["modes"][mode]["threads"][t] for r in rounds) for t in first["threads"]}
        out["modes"][mode] = row
    return out


def checks(label, data, peak_gflops):
    rows = []
    for mode, r in data["modes"].items():
        bound = peak_gflops / (r["train_flops"] / r["train_ms"] / 1e6)
        speedup = r["dense_ms"] / r["autograd_ms"]
        target = TARGETS["paper_dense" if mode == "paper" else "exact_dense"]
        items = [(f"{mode}: dense / fused (autograd path)", f"{speedup:.1f}x", f">= {target:g}x", speedup >= target)]
        if mode != "paper":
            items.insert(0, (f"{mode}: fwd+bwd (training path) vs the flop bound", f"{bound:.1f}x",
                              f"<= {TARGETS['exact_bound']:g}x", bound <= TARGETS["exact_bound"]))
        for name, value, target_text, ok in items:
            rows.append(f"| {label} | {name} | {value} | {target_text} | {'yes' if ok else '**no**'} |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa-build", action="append", default=[], metavar="DIR",
                        help="another build of this tree to measure in the same run (label: its IRDA_CPU_ISA)")
    parser.add_argument("--max-threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all builds; each figure is the median")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess mode
    args = parser.parse_args(argv)
    if args.json_only:
        print(json.dumps(measure(args.max_threads)))
        return 0

    peaks = peak_flops()
    # --rounds rounds, each measuring every build in turn: a slow spell of a shared machine
    # then falls on all builds alike, and the median over rounds leaves it out.
    this = "this build (AVX-512, AVX2, baseline clones)"
    rounds = {this: []}
    for build in args.isa_build:
        rounds[f"{build} (IRDA_CPU_ISA build)"] = []
    for _ in range(args.rounds):
        rounds[this].append(measure(args.max_threads))
        for build in args.isa_build:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(build), **AVX2_MACHINE)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--json-only", "--max-threads",
                                   str(args.max_threads)], env=env, cwd=build, check=True, capture_output=True,
                                  text=True)
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            for row in data["modes"].values():  # JSON made the thread counts strings
                row["threads"] = {int(t): ms for t, ms in row["threads"].items()}
            rounds[f"{build} (IRDA_CPU_ISA build)"].append(data)
    builds = {label: median_of_rounds(data) for label, data in rounds.items()}
    env = next(iter(builds.values()))["env"]
    lines = ["# Fused surrogate against the flop bound (CPU)", "",
             f"Generated by `bench/surrogate_bound.py`. Machine: {describe(env)} (figures at 1 thread unless said). "
             f"n = 256, K = 3, B = 100, float32; medians, then the median over {args.rounds} rounds that measure "
             "every build in turn.", "",
             "Peak (bench/native/peak_flops.c, 1 thread): " + ("; ".join(
                 f"{isa}: FMA {p['fma_gflops']:.1f} GFLOP/s, separate mul + add {p['mul_add_gflops']:.1f} GFLOP/s"
                 for isa, p in peaks.items()) or "not measured (no C compiler)") + ". The bound below uses the "
             "higher figure of the ISA a build runs.", ""]
    rows = []
    for label, data in builds.items():
        isa = "avx2" if "IRDA_CPU_ISA" in label else ("avx512f" if "avx512f" in peaks else "avx2")
        peak = max(peaks[isa]["fma_gflops"], peaks[isa]["mul_add_gflops"]) if isa in peaks else float("nan")
        torch_isa = data["env"].get("torch_capability", "?")
        lines += table(f"{label}, bound at {peak:.1f} GFLOP/s ({isa}); PyTorch's kernels (the dense reference): "
                       f"{torch_isa}", data, peak) + [""]
        rows += checks(label, data, peak)
    lines += ["## Targets (issue 16)", "", "| build | check | measured | target | met |", "|---|---|---|---|---|", *rows,
              "", "Raw ops, no autograd: the training path is what autograd runs on the CPU "
              "(`irda_surrogate_with_partials`, each term and its derivatives once, then the O(n) "
              "`irda_surrogate_partials_backward`); forward + recomputing backward is `irda_surrogate` then "
              "`irda_surrogate_backward` (the CUDA kernels' scheme, and a backward that builds a graph). Each "
              "path's flop count is its own (FLOPS_PER_TERM). The dense/fused ratio is on the autograd path both "
              "take in training (dense: `irda_ext.reference`, every logit of [n, K, K, B] built). `exact` gives "
              "every sample a var of its own (the functional API's general case); `exact, var per bin` gives the "
              "samples of a bin one var, as `IRDALoss` does, where the kernel computes each competitor's "
              "denominator once per bin (its flop count says so)."]
    write_results(args.out, "surrogate_bound", lines, {"peaks": peaks, "builds": builds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
