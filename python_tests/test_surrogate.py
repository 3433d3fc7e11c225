"""The fused IRDA surrogate against the dense reference (SPEC 6)."""
import pytest
import torch
from testing import devices, emulated_cuda, surrogate_inputs

import irda_ext
from irda_ext import reference as ref

MODES = ["exact", "paper"]
SHAPES = [(1, 1, 1), (1, 3, 5), (7, 1, 12), (97, 3, 11), (9, 2, 97), (0, 2, 4)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,K,B", SHAPES)
def test_forward_and_gradients_match_reference(device, mode, n, K, B):
    args = surrogate_inputs(n, K, B, device, requires_grad=True, var_scale=3.0,
                            dead_bins=(B // 2,) if B > 2 else ())
    got = irda_ext.irda_surrogate(*args, mode=mode, reduction="none")
    want = ref.irda_surrogate(*args, mode=mode, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if n == 0:
        return
    wrt = [args[0], args[6], args[7], args[10]]
    weights = torch.rand(n, dtype=torch.float64, device=device)
    g_got = torch.autograd.grad((got * weights).sum(), wrt)
    g_want = torch.autograd.grad((want * weights).sum(), wrt)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(device, mode):
    args = list(surrogate_inputs(6, 2, 7, device, requires_grad=True, var_scale=0.5, dead_bins=(3,)))

    def f(pred, shift, var, nv):
        return irda_ext.irda_surrogate(pred, args[1], args[2], args[3], args[4], args[5], shift, var,
                                       args[8], args[9], nv, mode=mode, reduction="none")

    assert torch.autograd.gradcheck(f, (args[0], args[6], args[7], args[10]))


@pytest.mark.parametrize("device", devices())
def test_gradcheck_through_the_variance_cap(device):
    """Large var: s^2 is capped at (1 - 1e-3) / (2 max a), which depends on sigma^2."""
    args = list(surrogate_inputs(5, 3, 6, device, requires_grad=True, var_scale=50.0))
    pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv = args
    var = (var.detach() + 20).requires_grad_()

    def f(pred, shift, var, nv):
        return irda_ext.irda_surrogate(pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv,
                                       reduction="none")

    assert torch.isfinite(f(pred, shift, var, nv)).all()
    assert torch.autograd.gradcheck(f, (pred, shift, var, nv))
    g = torch.autograd.grad(f(pred, shift, var, nv).sum(), var)[0]
    assert g.eq(0).all()  # capped: independent of var


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
def test_opcheck(device, mode):
    args = surrogate_inputs(9, 3, 8, device, requires_grad=True, dead_bins=(2,))
    op_args = (*args, mode)
    torch.library.opcheck(torch.ops.irda_ext.irda_surrogate.default, op_args)
    with torch.no_grad():
        loss, lse = torch.ops.irda_ext.irda_surrogate(*op_args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(torch.ops.irda_ext.irda_surrogate_backward.default,
                          (torch.rand_like(loss), *plain, mode, lse))


def _per_bin_var(args):
    """IRDALoss's case: one var per bin (exact mode's denominator tables)."""
    args = list(args)
    per_bin = torch.rand(args[3].shape[0], dtype=args[7].dtype, generator=torch.Generator().manual_seed(1)) * 2
    args[7] = per_bin[args[2]].requires_grad_()
    return args


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,K,B,case", [(1, 1, 1, "plain"), (97, 3, 11, "plain"), (9, 2, 97, "plain"),
                                        (200, 3, 23, "var per bin"), (40, 2, 9, "capped"), (0, 2, 4, "plain")])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_cpu_training_path_gives_the_recomputing_backwards_bits(mode, dtype, n, K, B, case, threads):
    """On the CPU, autograd runs irda_surrogate_with_partials (each term once, per-sample partials)
    and irda_surrogate_partials_backward: the loss and every gradient are bit for bit those of
    irda_surrogate and irda_surrogate_backward, which recomputes the grid."""
    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in surrogate_inputs(n, K, B, "cpu", dead_bins=(B // 2,) if B > 2 else ())]
    if case == "var per bin":
        args = _per_bin_var(args)
    if case == "capped":
        args[7] = args[7] * 1e3 + 50
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    for j in (0, 6, 7, 10):
        args[j] = plain[j].clone().requires_grad_()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.profiler.profile() as prof:
            loss, lse = torch.ops.irda_ext.irda_surrogate(*args, mode)
            weight = torch.linspace(0.5, 1.5, n, dtype=dtype)
            grads = torch.autograd.grad((loss * weight).sum(), [args[0], args[6], args[7], args[10]])
        want_loss, want_lse = torch.ops.irda_ext.irda_surrogate(*plain, mode)
        want = torch.ops.irda_ext.irda_surrogate_backward(weight, *plain, mode, want_lse)
    finally:
        torch.set_num_threads(old_threads)
    ran = {e.name for e in prof.events()}
    assert {"irda_ext::irda_surrogate_with_partials", "irda_ext::irda_surrogate_partials_backward"} <= ran
    assert "irda_ext::irda_surrogate_backward" not in ran
    assert torch.equal(loss.detach(), want_loss) and torch.equal(lse, want_lse)
    for got, w in zip(grads[:3], want[:3]):
        assert torch.equal(got, w)
    assert torch.equal(grads[3], want[3].sum().reshape(()))
    if case == "capped" and mode == "exact" and n:
        assert grads[2].eq(0).any()  # the cap is reached


def test_the_partials_path_only_where_a_gradient_follows():
    """Without a gradient to compute (no_grad, or no input that requires one) the forward is the plain
    irda_surrogate, which evaluates no derivatives."""
    args = surrogate_inputs(9, 3, 8, "cpu", requires_grad=True)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    for label, call in (("no_grad", lambda: torch.no_grad()), ("plain inputs", None)):
        with torch.profiler.profile() as prof:
            if call is None:
                irda_ext.irda_surrogate(*plain)
            else:
                with call():
                    irda_ext.irda_surrogate(*args)
        assert "irda_ext::irda_surrogate_with_partials" not in {e.name for e in prof.events()}, label
    # under a dispatch mode (here the tests' emulated CUDA) the mode sees irda_surrogate and its
    # recomputing backward, the CUDA kernels' pair
    with torch.profiler.profile() as prof:
        with emulated_cuda():
            torch.autograd.grad(irda_ext.irda_surrogate(*args), [args[0]])
    ran = {e.name for e in prof.events()}
    assert "irda_ext::irda_surrogate_with_partials" not in ran
    assert {"irda_ext_emulated::irda_surrogate", "irda_ext_emulated::irda_surrogate_backward"} <= ran


def test_the_partials_path_when_only_sigma_is_learned():
    """Only noise_var requires a gradient (a fixed head): the partials path, the recomputing bits."""
    args = list(surrogate_inputs(30, 3, 9, "cpu", dead_bins=(4,)))
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    args[10] = plain[10].clone().requires_grad_()
    with torch.profiler.profile() as prof:
        loss, _ = torch.ops.irda_ext.irda_surrogate(*args, "exact")
        g, = torch.autograd.grad(loss.sum(), [args[10]])
    assert "irda_ext::irda_surrogate_with_partials" in {e.name for e in prof.events()}
    _, lse = torch.ops.irda_ext.irda_surrogate(*plain, "exact")
    want = torch.ops.irda_ext.irda_surrogate_backward(torch.ones(30, dtype=torch.float64), *plain, "exact", lse)
    assert torch.equal(g, want[3].sum())


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_of_the_cpu_training_path(mode):
    args = surrogate_inputs(9, 3, 8, "cpu", dead_bins=(2,))
    torch.library.opcheck(torch.ops.irda_ext.irda_surrogate_with_partials.default, (*args, mode))
    _, _, partials = torch.ops.irda_ext.irda_surrogate_with_partials(*args, mode)
    torch.library.opcheck(torch.ops.irda_ext.irda_surrogate_partials_backward.default,
                          (torch.rand(9, dtype=torch.float64), partials, 0.5, 0.75, args[10], 3, mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [0, 1, 97])
def test_the_reduced_op_gives_the_op_and_reductions_bits(mode, dtype, reduction, n):
    """irda_surrogate_reduced is irda_surrogate then loss.mean() / loss.sum() (an empty mean is 0):
    the same loss and gradients, bit for bit; on the CPU under autograd in one node, which runs the
    training path (the partials) and leaves no reduction node in the graph."""
    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in surrogate_inputs(n, 3, 11, "cpu", dead_bins=(5,))]
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]

    def run(fused):
        a = list(plain)
        for j in (0, 6, 7, 10):
            a[j] = plain[j].clone().requires_grad_()
        with torch.profiler.profile() as prof:
            if fused:
                loss = torch.ops.irda_ext.irda_surrogate_reduced(*a, mode, reduction)
            else:
                per_sample = torch.ops.irda_ext.irda_surrogate(*a, mode)[0]
                loss = per_sample.mean() if reduction == "mean" and n else per_sample.sum()
            grads = torch.autograd.grad(loss * 1.7, [a[0], a[6], a[7], a[10]])
        return loss, grads, {e.name for e in prof.events()}

    (loss, grads, ran), (want, want_grads, _) = run(True), run(False)
    assert torch.equal(loss.detach(), want.detach())
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
    assert "SurrogateReduced" in loss.grad_fn.name()
    assert "irda_ext::irda_surrogate_with_partials" in ran
    assert not any("MeanBackward" in e or "SumBackward" in e for e in ran)
    if n == 0:
        assert loss.item() == 0


def test_the_reduced_op_elsewhere_is_the_composite():
    """Without a gradient to compute, and under a dispatch mode (the tests' emulated CUDA), the
    reduced op is irda_surrogate then the reduction: the mode sees irda_surrogate."""
    args = surrogate_inputs(13, 2, 7, "cpu", requires_grad=True, dead_bins=(3,))
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    want = torch.ops.irda_ext.irda_surrogate(*plain, "paper")[0].mean()
    with torch.no_grad():
        assert torch.equal(torch.ops.irda_ext.irda_surrogate_reduced(*args, "paper", "mean"), want)
    assert torch.ops.irda_ext.irda_surrogate_reduced(*plain, "paper", "mean").grad_fn is None
    with torch.profiler.profile() as prof:
        with emulated_cuda():
            loss = torch.ops.irda_ext.irda_surrogate_reduced(*args, "paper", "mean")
            torch.autograd.grad(loss, [args[0]])
    ran = {e.name for e in prof.events()}
    assert "irda_ext_emulated::irda_surrogate" in ran and "irda_ext::irda_surrogate_with_partials" not in ran
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_of_the_reduced_op(mode):
    args = surrogate_inputs(9, 3, 8, "cpu", requires_grad=True, dead_bins=(2,))
    for reduction in ("mean", "sum"):
        torch.library.opcheck(torch.ops.irda_ext.irda_surrogate_reduced.default, (*args, mode, reduction))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        torch.ops.irda_ext.irda_surrogate_reduced(*args, mode, "none")
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        with torch.no_grad():
            torch.ops.irda_ext.irda_surrogate_reduced(*args, mode, "max")


def test_the_functional_loss_takes_the_reduced_op_unless_weighted():
    args = surrogate_inputs(11, 2, 6, "cpu", requires_grad=True)
    with torch.profiler.profile() as prof:
        irda_ext.irda_surrogate(*args)
    assert "irda_ext::irda_surrogate_reduced" in {e.name for e in prof.events()}
    with torch.profiler.profile() as prof:
        weighted = irda_ext.irda_surrogate(*args, weight=torch.rand(11, dtype=torch.float64))
    assert "irda_ext::irda_surrogate_reduced" not in {e.name for e in prof.events()}
    assert weighted.dim() == 0


@pytest.mark.parametrize("mode", MODES)
def test_partials_backward_reads_the_gradient_through_its_stride(mode):
    """An expanded scalar (a reduction's backward hands one) and a strided view give the bits of
    the same values laid out contiguously."""
    args = surrogate_inputs(7, 2, 6, "cpu", dead_bins=(1,))
    _, _, partials = torch.ops.irda_ext.irda_surrogate_with_partials(*args, mode)
    op = torch.ops.irda_ext.irda_surrogate_partials_backward
    every_other = torch.rand(14, dtype=torch.float64)[::2]
    expanded = torch.tensor(0.3, dtype=torch.float64).expand(7)
    for grad in (every_other, expanded):
        got = op(grad, partials, 0.5, 0.75, args[10], 2, mode)
        want = op(grad.contiguous(), partials, 0.5, 0.75, args[10], 2, mode)
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_partials_backward_bad_input():
    args = surrogate_inputs(5, 2, 6, "cpu")
    _, _, partials = torch.ops.irda_ext.irda_surrogate_with_partials(*args, "exact")
    g, nv = torch.ones(5, dtype=torch.float64), args[10]
    op = torch.ops.irda_ext.irda_surrogate_partials_backward
    with pytest.raises(ValueError, match=r"partials must have shape \[n, 5\]"):
        op(g, partials[:, :4], 0.5, 0.75, nv, 2, "exact")
    with pytest.raises(ValueError, match=r"grad_loss must have shape \[5\]"):
        op(g[:4], partials, 0.5, 0.75, nv, 2, "exact")
    with pytest.raises(ValueError, match="noise_var must be positive"):
        op(g, partials, 0.5, 0.75, torch.tensor(0.0, dtype=torch.float64), 2, "exact")
    with pytest.raises(ValueError, match="mode must be"):
        op(g, partials, 0.5, 0.75, nv, 2, "other")
    with pytest.raises(ValueError, match="num_clusters must be positive"):
        op(g, partials, 0.5, 0.75, nv, 0, "exact")
    with pytest.raises(TypeError, match="float32 or float64"):
        op(g, partials.half(), 0.5, 0.75, nv, 2, "exact")


@pytest.mark.parametrize("device", devices())
def test_modes_agree_without_augmentation(device):
    args = list(surrogate_inputs(40, 3, 15, device, dead_bins=(4, 9)))
    args[8], args[9] = 0.0, 0.0
    exact = irda_ext.irda_surrogate(*args, mode="exact", reduction="none")
    paper = irda_ext.irda_surrogate(*args, mode="paper", reduction="none")
    torch.testing.assert_close(exact, paper, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(exact, ref.remse_loss(*args[:6], args[10]), rtol=1e-10, atol=1e-10)


def test_k1_is_balanced_mse_on_the_bin_grid():
    """K = 1, no augmentation: -log softmax over bins of -(t_b' - pred)^2 / (2 s^2) + log pi."""
    pred, target, b, centers, eta, lp, shift, var, _, _, nv = surrogate_inputs(12, 1, 9)
    loss = irda_ext.irda_surrogate(pred, target, b, centers, eta, lp, shift, var, 0.0, 0.0, nv, reduction="none")
    t = centers.expand(12, -1).clone()
    t[torch.arange(12), b] = target
    logits = -(t - pred[:, None]) ** 2 / (2 * nv) + lp
    want = -torch.log_softmax(logits, -1)[torch.arange(12), b]
    torch.testing.assert_close(loss, want)


def test_exact_mode_is_an_upper_bound_of_the_sampled_loss():
    """Jensen: E_g[ReMSE(g)] <= surrogate, g ~ N(pred + alpha shift, beta var); tight as var -> 0."""
    torch.manual_seed(0)
    args = list(surrogate_inputs(8, 3, 10, var_scale=0.4, noise_var=2.0))
    pred, target, b, centers, eta, lp, shift, var, alpha, beta, nv = args
    bound = irda_ext.irda_surrogate(*args, mode="exact", reduction="none")
    m = pred + alpha * shift
    samples = m + (beta * var).sqrt() * torch.randn(20000, 1, dtype=torch.float64)
    sampled = torch.stack([ref.remse_loss(g, target, b, centers, eta, lp, nv) for g in samples]).mean(0)
    stderr = torch.stack([ref.remse_loss(g, target, b, centers, eta, lp, nv) for g in samples[:2000]]).std(0) / 2000**0.5
    assert (sampled <= bound + 4 * stderr).all(), (sampled, bound)
    assert (bound - sampled).max() > 0  # not trivially equal
    tiny = list(args)
    tiny[7] = var * 1e-8
    torch.testing.assert_close(irda_ext.irda_surrogate(*tiny, reduction="none"),
                               ref.remse_loss(m, target, b, centers, eta, lp, nv), rtol=1e-6, atol=1e-6)


def test_reductions_and_weight():
    args = surrogate_inputs(10, 2, 6)
    per = irda_ext.irda_surrogate(*args, reduction="none")
    w = torch.rand(10, dtype=torch.float64)
    torch.testing.assert_close(irda_ext.irda_surrogate(*args, reduction="sum", weight=w), (per * w).sum())
    torch.testing.assert_close(irda_ext.irda_surrogate(*args), per.mean())
    empty = surrogate_inputs(0, 2, 6)
    assert irda_ext.irda_surrogate(*empty).item() == 0.0


def test_float32_close_to_float64():
    args64 = surrogate_inputs(64, 3, 30, var_scale=2.0)
    args32 = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args64]
    for mode in MODES:
        a = irda_ext.irda_surrogate(*args64, mode=mode, reduction="none")
        b = irda_ext.irda_surrogate(*args32, mode=mode, reduction="none")
        torch.testing.assert_close(b.double(), a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", devices())
def test_bad_input(device):
    args = list(surrogate_inputs(5, 2, 6, device, dead_bins=(3,)))
    with pytest.raises(ValueError, match="mode must be one of"):
        irda_ext.irda_surrogate(*args, mode="approx")
    with pytest.raises(ValueError, match="reduction"):
        irda_ext.irda_surrogate(*args, reduction="avg")
    bad = list(args)
    bad[6] = args[6][:3]
    with pytest.raises(ValueError, match=r"shift must have shape \[5\]"):
        irda_ext.irda_surrogate(*bad)
    bad = list(args)
    bad[4] = args[4][:, :4]
    with pytest.raises(ValueError, match=r"eta must have shape \[K, 6\]"):
        irda_ext.irda_surrogate(*bad)
    bad = list(args)
    bad[1] = args[1].float()
    with pytest.raises(TypeError, match="dtype"):
        irda_ext.irda_surrogate(*bad)


NAN, INF = float("nan"), float("inf")
# case: (argument, element, value, what the message says)
BAD_VALUES = {
    "bin_out_of_range": (2, 0, 6, r"bin_index.*(outside \[0, 6\)|\[0, num_bins\))"),
    "bin_without_prior": (2, 0, 3, r"log_prior of .*bin"),
    "nan_pred": (0, 1, NAN, r"pred.* must be finite"),
    "negative_var": (7, 2, -1.0, r"var must be non-negative"),
    "inf_var": (7, 2, INF, r"var must be non-negative and finite"),
    "zero_noise_var": (10, (), 0.0, r"noise_var must be positive"),
    "nan_target": (1, 3, NAN, r"target.* must be finite"),
    "inf_target": (1, 0, -INF, r"target.* must be finite"),
    "nan_shift": (6, 4, NAN, r"shift.* must be finite"),
    "inf_eta": (4, (1, 2), INF, r"eta.* must be finite"),
    "nan_centers": (3, 5, NAN, r"centers.* must be finite"),
    "nan_log_prior": (5, 1, NAN, r"log_prior.* not NaN or \+inf"),
}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", BAD_VALUES)
@pytest.mark.parametrize("mode", MODES)
def test_bad_values_raise_naming_the_input(device, case, mode):
    """Each value the CPU kernel rejects, rejected by the CUDA kernels' code too (emulated)."""
    if device == "cuda":
        pytest.skip("a device-side assertion on a GPU: test_cuda_precision.py checks it in a subprocess")
    j, where, value, message = BAD_VALUES[case]
    args = list(surrogate_inputs(5, 2, 6, device, dead_bins=(3,)))
    args[j] = args[j].clone()
    args[j][where] = value
    with pytest.raises(ValueError, match=message):
        irda_ext.irda_surrogate(*args, mode=mode)
    loss, lse = torch.ops.irda_ext.irda_surrogate(*surrogate_inputs(5, 2, 6, device, dead_bins=(3,)), mode)
    with pytest.raises(ValueError, match=message):  # the backward op checks too
        torch.ops.irda_ext.irda_surrogate_backward(torch.ones_like(loss), *args, mode, lse)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logits_spanning_thousands_match_reference(mode, dtype):
    """A small noise variance (u = 50) over 97 bins: the competitors' logits span
    thousands, so most exp terms of the CPU kernel's polynomial exp fall below the
    smallest normal number (the clamped path) next to terms of order one."""
    args64 = surrogate_inputs(33, 3, 97, requires_grad=True, var_scale=0.5, noise_var=0.01, dead_bins=(5, 60))
    args = [a.detach().to(dtype).requires_grad_(a.requires_grad)
            if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args64]
    got = irda_ext.irda_surrogate(*args, mode=mode, reduction="none")
    want = ref.irda_surrogate(*args64, mode=mode, reduction="none")
    assert want.abs().max() > 100  # the regime this test is about
    tol = dict(rtol=1e-10, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-2)
    torch.testing.assert_close(got.double(), want, **tol)
    wrt = lambda a: [a[0], a[6], a[7], a[10]]  # noqa: E731
    for a, b in zip(torch.autograd.grad(got.sum(), wrt(args)), torch.autograd.grad(want.sum(), wrt(args64))):
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"] * 10, atol=tol["atol"] * b.abs().max().item())


@pytest.mark.parametrize("mode", MODES)
def test_cluster_shares_above_one_match_reference(mode):
    """The functional op does not require eta in [0, 1]; the CPU kernel's padding
    competitors (which take the largest eta) must stay inert for any eta."""
    args = list(surrogate_inputs(13, 3, 7, requires_grad=True))
    args[4] = args[4] * 3.0
    got = irda_ext.irda_surrogate(*args, mode=mode, reduction="none")
    want = ref.irda_surrogate(*args, mode=mode, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _logits_near_1e6(device):
    """float32 inputs whose logits reach 1e5-1e6: targets near 1000, predictions near 0,
    u = 1 / (2 sigma^2) = 0.5, three bins 1000 apart; one term dominates each row."""
    g = torch.Generator().manual_seed(0)
    n = 16
    args = [torch.randn(n, generator=g, dtype=torch.float64) * 10,  # pred
            1000 + torch.rand(n, generator=g, dtype=torch.float64),  # target
            torch.zeros(n, dtype=torch.int64),  # every sample in bin 0
            torch.tensor([1000.5, 2000.5, 3000.5], dtype=torch.float64),  # centers
            torch.tensor([[0.3, 0.6, 0.5], [0.7, 0.4, 0.5]], dtype=torch.float64),  # eta
            torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)),  # log_prior
            torch.randn(n, generator=g, dtype=torch.float64),  # shift
            torch.rand(n, generator=g, dtype=torch.float64) * 0.01,  # var
            0.5, 0.75, torch.tensor(1.0, dtype=torch.float64)]
    args = [a.float().to(device) if isinstance(a, torch.Tensor) and a.is_floating_point() else
            a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    for j in (0, 6, 7, 10):
        args[j].requires_grad_()
    return args


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("one_var", [False, True])
def test_float32_logits_near_1e6(device, mode, one_var):
    """Backward recomputes every logit bit for bit as forward computed it (no fused
    multiply-add in one and not in the other; on CUDA --fmad=false): the dominant term's
    weight is then exactly 1 (CUDA: exp(logit - lse); the CPU: exp(logit - max), divided by
    the sum of the row's weights), and the float32 gradients are those of the
    float64 reference to float32 precision. A logit rounded differently by one ulp (0.008
    at 1e5) would move them by 1%; an own-bin shift term R1 left nonzero by a fused
    multiply-add would give d/dshift about 1e-5 in paper mode instead of 0. ``one_var``: every
    sample (all in bin 0) has the same var, as IRDALoss gives a bin's samples, so exact mode
    on the CPU reads its denominators from a table (csrc/cpu/irda_surrogate.cpp)."""
    args = _logits_near_1e6(device)
    if one_var:
        args[7] = torch.full_like(args[7], 0.004).requires_grad_()
    args64 = [a.detach().double().cpu().requires_grad_(a.requires_grad)
              if isinstance(a, torch.Tensor) and a.is_floating_point() else
              a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    got = irda_ext.irda_surrogate(*args, mode=mode, reduction="none")
    want = ref.irda_surrogate(*args64, mode=mode, reduction="none")
    assert want.abs().min() > 1e4  # the regime this test is about
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-6, atol=0)
    wrt = lambda a: [a[0], a[6], a[7], a[10]]  # noqa: E731
    for g, w in zip(torch.autograd.grad(got.sum(), wrt(args)), torch.autograd.grad(want.sum(), wrt(args64))):
        torch.testing.assert_close(g.double().cpu(), w, rtol=1e-5, atol=1e-6 + 1e-5 * w.abs().max().item())


@pytest.mark.parametrize("device", devices())
def test_second_derivative_names_the_twice_differentiable_reference(device):
    """The fused backward has no derivative: a second derivative raises (it silently gave
    zeros), naming irda_ext.reference.irda_surrogate; the first derivative with
    create_graph=True still works."""
    args = surrogate_inputs(6, 2, 7, device, requires_grad=True)
    g, = torch.autograd.grad(irda_ext.irda_surrogate(*args), args[0], create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="irda_ext.reference.irda_surrogate"):
        torch.autograd.grad(g.sum(), args[0])
    g_ref, = torch.autograd.grad(ref.irda_surrogate(*args), args[0], create_graph=True)
    torch.testing.assert_close(g, g_ref)
    torch.autograd.grad(g_ref.sum(), args[0])  # the reference is twice differentiable


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_raise_type_error(device, dtype):
    """float16/bfloat16 inputs: a TypeError naming the accepted dtypes (not NotImplementedError)."""
    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in surrogate_inputs(5, 2, 6, device)]
    with pytest.raises(TypeError, match="float32 or float64"):
        irda_ext.irda_surrogate(*args)
    S, mean, cov = torch.eye(3, device=device), torch.zeros(3, 2, device=device), torch.zeros(3, 2, 2, device=device)
    with pytest.raises(TypeError, match="float32 or float64"):
        irda_ext.wfds_smooth(S.to(dtype), mean.to(dtype), cov.to(dtype), 1)
