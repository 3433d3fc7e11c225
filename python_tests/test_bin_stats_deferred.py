"""BinStats' deferred covariance updates on the CPU (csrc/cpu/bin_stats.cpp, irda_ext/bin_stats.py):
``bin_stats_plan_`` merges a batch into count and mean and returns its covariance update as a
plan; ``bin_stats_apply_`` folds many plans into one update per bin. The results must be those
of one ``bin_stats_update_`` per batch whenever anything reads them: the counts and means bit for
bit, the covariances to rounding (the folded sums run in another order)."""
import pytest
import torch
from testing import features

import irda_ext
import irda_ext.bin_stats as bin_stats
from irda_ext import reference as ref

OPS = torch.ops.irda_ext


def relu_features(n, D, B, seed, dtype):
    """Features with exact zeros (ReLU's), which the row update skips per row."""
    z, b = features(n, D, B, dtype=dtype, seed=seed)
    return z.clamp_min(0), b


def immediate_and_planned(batches, B, D, dtype, momentum=None):
    """(count, mean, cov) after ``bin_stats_update_`` per batch, and after ``bin_stats_plan_`` per
    batch with every plan applied at the end."""
    a = [torch.zeros(B, dtype=torch.int64), torch.zeros(B, D, dtype=dtype), torch.zeros(B, D, D, dtype=dtype)]
    b = [t.clone() for t in a]
    plans = []
    for z, bins in batches:
        OPS.bin_stats_update_(*a, z, bins, momentum)
        plans.append(OPS.bin_stats_plan_(b[0], b[1], z, bins, momentum))
    OPS.bin_stats_apply_(b[2], *[list(part) for part in zip(*plans)])
    return a, b


def assert_covariances_close(got, want, what="cov"):
    """Equal to the rounding of sums of a few hundred terms in got's dtype, relative to the
    largest entry (an entry that cancels to ~0 keeps only that absolute error)."""
    rtol = 1e-5 if got.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max().clamp_min(1e-30)), msg=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,D,B", [(1, 1, 1), (8, 1, 4), (97, 13, 7), (40, 97, 3), (0, 4, 3), (5, 6, 97),
                                   (33, 70, 5)])
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_plans_give_one_update_per_batch(dtype, n, D, B, momentum):
    # D = 70: whole register tiles of the folded update and the columns after them
    batches = [relu_features(n + k, D, B, seed=k, dtype=dtype) for k in range(5)]
    immediate, planned = immediate_and_planned(batches, B, D, dtype, momentum)
    assert torch.equal(immediate[0], planned[0]) and torch.equal(immediate[1], planned[1])
    assert_covariances_close(planned[2], immediate[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_plan_with_keep_zero_drops_the_old_block_unread(dtype):
    """A bin's first batch (pooled: keep 0) replaces its block: whatever the block held before,
    NaN included, is not read, nor are the vectors of earlier plans (their factor is 0)."""
    B, D = 4, 6
    count, mean = torch.zeros(B, dtype=torch.int64), torch.zeros(B, D, dtype=dtype)
    z0, b0 = relu_features(20, D, B, seed=0, dtype=dtype)
    z1, b1 = relu_features(25, D, B, seed=1, dtype=dtype)
    plans = [OPS.bin_stats_plan_(count, mean, z0, b0, None)]
    count.zero_()  # the next plan starts each bin afresh (keep 0), as after a reset
    mean.zero_()
    plans.append(OPS.bin_stats_plan_(count, mean, z1, b1, None))
    assert (plans[1][4][:int((plans[1][0] >= 0).sum())] == 0).all()
    cov = torch.full((B, D, D), float("nan"), dtype=dtype)
    OPS.bin_stats_apply_(cov, *[list(part) for part in zip(*plans)])
    want = torch.zeros(B, D, D, dtype=dtype)
    OPS.bin_stats_update_(torch.zeros(B, dtype=torch.int64), torch.zeros(B, D, dtype=dtype), want, z1, b1, None)
    seen = torch.bincount(b1, minlength=B) > 0
    assert torch.isfinite(cov[seen]).all()
    assert_covariances_close(cov[seen], want[seen])
    assert torch.isnan(cov[~seen]).all()  # bins in no plan are not touched


def test_plans_match_the_reference_pooled_statistics():
    batches = [relu_features(30, 6, 5, seed=k, dtype=torch.float64) for k in range(4)]
    _, (count, mean, cov) = immediate_and_planned(batches, 5, 6, torch.float64)
    want = ref.pooled_statistics(torch.cat([z for z, _ in batches]), torch.cat([b for _, b in batches]), 5)
    torch.testing.assert_close(count, want[0].to(count))
    torch.testing.assert_close(mean, want[1], rtol=1e-12, atol=1e-12)
    seen = count >= 2
    torch.testing.assert_close(cov[seen], want[2][seen], rtol=1e-10, atol=1e-12)


def test_plan_shapes_depend_on_the_inputs_only():
    z, b = features(10, 3, 50, bins=[4, 4, 9, 4, 9, 9, 9, 1, 4, 4])
    count, mean = torch.zeros(50, dtype=torch.int64), torch.zeros(50, 3, dtype=torch.float64)
    bins, vec_offset, vecs, weights, keep = OPS.bin_stats_plan_(count, mean, z, b, None)
    S = 10  # min(n, B)
    assert bins.tolist() == [1, 4, 9] + [-1] * (S - 3)
    # a bin's samples, then its delta
    assert vec_offset.tolist() == [0, 2, 8, 13] + [13] * (S - 3)
    assert vecs.shape == (10 + S, 3) and weights.shape == (10 + S,) and keep.shape == (S,)
    assert count[[1, 4, 9]].tolist() == [1, 5, 4] and count.sum() == 10


def test_threads_give_the_same_bits():
    batches = [relu_features(200, 64, 9, seed=k, dtype=torch.float32) for k in range(3)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = immediate_and_planned(batches, 9, 64, torch.float32)
        torch.set_num_threads(2)
        _, two = immediate_and_planned(batches, 9, 64, torch.float32)
    finally:
        torch.set_num_threads(before)
    for x, y in zip(one, two):
        assert torch.equal(x, y)


def test_opcheck_plan_and_apply():
    z, b = relu_features(12, 5, 4, seed=0, dtype=torch.float64)
    count, mean = torch.zeros(4, dtype=torch.int64), torch.zeros(4, 5, dtype=torch.float64)
    torch.library.opcheck(OPS.bin_stats_plan_.default, (count.clone(), mean.clone(), z, b, None))
    plans = [OPS.bin_stats_plan_(count, mean, z, b, None), OPS.bin_stats_plan_(count, mean, z * 2, b, None)]
    torch.library.opcheck(OPS.bin_stats_apply_.default,
                          (torch.zeros(4, 5, 5, dtype=torch.float64), *[list(part) for part in zip(*plans)]))


def test_apply_rejects_what_is_not_a_plan():
    count, mean = torch.zeros(4, dtype=torch.int64), torch.zeros(4, 3)
    z, b = features(6, 3, 4, dtype=torch.float32)
    plan = list(OPS.bin_stats_plan_(count, mean, z, b, None))
    cov = torch.zeros(4, 3, 3)

    def apply(**change):
        parts = dict(zip(("bins", "vec_offset", "vecs", "weights", "keep"), plan), **change)
        OPS.bin_stats_apply_(cov, *[[t] for t in parts.values()])

    with pytest.raises(ValueError, match="bins must be distinct ascending"):
        apply(bins=torch.tensor([0, 7, -1, -1]))
    with pytest.raises(ValueError, match="bins must be distinct ascending"):
        apply(bins=plan[0].flip(0))
    with pytest.raises(ValueError, match="vec_offset must increase"):
        apply(vec_offset=torch.tensor([0, 100, 100, 100, 100]))
    with pytest.raises(ValueError, match="expected bins"):
        apply(keep=plan[4][:2])
    with pytest.raises(TypeError, match="like cov"):
        apply(vecs=plan[2].double())
    with pytest.raises(ValueError, match="one entry per plan"):
        OPS.bin_stats_apply_(cov, [plan[0]], [], [plan[2]], [plan[3]], [plan[4]])
    with pytest.raises(ValueError, match="non-finite|NaN or infinite"):
        OPS.bin_stats_plan_(count, mean, torch.full((2, 3), float("nan")), torch.tensor([0, 1]), None)
    with pytest.raises(TypeError, match="count must be int64"):
        OPS.bin_stats_plan_(count.float(), mean, z, b, None)


def epoch_pair(B=7, D=9):
    """Two BinStats under "epoch": ``deferred`` defers as on the CPU, ``immediate`` applies every
    batch at once (a cap of zero bytes flushes after each plan)."""
    return irda_ext.BinStats(B, D, momentum=0.9), irda_ext.BinStats(B, D, momentum=0.9)


def update_both(deferred, immediate, z, b, monkeypatch):
    deferred.update(z, b)
    with monkeypatch.context() as m:
        m.setattr(bin_stats, "DEFERRED_BYTES", 0)
        immediate.update(z, b)
    assert not immediate._pending


def after_an_epoch(monkeypatch, steps=1):
    """``epoch_pair()`` after an epoch of ``steps`` batches: every bin has statistics, nothing waits."""
    deferred, immediate = epoch_pair()
    for step in range(steps):
        update_both(deferred, immediate, *relu_features(30, 9, 7, seed=step, dtype=torch.float32), monkeypatch)
    deferred.end_epoch()
    immediate.end_epoch()
    return deferred, immediate


def assert_same_state(x, y):
    """The same statistics: bit for bit but the covariances, which agree to rounding."""
    sx, sy = x.state_dict(), y.state_dict()
    assert sx.keys() == sy.keys()
    for key in sx:
        if key in ("cov", "epoch_cov"):
            assert_covariances_close(sx[key], sy[key], key)
        else:
            assert torch.equal(sx[key], sy[key]), key


def test_deferred_epochs_give_the_immediate_statistics(monkeypatch):
    deferred, immediate = epoch_pair()
    for epoch in range(4):
        for step in range(5):
            # bins 0-5 from the first epoch; bin 6 first appears in epoch 2 (its first epoch reads
            # the epoch so far: a flush)
            z, b = relu_features(23, 9, 6 if epoch < 2 else 7, seed=10 * epoch + step, dtype=torch.float32)
            update_both(deferred, immediate, z, b, monkeypatch)
            if epoch == 1:  # after the first epoch only the batch cap applies them within an epoch
                assert len(deferred._pending) == (step + 1) % bin_stats.DEFERRED_BATCHES
        deferred.end_epoch()
        immediate.end_epoch()
        assert not deferred._pending
        assert_same_state(deferred, immediate)


def test_reading_epoch_cov_applies_the_pending_updates(monkeypatch):
    deferred, immediate = after_an_epoch(monkeypatch, steps=3)
    z, b = relu_features(30, 9, 7, seed=99, dtype=torch.float32)
    update_both(deferred, immediate, z, b, monkeypatch)
    assert deferred._pending
    assert_covariances_close(deferred.epoch_cov, immediate.epoch_cov)  # the attribute flushes
    assert not deferred._pending


def test_state_dict_and_dtype_changes_see_the_pending_updates(monkeypatch):
    deferred, immediate = epoch_pair()
    for epoch in range(2):
        for step in range(3):
            z, b = relu_features(30, 9, 7, seed=10 * epoch + step, dtype=torch.float32)
            update_both(deferred, immediate, z, b, monkeypatch)
        if epoch == 0:
            deferred.end_epoch()
            immediate.end_epoch()
    assert deferred._pending
    assert_same_state(deferred, immediate)  # state_dict() flushes
    z, b = relu_features(30, 9, 7, seed=50, dtype=torch.float32)
    update_both(deferred, immediate, z, b, monkeypatch)
    assert deferred._pending
    flushed = deferred.double().epoch_cov  # .double() flushes first, in float32
    assert flushed.dtype == torch.float64
    assert_covariances_close(flushed.float(), immediate.epoch_cov)


def test_loading_or_resetting_drops_the_pending_updates(monkeypatch):
    deferred, immediate = after_an_epoch(monkeypatch)
    saved = {k: v.clone() for k, v in immediate.state_dict().items()}
    deferred.update(*relu_features(30, 9, 7, seed=1, dtype=torch.float32))
    assert deferred._pending
    deferred.load_state_dict(saved)  # the pending plan belonged to the state replaced
    assert not deferred._pending
    assert_same_state(deferred, immediate)
    deferred.update(*relu_features(30, 9, 7, seed=2, dtype=torch.float32))
    deferred.reset()
    assert not deferred._pending and deferred.epoch_cov.eq(0).all()


def test_the_batch_cap_flushes(monkeypatch):
    deferred, immediate = after_an_epoch(monkeypatch)
    for step in range(2 * bin_stats.DEFERRED_BATCHES + 1):
        update_both(deferred, immediate, *relu_features(30, 9, 7, seed=step, dtype=torch.float32), monkeypatch)
        assert len(deferred._pending) == (step + 1) % bin_stats.DEFERRED_BATCHES
    assert_same_state(deferred, immediate)


def test_the_byte_cap_flushes(monkeypatch):
    deferred, _ = after_an_epoch(monkeypatch)
    z, b = relu_features(30, 9, 7, seed=0, dtype=torch.float32)
    plan_bytes = sum(t.numel() * t.element_size() for t in OPS.bin_stats_plan_(
        torch.zeros(7, dtype=torch.int64), torch.zeros(7, 9), z, b, None))
    monkeypatch.setattr(bin_stats, "DEFERRED_BYTES", 2 * plan_bytes)
    deferred.update(z, b)
    assert len(deferred._pending) == 1
    deferred.update(z, b)  # the second plan reaches the cap
    assert not deferred._pending


def test_the_epoch_plan_keeps_the_running_count_as_the_tensor_ops_did(monkeypatch):
    # BinStats.update's host path (bin_stats_epoch_plan_: the plan, the running count and the
    # bins with no finished epoch in one op) against its path elsewhere (bin_stats_update_ and
    # tensor ops), over epochs in which new bins appear (their first epoch reads the epoch so far)
    host, elsewhere = epoch_pair()
    flagged = [0, 0]  # steps without and with a bin in its first epoch
    for epoch in range(3):
        for step in range(4):
            # bins 0-2 from the first epoch; later epochs add two bins from their third step
            z, b = relu_features(19, 9, 3 + 2 * epoch if step >= 2 else 3, seed=10 * epoch + step, dtype=torch.float32)
            in_batch = torch.bincount(b, minlength=7) > 0
            revision, new_bins = host.revision, bool(((host.count == host.epoch_count) & in_batch).any())
            host.update(z, b)
            with monkeypatch.context() as m:
                m.setattr(bin_stats, "_on_host", lambda t: False)
                elsewhere.update(z, b)
            assert torch.equal(host.count, elsewhere.count)
            # the smoothed statistics' cache key moves exactly when a bin in its first epoch got samples
            assert host.revision == revision + new_bins
            flagged[new_bins] += 1
            assert_same_state(host, elsewhere)
        host.end_epoch()
        elsewhere.end_epoch()
        assert_same_state(host, elsewhere)
    assert flagged[0] > 0 and flagged[1] > 0


def test_epoch_plan_op_flags_bins_without_a_finished_epoch():
    z, b = relu_features(12, 5, 4, seed=0, dtype=torch.float64)
    count, epoch_count = torch.tensor([0, 3, 5, 2]), torch.tensor([0, 3, 1, 0])
    mean = torch.zeros(4, 5, dtype=torch.float64)
    added = torch.bincount(b, minlength=4)
    plan_count, plan_mean = epoch_count.clone(), mean.clone()
    want = OPS.bin_stats_plan_(plan_count, plan_mean, z, b, None)
    *plan, first, num_first = OPS.bin_stats_epoch_plan_(count, epoch_count, mean, z, b)
    assert all(torch.equal(x, y) for x, y in zip(plan, want))
    assert torch.equal(epoch_count, plan_count) and torch.equal(mean, plan_mean)
    assert torch.equal(count, torch.tensor([0, 3, 5, 2]) + added)
    # bin 0: nothing before; bin 1: only this epoch's samples so far; bins 2 and 3: a finished epoch
    assert torch.equal(first, (added > 0) & torch.tensor([True, True, False, False]))
    assert num_first.dtype == torch.int64 and int(num_first) == int(first.sum())
    torch.library.opcheck(OPS.bin_stats_epoch_plan_.default,
                          (torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), mean.clone(), z, b))
    with pytest.raises(ValueError, match=r"count must be contiguous of shape \[4\]"):
        OPS.bin_stats_epoch_plan_(torch.zeros(3, dtype=torch.int64), epoch_count, mean, z, b)
    with pytest.raises(TypeError, match="count must be int64"):
        OPS.bin_stats_epoch_plan_(torch.zeros(4), epoch_count, mean, z, b)
