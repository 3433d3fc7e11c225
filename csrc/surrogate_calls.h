// Calls of the surrogate's CPU training pair through the dispatcher (csrc/ops.cpp's schemas),
// shared by its autograd (csrc/autograd.cpp) and by irda_head_loss (csrc/cpu/irda_head.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace irda {

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> call_surrogate_with_partials(
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

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_surrogate_partials_backward(
    const at::Tensor& grad_loss, const at::Tensor& partials, double alpha, double beta, const at::Tensor& noise_var,
    int64_t num_clusters, c10::string_view mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("irda_ext::irda_surrogate_partials_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, double, double, const at::Tensor&, int64_t,
                           c10::string_view)>();
  return op.call(grad_loss, partials, alpha, beta, noise_var, num_clusters, mode);
}

}  // namespace irda
