"""GPU benchmarks of the CUDA kernels, saved with the GPU's name.

    python bench/bench_gpu.py [--out bench/results] [--quick] [--only SECTION ...]
    python bench/bench_gpu.py --dry-run --out /tmp/x   # every section at toy sizes on the CPU

Every comparison is measured in the same run on the same GPU; implementations are
checked to agree before they are timed; times are medians of CUDA-event timings.
  * BinStats.update (n=256, D=2048, B=100, float32) against ISDA's one-hot
    EstimatorCV.update_CV, and as achieved memory bandwidth in % of the device's
    peak (the bytes it must move: read and write the covariance and mean of the
    bins in the batch, read the features) and of a measured device-to-device copy;
  * wfds_smooth (B=100, D=2048, bandwidth 2) as achieved bandwidth likewise;
  * the fused surrogate forward+backward (n=256, K=3, B=100) against the dense
    autograd reference, both modes, with peak memory;
  * one IRDA training step over one MSE step for a ResNet-50 at batch 256
    (bf16 autocast, channels-last, SGD; target: at most 10% overhead).
A section that fails is recorded with its error and the others still run.
Results: bench/results/gpu_<gpu name>.{json,md}.

--dry-run needs no GPU: every section runs at toy sizes on the CPU with wall-clock timing,
which checks this script's code (shapes, agreement checks, the report) before a GPU's
minutes are spent on it; its numbers mean nothing. Results: <out>/gpu_dry_run_cpu.{json,md}.
"""
import argparse
import json
import math
import os
import re
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the in-tree irda_ext
from cases import check_stats_agree, fwd_bwd, stats_batch, surrogate_batch, warm_stats  # noqa: E402
from isda_estimator import OneHotEstimator  # noqa: E402
from resnet50 import resnet50_trunk  # noqa: E402

import irda_ext  # noqa: E402
from irda_ext import reference as ref  # noqa: E402

DEV = "cuda"
DRY = False  # --dry-run: the CPU, toy sizes, wall-clock timing
# Each section's sizes: the benchmark's, and the dry run's.
SIZES = {
    "bin_stats": (dict(n=256, D=2048, B=100), dict(n=32, D=48, B=10)),
    "wfds": (dict(B=100, D=2048, bandwidth=2), dict(B=10, D=16, bandwidth=2)),
    "surrogate": (dict(n=256, K=3, B=100), dict(n=16, K=2, B=10)),
    "resnet50": (dict(batch=256, image=224), dict(batch=2, image=32)),
}


def sizes(section):
    return SIZES[section][1 if DRY else 0]


def synchronize():
    if not DRY:
        torch.cuda.synchronize()


def cuda_time(fn, min_time=0.5, max_reps=200, warmup=3):
    """Median seconds of fn() between CUDA events (fn's host work included); wall clock in a dry run."""
    if DRY:
        min_time, max_reps, warmup = 0.0, 3, 1
    for _ in range(warmup):
        fn()
    synchronize()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 3):
        if DRY:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def peak_memory_mib(fn):
    """Peak memory fn() allocates beyond what was allocated before, in MiB (nan in a dry run)."""
    if DRY:
        fn()
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def device_info():
    if DRY:
        x = torch.empty(2**20)
        y = torch.empty_like(x)
        copy_bw = 2 * x.numel() * 4 / cuda_time(lambda: y.copy_(x))
        return {"name": "dry run cpu", "capability": "0.0", "sms": os.cpu_count(), "memory_gib": float("nan"),
                "peak_bandwidth_gbs": float("nan"), "copy_bandwidth_gbs": copy_bw / 1e9, "torch": torch.__version__,
                "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M")}
    p = torch.cuda.get_device_properties(0)
    # DDR: two transfers per memory clock (kHz) over a bus of memory_bus_width bits.
    peak = 2.0 * p.memory_clock_rate * 1e3 * p.memory_bus_width / 8
    x = torch.empty(256 * 2**20, device=DEV)  # 1 GiB
    y = torch.empty_like(x)
    copy_bw = 2 * x.numel() * 4 / cuda_time(lambda: y.copy_(x))
    del x, y
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1), "peak_bandwidth_gbs": peak / 1e9,
            "copy_bandwidth_gbs": copy_bw / 1e9, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def bench_bin_stats(info, quick):
    n, D, B = (sizes("bin_stats")[k] for k in ("n", "D", "B"))
    check_stats_agree(n, min(D, 256), 20, device=DEV)
    z, b = stats_batch(n, D, B, device=DEV)
    present = torch.unique(b).numel()
    # What the update must move: read + write cov and mean of the present bins, read z.
    moved = 2 * present * (D * D + D) * 4 + n * D * 4
    out = {"n": n, "D": D, "B": B, "bins_in_batch": present, "bytes_moved": moved}
    for momentum in (None, 0.9):
        stats = warm_stats(B, D, momentum, device=DEV)
        t = cuda_time(lambda: stats.update(z, b))
        t_op = cuda_time(lambda: torch.ops.irda_ext.bin_stats_update_(stats.count, stats.mean, stats.cov, z, b,
                                                                      momentum))
        out[f"momentum={momentum}"] = {
            "update_ms": t * 1e3, "op_ms": t_op * 1e3,
            "bandwidth_gbs": moved / t_op / 1e9,
            "pct_peak": 100 * moved / t_op / (info["peak_bandwidth_gbs"] * 1e9),
            "pct_copy": 100 * moved / t_op / (info["copy_bandwidth_gbs"] * 1e9)}
        del stats
    isda = OneHotEstimator(B, D, device=DEV)
    out["isda_onehot_ms"] = cuda_time(lambda: isda.update(z, b), max_reps=20 if quick else 50) * 1e3
    del isda
    worst = max(out["momentum=None"]["update_ms"], out["momentum=0.9"]["update_ms"])
    out["speedup_vs_isda"] = out["isda_onehot_ms"] / worst
    return out


def bench_wfds(info, quick):
    B, D, bandwidth = (sizes("wfds")[k] for k in ("B", "D", "bandwidth"))
    g = torch.Generator(device=DEV).manual_seed(0)
    S = torch.rand(B, B, device=DEV, generator=g)
    mean = torch.randn(B, D, device=DEV, generator=g)
    cov = torch.randn(B, D, D, device=DEV, generator=g)
    got = torch.ops.irda_ext.wfds_smooth(S, mean, cov, bandwidth)
    want = ref.wfds_smooth(S, mean, cov, bandwidth)
    assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-4), "wfds_smooth disagrees with the reference"
    del want
    moved = 2 * B * (D * D + D) * 4
    t = cuda_time(lambda: torch.ops.irda_ext.wfds_smooth(S, mean, cov, bandwidth))
    return {"B": B, "D": D, "bandwidth": bandwidth, "ms": t * 1e3, "bandwidth_gbs": moved / t / 1e9,
            "pct_peak": 100 * moved / t / (info["peak_bandwidth_gbs"] * 1e9),
            "pct_copy": 100 * moved / t / (info["copy_bandwidth_gbs"] * 1e9)}


def bench_surrogate(info, quick):
    n, K, B = (sizes("surrogate")[k] for k in ("n", "K", "B"))
    out = {"n": n, "K": K, "B": B}
    for mode in ("exact", "paper"):
        args = surrogate_batch(n, K, B, device=DEV)
        fused, dense = fwd_bwd(irda_ext.irda_surrogate, args, mode), fwd_bwd(ref.irda_surrogate, args, mode)
        assert torch.allclose(fused[0], dense[0], rtol=1e-4), (mode, fused[0], dense[0])
        for g, h in zip(fused[1], dense[1]):
            assert torch.allclose(g, h, rtol=1e-3, atol=1e-4), mode
        for impl, fn in (("fused", irda_ext.irda_surrogate), ("dense", ref.irda_surrogate)):
            t = cuda_time(lambda: fwd_bwd(fn, args, mode))
            peak = peak_memory_mib(lambda: fwd_bwd(fn, args, mode))
            out[f"{mode}/{impl}"] = {"ms": t * 1e3, "peak_mib": peak}
        out[f"{mode}/speedup"] = out[f"{mode}/dense"]["ms"] / out[f"{mode}/fused"]["ms"]
    return out


def bench_resnet50(info, quick):
    from torch import nn

    batch, image = sizes("resnet50")["batch"], sizes("resnet50")["image"]
    steps = 1 if DRY else (5 if quick else 15)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    trunk = resnet50_trunk().to(DEV, memory_format=torch.channels_last)
    head = nn.Linear(2048, 1).to(DEV)
    bins = irda_ext.Bins(0, 100, 20 if DRY else 1)  # 5 bins in a dry run: 2048 x 2048 covariances on a CPU
    # Long-tailed synthetic ages; the images are noise (only the time matters).
    ages = (torch.distributions.Gamma(4.0, 0.12).sample((20000,)).clamp(0, 99.9))
    x = torch.randn(batch, 3, image, image, device=DEV).to(memory_format=torch.channels_last)
    y = ages[torch.randint(0, ages.numel(), (batch,))].to(DEV)
    criterion = irda_ext.IRDALoss(bins, 2048, num_clusters=3, mode="exact", momentum=0.9).to(DEV)
    criterion.fit_prior(ages)
    params = list(trunk.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    sigma_opt = torch.optim.SGD(criterion.parameters(), lr=1e-2)

    def step(kind):
        opt.zero_grad(set_to_none=True)
        sigma_opt.zero_grad(set_to_none=True)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=not DRY):  # CPU bfloat16 convolutions are slow
            feats = trunk(x)
            if kind == "mse":
                loss = nn.functional.mse_loss(head(feats).float().reshape(-1), y)
            else:
                loss = criterion(feats, y, head)
        loss.backward()
        opt.step()
        if kind == "irda":
            sigma_opt.step()

    def timed(kind):
        for _ in range(1 if DRY else 3):
            step(kind)
        synchronize()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step(kind)
            synchronize()
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    # MSE, IRDA, MSE again: the two MSE medians bound the drift of the measurement.
    mse1, irda, mse2 = timed("mse"), timed("irda"), timed("mse")
    mse = min(mse1, mse2)
    peak = float("nan") if DRY else torch.cuda.max_memory_allocated() / 2**30
    return {"batch": batch, "steps": steps, "mse_step_ms": mse * 1e3, "mse_step_ms_runs": [mse1 * 1e3, mse2 * 1e3],
            "irda_step_ms": irda * 1e3, "overhead_pct": 100 * (irda / mse - 1), "peak_gib": peak,
            "irda_config": f"K=3, exact, momentum 0.9, B={bins.num_bins} bins, D=2048, float32 statistics"}


def render(info, results):
    lines = [f"# GPU benchmarks: {info['name']} ({info['date']})", "",
             f"{info['name']} (sm_{info['capability'].replace('.', '')}, {info['sms']} SMs, "
             f"{info['memory_gib']} GiB), torch {info['torch']}, CUDA {info['cuda']}. "
             f"Peak memory bandwidth {info['peak_bandwidth_gbs']:.0f} GB/s (from the memory clock and bus), "
             f"measured device-to-device copy {info['copy_bandwidth_gbs']:.0f} GB/s. Medians of CUDA-event timings.",
             ""]
    s = results.get("bin_stats", {})
    if "error" not in s and s:
        lines += [f"## BinStats.update, n={s['n']}, D={s['D']}, B={s['B']} ({s['bins_in_batch']} bins in the batch), "
                  "float32", "",
                  "| implementation | time (ms) | bandwidth (GB/s) | % of peak | % of copy |", "|---|---|---|---|---|"]
        for m in ("None", "0.9"):
            r = s[f"momentum={m}"]
            lines.append(f"| BinStats.update momentum={m} | {r['update_ms']:.3f} (op {r['op_ms']:.3f}) | "
                         f"{r['bandwidth_gbs']:.0f} | {r['pct_peak']:.1f} | {r['pct_copy']:.1f} |")
        lines += [f"| ISDA one-hot update_CV | {s['isda_onehot_ms']:.3f} | | | |", "",
                  f"BinStats is {s['speedup_vs_isda']:.1f}x faster than the one-hot formulation; bandwidth counts "
                  f"the {s['bytes_moved'] / 1e9:.2f} GB the op must move (op time, without the Python checks).", ""]
    w = results.get("wfds", {})
    if "error" not in w and w:
        lines += [f"## wfds_smooth, B={w['B']}, D={w['D']}, bandwidth {w['bandwidth']}, float32", "",
                  f"{w['ms']:.3f} ms, {w['bandwidth_gbs']:.0f} GB/s = {w['pct_peak']:.1f}% of peak, "
                  f"{w['pct_copy']:.1f}% of copy.", ""]
    u = results.get("surrogate", {})
    if "error" not in u and u:
        lines += [f"## Fused surrogate forward+backward, n={u['n']}, K={u['K']}, B={u['B']}, float32", "",
                  "| mode | implementation | time (ms) | peak added memory (MiB) |", "|---|---|---|---|"]
        for mode in ("exact", "paper"):
            for impl in ("fused", "dense"):
                r = u[f"{mode}/{impl}"]
                lines.append(f"| {mode} | {impl} | {r['ms']:.3f} | {r['peak_mib']:.1f} |")
        lines += ["", f"Speed-up of the fused op: exact {u['exact/speedup']:.1f}x, paper {u['paper/speedup']:.1f}x.",
                  ""]
    r = results.get("resnet50", {})
    if "error" not in r and r:
        met = "met" if r["overhead_pct"] <= 10 else "NOT met"
        lines += [f"## ResNet-50 training step, batch {r['batch']}, bf16 autocast", "",
                  "| step | time (ms) |", "|---|---|",
                  f"| MSE | {r['mse_step_ms']:.1f} (runs: {', '.join(f'{v:.1f}' for v in r['mse_step_ms_runs'])}) |",
                  f"| IRDA ({r['irda_config']}) | {r['irda_step_ms']:.1f} |", "",
                  f"IRDA overhead: {r['overhead_pct']:.1f}% (target <= 10%: {met}); peak memory {r['peak_gib']:.1f} GiB.",
                  ""]
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["## Failed sections", ""] + [f"- {k}: {v.splitlines()[-1]}" for k, v in errors.items()] + [""]
    return "\n".join(lines)


SECTIONS = ("bin_stats", "wfds", "surrogate", "resnet50")


def main(argv=None):
    global DEV, DRY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", nargs="+", default=None, choices=SECTIONS, metavar="SECTION",
                        help="run only these sections: " + " ".join(SECTIONS))
    parser.add_argument("--dry-run", action="store_true",
                        help="every section at toy sizes on the CPU (no GPU needed): checks the script, not speed")
    args = parser.parse_args(argv)
    DRY, DEV = args.dry_run, "cpu" if args.dry_run else "cuda"
    if not DRY:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu.py needs a GPU (--dry-run checks the script on the CPU)")
        for op in irda_ext.OP_NAMES:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"irda_ext::{op}", "CUDA"):
                sys.exit(f"irda_ext::{op} has no CUDA kernel: build with FORCE_CUDA=1")
    info = device_info()
    print(json.dumps(info, indent=1), flush=True)
    sections = {"bin_stats": bench_bin_stats, "wfds": bench_wfds, "surrogate": bench_surrogate,
                "resnet50": bench_resnet50}
    results = {}
    for name, fn in sections.items():
        if args.only is not None and name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = fn(info, args.quick)
        except Exception:  # record and go on: one section must not cost the others
            results[name] = {"error": traceback.format_exc()}
        if not DRY:
            torch.cuda.empty_cache()
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(results[name], indent=1)}", flush=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", info["name"]).strip("_").lower()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"gpu_{slug}")
    with open(base + ".json", "w") as f:
        json.dump({"device": info, "results": results}, f, indent=1, default=lambda v: None if
                  isinstance(v, float) and math.isnan(v) else str(v))
    with open(base + ".md", "w") as f:
        f.write(render(info, results))
    print(f"wrote {base}.json and {base}.md")
    return 1 if any("error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
