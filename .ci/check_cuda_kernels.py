"""Checks a compiled irda_ext._C: it records the CUDA release torch was built with, and
every op defined in csrc/ops.cpp has a CUDA and a CPU kernel in the dispatcher (the host-only
ops of define_host_schemas a CPU kernel; a composite, CompositeImplicitAutograd, serves every
device).

    python .ci/check_cuda_kernels.py irda_ext/_C.cpython-311-x86_64-linux-gnu.so

Loads the library with torch.ops.load_library and never imports the irda_ext package
(that would load a library and register the same schemas twice). No GPU needed.
"""
import importlib.util
import os
import re
import sys

import torch

lib = sys.argv[1]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(f"{root}/csrc/ops.cpp") as f:
    source = f.read()
ops = re.findall(r'm\.def\("([A-Za-z0-9_]+)\(', source)
assert ops, "no schemas found in csrc/ops.cpp"
host_body = re.search(r"void define_host_schemas\(torch::Library& m\) \{(.*?)\n\}", source, re.S)
host_only = set(re.findall(r'm\.def\("([A-Za-z0-9_]+)\(', host_body.group(1))) if host_body else set()

spec = importlib.util.spec_from_file_location("_cuda_check", f"{root}/irda_ext/_cuda_check.py")
cuda_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cuda_check)
built = cuda_check.check_cuda_version(lib)
assert built is not None, f"{lib} has no CUDA build marker: were the CUDA sources compiled?"
print(f"library built with CUDA {built}, torch has CUDA {torch.version.cuda}")

torch.ops.load_library(lib)
missing, composites = [], []
for op in ops:
    name = f"irda_ext::{op}"
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")
    if composite:
        composites.append(op)
    for key in ("CPU",) if op in host_only and not composite else ("CUDA", "CPU"):
        ok = composite or torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
        print(f"  {name:<36} {key:<4} {('ok (composite)' if composite else 'ok') if ok else 'MISSING'}")
        if not ok:
            missing.append(f"{op} ({key})")
if missing:
    sys.exit("ops without a kernel: " + ", ".join(missing))
print(f"all {len(ops)} ops have their kernels: CPU and CUDA, or CPU for the host-only "
      f"{', '.join(sorted(host_only - set(composites))) or '(none)'}; composites (every device): "
      f"{', '.join(composites) or '(none)'}")
