// Fused IRDA surrogate (SPEC 6) on CUDA: the kernels of csrc/kernels/irda_surrogate.h
// launched on the current stream under a device guard.
#include <torch/library.h>

#include "../kernels/irda_surrogate.h"
#include "launch.cuh"

namespace irda {
namespace {

std::tuple<at::Tensor, at::Tensor> irda_surrogate_cuda(const at::Tensor& pred, const at::Tensor& target,
                                                       const at::Tensor& bin_index, const at::Tensor& centers,
                                                       const at::Tensor& eta, const at::Tensor& log_prior,
                                                       const at::Tensor& shift, const at::Tensor& var, double alpha,
                                                       double beta, const at::Tensor& noise_var,
                                                       c10::string_view mode) {
  const c10::cuda::CUDAGuard guard(pred.device());
  return surrogate::forward(cuda::current_exec(), pred, target, bin_index, centers, eta, log_prior, shift, var, alpha,
                            beta, noise_var, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_surrogate_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
    const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift,
    const at::Tensor& var, double alpha, double beta, const at::Tensor& noise_var, c10::string_view mode,
    const at::Tensor& lse) {
  const c10::cuda::CUDAGuard guard(pred.device());
  return surrogate::backward(cuda::current_exec(), grad_loss, pred, target, bin_index, centers, eta, log_prior, shift,
                             var, alpha, beta, noise_var, mode, lse);
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) {
  m.impl("irda_surrogate", &irda::irda_surrogate_cuda);
  m.impl("irda_surrogate_backward", &irda::irda_surrogate_backward_cuda);
}
