"""SMOTER and SMOGN: resampling of tabular regression data.

Sources:
- SMOTER: Torgo, Ribeiro, Pfahringer, Branco, "SMOTE for Regression", EPIA 2013.
- SMOGN: Branco, Torgo, Ribeiro, "SMOGN: a Pre-processing Approach for Imbalanced
  Regression", LIDTA / PMLR 74, 2017.
- Relevance function: Ribeiro, "Utility-based Regression", PhD thesis 2011 (R packages
  ``uba``/``UBL``; the Python port ``smogn`` by Kunz).

**Relevance** ``φ(y) ∈ [0, 1]``: control points from the box plot of the training
targets (quartiles with midpoint interpolation, whiskers at ``coef·IQR``, coef 1.5):
``(median, 0, 0)``, plus ``(lower whisker, 1, 0)`` if there are targets below it (else
``(min y, 0, 0)``), plus ``(upper whisker, 1, 0)`` if there are targets above it (else
``(max y, 0, 0)``); each triple is ``(x, φ, φ')``. ``φ`` is the piecewise cubic Hermite
(PCHIP) interpolant through them, slopes made monotone by Fritsch–Carlson, constant
beyond the end points.

**Bumps**: the targets sorted and cut where ``φ`` crosses the threshold (0.5); bumps with
``φ ≥ 0.5`` are rare, the others normal. With the "balance" strategy every bump is
brought to ``round(n / #bumps)`` cases: normal bumps larger than that are randomly
under-sampled, rare bumps smaller than that are over-sampled with synthetic cases.

**Synthetic case** from a seed ``(x, y)`` of a rare bump and one of its ``k = 5`` nearest
neighbours ``(x_n, y_n)`` in the same bump (Euclidean distance on features scaled by
their training range)::

    SMOTER:  x' = x + u·(x_n - x),  u ~ U(0, 1);
             y' = (d2·y + d1·y_n) / (d1 + d2),  d1 = ‖x' - x‖, d2 = ‖x' - x_n‖   (y' between y and y_n)
    SMOGN:   the same when ‖x_n - x‖ < maxD ("safe"), maxD = ½·median of the distances from
             the seed to all cases of its rare bump (the seed itself included);
             otherwise Gaussian noise  x' = x + N(0, (p·sd_a)²) per feature a,
             y' = y + N(0, (p·sd_y)²),  p = min(pert, maxD) (pert = 0.02),  sd over the bump.

SMOGN follows Branco et al. 2017 (Algorithm 2) as its authors' R package UBL implements it
(``SMOGNRegress.exs``: ``DM`` the distances between all cases of the bump, ``maxDM[i]`` half
the median of row ``i``, a neighbour safe when ``DM[i, nn] < maxDM[i]``), and as the ``smogn``
package does (``over_sampling.py``: ``max_dist[i]``, half the median of ``dist_matrix[i]``).

Choices where the sources leave room: a rare bump of one case has no neighbour, so SMOTER
duplicates it and SMOGN uses the Gaussian noise; all features are numeric (categorical
columns should be one-hot encoded; the synthetic values are then convex combinations).
Unlike the ``smogn`` package, the target of a synthetic case uses the distances over all
features (the package keeps only the last feature's) and the equidistant case averages
the two targets. Deliberate differences from both sources: the distances (neighbours and
maxD) are Euclidean on the features scaled by their training range, without the target
(UBL's ``distances`` leaves the target out; the ``smogn`` package keeps it and does not
scale numeric features); the noise uses the population standard deviation over the bump (as the
``smogn`` package; UBL's R ``sd`` divides by ``n - 1``) and ``pert`` (UBL fixes 0.02).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

EXTREMES = ("both", "low", "high")


def box_plot_stats(y, coef: float = 1.5) -> Tuple[np.ndarray, np.ndarray]:
    """``([lower whisker, q1, median, q3, upper whisker], extremes)`` of ``y``."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if not coef > 0:
        raise ValueError(f"coef must be > 0, got {coef}")
    q1, med, q3 = (np.quantile(y, q, method="midpoint") for q in (0.25, 0.5, 0.75))
    iqr = q3 - q1
    lower_w = y[y >= q1 - coef * iqr].min()
    upper_w = y[y <= q3 + coef * iqr].max()
    stats = np.array([lower_w, q1, med, q3, upper_w])
    return stats, y[(y < lower_w) | (y > upper_w)]


def relevance_control_points(y, coef: float = 1.5, extremes: str = "both") -> np.ndarray:
    """The automatic ("extremes") control points ``[P, 3]`` of ``(x, φ, φ')``."""
    if extremes not in EXTREMES:
        raise ValueError(f"extremes must be one of {EXTREMES}, got {extremes!r}")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    stats, xtrms = box_plot_stats(y, coef)
    pts = []
    if extremes in ("both", "low") and (xtrms < stats[0]).any():
        pts.append((stats[0], 1.0, 0.0))
    else:
        pts.append((y.min(), 0.0, 0.0))
    if stats[2] != y.min():
        pts.append((stats[2], 0.0, 0.0))
    if extremes in ("both", "high") and (xtrms > stats[4]).any():
        pts.append((stats[4], 1.0, 0.0))
    elif stats[2] != y.max():
        pts.append((y.max(), 0.0, 0.0))
    return np.array(pts, dtype=np.float64)


def _fritsch_carlson(m: np.ndarray, delta: np.ndarray) -> np.ndarray:
    m = m.copy()
    for k in range(len(delta)):
        sk = delta[k]
        if sk == 0:
            m[k] = m[k + 1] = 0.0
            continue
        a, b = m[k] / sk, m[k + 1] / sk
        if m[k] != 0 and a < 0:
            m[k] = -m[k]
            a = m[k] / sk
        if m[k + 1] != 0 and b < 0:
            m[k + 1] = -m[k + 1]
            b = m[k + 1] / sk
        c1, c2 = 2 * a + b - 3, a + 2 * b - 3
        if c1 > 0 and c2 > 0 and a * (c1 + c2) < c1 * c1:
            tau = 3 * sk / np.sqrt(a * a + b * b)
            m[k], m[k + 1] = tau * a, tau * b
    return m


def relevance(y, ctrl_pts: np.ndarray) -> np.ndarray:
    """``φ(y)``: PCHIP through the control points ``[P, 3]``, constant outside them."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pts = np.asarray(ctrl_pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] < 1:
        raise ValueError(f"ctrl_pts must be [P, 3] rows of (x, phi, slope), got shape {pts.shape}")
    x, f = pts[:, 0], pts[:, 1]
    if np.any(np.diff(x) <= 0):
        raise ValueError("control point x values must strictly increase")
    if np.any((f < 0) | (f > 1)):
        raise ValueError("relevance values of the control points must lie in [0, 1]")
    if len(x) == 1:
        return np.full_like(y, f[0])
    h = np.diff(x)
    delta = np.diff(f) / h
    m = _fritsch_carlson(pts[:, 2], delta)
    i = np.clip(np.searchsorted(x, y, side="right") - 1, 0, len(x) - 2)
    s = np.clip(y, x[0], x[-1]) - x[i]
    c = (3 * delta[i] - 2 * m[i] - m[i + 1]) / h[i]
    d = (m[i] - 2 * delta[i] + m[i + 1]) / (h[i] * h[i])
    return f[i] + s * (m[i] + s * (c + s * d))


def _bumps(phi_sorted: np.ndarray, rel_thres: float):
    rare = phi_sorted >= rel_thres
    cuts = np.flatnonzero(rare[1:] != rare[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(phi_sorted)]])
    return [(int(s), int(e), bool(rare[s])) for s, e in zip(starts, ends)]


def _check_xy(x, y):
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch.Tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be tabular [N, F], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be [N] = [{x.shape[0]}], got shape {tuple(y.shape)}")
    if not x.is_floating_point() or not y.is_floating_point():
        raise TypeError("x and y must be floating-point tensors")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 training cases")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must not contain NaN or infinite values")


def _neighbours(points: np.ndarray, k: int):
    """The ``k`` nearest other points of every point: ``(index [m, k], distance [m, k])``."""
    from sklearn.neighbors import NearestNeighbors

    dist, ind = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    # drop each point itself (with duplicates it need not come first)
    not_self = ind != np.arange(len(points))[:, None]
    drop_last = not_self.all(axis=1)
    not_self[drop_last, -1] = False
    return ind[not_self].reshape(len(points), k), dist[not_self].reshape(len(points), k)


def safety_distances(points: np.ndarray) -> np.ndarray:
    """SMOGN's ``maxD`` of every case of a rare bump ``points [m, F]``: half the median of
    its distances to all ``m`` cases of the bump, itself included (Branco et al. 2017; UBL's
    ``maxDM``). A neighbour closer than ``maxD`` is safe to interpolate with."""
    from scipy.spatial.distance import cdist

    points = np.asarray(points, dtype=np.float64)
    return np.median(cdist(points, points), axis=1) / 2.0  # [m, m] distances, each row's median


def _resample(x, y, k, rel_thres, coef, extremes, seed, pert, noise: bool):
    _check_xy(x, y)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not (0 < rel_thres <= 1):
        raise ValueError(f"rel_thres must be in (0, 1], got {rel_thres}")
    if not (0 < pert <= 1):
        raise ValueError(f"pert must be in (0, 1], got {pert}")
    rng = np.random.default_rng(seed)
    X = x.detach().cpu().double().numpy()
    Y = y.detach().cpu().double().numpy()
    n = len(Y)
    phi = relevance(Y, relevance_control_points(Y, coef, extremes))
    order = np.argsort(Y, kind="stable")
    bumps = _bumps(phi[order], rel_thres)
    if all(r for _, _, r in bumps) or not any(r for _, _, r in bumps):
        raise ValueError("the relevance function marks every target as rare or none as rare; nothing to resample")
    target = round(n / len(bumps))
    feat_range = X.max(0) - X.min(0)
    feat_range[feat_range == 0] = 1.0
    Xs = X / feat_range
    keep, new_x, new_y = [], [], []
    for s, e, rare in bumps:
        idx = order[s:e]
        if not rare:
            keep.append(rng.choice(idx, size=target, replace=False) if len(idx) > target else idx)
            continue
        keep.append(idx)
        n_new = target - len(idx)
        if n_new <= 0:
            continue
        per_seed = np.full(len(idx), n_new // len(idx))
        per_seed[rng.choice(len(idx), size=n_new % len(idx), replace=False)] += 1
        kk = min(k, len(idx) - 1)
        if kk > 0:
            knn, knn_dist = _neighbours(Xs[idx], kk)
            safe_below = safety_distances(Xs[idx]) if noise else None
        sd_x, sd_y = X[idx].std(0), Y[idx].std()
        for j, count in enumerate(per_seed):
            seed_x, seed_y = X[idx[j]], Y[idx[j]]
            if kk > 0:
                knn_d = knn_dist[j]
                max_d = safe_below[j] if noise else None
            for _ in range(count):
                if kk == 0:
                    if noise:
                        t_pert = pert
                        new_x.append(seed_x + rng.normal(0.0, 1.0, size=seed_x.shape) * sd_x * t_pert)
                        new_y.append(seed_y + rng.normal() * sd_y * t_pert)
                    else:
                        new_x.append(seed_x.copy())
                        new_y.append(seed_y)
                    continue
                c = rng.integers(kk)
                nb = idx[knn[j, c]]
                if noise and not knn_d[c] < max_d:
                    t_pert = min(pert, max_d)
                    new_x.append(seed_x + rng.normal(0.0, 1.0, size=seed_x.shape) * sd_x * t_pert)
                    new_y.append(seed_y + rng.normal() * sd_y * t_pert)
                    continue
                u = rng.random()
                xn = seed_x + u * (X[nb] - seed_x)
                d1 = np.linalg.norm((xn - seed_x) / feat_range)
                d2 = np.linalg.norm((xn - X[nb]) / feat_range)
                yn = 0.5 * (seed_y + Y[nb]) if d1 + d2 == 0 else (d2 * seed_y + d1 * Y[nb]) / (d1 + d2)
                new_x.append(xn)
                new_y.append(yn)
    kept = np.concatenate(keep)
    out_x = np.concatenate([X[kept]] + ([np.stack(new_x)] if new_x else []), axis=0)
    out_y = np.concatenate([Y[kept]] + ([np.asarray(new_y)] if new_y else []))
    return (torch.as_tensor(out_x, dtype=x.dtype, device=x.device),
            torch.as_tensor(out_y, dtype=y.dtype, device=y.device))


def smoter(x: torch.Tensor, y: torch.Tensor, k: int = 5, rel_thres: float = 0.5, coef: float = 1.5,
           extremes: str = "both", seed: Optional[int] = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """SMOTER ("balance"): under-sample normal bumps, interpolate new rare cases.

    ``x`` ``[N, F]`` float, ``y`` ``[N]`` float -> resampled ``(x', y')``; the original
    rare cases come first within their bump, synthetic cases last.
    """
    return _resample(x, y, k, rel_thres, coef, extremes, seed, 0.02, noise=False)


def smogn(x: torch.Tensor, y: torch.Tensor, k: int = 5, pert: float = 0.02, rel_thres: float = 0.5,
          coef: float = 1.5, extremes: str = "both", seed: Optional[int] = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """SMOGN ("balance"): SMOTER interpolation for safe neighbours, Gaussian noise otherwise."""
    return _resample(x, y, k, rel_thres, coef, extremes, seed, pert, noise=True)
