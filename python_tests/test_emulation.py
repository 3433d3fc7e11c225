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
        irda_ext.BinStats(6, 5, stats="cumulative", dtype=torch.float64).update(z, b)  # one fused update
        args = surrogate_inputs(9, 2, 7, requires_grad=True)
        irda_ext.irda_surrogate(*args).backward()
        irda_ext.wfds_smooth(torch.eye(6, dtype=torch.float64), torch.zeros(6, 5, dtype=torch.float64),
                             torch.zeros(6, 5, 5, dtype=torch.float64), 2)
    assert not emulated()
    names = [line.split()[0] for line in EMU.launch_log(True)]
    assert names == ["bin_offsets", "bin_mean", "bin_cov<16>", "bin_mean_merge", "surrogate_forward<exact>",
                     "surrogate_backward<exact>", "wfds_window<2>", "wfds_window<2>"]
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


def _launches(fn, *args):
    """The emulated launches of fn(*args), as {name: (grid, block)} (the last of each name)."""
    EMU.launch_log(True)
    with emulated_cuda():
        fn(*args)
    out = {}
    for line in EMU.launch_log(True):
        name, grid, block = line.split()
        out[name] = (tuple(int(v) for v in grid[6:-1].split(",")), tuple(int(v) for v in block[7:-1].split(",")))
    return out


def test_wfds_grid_covers_bins_too():
    """A mean of D = 64 over B = 100 bins is 64 elements: the grid also splits the bins into
    runs, instead of one block walking all 100 bins (review, fix 5)."""
    B, D = 100, 64
    weights = irda_ext.wfds_weights(torch.rand(B, B, dtype=torch.float64))
    mean, cov = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, D, dtype=torch.float64)
    EMU.launch_log(True)
    with emulated_cuda():
        got = irda_ext.wfds_smooth(weights, mean, cov, 2)
    grids = [line.split()[1] for line in EMU.launch_log(True)]
    assert grids == ["grid=(1,6,1)", "grid=(16,6,1)"]  # the mean, then the covariance
    torch.testing.assert_close(got[0], weights @ mean)


@pytest.mark.parametrize("D,tiles", [(64, 4), (130, 3), (1, 1)])
def test_cov_grid_is_the_upper_triangle_of_tiles(D, tiles):
    """bin_cov computes the upper triangle of tiles and mirrors it (half the products), in
    tiles of 16 up to D = 128 so that a bin, a dominant one too, gets 10 blocks at D = 64
    instead of 1 (review, fix 5)."""
    z, b = features(50, D, 3, bins=[0] * 45 + [1] * 5)
    grid, block = _launches(irda_ext.bin_moments, z, b, 3)[f"bin_cov<{16 if D <= 128 else 64}>"]
    assert grid == (tiles * (tiles + 1) // 2, 3, 1) and block[0] * block[1] == 256


def test_surrogate_mode_is_a_compile_time_choice():
    args = surrogate_inputs(5, 2, 6)
    assert set(_launches(lambda: irda_ext.irda_surrogate(*args, mode="exact"))) == {"surrogate_forward<exact>"}
    assert set(_launches(lambda: irda_ext.irda_surrogate(*args, mode="paper"))) == {"surrogate_forward<paper>"}
