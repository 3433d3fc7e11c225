// The merge of dense per-bin batch moments into running statistics (SPEC 2): the CUDA
// kernels, written once for the GPU (csrc/cuda/merge_bin_moments.cu) and the emulated
// launch, the same math as csrc/cpu/merge_bin_moments.cpp (merge_math.h):
//   1. MergeCov: every entry of the D x D covariance of every bin with batch_count > 0,
//      reading the old count and mean,
//   2. MergeMean: the new mean and count, after 1 has read the old ones.
// Bins absent from the batch are never read or written. A negative batch_count is
// rejected on the device, as the CPU kernel rejects it.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <algorithm>

#include "../checks.h"
#include "../merge_math.h"
#include "launch.h"

namespace irda {
namespace merge_moments {

constexpr int kThreads = 256;
constexpr int64_t kMaxEntryBlocks = 4096;  // blocks along the D x D entries; threads stride over the rest

// blockIdx.y strides over bins, the x dimension over the bin's D x D entries.
template <typename T>
struct MergeCov {
  static constexpr int kThreads = merge_moments::kThreads;
  using Shared = NoShared;
  const int64_t* count;
  const T* mean;
  T* cov;
  const int64_t* batch_count;
  const T* batch_mean;
  const T* batch_scatter;
  int64_t B, D;
  double momentum;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    for (int64_t b = blk.block_idx().y; b < B; b += blk.grid_dim().y) {
      const int64_t nb = batch_count[b];
      blk.threads([&](const Thread& t) {
        if (t.x == 0) IRDA_KERNEL_CHECK(nb >= 0, "batch_count must be non-negative");
      });
      if (nb == 0) continue;  // absent bin: untouched (uniform over the block)
      blk.threads([&](const Thread& t) {
        const MergeCoef c = merge_coefficients(count[b], nb, momentum);
        const T keep = static_cast<T>(c.keep), sample_w = static_cast<T>(c.sample_w);
        const T delta_w = static_cast<T>(c.delta_w);
        const T* mu = mean + b * D;
        const T* m = batch_mean + b * D;
        const int64_t stride = int64_t(blk.grid_dim().x) * blk.block_dim().x;
        for (int64_t idx = int64_t(blk.block_idx().x) * blk.block_dim().x + t.x; idx < D * D; idx += stride) {
          const int64_t r = idx / D, e = idx % D;
          const int64_t at = b * D * D + idx;
          cov[at] = merged_cov_entry(keep, sample_w, delta_w, batch_scatter[at], m[r] - mu[r], m[e] - mu[e], cov[at]);
        }
      });
    }
  }
};

// New mean and count of every bin in the batch; one block per bin, so the block
// reads count[b] before its thread 0 advances it.
template <typename T>
struct MergeMean {
  static constexpr int kThreads = merge_moments::kThreads;
  using Shared = NoShared;
  int64_t* count;
  T* mean;
  const int64_t* batch_count;
  const T* batch_mean;
  int64_t B, D;
  double momentum;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    for (int64_t b = blk.block_idx().x; b < B; b += blk.grid_dim().x) {
      const int64_t nb = batch_count[b];
      blk.threads([&](const Thread& t) {
        if (t.x == 0) IRDA_KERNEL_CHECK(nb >= 0, "batch_count must be non-negative");
      });
      if (nb == 0) continue;
      blk.threads([&](const Thread& t) {
        const MergeCoef c = merge_coefficients(count[b], nb, momentum);
        for (int64_t d = t.x; d < D; d += blk.block_dim().x) {
          mean[b * D + d] = static_cast<T>(
              merged_mean(c, static_cast<double>(mean[b * D + d]), static_cast<double>(batch_mean[b * D + d])));
        }
      });
      blk.sync();
      blk.threads([&](const Thread& t) {
        if (t.x == 0) count[b] += nb;
      });
      blk.sync();
    }
  }
};

template <class Exec>
void merge_bin_moments(const Exec& ex, at::Tensor& count, at::Tensor& mean, at::Tensor& cov,
                       const at::Tensor& batch_count, const at::Tensor& batch_mean, const at::Tensor& batch_scatter,
                       std::optional<double> momentum) {
  check_stats(count, mean, cov);
  check_batch_moments(batch_count, batch_mean, batch_scatter, mean);
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous() && cov.is_contiguous(),
                    "the statistics (count, mean, cov) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t B = mean.size(0), D = mean.size(1);
  if (B == 0) return;
  const at::Tensor bc = batch_count.contiguous(), bm = batch_mean.contiguous(), bs = batch_scatter.contiguous();
  const unsigned bin_blocks = static_cast<unsigned>(std::min(B, kMaxGridY));
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "merge_bin_moments", [&] {
    if (D > 0) {
      const Dim3 grid{static_cast<unsigned>(std::min(ceil_div(D * D, kThreads), kMaxEntryBlocks)), bin_blocks};
      ex.launch("merge_cov", grid, Dim3{kThreads},
                MergeCov<scalar_t>{count.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(), cov.data_ptr<scalar_t>(),
                                   bc.data_ptr<int64_t>(), bm.data_ptr<scalar_t>(), bs.data_ptr<scalar_t>(), B, D, rho});
    }
    ex.launch("merge_mean", Dim3{bin_blocks}, Dim3{kThreads},
              MergeMean<scalar_t>{count.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(), bc.data_ptr<int64_t>(),
                                  bm.data_ptr<scalar_t>(), B, D, rho});
  });
}

}  // namespace merge_moments
}  // namespace irda
