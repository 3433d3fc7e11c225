// The merge of dense per-bin batch moments (SPEC 2) on CUDA: the kernels of
// csrc/kernels/merge_bin_moments.h launched on the current stream under a device guard.
#include <torch/library.h>

#include "../kernels/merge_bin_moments.h"
#include "launch.cuh"

namespace irda {
namespace {

void merge_bin_moments_cuda(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& batch_count,
                            const at::Tensor& batch_mean, const at::Tensor& batch_scatter,
                            std::optional<double> momentum) {
  const c10::cuda::CUDAGuard guard(mean.device());
  merge_moments::merge_bin_moments(cuda::current_exec(), count, mean, cov, batch_count, batch_mean, batch_scatter,
                                   momentum);
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) { m.impl("merge_bin_moments_", &irda::merge_bin_moments_cuda); }
