"""Every baseline's driver adapter runs the hook sequence of ``irda_ext.train.methods.base``."""
import pytest
import torch

from irda_ext.binning import Bins
from irda_ext.train.methods import RunContext, get_method

BASELINES = ["focal-r", "lds", "fds", "lds+fds", "focal-r+lds+fds", "smoter", "smogn", "smogn+lds+fds",
             "bmc", "gai", "bni", "isda-r", "risda-r", "ranksim", "supcr"]


def _method(name, epochs=2, **options):
    """The method with its default options but ``options``, in a small run's context."""
    cls = get_method(name)
    return cls(cls.Options(**options), RunContext(epochs=epochs, lr=1e-2, seed=0, label_scale=1.0))


def _data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(n, generator=g).abs() * 2).clamp(max=9.9)  # long tail to the right
    x = torch.cat([y.view(-1, 1) + 0.3 * torch.randn(n, 1, generator=g), torch.randn(n, 3, generator=g)], 1)
    return x, y


def _run(name, epochs=2, **options):
    torch.manual_seed(0)
    method = _method(name, epochs, **options)
    x, y = _data()
    x, y = method.prepare_training_data(x, y)
    bins = Bins(0.0, 10.0, 1.0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    head = torch.nn.Linear(8, 1)
    method.setup(model, head, 8, bins, y, torch.device("cpu"))
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(y), 32)]
    method.pretrain(model, head, loader, torch.device("cpu"))
    params = [{"params": list(model.parameters()) + list(head.parameters()), "lr": 1e-2}] + method.param_groups()
    opt = torch.optim.Adam(params)
    losses = []
    for epoch in range(epochs):
        for xb, yb in loader:
            feats = method.transform_features(model(xb), yb, epoch, training=True)
            loss = method.loss(feats, yb, head)
            assert loss.dim() == 0 and torch.isfinite(loss), (name, loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        method.end_epoch(epoch, epochs)
    with torch.no_grad():
        out = head(method.transform_features(model(x), None, epochs, training=False)).squeeze(-1)
    assert torch.isfinite(out).all()
    return method, losses


@pytest.mark.parametrize("name", BASELINES)
def test_method_runs_and_checkpoints(name):
    method, _ = _run(name)
    state = method.state_dict()
    twin = get_method(name)(method.options, method.context)
    x, y = _data()
    twin.setup(torch.nn.Sequential(torch.nn.Linear(4, 8)), torch.nn.Linear(8, 1), 8, Bins(0.0, 10.0, 1.0),
               twin.prepare_training_data(x, y)[1], torch.device("cpu"))
    twin.load_state_dict(state)


def test_resampling_methods_change_the_training_set():
    x, y = _data()
    for name in ("smoter", "smogn", "smogn+lds+fds"):
        method = _method(name)
        assert method.needs_tabular_inputs
        xs, ys = method.prepare_training_data(x, y)
        assert xs.shape[0] == ys.shape[0] and not torch.equal(ys, y)


def test_balanced_mse_sigma_has_its_own_group():
    method, _ = _run("bmc", epochs=1, sigma_lr=0.05)
    (group,) = method.param_groups()
    assert group["lr"] == 0.05 and group["params"] == [method.criterion.noise.log_sigma]
    fixed, _ = _run("bni", epochs=1, fixed_sigma=True)
    assert fixed.param_groups() == []


def test_supcr_freezes_the_encoder_after_pretraining():
    method = _method("supcr", supcr_epochs=1)
    z = torch.randn(4, 3, requires_grad=True)
    assert not method.transform_features(z, None, 0, training=True).requires_grad


def test_isda_strength_ramps_from_zero():
    method, _ = _run("isda-r", epochs=1)
    method.setup(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1), 8, Bins(0.0, 10.0, 1.0), _data()[1],
                 torch.device("cpu"))
    assert method._ramp() == 0.0
    method.end_epoch(0, 4)
    assert method._ramp() == pytest.approx(0.25)
    resumed = get_method("isda-r")(method.options, method.context)
    resumed.setup(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1), 8, Bins(0.0, 10.0, 1.0), _data()[1],
                  torch.device("cpu"))
    resumed.load_state_dict(method.state_dict())
    assert resumed._ramp() == pytest.approx(0.25)


def test_ranksim_weight_is_given_in_label_units():
    """The driver trains on targets divided by ``label_scale``; the RankSim weight is
    converted so that the objective is the paper's one in label units."""
    for scale in (1.0, 4.0, 128.0):
        cls = get_method("ranksim")
        method = cls(cls.Options(ranksim_gamma=100.0, ranksim_lambda=2.0), RunContext(label_scale=scale))
        method.setup(torch.nn.Identity(), torch.nn.Linear(3, 1), 3, Bins(0.0, 1.0, 0.1),
                     torch.rand(20), torch.device("cpu"))
        assert method.regulariser.gamma == pytest.approx(100.0 / scale)  # against L1, which scales as the labels


@pytest.mark.parametrize("name", ["vanilla", "fds", "smoter", "lds", "lds+fds", "smogn+lds+fds"])
def test_dir_methods_train_on_l1_and_their_mse_variants_on_mse(name):
    """DIR's train.py trains on L1 by default (the paper's DIR rows); ``<name>-mse`` is MSE."""
    import torch.nn.functional as F

    x, y = _data()
    features, head = torch.randn(32, 8), torch.nn.Linear(8, 1)
    targets = y[:32]
    for method_name, base in ((name, F.l1_loss), (f"{name}-mse", F.mse_loss)):
        method = _method(method_name)
        method.setup(torch.nn.Identity(), head, 8, Bins(0.0, 10.0, 1.0), y, torch.device("cpu"))
        pred = head(features).squeeze(-1)
        weight = None if getattr(method, "bin_weights", None) is None else \
            method.bin_weights[Bins(0.0, 10.0, 1.0).index(targets, clamp=True)]
        expected = base(pred, targets) if weight is None else (base(pred, targets, reduction="none") * weight).mean()
        torch.testing.assert_close(method.loss(features, targets, head), expected)
