"""bench/step_cost.py's kernel floor times what a training step computes: the inputs it captures
are the ones the step's kernels received."""
import copy

import torch
from testing import load_bench


def test_captured_step_replays_the_epoch_and_the_floor_sums_its_pieces():
    step_cost = load_bench("step_cost")
    step = step_cost.capture_step("abalone", threads=1, epochs=2)
    crit = step.criterion
    # a full batch, not the epoch's short last one
    assert step.op_args[0].shape[0] == step.run.train_loader.batch_size == 256
    assert len(step.updates) == len(step.run.train_loader)
    # The captured updates, replayed on the statistics of the epoch's start, give the bits the
    # training loop's own updates gave: the floor times the same work.
    replay = copy.deepcopy(step.stats_before)
    for z, bin_index in step.updates:
        replay.update(z, bin_index)
    replay.flush()
    crit.stats.flush()
    for name in ("epoch_count", "epoch_mean", "epoch_cov"):
        assert torch.equal(getattr(replay, name), getattr(crit.stats, name)), name
    # the captured inputs of the fused loss are the loss's: the head, the criterion's constants,
    # statistics and bins
    args = step.op_args
    # the head and sigma as they were at that step (copies: the epoch's short last batch moved them)
    for got, live in ((args[3], step.run.head.weight), (args[4], step.run.head.bias), (args[14], crit.noise.log_sigma)):
        assert got.shape == live.shape and got.data_ptr() != live.data_ptr() and not got.requires_grad
    offset, cov_upper, keep, iso = crit.head_terms()
    assert all(torch.equal(a, b) for a, b in zip(args[5:9], (offset, cov_upper, keep, iso)))
    centers, eta, log_prior = crit.constants(args[0].dtype)
    assert torch.equal(args[9], centers) and torch.equal(args[10], eta) and torch.equal(args[11], log_prior)
    assert args[15] == crit.mode
    floor = step_cost.kernel_floor(step)
    assert set(floor["hot"]) == set(floor["cold"]) == {"head_forward_s", "head_backward_s", "stats_update_s"}
    assert all(t > 0 for t in floor["hot"].values())
    assert floor["floor_s"] == sum(floor["hot"].values()) and floor["batch"] == 256
