"""irda-train against hostile input and faults, through the real entry point in a subprocess:
every failure is one `irda-train: error:` line that says what and where, found before any
training where it can be, and --resume refuses what it cannot continue."""
import csv
import os
import subprocess
import sys
import time

import pytest
import torch

FAST = ["--no-progress", "--threads", "1", "--batch-size", "512", "--no-plot"]


def irda_train(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "irda_ext.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def error_line(done) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[-1]


def write_csv(path, rows, header=("x1", "x2", "y"), bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def good_rows(n=300):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=g)
    return [[f"{a:.4f}", f"{b:.4f}", f"{3 * a + b:.4f}"] for a, b in x.tolist()]


# ----- the output folder --------------------------------------------------------------------------------
def test_unwritable_out_is_refused_before_training(tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode == 0
    if not immutable:  # a file system without attributes: a path under a file is unwritable too
        (tmp_path / "plain").write_text("")
        out = tmp_path / "plain" / "sub"
    try:
        started = time.perf_counter()
        line = error_line(irda_train("--out", str(out), "--epochs", "1", *FAST))
        assert f"--out {out}" in line and ("cannot write" in line or "cannot" in line)
        assert time.perf_counter() - started < 60  # no epoch ran first
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(out)])


def test_out_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "results"
    path.write_text("not a folder")
    assert error_line(irda_train("--out", str(path), *FAST)) == f"irda-train: error: --out {path} is a file, not a folder"


def test_a_second_run_on_the_same_out_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "irda_ext.train", "--out", str(out), "--epochs", "200", *FAST],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), "the first run never wrote a checkpoint"
        line = error_line(irda_train("--out", str(out), "--epochs", "1", *FAST))
        assert f"--out {out} is in use by another irda-train (pid {first.pid})" in line
    finally:
        first.kill()
        first.wait()


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt.tmp4242").write_bytes(b"half a checkpoint")
    (out / "per_bin_mae.png.tmp4242.png").write_bytes(b"half a plot")
    (out / "notes.tmp").write_text("not ours")
    done = irda_train("--out", str(out), "--epochs", "1", "--method", "vanilla", *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removed 2 temporary file(s)" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "notes.tmp", "results.json",
                                                     "table.txt"]


# ----- devices and options ---------------------------------------------------------------------------------
def test_cuda_device_without_a_gpu_is_an_error_and_creates_nothing(tmp_path):
    if torch.cuda.is_available():
        out = tmp_path / "run"
        line = error_line(irda_train("--device", f"cuda:{torch.cuda.device_count()}", "--out", str(out), *FAST))
        assert "there are only" in line and not out.exists()
        return
    out = tmp_path / "run"
    line = error_line(irda_train("--device", "cuda", "--out", str(out), *FAST))
    assert "--device cuda: torch sees no CUDA GPU here" in line and not out.exists()


def test_nonsense_device_is_named(tmp_path):
    assert "--device 'gpu0' is not a device torch knows" in error_line(irda_train("--device", "gpu0", "--out",
                                                                                 str(tmp_path / "r"), *FAST))


@pytest.mark.parametrize("flag", ["--alpha", "--beta", "--noise-sigma", "--focal-beta"])
def test_non_finite_options_are_refused(tmp_path, flag):
    line = error_line(irda_train(flag, "nan", "--out", str(tmp_path / "r"), *FAST))
    assert f"{flag} must be a finite number, got nan" in line


def test_divergence_names_epoch_step_and_lr(tmp_path):
    line = error_line(irda_train("--lr", "1e6", "--epochs", "3", "--out", str(tmp_path / "r"), *FAST))
    assert "training diverged at epoch" in line and ", step " in line and "--lr 1e+06" in line


# ----- CSV input ---------------------------------------------------------------------------------------------
def test_ragged_csv_row_is_named(tmp_path):
    rows = good_rows()
    rows[6] = rows[6][:2]
    path = write_csv(tmp_path / "t.csv", rows)
    line = error_line(irda_train("--dataset", "csv", "--csv", path, "--target", "y", "--out", str(tmp_path / "r"),
                                 *FAST))
    assert f"{path}: row 8 has 2 cells, the header has 3" in line


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    rows = [[r[2], r[0], r[1]] for r in good_rows()]
    path = write_csv(tmp_path / "bom.csv", rows, header=("y", "x1", "x2"), bom=True)
    done = irda_train("--dataset", "csv", "--csv", path, "--target", "y", "--num-bins", "10", "--method", "vanilla",
                      "--epochs", "1", "--out", str(tmp_path / "r"), *FAST)
    assert done.returncode == 0, done.stderr[-2000:]


def test_infinite_feature_names_the_column(tmp_path):
    rows = good_rows()
    rows[10][1] = "inf"
    path = write_csv(tmp_path / "t.csv", rows)
    line = error_line(irda_train("--dataset", "csv", "--csv", path, "--target", "y", "--method", "vanilla",
                                 "--out", str(tmp_path / "r"), *FAST))
    assert f"{path}: column 'x2', row 12: an infinite value" in line


# ----- checkpoints -------------------------------------------------------------------------------------------
def _stopped_run(out, *extra):
    done = irda_train("--out", str(out), "--epochs", "3", "--stop-after", "1", *extra, *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "checkpoint.pt"


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    path = _stopped_run(tmp_path / "r")
    data = bytearray(path.read_bytes())
    if damage == "flipped":
        middle = len(data) // 2
        data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    elif damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = b""
    else:
        data = bytearray(os.urandom(5000))
    path.write_bytes(bytes(data))
    line = error_line(irda_train("--out", str(tmp_path / "r"), "--epochs", "3", "--resume", *FAST))
    assert f"--resume: {path} is" in line
    assert {"flipped": "damaged", "truncated": "damaged", "empty": "empty", "garbage": "not an irda-train"}[damage] in line


@pytest.mark.parametrize("option, value, old", [("--alpha", "0.7", "1.0"), ("--clusters", "2", "5"),
                                                ("--cap", "10", "None")])
def test_resume_refuses_any_changed_defining_option(tmp_path, option, value, old):
    _stopped_run(tmp_path / "r")
    line = error_line(irda_train("--out", str(tmp_path / "r"), "--epochs", "3", "--resume", option, value, *FAST))
    assert f"--resume: the checkpoint was written with {option} {old}, this run has {value}" in line


def test_resume_accepts_the_options_that_may_change(tmp_path):
    _stopped_run(tmp_path / "r")
    done = irda_train("--out", str(tmp_path / "r"), "--epochs", "3", "--resume", "--workers", "0", "--threads", "1",
                      "--no-progress", "--batch-size", "512", "--no-plot")
    assert done.returncode == 0, done.stderr[-2000:]


def test_full_disk_names_the_file_and_keeps_nothing_half_written(tmp_path):
    out = tmp_path / "tiny"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CI and the development machines run as root)")
    try:
        line = error_line(irda_train("--out", str(out), "--epochs", "1", "--method", "vanilla", *FAST))
        assert "No space left on device" in line and f"cannot write {out}/" in line
        assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no temporary left behind
    finally:
        subprocess.run(["umount", str(out)])
