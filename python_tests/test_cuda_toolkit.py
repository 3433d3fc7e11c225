"""setup.py's build decisions (cuda_toolkit.py) against fake CUDA toolkit layouts on disk: a
wrapper script around nvcc (as on this project's machines), a symlinked nvcc, a toolkit with
no lib64, CUDA_HOME. Then setup.py itself in a subprocess: a broken toolkit must stop it in
seconds with one sentence, before any compiling."""
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_toolkit", ROOT / "cuda_toolkit.py")
cuda_toolkit = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cuda_toolkit", cuda_toolkit)  # its dataclass looks its module up there
_spec.loader.exec_module(cuda_toolkit)


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_toolkit(root: Path, lib64: bool = True, dryrun: bool = True) -> Path:
    """A toolkit folder with bin/nvcc, include/cuda_runtime.h and (optionally) lib64/libcudart.so.
    The fake nvcc answers --dryrun the way the real one does (``#$ _HERE_=<its folder>``), or
    prints nothing when ``dryrun`` is False."""
    here = root / "bin"
    answer = f'echo "#\\$ _HERE_={here}"\n' if dryrun else ""
    _executable(here / "nvcc", f"#!/bin/sh\n{answer}exit 0\n")
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    if lib64:
        (root / "lib64").mkdir(exist_ok=True)
        (root / "lib64" / "libcudart.so.13").write_text("")
    return root


def wrapper(folder: Path, target: Path) -> Path:
    """A script called nvcc that runs another nvcc, as /usr/local/bin/nvcc does here."""
    return _executable(folder / "nvcc", f'#!/bin/sh\nexec {target} "$@"\n')


def which_in(folder: Path):
    def which(name):
        path = folder / name
        return str(path) if path.exists() else None
    return which


# --- whether to build the CUDA kernels -------------------------------------------------------

@pytest.mark.parametrize("env, torch_cuda, gpu, expected", [
    ({}, "13.0", False, False),                      # CUDA torch, no GPU: CPU kernels only, quickly
    ({}, "13.0", True, True),                        # a GPU to run them
    ({"FORCE_CUDA": "1"}, "13.0", False, True),      # a build machine without a GPU
    ({"IRDA_CPU_ONLY": "1"}, "13.0", True, False),   # the explicit opt-out wins over a GPU
    ({}, None, False, False),                        # CPU build of torch
    ({"FORCE_CUDA": "0"}, "13.0", False, False),
])
def test_build_decision(env, torch_cuda, gpu, expected):
    want, reason = cuda_toolkit.should_build_cuda(env, torch_cuda, gpu)
    assert want is expected
    assert reason


def test_no_gpu_reason_names_force_cuda():
    _, reason = cuda_toolkit.should_build_cuda({}, "13.0", False)
    assert "FORCE_CUDA=1" in reason


@pytest.mark.parametrize("env, torch_cuda, message", [
    ({"FORCE_CUDA": "1", "IRDA_CPU_ONLY": "1"}, "13.0", "contradict"),
    ({"FORCE_CUDA": "1"}, None, "CPU-only build"),
])
def test_build_decision_refuses(env, torch_cuda, message):
    with pytest.raises(cuda_toolkit.ToolkitError, match=message):
        cuda_toolkit.should_build_cuda(env, torch_cuda, False)


# --- where the toolkit is ----------------------------------------------------------------------

def test_wrapper_script_resolves_to_the_real_toolkit(tmp_path):
    real = fake_toolkit(tmp_path / "cuda-13.0")
    bin_dir = tmp_path / "usr-local-bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    # torch's guess would be tmp_path (the folder above the wrapper's bin/): no libcudart there.
    toolkit = cuda_toolkit.find_toolkit({}, which=which_in(bin_dir), default_root=str(tmp_path / "none"))
    assert toolkit.root == str(real.resolve())
    assert toolkit.library_dir == str(real.resolve() / "lib64")
    assert "script" in toolkit.found_by


def test_wrapper_script_read_when_dryrun_says_nothing(tmp_path):
    real = fake_toolkit(tmp_path / "cuda-13.0", dryrun=False)
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    toolkit = cuda_toolkit.find_toolkit({}, which=which_in(bin_dir), default_root=str(tmp_path / "none"))
    assert toolkit.root == str(real.resolve())


def test_symlinked_nvcc_is_followed(tmp_path):
    real = fake_toolkit(tmp_path / "opt" / "cuda-13.0")
    # the real compiler is a binary, not a script: replace the fake's shebang
    (real / "bin" / "nvcc").write_bytes(b"\x7fELF fake compiler")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvcc").symlink_to(real / "bin" / "nvcc")
    toolkit = cuda_toolkit.find_toolkit({}, which=which_in(bin_dir), default_root=str(tmp_path / "none"))
    assert toolkit.root == str(real.resolve())
    assert str(bin_dir / "nvcc") in toolkit.found_by


def test_missing_lib64_fails_naming_the_folder_and_the_variable(tmp_path):
    real = fake_toolkit(tmp_path / "cuda-13.0", lib64=False)
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    with pytest.raises(cuda_toolkit.ToolkitError) as err:
        cuda_toolkit.find_toolkit({}, which=which_in(bin_dir), default_root=str(tmp_path / "none"))
    text = str(err.value)
    assert f"{real.resolve()}/lib64" in text and "libcudart" in text
    assert "CUDA_HOME" in text and "IRDA_CPU_ONLY=1" in text
    assert text.count(". ") == 0  # one sentence


def test_cuda_home_wins_and_is_checked(tmp_path):
    good = fake_toolkit(tmp_path / "good")
    other = fake_toolkit(tmp_path / "other")
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, other / "bin" / "nvcc")
    toolkit = cuda_toolkit.find_toolkit({"CUDA_HOME": str(good)}, which=which_in(bin_dir))
    assert toolkit.root == str(good) and toolkit.found_by == "CUDA_HOME"
    assert cuda_toolkit.find_toolkit({"CUDA_PATH": str(good)}, which=which_in(bin_dir)).found_by == "CUDA_PATH"
    with pytest.raises(cuda_toolkit.ToolkitError, match=f"no CUDA toolkit at {tmp_path / 'missing'}.*CUDA_HOME"):
        cuda_toolkit.find_toolkit({"CUDA_HOME": str(tmp_path / "missing")}, which=which_in(bin_dir))


def test_no_nvcc_falls_back_to_the_default_location(tmp_path):
    default = fake_toolkit(tmp_path / "usr-local-cuda")
    toolkit = cuda_toolkit.find_toolkit({}, which=lambda name: None, default_root=str(default))
    assert toolkit.root == str(default) and toolkit.found_by == "the default location"


def test_toolkit_without_headers_fails(tmp_path):
    real = fake_toolkit(tmp_path / "cuda")
    (real / "include" / "cuda_runtime.h").unlink()
    with pytest.raises(cuda_toolkit.ToolkitError, match="cuda_runtime.h"):
        cuda_toolkit.find_toolkit({"CUDA_HOME": str(real)})


def test_wheel_headers_are_found(tmp_path):
    nvidia = tmp_path / "site-packages" / "nvidia"
    (nvidia / "cu13" / "include").mkdir(parents=True)
    (nvidia / "cu13" / "include" / "cusparse.h").write_text("")
    (nvidia / "cu13" / "lib").mkdir()
    (nvidia / "empty" / "include").mkdir(parents=True)
    assert cuda_toolkit.wheel_include_dirs([str(nvidia)]) == [str(nvidia / "cu13" / "include")]


# --- setup.py itself ------------------------------------------------------------------------------

def _setup_py(tmp_path, env_extra, path_dir):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_HOME", "CUDA_PATH", "CPATH", "FORCE_CUDA", "IRDA_CPU_ONLY", "TORCH_CUDA_ARCH_LIST")}
    env["PATH"] = f"{path_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin"
    env.update(env_extra)
    # --version runs setup.py's module code (which makes every build decision) and builds nothing
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_setup_py_stops_before_compiling_on_a_broken_toolkit(tmp_path):
    real = fake_toolkit(tmp_path / "cuda-13.0", lib64=False)
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    done = _setup_py(tmp_path, {"FORCE_CUDA": "1"}, bin_dir)
    if torch.version.cuda is None:
        assert done.returncode != 0 and "CPU-only build" in done.stderr
        return
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"no libcudart.so in {real.resolve()}/lib64" in last and "CUDA_HOME" in last


def test_setup_py_builds_cpu_kernels_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so setup.py rightly builds the CUDA kernels")
    real = fake_toolkit(tmp_path / "cuda-13.0", lib64=False)  # a toolkit that could not build: never looked at
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    done = _setup_py(tmp_path, {}, bin_dir)
    assert done.returncode == 0, done.stderr
    assert "building the CPU kernels only" in done.stderr


def test_setup_py_picks_the_toolkit_behind_a_wrapper(tmp_path):
    if torch.version.cuda is None:
        pytest.skip("a CPU-only torch cannot be asked to build CUDA kernels")
    real = fake_toolkit(tmp_path / "cuda-13.0")
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    done = _setup_py(tmp_path, {"FORCE_CUDA": "1"}, bin_dir)
    assert done.returncode == 0, done.stderr
    assert f"toolkit {real.resolve()} from the nvcc that the script {bin_dir / 'nvcc'} runs" in done.stderr
    assert "TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX" in done.stderr


def test_setup_py_compiles_cuda_without_fused_multiply_add(tmp_path):
    """nvcc gets --fmad=false, as g++ gets -ffp-contract=off: the surrogate's backward must
    round every logit as its forward did (test_surrogate.py::test_float32_logits_near_1e6)."""
    if torch.version.cuda is None:
        pytest.skip("a CPU-only torch cannot be asked to build CUDA kernels")
    real = fake_toolkit(tmp_path / "cuda-13.0")
    bin_dir = tmp_path / "bin"
    wrapper(bin_dir, real / "bin" / "nvcc")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_HOME", "CUDA_PATH", "CPATH", "IRDA_CPU_ONLY", "TORCH_CUDA_ARCH_LIST")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin"
    env["FORCE_CUDA"] = "1"
    show = ("import runpy, setuptools\n"
            "setuptools.setup = lambda **kw: print(kw['ext_modules'][0].extra_compile_args)\n"
            "runpy.run_path('setup.py')\n")
    done = subprocess.run([sys.executable, "-c", show], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    flags = eval(done.stdout.strip().splitlines()[-1])  # {'cxx': [...], 'nvcc': [...]}
    assert "--fmad=false" in flags["nvcc"] and "-ffp-contract=off" in flags["cxx"]


def test_cmake_cuda_build_has_the_default_arch_list_of_setup_py():
    """A CMake CUDA build without TORCH_CUDA_ARCH_LIST compiles what setup.py does, PTX included."""
    text = (ROOT / "CMakeLists.txt").read_text()
    assert f'set(TORCH_CUDA_ARCH_LIST "{cuda_toolkit.DEFAULT_ARCH_LIST}")' in text
    assert cuda_toolkit.DEFAULT_ARCH_LIST.endswith("+PTX")
