"""RankSim: ranks, the blackbox rank gradient's sign, and the regulariser's zero."""
import math

import pytest
import torch

from irda_ext.baselines.ranksim import RankSim, blackbox_rank, rank_normalised, ranksim_loss


def test_rank_normalised_by_hand():
    r = rank_normalised(torch.tensor([[0.3, 0.1, 0.2], [5.0, 7.0, 6.0]]))
    assert torch.allclose(r, torch.tensor([[1 / 3, 1.0, 2 / 3], [1.0, 1 / 3, 2 / 3]]))


def test_blackbox_gradient_sign_points_towards_the_wanted_order():
    s = torch.tensor([[0.1, 0.2]], requires_grad=True)
    r = blackbox_rank(s, lambda_val=2.0)
    wanted = torch.tensor([[0.5, 1.0]])  # the first entry should be the larger one
    ((r - wanted) ** 2).mean().backward()
    # hand: g = (r - t) = [0.5, -0.5]; s + 2g = [1.1, -0.8]; -(r - r')/2 = [-0.25, 0.25]
    assert torch.allclose(s.grad, torch.tensor([[-0.25, 0.25]]), atol=1e-6)
    s2 = (s - 1.0 * s.grad).detach()  # one descent step swaps the order
    assert torch.equal(rank_normalised(s2), wanted)


def test_zero_when_feature_similarity_orders_like_labels():
    y = torch.tensor([0.0, 1.0, 3.0, 7.0, 15.0], dtype=torch.float64)  # no ties in |y_i - y_j|
    angles = y * (math.pi / 2) / 15  # cosine similarity decreases with |y_i - y_j|
    z = torch.stack([angles.cos(), angles.sin()], dim=1).requires_grad_()
    assert ranksim_loss(z, y).item() == 0.0
    scrambled = z.detach()[torch.tensor([3, 0, 4, 1, 2])]
    loss = ranksim_loss(scrambled.requires_grad_(), y)
    assert loss.item() > 0
    loss.backward()


def test_regulariser_by_hand_on_three_samples():
    y = torch.tensor([0.0, 1.0, 5.0])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])  # sample 0 looks like 2, not 1
    cos = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(z, dim=1).T
    total = 0.0
    for i in range(3):
        lab = [-abs(y[i] - y[j]).item() for j in range(3)]
        fea = cos[i].tolist()
        rk = lambda v: [(1 + sum(1 for w in v if w > x)) / 3 for x in v]
        total += sum((a - b) ** 2 for a, b in zip(rk(fea), rk(lab))) / 3
    assert ranksim_loss(z, y).item() == pytest.approx(total, abs=1e-6)
    assert RankSim(gamma=100.0)(z, y).item() == pytest.approx(100 * total, rel=1e-5)


def test_one_sample_per_target_value():
    z = torch.randn(6, 3, requires_grad=True)
    assert ranksim_loss(z, torch.full((6,), 2.0)).item() == 0.0  # one distinct value: nothing to rank
    g = torch.Generator().manual_seed(0)
    loss = ranksim_loss(z, torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]), generator=g)
    loss.backward()
    assert (z.grad.abs().sum(1) > 0).sum() <= 3  # only the kept subset receives gradient


@pytest.mark.parametrize("call, exc", [
    (lambda: ranksim_loss(torch.randn(4), torch.randn(4)), ValueError),
    (lambda: ranksim_loss(torch.randn(4, 2), torch.randn(3)), ValueError),
    (lambda: ranksim_loss(torch.randn(4, 2), torch.randn(4), lambda_val=0.0), ValueError),
    (lambda: ranksim_loss([[0.0]], torch.randn(1)), TypeError),
    (lambda: RankSim(gamma=-1.0), ValueError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()
