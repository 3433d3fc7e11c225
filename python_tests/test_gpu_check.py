"""bench/gpu_check.sh and its helpers, the parts that run without a GPU: the arguments, the
plan of a dry run (with bench_gpu.py --dry-run: every benchmark section at toy sizes on the
CPU), the ninja stand-in for machines without ninja, and the sanitizer driver."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import ninja_stand_in  # noqa: E402


def _gpu_check(*args, out=None, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_and_bad_arguments(tmp_path):
    done = _gpu_check("--help", out=tmp_path)
    assert done.returncode == 0 and "--dry-run" in done.stdout and "under 8 minutes" in done.stdout
    for bad in (["--bogus"], ["--budget"], ["--budget", "soon"]):
        done = _gpu_check(*bad, out=tmp_path)
        assert done.returncode == 2, bad
        assert "gpu_check.sh:" in done.stderr


def test_dry_run_plans_every_step_and_runs_the_benchmark_code_on_the_cpu(tmp_path):
    done = _gpu_check("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "gpu_check.log").read_text()
    steps = [line.split(" (")[0][4:] for line in log.splitlines() if line.startswith("=== ") and "(" in line]
    assert steps == ["environment", "build", "dispatcher", "CUDA tests", "benchmarks", "memcheck", "racecheck"]
    assert "pip  install  --no-build-isolation  --no-deps  --no-index" in log  # the installed torch, no download
    assert "bench/bench_gpu.py  --out  " + str(tmp_path) + "  --quick" in log
    assert "--tool  memcheck" in log and "--tool  racecheck" in log
    assert "limit 240s" in log  # every step has a time limit within the budget
    # bench_gpu.py --dry-run ran every section and wrote its report under $OUT
    report = (tmp_path / "gpu_dry_run_cpu.md").read_text()
    for section in ("BinStats.update", "wfds_smooth", "Fused surrogate", "ResNet-50 training step"):
        assert section in report
    assert "Failed sections" not in report


def test_ninja_stand_in_runs_torchs_build_file(tmp_path):
    """The syntax of torch.utils.cpp_extension's build.ninja: variables, rules, build
    statements, $in/$out, escapes; outputs in folders that do not exist yet."""
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b c.txt").write_text("beta\n")
    (tmp_path / "build.ninja").write_text(
        "ninja_required_version = 1.3\n"
        "prefix = [$\n"
        "  x]\n"
        "cflags = $prefix:\n"
        "\n"
        "rule copy\n"
        "  command = (echo $cflags && cat $in) > $out\n"
        "  depfile = $out.d\n"
        "  deps = gcc\n"
        "\n"
        "build out/a.o: copy a.txt\n"
        "build out/deep/b.o: copy b$ c.txt\n"
        "build all: phony out/a.o\n")
    assert subprocess.run([sys.executable, str(ROOT / "bench" / "ninja_stand_in.py"), "--version"],
                          capture_output=True, text=True).stdout.strip() == ninja_stand_in.VERSION
    assert ninja_stand_in.main(["-v", "-j", "2", "-C", str(tmp_path)]) == 0
    assert (tmp_path / "out" / "a.o").read_text() == "[x]:\nalpha\n"
    assert (tmp_path / "out" / "deep" / "b.o").read_text() == "[x]:\nbeta\n"
    (tmp_path / "build.ninja").write_text("rule fail\n  command = exit 3\nbuild x: fail y\n")
    assert ninja_stand_in.main(["-C", str(tmp_path)]) == 1


@pytest.mark.parametrize("section", ["bin_stats", "wfds", "surrogate"])
def test_sanitizer_driver_runs(section):
    """bench/sanitize_ops.py, the program compute-sanitizer watches, on the CPU (against itself)."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "sanitize_ops.py"), "--device", "cpu", "--only",
                           section], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert f"{section}: the cpu kernels agree" in done.stdout
