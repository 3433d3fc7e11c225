"""The epoch-end k-means (irda_ext.clusters.kmeans, cluster_shares) and the cache of the
W-FDS-smoothed statistics that IRDALoss keeps between statistics changes."""
import math

import pytest
import torch

from irda_ext import Bins, IRDALoss
from irda_ext.clusters import cluster_shares, kmeans
from irda_ext.isotropic import isotropic_adjustment
from irda_ext.wfds import restrict_to_bins, wfds_smooth


def blobs(n_per, centres, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(centres, dtype=torch.float64)
    x = torch.cat([c + scale * torch.randn(n_per, centres.shape[1], generator=g, dtype=torch.float64)
                   for c in centres])
    truth = torch.arange(len(centres)).repeat_interleave(n_per)
    return x, truth


def same_partition(a, b):
    """Two labelings equal up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_finds_separated_clusters_and_their_means():
    x, truth = blobs(200, [[0, 0, 0], [6, 0, 0], [0, 6, 0]])
    labels, centres = kmeans(x, 3)
    assert same_partition(labels, truth)
    for k in range(3):
        torch.testing.assert_close(centres[k], x[labels == k].mean(0))


def test_kmeans_is_a_lloyd_fixed_point_on_overlapping_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64)
    labels, centres = kmeans(x, 4)
    # every row is closest to its own centre, and every centre is its rows' mean (or within tolerance)
    d = torch.cdist(x, centres)
    assert torch.equal(d.argmin(1), labels)
    for k in range(4):
        assert torch.allclose(centres[k], x[labels == k].mean(0), atol=1e-2)


def test_kmeans_is_deterministic_and_steady_under_one_more_row():
    """Two ranks against one process saw one sample more and features moved in the 5th digit:
    k-means++ seeding then found other clusters; the PCA-part start does not."""
    x, _ = blobs(300, [[0, 0], [2.5, 0], [0, 2.5]], scale=0.8, seed=3)
    first, _ = kmeans(x, 3)
    again, _ = kmeans(x.clone(), 3)
    assert torch.equal(first, again)
    g = torch.Generator().manual_seed(4)
    moved = torch.cat([x * (1 + 1e-6 * torch.randn(x.shape, generator=g, dtype=torch.float64)), x[:1] + 0.01])
    other, _ = kmeans(moved, 3)
    assert same_partition(other[:-1], first)


def test_kmeans_warm_start_keeps_the_fixed_point():
    x, _ = blobs(150, [[0, 0], [5, 0], [0, 5]], scale=1.0, seed=5)
    labels, centres = kmeans(x, 3)
    warm_labels, warm_centres = kmeans(x, 3, init=centres)
    assert torch.equal(warm_labels, labels)
    torch.testing.assert_close(warm_centres, centres)


def test_kmeans_edge_cases():
    same = torch.ones(10, 4, dtype=torch.float64)  # every row equal: no direction to split along
    labels, centres = kmeans(same, 3)
    assert labels.shape == (10,) and torch.isfinite(centres).all()
    one_dim = torch.arange(9, dtype=torch.float64)[:, None]
    labels, centres = kmeans(one_dim, 3)
    assert same_partition(labels, torch.arange(3).repeat_interleave(3))


def test_cluster_shares_columns_and_warm_start_out_parameter():
    x, truth = blobs(100, [[0, 0], [8, 0], [0, 8]])
    bins = truth * 2  # bins 0, 2, 4 hold the clusters; 1, 3 and 5 are empty
    centres = torch.full((3, 2), math.nan, dtype=torch.float64)
    eta = cluster_shares(x.float(), bins, 3, 6, centres=centres)
    torch.testing.assert_close(eta.sum(0), torch.ones(6, dtype=torch.float64))
    for b in (0, 2, 4):
        assert eta[:, b].max() == 1.0  # a pure bin
    torch.testing.assert_close(eta[:, 1], torch.full((3,), 1 / 3, dtype=torch.float64))  # overall shares
    assert torch.isfinite(centres).all()
    again = cluster_shares(x.float(), bins, 3, 6, centres=centres)
    torch.testing.assert_close(again, eta)


def _fresh_smoothing(criterion):
    stats = criterion.stats
    has = stats.count > 0
    weights = restrict_to_bins(criterion.smoothing, has, criterion.bandwidth, stats.mean.dtype)
    mean_s, cov_s = wfds_smooth(weights, stats.mean, stats.cov, criterion.bandwidth)
    lam, v = isotropic_adjustment(cov_s, valid=has)
    return mean_s, cov_s, lam, v


@pytest.mark.parametrize("estimator", ["epoch", "batch", "cumulative"])
def test_smoothed_statistics_are_cached_until_the_statistics_change(estimator):
    g = torch.Generator().manual_seed(0)
    B, D = 12, 5
    criterion = IRDALoss(Bins(0, B, 1), D, 2, stats=estimator)
    head = torch.nn.Linear(D, 1)
    for epoch in range(3):
        for step in range(4):
            y = torch.rand(32, generator=g) * (B - 4) + 2 * (epoch > 0)  # new bins appear after epoch 0
            criterion(torch.randn(32, D, generator=g), y, head).backward()
            got = criterion.smoothed_statistics()
            for a, b in zip(got, _fresh_smoothing(criterion)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert criterion.smoothed_statistics()[1] is got[1]  # nothing changed: the same tensors
        revision = criterion.stats.revision
        criterion.end_epoch()
        assert criterion.stats.revision > revision or estimator != "epoch"
        for a, b in zip(criterion.smoothed_statistics(), _fresh_smoothing(criterion)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["exact", "paper"])
@pytest.mark.parametrize("isotropic", ["auto", 0.3])
def test_head_terms_are_the_smoothed_statistics_and_follow_them(mode, isotropic):
    """The fused step's per-bin terms (wfds_smooth_upper, isotropic_from_moments) are those of
    smoothed_statistics: the triangles bit for bit, keep and iso to rounding (sums of squares
    summed in another order), and they are rebuilt when the statistics change."""
    from irda_ext.loss import upper_triangles
    g = torch.Generator().manual_seed(3)
    B, D = 10, 6
    criterion = IRDALoss(Bins(0, B, 1), D, 2, mode=mode, isotropic=isotropic, stats_dtype=torch.float64)
    head = torch.nn.Linear(D, 1).double()
    for epoch in range(3):
        for step in range(3):
            y = torch.rand(32, generator=g, dtype=torch.float64) * (B - 3) + 1.5 * (epoch > 0)
            criterion(torch.randn(32, D, generator=g, dtype=torch.float64), y, head).backward()
            offset, cov_upper, keep, iso = criterion.head_terms()
            mean_s, cov_s, lam, v = criterion.smoothed_statistics()
            want_offset = mean_s - criterion.stats.mean if mode == "exact" else mean_s
            assert torch.equal(offset, want_offset) and torch.equal(cov_upper, upper_triangles(cov_s))
            torch.testing.assert_close(keep, 1 - v, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(iso, v * lam, rtol=1e-12, atol=1e-14)
            assert criterion.head_terms()[1] is cov_upper  # nothing changed: the same tensors
        criterion.end_epoch()


def test_epoch_end_computes_the_next_epochs_head_terms_once():
    """Where the fused step ran, end_epoch leaves the new statistics' head terms in the cache (the
    next epoch's first step reads them instead of computing them): the same bits as computing them
    afresh, and the first step does not compute them again. Without a fused step (no cache yet:
    Meta-IRDA's steps) the epoch end computes nothing."""
    g = torch.Generator().manual_seed(5)
    B, D = 9, 5
    criterion = IRDALoss(Bins(0, B, 1), D, 2)
    head = torch.nn.Linear(D, 1)

    def step():
        y = torch.rand(40, generator=g, dtype=torch.float64) * B
        criterion(torch.randn(40, D, generator=g), y, head).backward()

    criterion.end_epoch()
    assert criterion._head_terms is None  # no fused step yet: nothing computed
    for epoch in range(3):
        step()
        criterion.end_epoch()
        kept = criterion._head_terms
        assert kept is not None and kept[0][0] == criterion._statistics_key()
        criterion._head_terms = None
        for a, b in zip(kept[1], criterion.head_terms()):
            assert torch.equal(a, b)
        criterion._head_terms = kept
        step()  # the bins it sees all had data: the statistics are those of the epoch end
        assert criterion._head_terms is kept


def test_smoothed_statistics_follow_a_loaded_state_and_a_direct_write():
    B, D = 8, 3
    a, b = IRDALoss(Bins(0, B, 1), D, 2), IRDALoss(Bins(0, B, 1), D, 2)
    g = torch.Generator().manual_seed(1)
    for criterion in (a, b):
        criterion.stats.update(torch.randn(40, D, generator=g), torch.randint(0, B, (40,), generator=g))
        criterion.end_epoch()
        criterion.smoothed_statistics()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.smoothed_statistics()[0], a.smoothed_statistics()[0], rtol=0, atol=0)
    a.stats.cov.mul_(2.0)  # a write through torch bumps the buffer's version
    torch.testing.assert_close(a.smoothed_statistics()[1], _fresh_smoothing(a)[1], rtol=0, atol=0)


def test_a_state_without_kmeans_centres_still_loads():
    criterion = IRDALoss(Bins(0, 6, 1), 4, 3)
    state = criterion.state_dict()
    del state["kmeans_centres"]
    fresh = IRDALoss(Bins(0, 6, 1), 4, 3)
    fresh.load_state_dict(state)
    assert torch.isnan(fresh.kmeans_centres).all()


def test_reservoir_fast_path_writes_what_the_tensor_path_writes(monkeypatch):
    """On the CPU one op (reservoir_add_) fills the reservoir; the rows, the bins and the random
    stream afterwards are those of the tensor-only path (the one a compiled step or a GPU
    takes), below capacity, across it and above it, where two rows of a batch may draw one slot,
    and with float64 rows into a float32 reservoir."""
    from irda_ext import clusters

    def fill(force_tensor_path, dtype):
        if force_tensor_path:
            monkeypatch.setattr(clusters, "_on_host", lambda t: False)
        torch.manual_seed(7)
        reservoir = clusters.FeatureReservoir(50, 3)
        g = torch.Generator().manual_seed(0)
        for n in (20, 20, 20, 15, 60, 0):  # the third batch crosses the capacity, the others draw slots
            reservoir.add(torch.randn(n, 3, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g))
        monkeypatch.undo()
        return reservoir.features.clone(), reservoir.bins.clone(), int(reservoir.seen), torch.rand(1)

    for dtype in (torch.float32, torch.float64):
        fast, tensor_only = fill(False, dtype), fill(True, dtype)
        assert fast[2] == 135
        for a, b in zip(fast, tensor_only):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_reservoir_op_checks_and_opcheck():
    from irda_ext._ops import ops
    features, bins, seen = torch.zeros(5, 3), torch.zeros(5, dtype=torch.int64), torch.zeros((), dtype=torch.int64)
    z, b = torch.randn(6, 3), torch.arange(6)
    torch.library.opcheck(torch.ops.irda_ext.reservoir_add_.default, (features, bins, seen, z, b))
    with pytest.raises(ValueError, match=r"z must have shape \[n, 3\], got \[6, 2\]"):
        ops.reservoir_add_(features, bins, seen, z[:, :2], b)
    with pytest.raises(ValueError, match=r"bin_index must have shape \[6\]"):
        ops.reservoir_add_(features, bins, seen, z, b[:5])
    with pytest.raises(TypeError, match="bin_index must be an integer tensor"):
        ops.reservoir_add_(features, bins, seen, z, b.double())
    with pytest.raises(TypeError, match="bins must be int64"):
        ops.reservoir_add_(features, bins.int(), seen, z, b)


def _canonical_order_in_torch(features, bins):
    """canonical_order written with torch ops: by bin, then by the float64 key
    sum_d x[i, d] (1 + d / (D - 1)), then by position (two stable argsorts)."""
    D = features.shape[1]
    w = torch.linspace(1.0, 2.0, D, dtype=torch.float64) if D > 1 else torch.ones(D, dtype=torch.float64)
    key = features.double() @ w
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(bins[order], stable=True)]
    return features[order], bins[order]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,D", [(0, 3), (1, 4), (97, 1), (500, 97), (300, 0)])
@pytest.mark.parametrize("spread", ["narrow", "wide"])
def test_canonical_order_sorts_by_bin_key_and_position_whatever_the_arrival(dtype, N, D, spread):
    """Bins of a narrow range (the op buckets them by bin) and bins far apart, to int64's ends
    (one sort of all the rows)."""
    from irda_ext.distributed import canonical_order
    g = torch.Generator().manual_seed(N + D)
    x = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    if N > 10:
        x[5] = x[3]  # a tie in bin and key: position decides
    bins = torch.randint(0, 7, (N,), generator=g)
    if spread == "wide":
        bins = torch.tensor([-2**63, -5, 0, 3, 2**40, 2**62, 2**63 - 1])[bins]
    if N > 10:
        bins[5] = bins[3]
    got_x, got_b = canonical_order(x, bins)
    want_x, want_b = _canonical_order_in_torch(x, bins)
    assert torch.equal(got_b, want_b) and torch.equal(got_x, want_x)
    perm = torch.randperm(N, generator=g)
    again = canonical_order(x[perm], bins[perm])
    assert torch.equal(again[0], got_x) and torch.equal(again[1], got_b)
    torch.library.opcheck(torch.ops.irda_ext.canonical_order.default, (x, bins))


def test_canonical_order_bad_input():
    from irda_ext.distributed import canonical_order
    x, bins = torch.randn(6, 3), torch.zeros(6, dtype=torch.int64)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="row 2 of features holds NaN or infinite values"):
        canonical_order(bad, bins)
    with pytest.raises(ValueError, match=r"bins must have shape \[6\]"):
        canonical_order(x, bins[:5])
    with pytest.raises(TypeError, match="bins must be int64"):
        canonical_order(x, bins.int())
    with pytest.raises(TypeError, match="features must be float32 or float64"):
        canonical_order(x.half(), bins)
