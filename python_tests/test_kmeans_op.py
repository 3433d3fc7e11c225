"""The ``kmeans`` op (csrc/cpu/kmeans.cpp: Lloyd with Hamerly's bounds) against Lloyd written
directly (irda_ext.reference.kmeans_lloyd), in float64."""
import pytest
import torch

from irda_ext import reference
from irda_ext._ops import ops


def sklearn_tolerance(x):
    """scikit-learn's KMeans stopping threshold for tol = 1e-4: 1e-4 of the mean of the
    features' (population) variances."""
    return 1e-4 * float(x.double().var(0, unbiased=False).mean()) if x.shape[0] else 0.0


def case(n, d, k, seed, grid=False, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    if grid:  # many exact ties between centres
        x = torch.round(x)
    init = x[torch.randint(0, n, (k,), generator=g)] + 0.01 * torch.randn(k, d, generator=g, dtype=torch.float64)
    return x, init


def assert_lloyd(x, init, max_iter=100, tol=None):
    """The op against Lloyd's iterates; ``tol=None``: scikit-learn's tolerance, which the op
    computes itself (relative=True) and the reference is given."""
    want_labels, want_centres = reference.kmeans_lloyd(x, init, max_iter, sklearn_tolerance(x) if tol is None else tol)
    labels, centres = ops.kmeans(x, init, max_iter, 1e-4, True) if tol is None else ops.kmeans(x, init, max_iter, tol)
    assert labels.dtype == torch.int64 and centres.dtype == torch.float64
    assert torch.equal(labels, want_labels)
    torch.testing.assert_close(centres, want_centres, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (1, 3, 2), (97, 1, 3), (97, 5, 1), (200, 13, 4), (500, 64, 5),
                                   (300, 97, 8)])
@pytest.mark.parametrize("grid", [False, True])
def test_op_is_lloyd(n, d, k, grid):
    for seed in range(3):
        x, init = case(n, d, k, seed, grid=grid)
        assert_lloyd(x, init)
        assert_lloyd(x, init, tol=0.0)  # to the fixed point


def test_op_is_lloyd_on_overlapping_clusters_many_iterations():
    # one Gaussian cut into 6 clusters: many iterations, many points near boundaries (the
    # bounds' slow path)
    x, init = case(2000, 16, 6, seed=7, scale=1.0)
    assert_lloyd(x, init, max_iter=300, tol=0.0)


@pytest.mark.parametrize("max_iter", [0, 1, 2, 5])
def test_op_stops_after_max_iter(max_iter):
    x, init = case(400, 8, 5, seed=1, scale=1.0)
    assert_lloyd(x, init, max_iter=max_iter, tol=0.0)


@pytest.mark.parametrize("d", [1, 7, 8, 97])
def test_float32_rows_are_read_as_their_float64_values(d):
    x, init = case(300, d, 4, seed=5, scale=1.0)
    x32 = x.float()
    labels, centres = ops.kmeans(x32, init, 100, 0.0)
    want_labels, want_centres = ops.kmeans(x32.double(), init, 100, 0.0)
    assert torch.equal(labels, want_labels) and torch.equal(centres, want_centres)
    assert_lloyd(x32, init, tol=0.0)


def test_empty_cluster_keeps_its_centre():
    x, _ = case(50, 2, 2, seed=0)
    init = torch.tensor([[0.0, 0.0], [1e3, 1e3]], dtype=torch.float64)
    labels, centres = ops.kmeans(x, init, 100, 0.0)
    assert (labels == 0).all()
    assert torch.equal(centres[1], init[1])
    assert_lloyd(x, init)


def test_large_offset_features():
    # distances from ||x||^2 + ||c||^2 - 2 x.c lose digits far from the origin: the bounds'
    # margin must keep the labels Lloyd's
    x, init = case(300, 8, 4, seed=3, scale=1.0)
    assert_lloyd(x + 1e4, init + 1e4)


def test_opcheck():
    x, init = case(40, 3, 3, seed=0)
    torch.library.opcheck(torch.ops.irda_ext.kmeans.default, (x, init, 20, 1e-6))


@pytest.mark.parametrize("bad,match,exc", [
    (lambda x, i: (x.half(), i), "x must be float32 or float64", TypeError),
    (lambda x, i: (x, i.float()), "init must be float64", TypeError),
    (lambda x, i: (x[:, 0], i), r"x must have shape \[N, D\]", ValueError),
    (lambda x, i: (x, i[:, :2]), r"init must have shape \[K, 3\]", ValueError),
    (lambda x, i: (x, i[:0]), "K >= 1", ValueError),
    (lambda x, i: (torch.where(torch.arange(x.shape[0])[:, None] == 5, float("nan"), x), i), "NaN or infinite",
     ValueError),
    (lambda x, i: (torch.where(torch.arange(x.shape[0])[:, None] == 5, float("inf"), x), i), "NaN or infinite",
     ValueError),
])
def test_bad_input_raises(bad, match, exc):
    x, init = case(20, 3, 2, seed=0)
    x, init = bad(x, init)
    with pytest.raises(exc, match=match):
        ops.kmeans(x, init, 10, 0.0)


def test_huge_finite_features_are_not_called_infinite():
    # norms overflow past 1e154 although every value is finite: the exact check decides
    x = torch.tensor([[1e200, 0.0], [-1e200, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels, _ = ops.kmeans(x, x[:2].clone(), 5, 0.0)
    assert labels.shape == (3,)


def test_bad_iteration_arguments_raise():
    x, init = case(20, 3, 2, seed=0)
    with pytest.raises(ValueError, match="max_iter must be >= 0"):
        ops.kmeans(x, init, -1, 0.0)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        ops.kmeans(x, init, 10, -1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relative_tolerance_is_sklearns(dtype):
    """relative=True stops where the absolute scikit-learn threshold stops, in both dtypes (the
    threshold decides only at a step whose shift lies within rounding of it: none here)."""
    for seed in range(4):
        x, init = case(600, 9, 4, seed, scale=1.0)
        x = x.to(dtype)
        for max_iter in (3, 100):
            got = ops.kmeans(x, init, max_iter, 1e-4, True)
            want = ops.kmeans(x, init, max_iter, sklearn_tolerance(x))
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    empty = torch.zeros(0, 3, dtype=torch.float64)
    labels, centres = ops.kmeans(empty, torch.zeros(2, 3, dtype=torch.float64), 10, 1e-4, True)
    assert labels.shape == (0,) and torch.equal(centres, torch.zeros(2, 3, dtype=torch.float64))


def test_threads_do_not_change_the_result():
    x, init = case(3000, 32, 5, seed=2, scale=1.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.kmeans(x, init, 100, 0.0)
        torch.set_num_threads(2)
        two = ops.kmeans(x, init, 100, 0.0)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
