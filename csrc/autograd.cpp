// Autograd of irda_ext::irda_surrogate, in C++.
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
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> surrogate_with_partials(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& centers,
    const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift, const at::Tensor& var, double alpha,
    double beta, const at::Tensor& noise_var, c10::string_view mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_surrogate_with_partials", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                           const at::Tensor&, c10::string_view)>();
  return op.call(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> surrogate_partials_backward(
    const at::Tensor& grad_loss, const at::Tensor& partials, double alpha, double beta, const at::Tensor& noise_var,
    int64_t num_clusters, c10::string_view mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_surrogate_partials_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, double, double, const at::Tensor&, int64_t,
                           c10::string_view)>();
  return op.call(grad_loss, partials, alpha, beta, noise_var, num_clusters, mode);
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
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["mode"] = std::string(mode);
    at::Tensor loss, lse, partials;
    if (with_partials) {
      std::tie(loss, lse, partials) = surrogate_with_partials(pred, target, bin_index, centers, eta, log_prior, shift,
                                                              var, alpha, beta, noise_var, mode);
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
    const at::Tensor &pred = s[0], &eta = s[4], &noise_var = s[8], &partials = s[10];
    const at::Tensor grad_loss = grads[0].defined() ? grads[0] : at::zeros_like(pred);
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const double alpha = ctx->saved_data["alpha"].toDouble(), beta = ctx->saved_data["beta"].toDouble();
    at::Tensor g_pred, g_shift, g_var, g_nv;
    // grad mode is on in a backward only under create_graph
    if (partials.defined() && !at::GradMode::is_enabled()) {
      std::tie(g_pred, g_shift, g_var, g_nv) =
          surrogate_partials_backward(grad_loss, partials, alpha, beta, noise_var, eta.size(0), mode);
    } else {
      std::tie(g_pred, g_shift, g_var, g_nv) = surrogate_backward(grad_loss, pred, s[1], s[2], s[3], eta, s[5], s[6],
                                                                  s[7], alpha, beta, noise_var, mode, s[9]);
    }
    // per-sample contributions summed in a fixed order
    const at::Tensor g_noise = g_nv.sum().reshape_symint(noise_var.sym_sizes());
    const at::Tensor none;
    return {g_pred, none, none, none, none, none, g_shift, g_var, none, none, g_noise, none, none};
  }
};

std::tuple<at::Tensor, at::Tensor> irda_surrogate_autograd(const at::Tensor& pred, const at::Tensor& target,
                                                           const at::Tensor& bin_index, const at::Tensor& centers,
                                                           const at::Tensor& eta, const at::Tensor& log_prior,
                                                           const at::Tensor& shift, const at::Tensor& var,
                                                           double alpha, double beta, const at::Tensor& noise_var,
                                                           c10::string_view mode) {
  // The partials are worth their O(n) memory and the derivatives' arithmetic only when a
  // backward will read them; the CUDA kernels recompute in their backward. Under a Python
  // dispatch mode (fake tensors, tracing, the tests' emulated CUDA) the mode sees the
  // canonical pair irda_surrogate / irda_surrogate_backward.
  // Every tensor on the CPU: the partials op has no CUDA kernel, and a misplaced input must
  // meet irda_surrogate's device check, not a missing kernel.
  bool on_cpu = true;
  for (const at::Tensor* t : {&pred, &target, &bin_index, &centers, &eta, &log_prior, &shift, &var, &noise_var}) {
    on_cpu = on_cpu && t->device().is_cpu();
  }
  const bool with_partials =
      at::GradMode::is_enabled() && on_cpu && !c10::impl::dispatch_mode_enabled() &&
      (pred.requires_grad() || shift.requires_grad() || var.requires_grad() || noise_var.requires_grad());
  variable_list out = Surrogate::apply(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                                       noise_var, mode, with_partials);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, Autograd, m) { m.impl("irda_surrogate", &irda::irda_surrogate_autograd); }
