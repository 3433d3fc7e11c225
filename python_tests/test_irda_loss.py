"""IRDALoss, the module: a training loop, epoch-end estimates, checkpoints, compile."""
import copy

import pytest
import torch
from torch import nn

import irda_ext
from irda_ext import Bins, IRDALoss
from irda_ext import reference as ref


def make_problem(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.distributions.Exponential(0.3).sample((n,)).clamp(max=19.9)
    x = torch.stack([y, y**0.5], 1) + 0.3 * torch.randn(n, 2, generator=g)
    return x, y


@pytest.mark.parametrize("mode", ["exact", "paper"])
@pytest.mark.parametrize("K", [1, 3])
def test_training_loop_learns_and_updates_estimates(mode, K):
    torch.manual_seed(0)
    x, y = make_problem()
    bins = Bins(0, 20, 1)
    backbone, head = nn.Sequential(nn.Linear(2, 16), nn.ReLU()), nn.Linear(16, 1)
    crit = IRDALoss(bins, 16, K, mode=mode, ramp_epochs=2, kmeans_samples=100)
    crit.fit_prior(y)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters(), *crit.parameters()], lr=1e-2)
    first = None
    for epoch in range(4):
        for i in range(0, len(y), 64):
            loss = crit(backbone(x[i:i + 64]), y[i:i + 64], head)
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
        crit.end_epoch()
    mae = (head(backbone(x)).squeeze(1) - y).abs().mean()
    assert mae < 2.0, mae
    assert crit.epochs_done == 4 and crit.strength() == (0.5, 0.75)
    torch.testing.assert_close(crit.confusion.sum(1), torch.ones(20, dtype=torch.float64))
    assert not torch.equal(crit.confusion, torch.eye(20, dtype=torch.float64))
    torch.testing.assert_close(crit.eta.sum(0), torch.ones(20, dtype=torch.float64))
    assert crit.noise.log_sigma.grad is not None
    # the running statistics count every feature seen (per epoch, momentum 0.9)
    assert crit.stats.count.sum() == 4 * len(y) and crit.stats.estimator == "epoch"


def test_statistics_estimator():
    bins = Bins(0, 10, 1)
    assert IRDALoss(bins, 3, 1).stats.estimator == "epoch" and IRDALoss(bins, 3, 1).stats.momentum == 0.9
    assert IRDALoss(bins, 3, 1, momentum=None).stats.estimator == "cumulative"  # the spelling before `stats`
    assert IRDALoss(bins, 3, 1, stats="cumulative").stats.momentum is None  # the momentum is ignored
    assert IRDALoss(bins, 3, 1, momentum=0.8, stats="batch").stats.momentum == 0.8
    assert "stats='batch'" in IRDALoss(bins, 3, 1, stats="batch").extra_repr()
    with pytest.raises(ValueError, match="stats must be one of"):
        IRDALoss(bins, 3, 1, stats="step")
    with pytest.raises(ValueError, match="needs a momentum"):
        IRDALoss(bins, 3, 1, momentum=None, stats="epoch")


def test_end_epoch_closes_the_epoch_statistics():
    """The loss reads the statistics of the epochs before (the first epoch: its own so far)
    and its end_epoch folds the epoch in: the reference's per-epoch statistics, read by the
    augmentation (the loss equals one computed from them)."""
    torch.manual_seed(4)
    bins = Bins(0, 10, 1)
    head = nn.Linear(3, 1).double()
    crit = IRDALoss(bins, 3, 1, stats_dtype=torch.float64)
    epochs = []
    for epoch in range(3):
        y = torch.rand(40, dtype=torch.float64) * 10
        z = torch.randn(40, 3, dtype=torch.float64) + y[:, None]
        crit.fit_prior(y)
        for i in range(0, 40, 16):
            crit(z[i:i + 16], y[i:i + 16], head)
        if epoch:  # mid-epoch the loss reads the finished epochs' statistics
            count, mean, cov = ref.epoch_statistics(epochs, 10, 0.9)
            old = count > 0
            torch.testing.assert_close(crit.stats.mean[old], mean[old], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(crit.stats.cov[old], cov[old], rtol=1e-12, atol=1e-12)
        crit.end_epoch()
        epochs.append((z, bins.index(y)))
        count, mean, cov = ref.epoch_statistics(epochs, 10, 0.9)
        assert torch.equal(crit.stats.count, count)
        torch.testing.assert_close(crit.stats.mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(crit.stats.cov, cov, rtol=1e-12, atol=1e-12)
    assert crit.stats.epoch_count.eq(0).all()
    # the loss reads them: the same loss from a cumulative criterion holding these statistics
    other = IRDALoss(bins, 3, 1, stats="cumulative", stats_dtype=torch.float64)
    state = {k: v for k, v in crit.state_dict().items() if not k.startswith(("stats.epoch_", "stats.has_cov"))}
    other.load_state_dict(state)
    z, y = torch.randn(16, 3, dtype=torch.float64), torch.rand(16, dtype=torch.float64) * 10
    torch.testing.assert_close(crit(z, y, head, update=False), other(z, y, head, update=False))


def test_loss_equals_functional_composition():
    """forward = 2 sigma^2 * irda_surrogate(pred, shift, var) with shift/var from the smoothed statistics."""
    torch.manual_seed(1)
    bins = Bins(0, 10, 1)
    head = nn.Linear(4, 1).double()
    crit = IRDALoss(bins, 4, 2, stats_dtype=torch.float64, noise_sigma=1.5)
    y = torch.rand(30, dtype=torch.float64) * 10
    crit.fit_prior(y)
    z = torch.randn(30, 4, dtype=torch.float64)
    crit(z, y, head)
    crit.end_epoch()
    z2 = torch.randn(30, 4, dtype=torch.float64)
    loss = crit(z2, y, head)
    # the same by hand, from the reference kernels
    stats = crit.stats
    has = stats.count > 0
    S = irda_ext.wfds.restrict_to_bins(crit.smoothing, has)
    mean_s, cov_s = ref.wfds_smooth(S, stats.mean, stats.cov)
    lam, v = ref.isotropic_adjustment(cov_s, has)
    w = head.weight.reshape(-1)
    b = bins.index(y)
    shift = ((mean_s - stats.mean) @ w)[b]
    var = ((1 - v) * torch.einsum("d,bde,e->b", w, cov_s, w) + v * lam * (w @ w))[b]
    want = ref.irda_surrogate(head(z2).reshape(-1), y, b, crit.centers, crit.eta, crit.log_prior, shift, var,
                              0.5, 0.75, crit.noise.var) * 2 * 1.5**2
    torch.testing.assert_close(loss, want)


def test_state_dict_round_trip_restores_everything():
    torch.manual_seed(2)
    bins = Bins(0, 10, 1)
    head = nn.Linear(3, 1)
    crit = IRDALoss(bins, 3, 2, ramp_epochs=3)
    y = torch.rand(40) * 10
    crit.fit_prior(y)
    for _ in range(2):
        crit(torch.randn(40, 3), y, head).backward()
        crit.end_epoch()
    other = IRDALoss(bins, 3, 2, ramp_epochs=3)
    other.load_state_dict(copy.deepcopy(crit.state_dict()))
    for name, t in crit.state_dict().items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(other.state_dict()[name], t), name
    assert other.epochs_done == 2 and other.strength() == crit.strength()
    for key in ("stats.cov", "confusion", "eta", "log_prior", "noise.log_sigma", "smoothing"):
        assert key in crit.state_dict()
    z = torch.randn(40, 3)
    torch.testing.assert_close(other(z, y, head), crit(z, y, head))


def test_compile_fullgraph():
    torch.manual_seed(3)
    bins = Bins(0, 10, 1)
    backbone, head = nn.Linear(5, 8), nn.Linear(8, 1)
    crit = IRDALoss(bins, 8, 2, kmeans_samples=50)
    y = torch.rand(32) * 10
    crit.fit_prior(y)
    x = torch.randn(32, 5)

    def step(x, y):
        return crit(backbone(x), y, head)

    eager = IRDALoss(bins, 8, 2, kmeans_samples=50)
    eager.load_state_dict(crit.state_dict())
    compiled = torch.compile(step, fullgraph=True)  # the default backend, inductor
    got = compiled(x, y)
    got.backward()
    want = eager(backbone(x), y, head)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(crit.stats.cov, eager.stats.cov)  # the in-place update ran in the graph


def test_bad_input():
    bins = Bins(0, 10, 1)
    crit = IRDALoss(bins, 4, 2)
    head = nn.Linear(4, 1)
    with pytest.raises(TypeError, match=r"nn.Linear\(4, 1\)"):
        crit(torch.randn(3, 4), torch.rand(3), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        crit(torch.randn(3, 5), torch.rand(3), head)
    with pytest.raises(ValueError, match="one per feature row"):
        crit(torch.randn(3, 4), torch.rand(4), head)
    with pytest.raises(ValueError, match="outside"):
        crit(torch.randn(3, 4), torch.tensor([1.0, 2.0, 11.0]), head)
    with pytest.raises(ValueError, match="mode"):
        IRDALoss(bins, 4, 2, mode="approx")
    with pytest.raises(ValueError, match="num_clusters"):
        IRDALoss(bins, 4, 0)
    with pytest.raises(TypeError, match="Bins"):
        IRDALoss((0, 10, 1), 4, 2)
    bad = torch.randn(3, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        crit(bad, torch.rand(3), head)


def test_state_of_other_bins_is_refused():
    """Same bin count, other range: the centres used to be silently replaced by the saved ones."""
    import pytest

    from irda_ext import Bins, IRDALoss

    saved = IRDALoss(Bins(0, 30, 1), 4, 2).state_dict()
    with pytest.raises(ValueError, match=r"saved with 30 bins centred at 0.5..29.5, this loss has "
                                         r"Bins\(low=100.0, high=130.0"):
        IRDALoss(Bins(100, 130, 1), 4, 2).load_state_dict(saved)
    with pytest.raises(ValueError, match="saved with 30 bins"):
        IRDALoss(Bins(0, 29, 1), 4, 2).load_state_dict(saved)
    IRDALoss(Bins(0, 30, 1), 4, 2).load_state_dict(saved)  # the same bins load


def test_a_loss_that_cannot_fit_is_refused_with_its_memory():
    import pytest

    from irda_ext import Bins, IRDALoss

    # per-epoch statistics (the default) keep the running and the epoch's covariances
    with pytest.raises(ValueError, match=r"IRDALoss with 100000 bins and 2048 features needs about 3.28e\+03 GiB"
                                         r".*2 x \[D, D\] per bin"):
        IRDALoss(Bins(0, 100000, 1), 2048, 3)
    with pytest.raises(ValueError, match=r"needs about 1.71e\+03 GiB.*1 x \[D, D\] per bin"):
        IRDALoss(Bins(0, 100000, 1), 2048, 3, stats="cumulative")


def test_nan_predictions_are_named_not_an_index_error():
    """A head with a NaN bias (a diverged run, a corrupt checkpoint) used to surface as
    'IndexError: index out of range in self'."""
    import pytest

    from irda_ext import Bins, IRDALoss

    criterion = IRDALoss(Bins(0, 10, 1), 4, 1)
    criterion.fit_prior(torch.arange(10.0) + 0.5)
    head = torch.nn.Linear(4, 1)
    with torch.no_grad():
        head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"NaN target\(s\).*diverged model"):
        criterion(torch.randn(6, 4), torch.rand(6) * 10, head)


def test_the_surrogates_constants_in_its_dtype_follow_their_buffers():
    """head_loss keeps float32 copies of centers, eta and log_prior between steps; a change to a
    buffer (fit_prior, an epoch end's eta, a loaded state) must reach them."""
    x, y = make_problem()
    crit = IRDALoss(Bins(0, 20, 1), 2, 2, kmeans_samples=100)
    crit.fit_prior(y)
    first = crit.constants(torch.float32)
    assert crit.constants(torch.float32)[2] is first[2]  # kept while nothing changes
    crit.fit_prior(y[:50])
    assert torch.equal(crit.constants(torch.float32)[2], crit.log_prior.float())
    assert not torch.equal(crit.constants(torch.float32)[2], first[2])
    crit.fit_prior(y)  # every sample's bin has a prior again
    assert torch.equal(crit.constants(torch.float32)[2], first[2])
    head = nn.Linear(2, 1)
    crit(x, y, head).backward()
    crit.end_epoch()
    assert torch.equal(crit.constants(torch.float32)[1], crit.eta.float())
    other = IRDALoss(Bins(0, 20, 1), 2, 2, kmeans_samples=100)
    other.constants(torch.float32)
    other.load_state_dict(crit.state_dict())
    for got, buffer in zip(other.constants(torch.float32), (other.centers, other.eta, other.log_prior)):
        assert torch.equal(got, buffer.float())
    # and the loss through them is the loss of the public op on fresh copies (to rounding: the
    # fused step sums the per-bin products in another order)
    z = x.float()
    got = crit.head_loss(z, y, head.weight, head.bias)
    shift, _, q = crit.augmentation(head.weight, head.bias, twice_differentiable=False, smoothed_prediction=False)
    b = crit.bins.index(y)
    alpha, beta = crit.strength()
    want = irda_ext.irda_surrogate(head(z).reshape(-1), y, b, crit.centers.float(), crit.eta.float(),
                                   crit.log_prior.float(), shift[b], q[b].clamp_min(0), alpha, beta,
                                   crit.noise.var.float()) * 2 * crit.noise.var.float().detach()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
