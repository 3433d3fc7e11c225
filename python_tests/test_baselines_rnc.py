"""Rank-N-Contrast against its definition, written as explicit loops."""
import math

import pytest
import torch

from irda_ext.baselines.rnc import rnc_loss


def _rnc_by_hand(v, y, tau):
    m = len(v)
    dist = lambda a, b: math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))
    s = [[-dist(v[i], v[j]) / tau for j in range(m)] for i in range(m)]
    total = 0.0
    for i in range(m):
        for j in range(m):
            if j == i:
                continue
            negs = [k for k in range(m) if k != i and abs(y[i] - y[k]) >= abs(y[i] - y[j])]
            total += -(s[i][j] - math.log(sum(math.exp(s[i][k]) for k in negs)))
    return total / (m * (m - 1))


def test_single_view_by_hand():
    v = [[0.0, 0.0], [1.0, 0.5], [3.0, -1.0], [0.2, 2.0]]
    y = [0.0, 1.0, 3.0, 1.5]
    out = rnc_loss(torch.tensor(v, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), temperature=2.0)
    assert out.item() == pytest.approx(_rnc_by_hand(v, y, 2.0), rel=1e-12)


def test_tied_labels_by_hand():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = [0.0, 1.0, 1.0, 2.0, 0.0, 1.0]
    out = rnc_loss(feats, torch.tensor(y, dtype=torch.float64), temperature=2.0)
    assert out.item() == pytest.approx(_rnc_by_hand(feats.tolist(), y, 2.0), rel=1e-12)


def test_two_views_by_hand():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0.3, 1.1, 2.0], dtype=torch.float64)
    v = [feats[i, 0].tolist() for i in range(3)] + [feats[i, 1].tolist() for i in range(3)]
    out = rnc_loss(feats, y.view(-1, 1), temperature=0.5)
    assert out.item() == pytest.approx(_rnc_by_hand(v, y.tolist() * 2, 0.5), rel=1e-10)


def test_ordered_embedding_beats_shuffled():
    y = torch.linspace(0, 1, 16, dtype=torch.float64)
    ordered = y.view(-1, 1) * 10
    shuffled = ordered[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    assert rnc_loss(ordered, y) < rnc_loss(shuffled, y)


def test_gradient_flows():
    z = torch.randn(5, 3, requires_grad=True)
    rnc_loss(z, torch.rand(5)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("call, exc", [
    (lambda: rnc_loss(torch.randn(2, 3), torch.rand(2)), ValueError),
    (lambda: rnc_loss(torch.randn(4, 3), torch.rand(5)), ValueError),
    (lambda: rnc_loss(torch.randn(4), torch.rand(4)), ValueError),
    (lambda: rnc_loss(torch.randn(4, 3), torch.rand(4), temperature=0.0), ValueError),
    (lambda: rnc_loss(torch.randn(4, 3), [0.0] * 4), TypeError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()


def test_identical_views_keep_finite_gradients():
    # two views without augmentation: zero distances off the diagonal
    v = torch.randn(6, 1, 4, dtype=torch.float64).repeat(1, 2, 1).requires_grad_()
    rnc_loss(v, torch.rand(6, dtype=torch.float64)).backward()
    assert torch.isfinite(v.grad).all()
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: rnc_loss(a, torch.tensor([0.0, 1.0, 1.0, 3.0, 2.0], dtype=torch.float64)), (w,))
