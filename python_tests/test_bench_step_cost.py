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
    # the captured surrogate inputs are the loss's: the criterion's constants and bins
    centers, eta, log_prior = crit.constants(step.op_args[0].dtype)
    assert torch.equal(step.op_args[3], centers) and torch.equal(step.op_args[4], eta)
    assert torch.equal(step.op_args[5], log_prior) and step.op_args[-1] == crit.mode
    floor = step_cost.kernel_floor(step)
    assert set(floor["hot"]) == set(floor["cold"]) == {"surrogate_forward_s", "surrogate_backward_s",
                                                       "quadratic_forms_s", "stats_update_s"}
    assert all(t > 0 for t in floor["hot"].values())
    assert floor["floor_s"] == sum(floor["hot"].values()) and floor["batch"] == 256
