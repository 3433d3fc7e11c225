"""Meta-IRDA (SPEC 7): meta-network, per-bin inputs, balanced meta set, the look-ahead and
its second-order meta gradient (against finite differences, float64), and the driver adapter."""
import json
import math

import pytest
import torch
from torch import nn

from irda_ext import Bins, IRDALoss
from irda_ext.meta import (BinInputs, GateHistory, MetaNet, balanced_meta_indices, lookahead_irda_loss,
                           meta_objective, region_density, split_meta_set, virtual_step)
from irda_ext.train.methods import RunContext, add_method_arguments, get_method, options_from_args

F64 = torch.float64


def _fitted_criterion(mode="exact", clusters=2, D=6, B=8, n=200, seed=0):
    """An IRDALoss (float64 statistics, full strength) that has seen one epoch of data."""
    g = torch.Generator().manual_seed(seed)
    bins = Bins(0, B, 1)
    crit = IRDALoss(bins, D, num_clusters=clusters, mode=mode, momentum=None, stats_dtype=F64)
    y = (torch.rand(n, generator=g, dtype=F64) ** 2) * B  # more mass at low labels
    z = torch.randn(n, D, generator=g, dtype=F64) + 0.3 * y[:, None]
    crit.fit_prior(y)
    head = nn.Linear(D, 1).double()
    crit(z, y, head)
    crit.end_epoch()
    return crit, head, z, y


def _random_gates(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"mean_gate": 2 * torch.rand(B, generator=g, dtype=F64), "cov_gate": 2 * torch.rand(B, generator=g, dtype=F64),
            "v": torch.rand(B, generator=g, dtype=F64)}


# ----- the meta-network and its inputs ---------------------------------------------------------------
def test_meta_net_ranges_and_neutral_start():
    net = MetaNet()
    gates = net(torch.rand(11, 4))
    assert all(gates[k].shape == (11,) for k in ("mean_gate", "cov_gate", "v"))
    assert torch.allclose(gates["mean_gate"], torch.ones(11)) and torch.allclose(gates["cov_gate"], torch.ones(11))
    assert torch.allclose(gates["v"], torch.full((11,), 0.5))
    for p in net.parameters():
        nn.init.normal_(p, std=5.0)
    gates = net(torch.randn(50, 4) * 10)
    for name, top in (("mean_gate", 2), ("cov_gate", 2), ("v", 1)):
        assert bool(((gates[name] >= 0) & (gates[name] <= top)).all())
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        net(torch.rand(3, 5))


def test_region_density_is_the_windowed_share():
    counts = torch.tensor([0, 5, 1, 0, 7, 2, 9])
    rho = region_density(counts)
    for b in range(7):
        lo, hi = max(0, b - 2), min(7, b + 3)
        assert rho[b].item() == pytest.approx(counts[lo:hi].sum().item() / counts.sum().item())


def test_bin_inputs_running_means():
    crit, head, z, y = _fitted_criterion()
    counts = crit.bins.counts(y)
    inputs = BinInputs(counts, momentum=0.5)
    x0 = inputs.inputs(dtype=F64)
    assert x0.shape == (8, 4)
    assert x0[:, 0].max().item() == pytest.approx(1.0) and torch.equal(x0[:, 2:], torch.ones(8, 2, dtype=F64))
    few = y < 3  # bins 0..2 only
    bin_index = crit.bins.index(y[few])
    inputs.observe(head(z[few]).reshape(-1), y[few], bin_index, crit)
    x1 = inputs.inputs(dtype=F64)
    assert torch.equal(x1[3:, 2:], torch.ones(5, 2, dtype=F64))  # unseen bins untouched
    assert bool(((x1[:3, 2] >= 0) & (x1[:3, 2] <= 1)).all())  # normalised entropy
    assert bool((x1[:3, 3] > 0).all())
    first = x1[:3, 2:].clone()
    inputs.observe(head(z[few]).reshape(-1), y[few], bin_index, crit)  # same batch again: fixed point
    assert torch.allclose(inputs.inputs(dtype=F64)[:3, 2:], first)
    state = inputs.state_dict()
    other = BinInputs(counts)
    other.load_state_dict(state)
    assert torch.equal(other.inputs(dtype=F64), inputs.inputs(dtype=F64))


# ----- the balanced meta set --------------------------------------------------------------------------
def test_balanced_meta_indices_caps_and_keeps_half():
    bins_of = torch.repeat_interleave(torch.arange(6), torch.tensor([40, 9, 3, 1, 0, 2]))
    idx = balanced_meta_indices(bins_of, 6, per_bin=5, seed=3)
    assert torch.bincount(bins_of[idx], minlength=6).tolist() == [5, 4, 1, 0, 0, 1]
    assert idx.unique().numel() == idx.numel()
    assert torch.equal(idx, balanced_meta_indices(bins_of, 6, per_bin=5, seed=3))  # deterministic
    assert not torch.equal(idx, balanced_meta_indices(bins_of, 6, per_bin=5, seed=4))
    with pytest.raises(ValueError, match="per_bin"):
        balanced_meta_indices(bins_of, 6, per_bin=-1)


def test_split_meta_set_is_a_partition():
    bins = Bins(0, 5, 1)
    y = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.5, 1.6, 2.5, 4.9])
    x = torch.arange(8.0)[:, None]
    x_tr, y_tr, x_me, y_me = split_meta_set(x, y, bins, per_bin=1, seed=0)
    assert sorted(torch.cat([x_tr, x_me]).reshape(-1).tolist()) == list(range(8))
    assert bins.index(y_me).tolist() == [0, 1] and x_tr.shape[0] == 6
    assert torch.equal(y[x_me.reshape(-1).long()], y_me)


# ----- the look-ahead ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "paper"])
def test_lookahead_loss_matches_irda_loss(mode):
    crit, head, z, y = _fitted_criterion(mode=mode)
    gates = _random_gates(8)
    zb, yb = z[:40], y[:40]
    count = crit.stats.count.clone()
    fused = crit(zb, yb, head, update=False, **gates)
    assert torch.equal(crit.stats.count, count)
    w = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_()
    dense = lookahead_irda_loss(crit, zb, yb, w, b, gates)
    assert dense.item() == pytest.approx(fused.item(), rel=1e-9, abs=1e-12)
    g_fused = torch.autograd.grad(fused, (head.weight, head.bias))
    g_dense = torch.autograd.grad(dense, (w, b, crit.noise.log_sigma), retain_graph=True, allow_unused=True)
    for a, c in zip(g_fused, g_dense):
        assert torch.allclose(a, c, rtol=1e-7, atol=1e-10)
    assert g_dense[2] is None  # the virtual step moves the head only: sigma is a constant of it


def test_virtual_step_is_differentiable_in_the_gates():
    crit, head, z, y = _fitted_criterion()
    gates = {k: v.requires_grad_() for k, v in _random_gates(8).items()}
    w1, b1 = virtual_step(crit, z[:40], y[:40], head.weight, head.bias, gates, lr=0.5)
    grads = torch.autograd.grad(w1.sum() + b1.sum(), list(gates.values()))
    # bins present in the batch move the virtual head through every gate
    present = torch.bincount(crit.bins.index(y[:40]), minlength=8) > 0
    for g in grads:
        assert bool((g[present] != 0).any()) and bool((g[~present] == 0).all())


@pytest.mark.parametrize("mode", ["exact", "paper"])
def test_meta_gradient_matches_finite_differences(mode):
    """The second-order meta gradient dL_meta/dphi against central differences (float64)."""
    crit, head, z, y = _fitted_criterion(mode=mode)
    torch.manual_seed(0)
    net = MetaNet(hidden=8).double()
    for p in net.parameters():  # away from the neutral start so every path is active
        nn.init.normal_(p, std=0.5)
    inputs = torch.rand(8, 4, dtype=F64)
    g = torch.Generator().manual_seed(5)
    z_meta = torch.randn(16, 6, generator=g, dtype=F64) + 1.0
    y_meta = torch.rand(16, generator=g, dtype=F64) * 8

    def objective():
        return meta_objective(crit, net, inputs, z[:40], y[:40], head.weight, head.bias, z_meta, y_meta, lr=0.5)

    params = list(net.parameters())
    analytic = torch.autograd.grad(objective(), params)
    flat = torch.cat([a.reshape(-1) for a in analytic])
    assert flat.abs().max() > 1e-3  # a real, non-vanishing signal
    eps = 1e-6
    for seed in range(3):
        direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + seed), dtype=F64)
                     for p in params]
        def shifted(scale):  # the objective with phi moved by scale * eps * direction
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(scale * eps * d)
            value = objective().item()  # (the virtual step needs autograd on)
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(scale * eps * d)
            return value

        up, down = shifted(1.0), shifted(-1.0)
        numeric = (up - down) / (2 * eps)
        predicted = sum((a * d).sum().item() for a, d in zip(analytic, direction))
        assert predicted == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_meta_gradient_is_zero_without_augmentation():
    """With alpha = beta = 0 the gates do not enter the loss: no meta signal (a sanity check
    that the gradient only flows through the augmentation)."""
    crit, head, z, y = _fitted_criterion()
    crit.alpha = crit.beta = 0.0
    net = MetaNet(hidden=4).double()
    for p in net.parameters():
        nn.init.normal_(p, std=0.5)
    loss = meta_objective(crit, net, torch.rand(8, 4, dtype=F64), z[:40], y[:40], head.weight, head.bias,
                          z[40:60], y[40:60], lr=0.5)
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    assert all(g is None or bool((g == 0).all()) for g in grads)


# ----- the record and the plot -----------------------------------------------------------------------
def test_gate_history_json_and_plot(tmp_path):
    history = GateHistory(centers=[0.5, 1.5, 2.5], counts=[50, 2, 0])
    for epoch in (1, 2, 3):
        history.record(epoch, {"v": torch.tensor([0.5 / epoch, 0.5, 0.1]), "mean_gate": torch.ones(3),
                               "cov_gate": torch.ones(3)})
    assert history.head_and_tail() == (0, 1)
    assert history.series("v", 0) == pytest.approx([0.5, 0.25, 0.5 / 3])
    history.write_json(str(tmp_path / "g.json"))
    saved = json.loads((tmp_path / "g.json").read_text())
    assert len(saved["epochs"]) == 3 and saved["train_counts"] == [50, 2, 0]
    history.plot(str(tmp_path / "vb.png"))
    assert (tmp_path / "vb.png").stat().st_size > 0


# ----- the driver adapter -----------------------------------------------------------------------------
def _method(tmp_path, label_bins=None, label_scale=1.0, label_shift=0.0, **options):
    """Meta-IRDA as the driver builds it: small meta batches, 2 clusters, a run of 2 epochs
    writing to ``tmp_path``."""
    cls = get_method("meta-irda")
    options = cls.Options(**{"meta_per_bin": 4, "meta_batch_size": 32, "clusters": 2, **options})
    context = RunContext(label_scale=label_scale, label_shift=label_shift, label_bins=label_bins, epochs=2, lr=1e-2,
                         seed=0, out_dir=str(tmp_path), dataset="synthetic")
    return cls(options, context)


def _data(n=240):
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(n, generator=g).abs() * 2).clamp(max=9.9)
    x = torch.cat([y.view(-1, 1) + 0.3 * torch.randn(n, 1, generator=g), torch.randn(n, 3, generator=g)], 1)
    return x, y


def _train(method, x, y, epochs=2):
    torch.manual_seed(0)
    bins = Bins(0.0, 10.0, 1.0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    head = nn.Linear(8, 1)
    method.setup(model, head, 8, bins, y, torch.device("cpu"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    method.pretrain(model, head, loader, torch.device("cpu"))
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()) + [
        p for g in method.param_groups() for p in g["params"]], lr=1e-2)
    for epoch in range(epochs):
        for xb, yb in loader:
            loss = method.loss(model(xb), yb, head)
            opt.zero_grad()
            loss.backward()
            opt.step()
        method.end_epoch(epoch, epochs)
    return model, head


def test_method_registered_with_its_options():
    import argparse

    cls = get_method("meta-irda")
    assert cls.name == "meta-irda"
    parser = argparse.ArgumentParser()
    add_method_arguments(parser, [cls])
    args = parser.parse_args(["--meta-lr", "0.01", "--meta-interval", "3", "--meta-per-bin", "7"])
    options = options_from_args(cls, args)
    assert (options.meta_lr, options.meta_interval, options.meta_per_bin) == (0.01, 3, 7)
    with pytest.raises(ValueError, match="--meta-interval must be at least 1, got 0"):
        cls(cls.Options(meta_interval=0))


def test_method_holds_out_the_meta_set_and_trains(tmp_path):
    x, y = _data()
    method = _method(tmp_path, label_bins=Bins(0.0, 10.0, 1.0), no_ramp=True)
    x_tr, y_tr = method.prepare_training_data(x, y)
    assert method.meta_held_out and x_tr.shape[0] + method.meta_x.shape[0] == x.shape[0]
    held = {tuple(r.tolist()) for r in method.meta_x}
    assert not held & {tuple(r.tolist()) for r in x_tr}  # disjoint from training
    before = [p.detach().clone() for p in MetaNet().parameters()]
    _train(method, x_tr, y_tr)
    assert method.steps == 8
    assert any(not torch.equal(a, p) for a, p in zip(before, method.meta_net.parameters()))
    saved = json.loads((tmp_path / "meta_irda_gates.json").read_text())
    assert [r["epoch"] for r in saved["epochs"]] == [1, 2] and len(saved["epochs"][0]["v"]) == 10
    assert (tmp_path / "meta_irda_vb.png").exists()
    # checkpoint round trip
    state = method.state_dict()
    other = _method(tmp_path, label_bins=Bins(0.0, 10.0, 1.0), no_ramp=True)
    other.prepare_training_data(x, y)
    other.setup(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 1), 8, Bins(0.0, 10.0, 1.0), y_tr,
                torch.device("cpu"))
    other.load_state_dict(state)
    assert other.steps == method.steps and other.gate_history.rows == method.gate_history.rows
    assert all(torch.equal(other.gates()[k], method.gates()[k]) for k in ("v", "mean_gate", "cov_gate"))


def test_method_without_label_bins_warns_and_draws_from_training(tmp_path):
    x, y = _data()
    method = _method(tmp_path)
    x_tr, y_tr = method.prepare_training_data(x, y)
    assert x_tr.shape == x.shape
    with pytest.warns(UserWarning, match="NOT held out"):
        _train(method, x_tr, y_tr, epochs=1)
    assert not method.meta_held_out and 0 < method.meta_y.numel() <= 4 * 10
    assert math.isfinite(float(method.gates()["v"].sum()))


def test_method_reads_the_drivers_label_shift(tmp_path, monkeypatch):
    """Meta targets are kept in label units; the meta batches go to the driver's model units
    ``(y - shift) / scale`` with the shift and scale of the run's context."""
    x, y = _data()
    label_bins = Bins(0.0, 10.0, 1.0)
    shift = 4.0
    method = _method(tmp_path, label_bins=label_bins, label_scale=2.0, label_shift=shift)
    x_tr, y_tr = method.prepare_training_data(x, y)
    model_bins = Bins((0.0 - shift) / 2, (10.0 - shift) / 2, 0.5)
    method.setup(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 1), 8, model_bins, (y_tr - shift) / 2,
                 torch.device("cpu"))
    assert method.label_mean == shift
    assert method.gate_history.centers[:2] == pytest.approx([0.5, 1.5])
    # a meta step feeds the meta targets in model units: the held-out labels, shifted and scaled
    import irda_ext.train.methods.meta_irda as meta_module

    seen, real = {}, meta_module.meta_objective

    def spy(*args):
        seen["y_meta"] = args[8].detach().clone()  # meta_objective(..., z_meta, y_meta, step_lr)
        return real(*args)

    monkeypatch.setattr(meta_module, "meta_objective", spy)
    method.meta_step(torch.randn(16, 8), (y_tr[:16] - shift) / 2, nn.Linear(8, 1))
    in_model_units = ((method.meta_y.double() - shift) / 2).float()
    assert all(bool((in_model_units - v).abs().min() < 1e-6) for v in seen["y_meta"])


def test_method_fallback_on_a_map_style_dataset(tmp_path):
    """Without the driver's bins and without tabular tensors (image data sets), the meta set
    is gathered row by row from the training data set at pretrain()."""
    x, y = _data(n=120)
    method = _method(tmp_path)
    method.setup(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 1), 8, Bins(0.0, 10.0, 1.0), y,
                 torch.device("cpu"))
    pairs = [(x[i], y[i]) for i in range(y.numel())]
    with pytest.warns(UserWarning, match="NOT held out"):
        method.pretrain(None, None, torch.utils.data.DataLoader(pairs, batch_size=16), torch.device("cpu"))
    assert method.meta_x.shape[1:] == (4,) and method.meta_x.shape[0] == method.meta_y.numel() > 0
    rows = {tuple(r.tolist()) for r in x}
    assert all(tuple(r.tolist()) in rows for r in method.meta_x)


def test_driver_holds_the_meta_set_out_and_writes_the_gate_history(tmp_path):
    """Through ``irda-train`` the driver hands the label bins and the output folder to the
    method: no fallback warning, the training set shrinks by the meta set, and the v_b
    record lands in --out."""
    import warnings

    from irda_ext import train

    def run(method, out):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*NOT held out.*")
            return train.run(train.build_parser().parse_args(
                ["--dataset", "abalone", "--method", method, "--epochs", "1", "--no-progress", "--no-plot",
                 "--out", str(out)]))

    meta = run("meta-irda", tmp_path / "meta")
    plain = run("irda", tmp_path / "irda")
    held_out = plain["dataset"]["train"] - meta["dataset"]["train"]
    assert 0 < held_out <= 10 * meta["dataset"]["bins"]["num_bins"]
    saved = json.loads((tmp_path / "meta" / "meta_irda_gates.json").read_text())
    assert len(saved["epochs"]) == 1
