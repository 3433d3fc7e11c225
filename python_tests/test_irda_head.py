"""``irda_head_loss``: IRDALoss's loss of a linear head in one op (csrc/cpu/irda_head.cpp), the
training step's path on the CPU. Checked against the dense reference built from the formula
(``irda_ext.reference.irda_surrogate`` of the head's per-bin shift and variance), against
``IRDALoss.head_loss``'s unfused path, with gradcheck and opcheck, and on bad input."""
import pytest
import torch
from torch import nn

from irda_ext import Bins, IRDALoss, reference
from irda_ext._ops import ops
from irda_ext.loss import upper_triangles

MODES = ("exact", "paper")
REDUCTIONS = ("mean", "sum", "none")


def head_inputs(n, K, B, D, dtype=torch.float64, stats_dtype=torch.float64, seed=0, dead_bins=(), empty_bins=()):
    """Positional inputs of ``irda_head_loss`` (mode and reduction last, to be appended): a
    random head, per-bin statistics (symmetric positive covariances, passed as their packed upper
    triangles; ``empty_bins`` have zero statistics, as a bin without data), bins without prior
    (``dead_bins``) and targets in their bins."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64  # drawn in float64 and cast: the same values in every dtype
    centers = torch.arange(B, dtype=f64) + 0.5
    lp = torch.log(torch.rand(B, generator=g, dtype=f64) + 0.05)
    lp = lp - torch.logsumexp(lp, 0)
    for b in dead_bins:
        lp[b] = -torch.inf
    live = [b for b in range(B) if b not in dead_bins]
    bin_index = torch.tensor(live)[torch.randint(0, len(live), (n,), generator=g)]
    target = bin_index.to(f64) + torch.rand(n, generator=g, dtype=f64)
    pred = target + torch.randn(n, generator=g, dtype=f64)
    eta = torch.rand(K, B, generator=g, dtype=f64) + 0.1
    eta = eta / eta.sum(0)
    weight = torch.randn(1, D, generator=g, dtype=f64) / D ** 0.5
    bias = torch.randn(1, generator=g, dtype=f64)
    a = torch.randn(B, D, D, generator=g, dtype=f64) / D
    cov = a @ a.transpose(1, 2) * 3
    offset = torch.randn(B, D, generator=g, dtype=f64)
    keep = torch.rand(B, generator=g, dtype=f64)
    iso = torch.rand(B, generator=g, dtype=f64) * 0.5
    for b in empty_bins:
        cov[b], offset[b], keep[b], iso[b] = 0, 0, 1, 0
    log_sigma = torch.tensor(0.3, dtype=f64, requires_grad=True)
    pred, weight, bias = (t.to(dtype).requires_grad_() for t in (pred, weight, bias))
    target, centers, eta, lp = (t.to(dtype) for t in (target, centers, eta, lp))
    stats = [t.to(stats_dtype) for t in (offset, upper_triangles(cov), keep, iso)]
    return (pred, target, bin_index, weight, bias, *stats, centers, eta, lp, 0.5, 0.75, log_sigma)


def full_covariances(cov_upper, D):
    """``[B, D, D]`` from the packed upper triangles (``upper_triangles``' inverse), in plain PyTorch."""
    rows, cols = torch.triu_indices(D, D)
    full = cov_upper.new_zeros(cov_upper.shape[0], D, D)
    full[:, rows, cols] = cov_upper
    full[:, cols, rows] = cov_upper
    return full


def bin_shift(offset, weight, bias, mode, dtype):
    """a_b = offset_b . w (+ bias in mode "paper") as the op rounds it: summed in float64 in the
    order of the features, rounded to the statistics' dtype, the bias added there, then cast."""
    w = weight.reshape(-1).to(offset.dtype)
    a = offset.new_zeros(offset.shape[0], dtype=torch.float64)
    for d in range(offset.shape[1]):
        a = a + offset[:, d].double() * w[d].double()
    a = a.to(offset.dtype) + (bias.reshape(()).to(offset.dtype) if mode == "paper" else 0)
    return a.to(dtype)


def dense_head_loss(pred, target, bin_index, weight, bias, offset, cov_upper, keep, iso, centers, eta, log_prior,
                    alpha, beta, log_sigma, mode, reduction):
    """The op's formula (csrc/cpu/irda_head.cpp, SPEC 3-6) in plain PyTorch, the surrogate dense."""
    w = weight.reshape(-1).to(offset.dtype)
    cov = full_covariances(cov_upper, offset.shape[1])
    a = bin_shift(offset, weight, bias, mode, pred.dtype)
    q = keep * torch.einsum("d,bde,e->b", w, cov, w) + iso * w.dot(w)
    q = q.to(pred.dtype)
    shift = a[bin_index] if mode == "exact" else (a[bin_index] - target).abs()
    var = q[bin_index].clamp_min(0)
    nv = torch.exp(2 * log_sigma).to(pred.dtype)
    loss = reference.irda_surrogate(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, nv,
                                    mode=mode, reduction=reduction)
    return loss * (2 * nv).detach()


def differentiable(args):
    return [args[j] for j in (0, 3, 4, 14)]  # pred, weight, bias, log_sigma


def grads(loss, args, g_out=None, **kwargs):
    """d loss / d (pred, weight, bias, log_sigma); zeros where there is no path (the bias in mode
    "exact", where it reaches the loss only through pred)."""
    inputs = differentiable(args)
    got = torch.autograd.grad(loss, inputs, g_out, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (9, 3, 8, 5), (97, 2, 29, 7)], ids=["1", "9x3x8", "97x2x29"])
def test_matches_the_dense_formula_in_float64(mode, reduction, shape):
    n, K, B, D = shape
    args = head_inputs(n, K, B, D, dead_bins=(2,) if B > 3 else (), empty_bins=(4,) if B > 5 else ())
    loss = ops.irda_head_loss(*args, mode, reduction)[0]
    expected = dense_head_loss(*args, mode, reduction)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    g_out = torch.rand_like(loss) + 0.5
    got = grads(loss, args, g_out)
    want = grads(expected, args, g_out)
    for name, x, y in zip(("pred", "weight", "bias", "log_sigma"), got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stats_dtype", [torch.float64, torch.float32])
def test_a_clamped_variance_and_a_residual_at_zero(mode, stats_dtype):
    # q_b < 0 (an indefinite adjusted covariance: keep < 0) is clamped to 0 and passes no
    # gradient; paper mode's |a_b - y_i| at 0 passes none either (abs's derivative there)
    args = list(head_inputs(30, 2, 6, 4, stats_dtype=stats_dtype, seed=7))
    keep = args[7].clone()
    keep[1] = -5.0
    args[7] = keep
    a = bin_shift(args[5], args[3].detach(), args[4].detach(), mode, args[1].dtype)
    target, bin_index = args[1].clone(), args[2]
    hit = int((bin_index == 3).nonzero()[0])
    target[hit] = a[3]
    args[1] = target
    loss, _, bin_var, _, _ = ops.irda_head_loss(*args, mode, "sum")
    assert float(bin_var[1]) < 0 and bool((bin_index == 1).any())
    expected = dense_head_loss(*args, mode, "sum")
    # float32 statistics: the per-bin products round as float32 (another order in the reference)
    tol = dict(rtol=1e-10, atol=1e-12) if stats_dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, expected, **tol)
    for name, x, y in zip(("pred", "weight", "bias", "log_sigma"), grads(loss, args), grads(expected, args)):
        torch.testing.assert_close(x, y, **tol, msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_float32_statistics_and_predictions(mode):
    args64 = head_inputs(40, 3, 12, 6, seed=3)
    args32 = head_inputs(40, 3, 12, 6, dtype=torch.float32, stats_dtype=torch.float32, seed=3)
    mixed = head_inputs(40, 3, 12, 6, dtype=torch.float64, stats_dtype=torch.float32, seed=3)
    want = ops.irda_head_loss(*args64, mode, "mean")[0]
    for args in (args32, mixed):
        loss = ops.irda_head_loss(*args, mode, "mean")[0]
        assert loss.dtype == args[0].dtype
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
        got = grads(loss, args)
        assert [g.dtype for g in got] == [t.dtype for t in differentiable(args)]
        for g, w in zip(got, grads(want, args64, retain_graph=True)):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    args = list(head_inputs(7, 2, 6, 4, dead_bins=(1,), seed=5))

    def fn(pred, weight, bias, log_sigma):
        a = list(args)
        a[0], a[3], a[4], a[14] = pred, weight, bias, log_sigma
        # the op's 2 sigma^2 factor is a constant to autograd (Balanced MSE's scaling): divided
        # out here, so that the finite differences in log_sigma see the surrogate alone
        return ops.irda_head_loss(*a, mode, "sum")[0] / (2 * torch.exp(2 * log_sigma)).detach()

    assert torch.autograd.gradcheck(fn, differentiable(args))


def test_empty_batch_gives_zero_and_zero_gradients():
    args = list(head_inputs(5, 2, 6, 4))
    args[0] = args[0].detach()[:0].requires_grad_()
    args[1], args[2] = args[1][:0], args[2][:0]
    loss = ops.irda_head_loss(*args, "exact", "mean")[0]
    assert loss.item() == 0
    got = grads(loss, args)
    assert got[0].shape == (0,) and all(float(g.abs().sum()) == 0 for g in got)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_opcheck(mode, reduction):
    args = head_inputs(9, 3, 8, 5, dead_bins=(2,))
    torch.library.opcheck(torch.ops.irda_ext.irda_head_loss.default, (*args, mode, reduction))
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    loss, bin_shift, bin_var, cov_w, partials = ops.irda_head_loss(*plain, mode, reduction)
    (pred, target, bin_index, weight, bias, offset, cov, keep, iso, centers, eta, lp, alpha, beta, log_sigma) = plain
    torch.library.opcheck(torch.ops.irda_ext.irda_head_loss_backward.default,
                          (torch.rand_like(loss), target, bin_index, weight, bias, offset, keep, iso, bin_shift,
                           bin_var, cov_w, partials, alpha, beta, log_sigma, 3, mode, reduction))


def test_second_derivative_raises():
    args = head_inputs(6, 2, 5, 3)
    loss = ops.irda_head_loss(*args, "exact", "mean")[0]
    (g,) = torch.autograd.grad(loss, args[3], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()


def test_bad_input():
    args = list(head_inputs(6, 2, 5, 3))
    op = ops.irda_head_loss
    with pytest.raises(ValueError, match="mode must be"):
        op(*args, "fast", "mean")
    with pytest.raises(ValueError, match="reduction must be"):
        op(*args, "exact", "median")
    bad = list(args)
    bad[2] = args[2].clone()
    bad[2][3] = 5
    with pytest.raises(ValueError, match=r"bin_index must lie in \[0, 5\), got 5 at sample 3"):
        op(*bad, "exact", "mean")
    bad[2][3] = -1
    with pytest.raises(ValueError, match=r"got -1 at sample 3"):
        op(*bad, "paper", "mean")
    bad = list(args)
    bad[3] = torch.zeros(1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weight must have D = 3 entries"):
        op(*bad, "exact", "mean")
    bad = list(args)
    bad[0] = args[0].detach().long()
    with pytest.raises(TypeError, match="float32 or float64 predictions"):
        op(*bad, "exact", "mean")
    bad = list(args)
    bad[6] = args[6][:, :2]
    with pytest.raises(ValueError, match=r"cov_upper must have shape \[5, 6\] \(the packed upper triangles of 5 "
                                         r"covariances of 3 x 3"):
        op(*bad, "exact", "mean")
    bad = list(args)
    bad[7] = args[7].float()
    with pytest.raises(TypeError, match="keep must have the dtype of offset"):
        op(*bad, "exact", "mean")
    bad = list(args)
    bad[14] = torch.tensor(400.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="must be positive and finite"):
        op(*bad, "exact", "mean")
    bad = list(args)
    bad[5] = args[5].clone().requires_grad_()
    with pytest.raises(ValueError, match="offset requires grad"):
        op(*bad, "exact", "mean")


# ----- IRDALoss takes it where it should, with the loss of the unfused path ---------------------

def trained_loss(mode, D=6, K=3, stats_dtype=torch.float64, dtype=torch.float64):
    torch.manual_seed(0)
    crit = IRDALoss(Bins(0, 10, 1), feature_dim=D, num_clusters=K, mode=mode, stats_dtype=stats_dtype)
    crit.fit_prior(torch.rand(300, dtype=torch.float64) * 10)
    head = nn.Linear(D, 1).to(dtype)
    for _ in range(3):
        z = torch.randn(64, D, dtype=dtype) + torch.rand(64, 1, dtype=dtype)
        crit(z, torch.rand(64, dtype=dtype) * 10, head).backward()
        crit.end_epoch()
    return crit, head


class CountCalls:
    def __init__(self, monkeypatch):
        self.calls, op = 0, ops.irda_head_loss

        def counted(*args):
            self.calls += 1
            return op(*args)

        monkeypatch.setattr(ops, "irda_head_loss", counted)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("stats_dtype,dtype", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                               (torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_irda_loss_fused_and_unfused_agree(mode, reduction, stats_dtype, dtype, monkeypatch):
    crit, head = trained_loss(mode, stats_dtype=stats_dtype, dtype=dtype)
    z = torch.randn(50, 6, dtype=dtype, requires_grad=True)
    y = torch.rand(50, dtype=dtype) * 10
    params = [z, head.weight, head.bias, crit.noise.log_sigma]
    results = []
    counter = CountCalls(monkeypatch)
    for fused in (True, False):
        monkeypatch.setattr(crit, "fused_step", lambda *a, f=fused: f and IRDALoss.fused_step(crit, *a))
        loss = crit(z, y, head, reduction=reduction, update=False)
        g_out = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        results.append([loss.detach(), *torch.autograd.grad(loss, params, g_out)])
    assert counter.calls == 1
    # the same to rounding: the op sums the per-bin dot products in float64 and reads each
    # covariance's upper triangle, the small ops sum in the statistics' dtype over whole blocks
    tol = dict(rtol=1e-12, atol=1e-14) if stats_dtype == dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for name, fused_value, unfused_value in zip(("loss", "z", "weight", "bias", "log_sigma"), *results):
        torch.testing.assert_close(fused_value, unfused_value, **tol, msg=name)


def test_irda_loss_takes_the_fused_op_only_for_a_plain_training_step(monkeypatch):
    crit, head = trained_loss("exact")
    counter = CountCalls(monkeypatch)
    z, y = torch.randn(20, 6, dtype=torch.float64), torch.rand(20, dtype=torch.float64) * 10
    crit(z, y, head, update=False).backward()
    assert counter.calls == 1
    with torch.no_grad():  # no backward: the plain forward
        crit(z, y, head, update=False)
    crit(z, y, head, update=False, weight=torch.rand(20, dtype=torch.float64))
    crit(z, y, head, update=False, mean_gate=torch.ones(10, dtype=torch.float64))
    crit.head_loss(z, y, head.weight, head.bias, lookahead=True)
    # targets that require grad, no bias, nothing to differentiate: the small ops
    crit.head_loss(z, y.clone().requires_grad_(), head.weight, head.bias)
    crit.head_loss(z, y, head.weight, None)
    crit.noise.log_sigma.requires_grad_(False)
    crit.head_loss(z, y, head.weight.detach(), head.bias.detach())
    assert counter.calls == 1
    with pytest.raises(ValueError, match="reduction must be one of"):
        crit(z, y, head, reduction="median")
