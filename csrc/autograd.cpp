// Autograd of irda_ext::irda_surrogate and irda_ext::irda_head_loss, in C++.
//
// The same rule as the Python registration that the emulated namespace keeps
// (irda_ext/_ops.py): save the inputs and the per-(sample, cluster) log-sum-exps, and in
// backward call irda_surrogate_backward, which recomputes the grid; the noise_var
// gradient is a per-sample vector summed here in a fixed order (deterministic). On the
// CPU, when a gradient will follow, the forward is irda_surrogate_with_partials instead:
// it evaluates each term and its derivatives once and keeps per-sample partial sums, and
// the backward (irda_surrogate_partials_backward) is an O(n) scaling of them, to the same
// bits as the recomputing backward: forward and backward together cost a fifth to a half
// less (less where IRDALoss gives a bin one var and the kernel's tables already spare most
// of a term; bench/results/surrogate_bound.md). A forward under grad mode that no backward
// follows (an evaluation without no_grad) pays the derivatives for nothing, and a backward
// that builds a graph pays both passes.
// torch.library.register_autograd cost ~0.4 ms of Python per training step around a
// kernel that takes ~0.2 ms at the bundled data sets' sizes; this costs a few
// microseconds. Every kernel (CPU, CUDA) runs below it, and a second derivative still
// meets irda_surrogate_backward's autograd, which raises (irda_ext/_ops.py): a backward
// that builds a graph takes the recomputing path.
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>

#include "surrogate_calls.h"

namespace irda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> surrogate_forward(const at::Tensor& pred, const at::Tensor& target,
                                                     const at::Tensor& bin_index, const at::Tensor& centers,
                                                     const at::Tensor& eta, const at::Tensor& log_prior,
                                                     const at::Tensor& shift, const at::Tensor& var, double alpha,
                                                     double beta, const at::Tensor& noise_var, c10::string_view mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_surrogate", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                           const at::Tensor&, c10::string_view)>();
  return op.call(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> surrogate_backward(
    const at::Tensor& grad_loss, const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
    const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift,
    const at::Tensor& var, double alpha, double beta, const at::Tensor& noise_var, c10::string_view mode,
    const at::Tensor& lse) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_surrogate_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, double, double, const at::Tensor&, c10::string_view, const at::Tensor&)>();
  return op.call(grad_loss, pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var,
                 mode, lse);
}

// The gradients of irda_surrogate's inputs (in its argument order, then one for each of the
// two non-tensor arguments after noise_var) from grad_loss [n] and what the forward saved:
// the inputs, lse and (the CPU training path) the partials. Shared by irda_surrogate's node
// and irda_surrogate_reduced's.
variable_list surrogate_input_grads(AutogradContext* ctx, const variable_list& s, const at::Tensor& grad_loss) {
  const at::Tensor &pred = s[0], &eta = s[4], &noise_var = s[8], &partials = s[10];
  const std::string mode = ctx->saved_data["mode"].toStringRef();
  const double alpha = ctx->saved_data["alpha"].toDouble(), beta = ctx->saved_data["beta"].toDouble();
  at::Tensor g_pred, g_shift, g_var, g_nv;
  // grad mode is on in a backward only under create_graph
  if (partials.defined() && !at::GradMode::is_enabled()) {
    std::tie(g_pred, g_shift, g_var, g_nv) =
        call_surrogate_partials_backward(grad_loss, partials, alpha, beta, noise_var, eta.size(0), mode);
  } else {
    std::tie(g_pred, g_shift, g_var, g_nv) = surrogate_backward(grad_loss, pred, s[1], s[2], s[3], eta, s[5], s[6],
                                                                s[7], alpha, beta, noise_var, mode, s[9]);
  }
  // per-sample contributions summed in a fixed order
  const at::Tensor g_noise = g_nv.sum().reshape_symint(noise_var.sym_sizes());
  const at::Tensor none;
  return {g_pred, none, none, none, none, none, g_shift, g_var, none, none, g_noise, none, none};
}

class Surrogate : public torch::autograd::Function<Surrogate> {
 public:
  // with_partials: the CPU path that keeps per-sample partials (see the top of this file);
  // otherwise the inputs and lse are saved and the backward recomputes the grid.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target,
                               const at::Tensor& bin_index, const at::Tensor& centers, const at::Tensor& eta,
                               const at::Tensor& log_prior, const at::Tensor& shift, const at::Tensor& var,
                               double alpha, double beta, const at::Tensor& noise_var, c10::string_view mode,
                               bool with_partials) {
    at::AutoDispatchBelowADInplaceOrView below;
    // lse is not differentiable: no zero gradient built for it in every backward
    ctx->set_materialize_grads(false);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["mode"] = std::string(mode);
    at::Tensor loss, lse, partials;
    if (with_partials) {
      std::tie(loss, lse, partials) = call_surrogate_with_partials(pred, target, bin_index, centers, eta, log_prior,
                                                                   shift, var, alpha, beta, noise_var, mode);
    } else {
      std::tie(loss, lse) =
          surrogate_forward(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode);
    }
    // The inputs and lse in both cases: a backward that builds a graph (create_graph) takes
    // irda_surrogate_backward, whose autograd raises a helpful error at a second derivative.
    ctx->save_for_backward({pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, lse, partials});
    ctx->mark_non_differentiable({lse});
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    return surrogate_input_grads(ctx, s, grads[0].defined() ? grads[0] : at::zeros_like(s[0]));
  }
};

// Whether irda_surrogate's CPU training path (the partials) serves these inputs: grad mode,
// an input that requires a gradient, every tensor on the CPU (the partials op has no CUDA
// kernel, and a misplaced input must meet irda_surrogate's device check, not a missing
// kernel) and no Python dispatch mode (fake tensors, tracing, the tests' emulated CUDA: the
// mode sees the canonical pair irda_surrogate / irda_surrogate_backward). The partials are
// worth their O(n) memory and the derivatives' arithmetic only when a backward will read
// them; the CUDA kernels recompute in their backward.
bool partials_path(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
                   const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior,
                   const at::Tensor& shift, const at::Tensor& var, const at::Tensor& noise_var) {
  if (!at::GradMode::is_enabled() || c10::impl::dispatch_mode_enabled()) return false;
  if (!(pred.requires_grad() || shift.requires_grad() || var.requires_grad() || noise_var.requires_grad())) return false;
  for (const at::Tensor* t : {&pred, &target, &bin_index, &centers, &eta, &log_prior, &shift, &var, &noise_var}) {
    if (!t->device().is_cpu()) return false;
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor> irda_surrogate_autograd(const at::Tensor& pred, const at::Tensor& target,
                                                           const at::Tensor& bin_index, const at::Tensor& centers,
                                                           const at::Tensor& eta, const at::Tensor& log_prior,
                                                           const at::Tensor& shift, const at::Tensor& var,
                                                           double alpha, double beta, const at::Tensor& noise_var,
                                                           c10::string_view mode) {
  const bool with_partials = partials_path(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var);
  variable_list out = Surrogate::apply(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                       noise_var, mode, with_partials);
  return {out[0], out[1]};
}

// irda_surrogate_reduced: irda_surrogate's loss reduced, "mean" (an empty batch gives 0, as
// irda_ext.irda_surrogate's does) or "sum".
void check_reduction(c10::string_view reduction) {
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum", "reduction must be 'mean' or 'sum', got '", reduction,
                    "'");
}

at::Tensor reduce_loss(const at::Tensor& loss, c10::string_view reduction) {
  check_reduction(reduction);
  return reduction == "mean" && loss.size(0) > 0 ? loss.mean() : loss.sum();
}

// What it is on every device, and under autograd wherever the CPU training path does not
// serve: irda_surrogate (with its own autograd), then the reduction.
at::Tensor irda_surrogate_reduced_composite(const at::Tensor& pred, const at::Tensor& target,
                                            const at::Tensor& bin_index, const at::Tensor& centers,
                                            const at::Tensor& eta, const at::Tensor& log_prior,
                                            const at::Tensor& shift, const at::Tensor& var, double alpha, double beta,
                                            const at::Tensor& noise_var, c10::string_view mode,
                                            c10::string_view reduction) {
  const at::Tensor loss = std::get<0>(
      surrogate_forward(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode));
  return reduce_loss(loss, reduction);
}

// out = x / n for 0-dim CPU tensors x and out: loss.mean()'s division and MeanBackward's
// (torch's CPU mean is the sum divided by the count, ReduceOps.cpp), the same IEEE division
// of the same operands, without two dispatches and the count's conversion to a tensor.
void divide_by_count(const at::Tensor& out, const at::Tensor& x, int64_t n) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "divide_by_count", [&] {
    *out.data_ptr<scalar_t>() = *x.const_data_ptr<scalar_t>() / static_cast<scalar_t>(n);
  });
}

// On the CPU training path: the partials' forward and the reduction in one autograd node,
// whose backward hands grad / n (mean) or grad to every sample, the values the reduction's
// own node would hand to irda_surrogate's: the same bits as the composite, one node and its
// dispatches fewer (irda_ext.irda_surrogate with reduction "mean": the mean, MeanBackward and
// their conversions of the count took 5-8 us a call here, at n = 1 as much as the kernel).
class SurrogateReduced : public torch::autograd::Function<SurrogateReduced> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target,
                               const at::Tensor& bin_index, const at::Tensor& centers, const at::Tensor& eta,
                               const at::Tensor& log_prior, const at::Tensor& shift, const at::Tensor& var,
                               double alpha, double beta, const at::Tensor& noise_var, c10::string_view mode,
                               c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["mean"] = reduction == "mean";
    auto [loss, lse, partials] = call_surrogate_with_partials(pred, target, bin_index, centers, eta, log_prior, shift,
                                                              var, alpha, beta, noise_var, mode);
    ctx->save_for_backward({pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, lse, partials});
    const int64_t n = loss.size(0);
    at::Tensor out = loss.sum();
    if (reduction == "mean" && n > 0) divide_by_count(out, out, n);
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const int64_t n = s[0].size(0);
    at::Tensor grad = grads[0];
    if (ctx->saved_data["mean"].toBool() && n > 0) {
      if (grad.has_storage() && grad.is_cpu()) {
        at::Tensor divided = at::empty({}, grad.options());
        divide_by_count(divided, grad, n);
        grad = divided;
      } else {  // a wrapper tensor (a functorch transform's): the op, the same division
        grad = grad.div(c10::Scalar(n));
      }
    }
    // every sample's gradient, as SumBackward's and MeanBackward's: the partials' backward
    // reads it through its stride (0)
    return surrogate_input_grads(ctx, s, grad.expand({n}));
  }
};

at::Tensor irda_surrogate_reduced_autograd_cpu(const at::Tensor& pred, const at::Tensor& target,
                                               const at::Tensor& bin_index, const at::Tensor& centers,
                                               const at::Tensor& eta, const at::Tensor& log_prior,
                                               const at::Tensor& shift, const at::Tensor& var, double alpha,
                                               double beta, const at::Tensor& noise_var, c10::string_view mode,
                                               c10::string_view reduction) {
  if (!partials_path(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var)) {
    return irda_surrogate_reduced_composite(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                            noise_var, mode, reduction);
  }
  check_reduction(reduction);
  return SurrogateReduced::apply(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var,
                                 mode, reduction)[0];
}

// irda_head_loss (host-only, csrc/cpu/irda_head.cpp): the forward op returns what its
// backward op reads; differentiable in pred, weight, bias (mode "paper"; in mode "exact" the
// bias reaches the loss only through pred) and log_sigma. The statistics and the grid are
// constants: a graph through them is refused rather than given zero gradients.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> head_loss_forward(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& offset, const at::Tensor& cov_upper, const at::Tensor& keep,
    const at::Tensor& iso, const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, double alpha,
    double beta, const at::Tensor& log_sigma, c10::string_view mode, c10::string_view reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_head_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                           const at::Tensor&, c10::string_view, c10::string_view)>();
  return op.call(pred, target, bin_index, weight, bias, offset, cov_upper, keep, iso, centers, eta, log_prior, alpha, beta,
                 log_sigma, mode, reduction);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> head_loss_backward(
    const at::Tensor& grad, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& offset, const at::Tensor& keep, const at::Tensor& iso,
    const at::Tensor& bin_shift, const at::Tensor& bin_var, const at::Tensor& cov_w, const at::Tensor& partials,
    double alpha, double beta, const at::Tensor& log_sigma, int64_t num_clusters, c10::string_view mode,
    c10::string_view reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_head_loss_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                           const at::Tensor&, int64_t, c10::string_view, c10::string_view)>();
  return op.call(grad, target, bin_index, weight, bias, offset, keep, iso, bin_shift, bin_var, cov_w, partials, alpha,
                 beta, log_sigma, num_clusters, mode, reduction);
}

class HeadLoss : public torch::autograd::Function<HeadLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target,
                               const at::Tensor& bin_index, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& offset, const at::Tensor& cov_upper, const at::Tensor& keep,
                               const at::Tensor& iso, const at::Tensor& centers, const at::Tensor& eta,
                               const at::Tensor& log_prior, double alpha, double beta, const at::Tensor& log_sigma,
                               c10::string_view mode, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    // the other outputs are not differentiable: no zero gradients built for them (4 ops a step)
    ctx->set_materialize_grads(false);
    auto [loss, bin_shift, bin_var, cov_w, partials] = head_loss_forward(
        pred, target, bin_index, weight, bias, offset, cov_upper, keep, iso, centers, eta, log_prior, alpha, beta, log_sigma,
        mode, reduction);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["num_clusters"] = eta.size(0);
    ctx->save_for_backward({target, bin_index, weight, bias, offset, keep, iso, bin_shift, bin_var, cov_w, partials,
                            log_sigma});
    ctx->mark_non_differentiable({bin_shift, bin_var, cov_w, partials});
    return {loss, bin_shift, bin_var, cov_w, partials};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const at::Tensor grad = grads[0].defined()          ? grads[0]
                            : reduction == "none" ? at::zeros_like(s[0])
                                                  : at::zeros({}, s[0].options());
    auto call = [&] {
      return head_loss_backward(grad, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                                ctx->saved_data["alpha"].toDouble(), ctx->saved_data["beta"].toDouble(), s[11],
                                ctx->saved_data["num_clusters"].toInt(), mode, reduction);
    };
    at::Tensor g_pred, g_weight, g_bias, g_log_sigma;
    if (at::GradMode::is_enabled()) {
      // create_graph: through the backward op's autograd (irda_ext/_ops.py), which raises
      // at a second derivative instead of giving a silent zero
      std::tie(g_pred, g_weight, g_bias, g_log_sigma) = call();
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(g_pred, g_weight, g_bias, g_log_sigma) = call();
    }
    const at::Tensor none;
    return {g_pred, none, none, g_weight, mode == "paper" ? g_bias : none, none, none, none, none, none, none, none,
            none, none, g_log_sigma, none, none};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_head_loss_autograd(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& offset, const at::Tensor& cov_upper, const at::Tensor& keep,
    const at::Tensor& iso, const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, double alpha,
    double beta, const at::Tensor& log_sigma, c10::string_view mode, c10::string_view reduction) {
  if (at::GradMode::is_enabled()) {
    const char* names[] = {"target", "offset", "cov_upper", "keep", "iso", "centers", "eta", "log_prior"};
    const at::Tensor* constants[] = {&target, &offset, &cov_upper, &keep, &iso, &centers, &eta, &log_prior};
    for (int j = 0; j < 8; ++j) {
      TORCH_CHECK_VALUE(!constants[j]->requires_grad(), "irda_head_loss is differentiable in pred, weight, bias and ",
                        "log_sigma only, its other inputs are constants; ", names[j], " requires grad (detach it, ",
                        "or use the unfused loss: IRDALoss.head_loss takes it then)");
    }
  }
  variable_list out = HeadLoss::apply(pred, target, bin_index, weight, bias, offset, cov_upper, keep, iso, centers, eta,
                                      log_prior, alpha, beta, log_sigma, mode, reduction);
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, Autograd, m) {
  m.impl("irda_surrogate", &irda::irda_surrogate_autograd);
  m.impl("irda_head_loss", &irda::irda_head_loss_autograd);
}

// irda_surrogate_reduced: the composite on every device and key, but for autograd on the CPU.
TORCH_LIBRARY_IMPL(irda_ext, CompositeImplicitAutograd, m) {
  m.impl("irda_surrogate_reduced", &irda::irda_surrogate_reduced_composite);
}

TORCH_LIBRARY_IMPL(irda_ext, AutogradCPU, m) {
  m.impl("irda_surrogate_reduced", &irda::irda_surrogate_reduced_autograd_cpu);
}
