"""Writes the README's performance paragraph from the committed benchmark results, so that no
figure in it is typed by hand.

    python bench/readme_numbers.py          # rewrite the paragraph between the perf markers
    python bench/readme_numbers.py --check  # exit 1 if the README differs from the results

Reads bench/results/{cpu_kernels,surrogate_bound,step_cost,cost_growth}.json; each figure
carries the CPU, its vector extensions and the thread count it was measured with.
python_tests/test_readme.py runs ``--check``.
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(os.path.dirname(HERE), "README.md")
BEGIN, END = "<!-- perf:begin (bench/readme_numbers.py writes this paragraph) -->", "<!-- perf:end -->"


def load(name):
    with open(os.path.join(RESULTS, f"{name}.json")) as handle:
        return json.load(handle)


def machine(env, threads=None):
    threads = env.get("torch_threads") if threads is None else threads
    return f"{env['cpu']}, {'/'.join(env['vector_extensions'])}, {threads} thread{'s' if threads != 1 else ''}"


def paragraph() -> str:
    kernels, bound, step, growth = (load(n) for n in ("cpu_kernels", "surrogate_bound", "step_cost", "cost_growth"))
    k = kernels["bin_stats_seconds"]
    ours = max(k["BinStats.update momentum=None"], k["BinStats.update momentum=0.9"])
    by_round = kernels.get("read_write_ratio_by_round")  # the check's figure (run_benchmarks.py)
    read_write = statistics.median(by_round) if by_round else ours / k["read+write pass over touched bins"]
    s = kernels["surrogate"]
    parts = [f"`BinStats.update` (n = 256, D = 512, B = 100) is {k['ISDA one-hot update_CV'] / ours:.0f}x faster than "
             f"ISDA's one-hot update and {read_write:.1f}x the time of one read+write "
             f"pass over the touched covariances; the fused surrogate forward+backward (n = 256, K = 3, B = 100) is "
             f"{s['exact/dense']['seconds'] / s['exact/fused']['seconds']:.1f}x (exact) and "
             f"{s['paper/dense']['seconds'] / s['paper/fused']['seconds']:.1f}x (paper) faster than the dense "
             f"reference, with {s['exact/fused']['peak_tensor_mib']:.2f} MiB of peak tensor memory against "
             f"{s['exact/dense']['peak_tensor_mib']:.1f} MiB ({machine(kernels['env'])}; `cpu_kernels.md`)."]
    peaks = bound["peaks"]
    for label, data in bound["builds"].items():
        isa = "avx2" if "IRDA_CPU_ISA" in label else ("avx512f" if "avx512f" in peaks else "avx2")
        if isa not in peaks:
            continue
        peak = max(peaks[isa]["fma_gflops"], peaks[isa]["mul_add_gflops"])
        exact = data["modes"]["exact"]
        gflops = exact["train_flops"] / exact["train_ms"] / 1e6  # the training path (what autograd runs)
        threads = exact["threads"]
        two = threads.get("2")
        scaling = (f"; 2 threads {float(threads['1']) / float(two):.2f}x faster" if two else "")
        per_bin = data["modes"].get("exact, var per bin")
        irda_case = ""
        if per_bin:
            irda_case = (f"; with a var per bin, as `IRDALoss` passes it, {per_bin['train_ms']:.2f} ms and "
                         f"{per_bin['dense_ms'] / per_bin['autograd_ms']:.1f}x faster than the dense reference "
                         f"through autograd")
        paper = data["modes"].get("paper")
        paper_case = ""
        if paper:
            paper_case = (f"; paper mode {paper['autograd_ms']:.3f} ms through autograd, "
                          f"{paper['dense_ms'] / paper['autograd_ms']:.1f}x faster than the dense reference")
        parts.append(f"Built for {'AVX2 only' if isa == 'avx2' else 'AVX-512 (the default clones)'}, the exact "
                     f"surrogate runs at {gflops:.0f} GFLOP/s, {peak / gflops:.1f}x from the core's "
                     f"{peak:.0f} GFLOP/s ({exact['train_ms']:.2f} ms forward+backward on the training path, "
                     f"{exact['raw_ms']:.2f} ms as a forward and a recomputing backward{scaling}{irda_case}"
                     f"{paper_case}; {machine(data['env'], 1)}; `surrogate_bound.md`).")
    rows = step["rows"]
    mse, irda = rows.get("vanilla-mse"), rows.get("irda")
    if mse and irda:
        clusters = f" (K = {irda['clusters']}, the CLI default)" if irda.get("clusters") else ""
        parts.append(f"A training step of the bundled {step['dataset']} MLP takes {irda['step_s'] * 1e3:.1f} ms with "
                     f"`IRDALoss`{clusters} against {mse['step_s'] * 1e3:.1f} ms with MSE "
                     f"({irda['step_s'] / mse['step_s']:.2f}x; an epoch, `end_epoch` included, "
                     f"{irda['epoch_s'] / mse['epoch_s']:.2f}x), "
                     f"and `end_epoch` is {irda['end_epoch_s'] / irda['epoch_s']:.0%} of an IRDA epoch "
                     f"({machine(step['env'])}; `step_cost.md`).")
        for other in step.get("isa_builds", {}).values():
            o_mse, o_irda = other["rows"].get("vanilla-mse"), other["rows"].get("irda")
            if o_mse and o_irda:
                parts.append(f"Built for AVX2 only, with PyTorch's kernels held to AVX2 too (what a machine without "
                             f"AVX-512 gets), the step is {o_irda['step_s'] / o_mse['step_s']:.2f}x an MSE step and "
                             f"`end_epoch` {o_irda['end_epoch_s'] / o_irda['epoch_s']:.0%} of the epoch "
                             f"(same machine, 1 thread; `step_cost.md`).")
        floor = step.get("kernel_floor")
        if floor:
            parts.append(f"IRDA's own kernels in that step (the fused loss's forward and backward: the surrogate and "
                         f"the quadratic forms; `BinStats.update`), timed alone, take {floor['floor_s'] * 1e3:.2f} ms with hot caches "
                         f"and {floor['cold_floor_s'] * 1e3:.2f} ms with cold ones: with these kernels no IRDA step can go "
                         f"under {(mse['step_s'] + floor['floor_s']) / mse['step_s']:.2f}x an MSE step (every cache "
                         f"hot), and the rest of the measured step is glue (autograd nodes, records, the optimizer) "
                         f"and caches.")
    e = growth["exponents"]
    parts.append("An `IRDALoss` step grows as " + ", ".join(f"{name}^{e[name]['step']:.2f}" for name in e)
                 + f" from n = {growth['base']['n']}, B = {growth['base']['B']}, K = {growth['base']['K']}, "
                   f"D = {growth['base']['D']} ({machine(growth['env'])}; `cost_growth.md`).")
    return "Measured on the development machine (`bench/results/`): " + " ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is stale")
    parser.add_argument("--readme", default=README)
    args = parser.parse_args(argv)
    with open(args.readme) as handle:
        content = handle.read()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{args.readme}: no {BEGIN} ... {END} markers")
    head, rest = content.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    new = "\n" + paragraph() + "\n"
    if args.check:
        if old != new:
            print("the README's performance paragraph differs from bench/results; run python bench/readme_numbers.py")
            return 1
        return 0
    with open(args.readme + ".tmp", "w") as handle:
        handle.write(head + BEGIN + new + END + tail)
    os.replace(args.readme + ".tmp", args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
