// Banded W-FDS smoothing (SPEC 3) on CUDA: the kernels of csrc/kernels/wfds_smooth.h
// launched on the current stream under a device guard.
#include <torch/library.h>

#include "../kernels/wfds_smooth.h"
#include "launch.cuh"

namespace irda {
namespace {

std::tuple<at::Tensor, at::Tensor> wfds_smooth_cuda(const at::Tensor& weights, const at::Tensor& mean,
                                                    const at::Tensor& cov, int64_t bandwidth) {
  const c10::cuda::CUDAGuard guard(mean.device());
  return wfds::wfds_smooth(cuda::current_exec(), weights, mean, cov, bandwidth);
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) { m.impl("wfds_smooth", &irda::wfds_smooth_cuda); }
