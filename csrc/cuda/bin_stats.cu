// Per-bin feature statistics (SPEC 2) on CUDA: the kernels of
// csrc/kernels/bin_stats.h launched on the current stream under a device guard.
#include <torch/library.h>

#include "../kernels/bin_stats.h"
#include "launch.cuh"

namespace irda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_moments_cuda(const at::Tensor& z, const at::Tensor& bin_index,
                                                                int64_t num_bins) {
  const c10::cuda::CUDAGuard guard(z.device());
  return bin_stats::bin_moments(cuda::current_exec(), z, bin_index, num_bins);
}

void bin_stats_update_cuda(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& z,
                           const at::Tensor& bin_index, std::optional<double> momentum) {
  const c10::cuda::CUDAGuard guard(mean.device());
  bin_stats::bin_stats_update(cuda::current_exec(), count, mean, cov, z, bin_index, momentum);
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) {
  m.impl("bin_moments", &irda::bin_moments_cuda);
  m.impl("bin_stats_update_", &irda::bin_stats_update_cuda);
}
