"""What a benchmark figure was measured on: the CPU model, its vector extensions, the
thread count. The same kernel measured 8.8x on one machine and 1.3x on another, so every
figure in bench/results/ carries this line."""
import os
import platform

import torch

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile")


def cpu_description() -> dict:
    model, flags, ids = platform.processor() or platform.machine(), set(), {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key in ("cpu family", "model") and key not in ids:
                    ids[key] = value.strip()
    except OSError:
        pass
    # A virtual machine's model name may say only "AMD EPYC": the family and model numbers tell
    # the generation (family 26 is Zen 5, 25 Zen 3/4, 23 Zen 1/2; Intel's are family 6).
    if "cpu family" in ids and "model" in ids:
        model = f"{model}, family {ids['cpu family']} model {ids['model']}"
    return {"cpu": model, "vector_extensions": [f for f in VECTOR_FLAGS if f in flags], "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


# The environment of a benchmark's subprocess on an AVX2-only build of this tree
# (IRDA_CPU_ISA=avx2, the --isa-build options): PyTorch's own vectorised kernels (ATen's
# dispatch, MKL, oneDNN) held to AVX2 too, as on a machine without AVX-512; otherwise the
# work around the kernels (the dense reference, the MLP of a step) would run AVX-512 code
# beside an AVX2 build of the kernels.
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def describe(env: dict) -> str:
    return (f"{env['cpu']} ({', '.join(env['vector_extensions']) or 'no vector extensions listed'}), "
            f"{env['cpus']} CPUs, {env['torch_threads']} torch thread(s), torch {env['torch']}")
