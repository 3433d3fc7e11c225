"""SMOTER / SMOGN: the relevance function and the synthetic cases' geometry."""
import numpy as np
import pytest
import torch
from scipy.interpolate import CubicHermiteSpline

from irda_ext.baselines.smoter import box_plot_stats, relevance, relevance_control_points, smogn, smoter


def test_control_points_by_hand():
    y = np.r_[np.arange(1.0, 21.0), 100.0]
    # midpoint quartiles 6, 11, 16; IQR 10; upper fence 31 -> whisker 20; nothing below
    stats, xtrms = box_plot_stats(y)
    assert stats.tolist() == [1.0, 6.0, 11.0, 16.0, 20.0] and xtrms.tolist() == [100.0]
    assert relevance_control_points(y).tolist() == [[1.0, 0.0, 0.0], [11.0, 0.0, 0.0], [20.0, 1.0, 0.0]]
    phi = relevance(np.array([0.0, 5.0, 11.0, 15.5, 20.0, 100.0]), relevance_control_points(y))
    assert phi.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.0])


def test_relevance_is_the_hermite_interpolant():
    pts = np.array([[2.0, 1.0, 0.0], [5.0, 0.0, 0.0], [9.0, 1.0, 0.0]])
    grid = np.linspace(2.0, 9.0, 57)
    ref = CubicHermiteSpline(pts[:, 0], pts[:, 1], pts[:, 2])(grid)
    assert np.allclose(relevance(grid, pts), ref, atol=1e-12)
    assert np.all(np.diff(relevance(np.linspace(5, 9, 50), pts)) >= 0)  # monotone segment


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y_norm = 9 + 2 * torch.rand(60, generator=g, dtype=torch.float64)
    x_norm = torch.randn(60, 2, generator=g, dtype=torch.float64)
    y_rare = torch.tensor([40.0, 40.5, 41.0, 60.0], dtype=torch.float64)
    x_rare = torch.tensor([[5.0, 5.0], [5.1, 5.0], [5.0, 5.1], [50.0, 50.0]], dtype=torch.float64)
    return torch.cat([x_norm, x_rare]), torch.cat([y_norm, y_rare])


def _on_a_segment(xs, ys, X, Y, tol=1e-8):
    """Is (xs, ys) = (X_i + u(X_j - X_i), (1-u)Y_i + uY_j) for some pair and u in [0, 1]?"""
    for i in range(len(Y)):
        for j in range(len(Y)):
            d = X[j] - X[i]
            if i == j or np.allclose(d, 0):
                continue
            u = np.dot(xs - X[i], d) / np.dot(d, d)
            if -tol <= u <= 1 + tol and np.allclose(X[i] + u * d, xs, atol=1e-7):
                return abs(ys - ((1 - u) * Y[i] + u * Y[j])) < 1e-6 * max(1.0, abs(ys))
    return False


def _split(x, y, xs, ys):
    X, Y = x.numpy(), y.numpy()
    rows = {tuple(r) + (t,) for r, t in zip(X.tolist(), Y.tolist())}
    synth = [k for k, (r, t) in enumerate(zip(xs.numpy().tolist(), ys.numpy().tolist())) if tuple(r) + (t,) not in rows]
    return synth


def test_smoter_targets_lie_between_their_parents():
    x, y = _data()
    xs, ys = smoter(x, y, seed=1)
    phi = relevance(y.numpy(), relevance_control_points(y.numpy()))
    rare = phi >= 0.5
    synth = _split(x, y, xs, ys)
    assert len(synth) > 0
    X, Y = x.numpy()[rare], y.numpy()[rare]
    for k in synth:
        assert _on_a_segment(xs[k].numpy(), ys[k].item(), X, Y), f"synthetic case {k} is not an interpolation"


def test_balance_sizes():
    x, y = _data()
    phi = relevance(y.numpy(), relevance_control_points(y.numpy()))
    r = phi[np.argsort(y.numpy(), kind="stable")] >= 0.5
    n_bumps = 1 + int(np.sum(r[1:] != r[:-1]))
    target = round(len(y) / n_bumps)
    xs, ys = smoter(x, y)
    phi_out = relevance(ys.numpy(), relevance_control_points(y.numpy()))
    assert int((phi_out < 0.5).sum()) == target  # the normal bump is under-sampled
    assert int((phi_out >= 0.5).sum()) == target  # the rare bump is over-sampled
    assert len(ys) == xs.shape[0] == 2 * target


def test_smogn_adds_noise_for_unsafe_neighbours_only():
    x, y = _data()
    xs, ys = smogn(x, y, seed=3)
    phi = relevance(y.numpy(), relevance_control_points(y.numpy()))
    rare = phi >= 0.5
    X, Y = x.numpy()[rare], y.numpy()[rare]
    synth = _split(x, y, xs, ys)
    kinds = []
    for k in synth:
        xk, yk = xs[k].numpy(), ys[k].item()
        if _on_a_segment(xk, yk, X, Y):
            kinds.append("interpolation")
        else:
            # a Gaussian perturbation: near one rare seed (sd * pert * a few), target too
            near = np.argmin(np.linalg.norm(X - xk, axis=1))
            assert np.all(np.abs(xk - X[near]) <= 6 * 0.02 * X.std(0) + 1e-12)
            assert abs(yk - Y[near]) <= 6 * 0.02 * Y.std() + 1e-12
            kinds.append("noise")
    assert "noise" in kinds and "interpolation" in kinds
    # the far seed (x = (50, 50)) has no safe neighbour: everything near it is noise
    far = [k for k in synth if np.linalg.norm(xs[k].numpy() - np.array([50.0, 50.0])) < 1.0]
    assert far and all(not _on_a_segment(xs[k].numpy(), ys[k].item(), X, Y) for k in far)


def test_deterministic_and_dtype():
    x, y = _data()
    a, b = smogn(x.float(), y.float(), seed=5), smogn(x.float(), y.float(), seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].dtype == torch.float32


@pytest.mark.parametrize("x, y, kw, exc", [
    (torch.randn(10), torch.randn(10), {}, ValueError),
    (torch.randn(10, 2), torch.randn(9), {}, ValueError),
    (torch.randn(10, 2), torch.ones(10), {}, ValueError),  # no rare targets
    (torch.full((10, 2), float("nan")), torch.randn(10), {}, ValueError),
    (torch.randn(10, 2), torch.randn(10), {"k": 0}, ValueError),
    (torch.randn(10, 2), torch.randn(10), {"rel_thres": 0.0}, ValueError),
    (np.zeros((10, 2)), torch.randn(10), {}, TypeError),
    (torch.zeros(10, 2, dtype=torch.long), torch.randn(10), {}, TypeError),
])
def test_bad_input(x, y, kw, exc):
    with pytest.raises(exc):
        smoter(x, y, **kw)


# ----- SMOGN's safety distance (Branco et al. 2017; UBL's SMOGNRegress.exs) -------------------------
def test_safety_distance_by_hand():
    """maxD of each case: half the median of its distances to every case of the bump, its own
    zero distance included (UBL: ``summary(DM[i, ])[3] / 2``)."""
    from irda_ext.baselines.smoter import safety_distances

    # 1-D, odd size. From 0: {0, 1, 5, 6, 20} -> median 5; from 1: {1, 0, 4, 5, 19} -> 4;
    # from 5: {5, 4, 0, 1, 15} -> 4; from 6: {6, 5, 1, 0, 14} -> 5; from 20: {20, 19, 15, 14, 0} -> 15
    got = safety_distances(np.array([[0.0], [1.0], [5.0], [6.0], [20.0]]))
    assert got.tolist() == [2.5, 2.0, 2.0, 2.5, 7.5]
    # even size: the median averages the two middle distances. From 0: {0, 1, 3, 7} -> 2;
    # from 1: {1, 0, 2, 6} -> 1.5; from 3: {3, 2, 0, 4} -> 2.5; from 7: {7, 6, 4, 0} -> 5
    assert safety_distances(np.array([[0.0], [1.0], [3.0], [7.0]])).tolist() == [1.0, 0.75, 1.25, 2.5]
    # 2-D: (0, 0), (3, 4), (6, 8): every row's distances are {0, 5, 5} or {0, 5, 10} -> median 5
    assert safety_distances(np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])).tolist() == [2.5, 2.5, 2.5]
    # with k = 1 the nearest neighbour of 20 (6, at 14) is unsafe (14 >= 7.5), all others safe;
    # half the median of the k-NN distances alone (the old rule) would make no neighbour safe


def test_smogn_interpolates_when_the_bump_makes_neighbours_safe():
    """A rare bump of two clusters far apart (the top of the normal targets, spacing 0.005,
    and 40 extreme cases, spacing 0.1; the feature equals the target): each case's 5 nearest
    neighbours lie well within half the median distance to the whole bump, so SMOGN
    interpolates every synthetic case (half the median k-NN distance would make none safe:
    evenly spaced neighbours at 1, 1, 2, 2, 3 steps give 1 step, not below it)."""
    from irda_ext.baselines.smoter import safety_distances

    y = torch.cat([torch.linspace(9.0, 11.0, 401, dtype=torch.float64),
                   30.0 + 0.1 * torch.arange(40, dtype=torch.float64)])
    x = y[:, None].clone()
    phi = relevance(y.numpy(), relevance_control_points(y.numpy()))
    rare = phi >= 0.5
    X, Y = x.numpy()[rare], y.numpy()[rare]
    scaled = X / (x.max() - x.min()).item()
    knn_far = np.sort(np.abs(scaled - scaled.T), axis=1)[:, 5]  # the 5th neighbour's distance
    assert np.all(knn_far < safety_distances(scaled))  # every neighbour safe, by the definition
    xs, ys = smogn(x, y, seed=2)
    synth = _split(x, y, xs, ys)
    assert len(synth) == round(len(y) / 2) - int(rare.sum())  # 89 synthetic cases
    assert all(_on_a_segment(xs[k].numpy(), ys[k].item(), X, Y) for k in synth)
