"""The three ops at awkward shapes, for compute-sanitizer (bench/gpu_check.sh step 6):

    compute-sanitizer --tool memcheck python bench/sanitize_ops.py
    compute-sanitizer --tool racecheck python bench/sanitize_ops.py --only bin_stats

Feature sizes D = 1, 63, 65 and 130 (tile edges of 16 and 64 on both sides), bins whose
sample counts are not multiples of the 16 samples staged at a time (1, 15, 17, 33) with
absent bins between them, every W-FDS window (h = 0..4) and the direct band (h = 7) on B not
a multiple of the 16-bin runs, and the surrogate's both modes with B below and above a warp
of 32. Each result is compared with the CPU kernels', so a wrong read shows as a wrong value
too. Small sizes: memcheck slows kernels down a hundredfold.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python_tests"))
from testing import surrogate_inputs  # noqa: E402

import irda_ext  # noqa: E402

SECTIONS = ("bin_stats", "wfds", "surrogate")


def _close(got, want, what):
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}: {m}")


def bin_stats(dev):
    counts = [1, 0, 15, 17, 0, 33, 2]  # samples per bin, absent bins between
    bins = torch.cat([torch.full((c,), b, dtype=torch.int64) for b, c in enumerate(counts)])
    for D in (1, 63, 65, 130):
        g = torch.Generator().manual_seed(D)
        z = torch.randn(bins.numel(), D, generator=g, dtype=torch.float64)
        B = len(counts)
        _close(torch.ops.irda_ext.bin_moments(z.to(dev), bins.to(dev), B),
               torch.ops.irda_ext.bin_moments(z, bins, B), f"bin_moments D={D}")
        for momentum in (None, 0.9):
            stats = {d: irda_ext.BinStats(B, D, momentum=momentum, dtype=torch.float64, device=d) for d in ("cpu", dev)}
            for step in range(2):
                stats["cpu"].update(z + step, bins)
                stats[dev].update((z + step).to(dev), bins.to(dev))
            _close((stats[dev].count, stats[dev].mean, stats[dev].cov),
                   (stats["cpu"].count, stats["cpu"].mean, stats["cpu"].cov), f"update D={D} momentum={momentum}")
            batch = torch.ops.irda_ext.bin_moments(z, bins, B)
            for d in ("cpu", dev):
                s = stats[d]
                torch.ops.irda_ext.merge_bin_moments_(s.count, s.mean, s.cov, *(t.to(d) for t in batch), momentum)
            _close((stats[dev].count, stats[dev].mean, stats[dev].cov),
                   (stats["cpu"].count, stats["cpu"].mean, stats["cpu"].cov), f"merge D={D} momentum={momentum}")


def wfds(dev):
    for B, D in ((1, 1), (7, 63), (37, 65), (50, 3)):
        g = torch.Generator().manual_seed(B)
        S = torch.rand(B, B, generator=g, dtype=torch.float64)
        mean = torch.randn(B, D, generator=g, dtype=torch.float64)
        cov = torch.randn(B, D, D, generator=g, dtype=torch.float64)
        for h in (0, 1, 2, 3, 4, 7):
            _close(torch.ops.irda_ext.wfds_smooth(S.to(dev), mean.to(dev), cov.to(dev), h),
                   torch.ops.irda_ext.wfds_smooth(S, mean, cov, h), f"wfds B={B} D={D} h={h}")


def surrogate(dev):
    for n, K, B in ((1, 1, 1), (3, 2, 31), (33, 3, 33), (5, 1, 100)):
        args = surrogate_inputs(n, K, B, dead_bins=(B // 2,) if B > 2 else (), var_scale=3.0)
        for mode in ("exact", "paper"):
            want = torch.ops.irda_ext.irda_surrogate(*args, mode)
            on_dev = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
            got = torch.ops.irda_ext.irda_surrogate(*on_dev, mode)
            _close(got, want, f"surrogate forward n={n} K={K} B={B} {mode}")
            grad = torch.ones(n, dtype=torch.float64)
            _close(torch.ops.irda_ext.irda_surrogate_backward(grad.to(dev), *on_dev, mode, got[1]),
                   torch.ops.irda_ext.irda_surrogate_backward(grad, *args, mode, want[1]),
                   f"surrogate backward n={n} K={K} B={B} {mode}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--device", default="cuda", help="cuda; cpu runs the comparisons against themselves")
    args = parser.parse_args(argv)
    for name in args.only:
        globals()[name](args.device)
        print(f"{name}: the {args.device} kernels agree with the CPU kernels", flush=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
