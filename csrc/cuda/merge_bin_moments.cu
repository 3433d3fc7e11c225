// The merge of dense per-bin batch moments into running statistics (SPEC 2) on
// CUDA, the same math as csrc/cpu/merge_bin_moments.cpp (merge_math.h):
//   1. merge_cov_kernel: every entry of the D x D covariance of every bin with
//      batch_count > 0, reading the old count and mean,
//   2. merge_mean_kernel: the new mean and count, after 1 has read the old ones.
// Bins absent from the batch are never read or written. A negative
// batch_count (rejected by the CPU kernel) would need a host synchronisation
// to detect here; such a bin is treated as absent.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../merge_math.h"
#include "device_utils.cuh"

namespace irda {
namespace {

using cuda::ceil_div;
using cuda::kMaxGridY;

constexpr int kThreads = 256;
constexpr int64_t kMaxEntryBlocks = 4096;  // blocks along the D x D entries; threads stride over the rest

// blockIdx.y strides over bins, the x dimension over the bin's D x D entries.
template <typename T>
__global__ void merge_cov_kernel(const int64_t* __restrict__ count, const T* __restrict__ mean, T* __restrict__ cov,
                                 const int64_t* __restrict__ batch_count, const T* __restrict__ batch_mean,
                                 const T* __restrict__ batch_scatter, int64_t B, int64_t D, double momentum) {
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t nb = batch_count[b];
    if (nb <= 0) continue;  // absent bin: untouched (uniform over the block)
    const MergeCoef c = merge_coefficients(count[b], nb, momentum);
    const T keep = static_cast<T>(c.keep), sample_w = static_cast<T>(c.sample_w);
    const T delta_w = static_cast<T>(c.delta_w);
    const T* mu = mean + b * D;
    const T* m = batch_mean + b * D;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < D * D;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t r = idx / D, e = idx % D;
      const int64_t at = b * D * D + idx;
      cov[at] = merged_cov_entry(keep, sample_w, delta_w, batch_scatter[at], m[r] - mu[r], m[e] - mu[e], cov[at]);
    }
  }
}

// New mean and count of every bin in the batch; one block per bin, so the
// block reads count[b] before its thread 0 advances it.
template <typename T>
__global__ void merge_mean_kernel(int64_t* __restrict__ count, T* __restrict__ mean,
                                  const int64_t* __restrict__ batch_count, const T* __restrict__ batch_mean, int64_t B,
                                  int64_t D, double momentum) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const int64_t nb = batch_count[b];
    if (nb <= 0) continue;
    const MergeCoef c = merge_coefficients(count[b], nb, momentum);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      mean[b * D + d] = static_cast<T>(
          merged_mean(c, static_cast<double>(mean[b * D + d]), static_cast<double>(batch_mean[b * D + d])));
    }
    __syncthreads();
    if (threadIdx.x == 0) count[b] += nb;
    __syncthreads();
  }
}

void merge_bin_moments_cuda(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& batch_count,
                            const at::Tensor& batch_mean, const at::Tensor& batch_scatter,
                            std::optional<double> momentum) {
  check_stats(count, mean, cov);
  check_batch_moments(batch_count, batch_mean, batch_scatter, mean);
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous() && cov.is_contiguous(),
                    "the statistics (count, mean, cov) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t B = mean.size(0), D = mean.size(1);
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(mean.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor bc = batch_count.contiguous(), bm = batch_mean.contiguous(), bs = batch_scatter.contiguous();
  const unsigned bin_blocks = static_cast<unsigned>(std::min(B, kMaxGridY));
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "merge_bin_moments_cuda", [&] {
    if (D > 0) {
      const dim3 grid(static_cast<unsigned>(std::min(ceil_div(D * D, kThreads), kMaxEntryBlocks)), bin_blocks);
      merge_cov_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          count.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(), cov.data_ptr<scalar_t>(), bc.data_ptr<int64_t>(),
          bm.data_ptr<scalar_t>(), bs.data_ptr<scalar_t>(), B, D, rho);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    merge_mean_kernel<scalar_t><<<bin_blocks, kThreads, 0, stream>>>(
        count.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(), bc.data_ptr<int64_t>(), bm.data_ptr<scalar_t>(), B, D,
        rho);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) { m.impl("merge_bin_moments_", &irda::merge_bin_moments_cuda); }
