"""The emulated launch of the CUDA kernels (csrc/emulated), which the "emulated" test
device runs: it really runs the CUDA kernels' code over their launch shapes, and its
shared-memory shadow map catches races."""
import pytest
import torch
from testing import emulated, emulated_cuda, features, surrogate_inputs

import irda_ext

EMU = torch.ops.irda_ext_emulated


def test_emulated_device_runs_the_cuda_kernels():
    z, b = features(40, 5, 6)
    EMU.launch_log(True)
    with emulated_cuda():
        assert emulated()
        irda_ext.BinStats(6, 5, dtype=torch.float64).update(z, b)
        args = surrogate_inputs(9, 2, 7, requires_grad=True)
        irda_ext.irda_surrogate(*args).backward()
        irda_ext.wfds_smooth(torch.eye(6, dtype=torch.float64), torch.zeros(6, 5, dtype=torch.float64),
                             torch.zeros(6, 5, 5, dtype=torch.float64), 2)
    assert not emulated()
    names = [line.split()[0] for line in EMU.launch_log(True)]
    assert names == ["bin_offsets", "bin_mean", "bin_cov", "bin_mean_merge", "surrogate_forward",
                     "surrogate_backward", "wfds_window<2>", "wfds_window<2>"]
    irda_ext.bin_moments(z, b, 6)  # outside: the CPU kernels, nothing emulated
    assert EMU.launch_log(True) == []


def test_emulated_ops_have_the_schemas_fakes_and_autograd():
    for name in irda_ext.OP_NAMES:
        assert str(getattr(EMU, name).default._schema).replace("irda_ext_emulated::", "") == str(
            getattr(torch.ops.irda_ext, name).default._schema).replace("irda_ext::", "")
    args = surrogate_inputs(5, 2, 6, requires_grad=True)
    torch.library.opcheck(EMU.irda_surrogate.default, (*args, "exact"))


@pytest.mark.parametrize("which,message", [(0, "threads 0 and 1 write byte 0"),
                                           (1, "reads byte 4 that thread 1 wrote in the same phase"),
                                           (2, "that no thread of the block has written")])
def test_shadow_map_flags_shared_memory_races(which, message):
    with pytest.raises(RuntimeError, match=message):
        EMU.shadow_map_selftest(which)


def test_shadow_map_accepts_a_barrier_between_write_and_read():
    EMU.shadow_map_selftest(3)
