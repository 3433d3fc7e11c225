// Per-bin feature statistics (SPEC 2) on CUDA, the same math as
// csrc/cpu/bin_stats.cpp.
//
// The batch is grouped by bin segment-wise: a stable device sort of the bin
// indices gives each bin's samples as a contiguous run order[offset[b] ..
// offset[b + 1]) (offsets by binary search, no host synchronisation). Then
//   1. bin_mean_kernel: the batch mean m_b of every bin (two-pass centring),
//   2. bin_cov_kernel: for every bin, 64 x 64 tiles of its D x D matrix; a
//      block stages the bin's centred samples in shared memory, accumulates
//      sum (z - m_b)(z - m_b)^T in registers and applies the merge of
//      merge_math.h in one read-modify-write of its tile of cov,
//   3. bin_mean_merge_kernel: the new mean and count, after 2 has read the
//      old ones.
// Blocks of bins absent from the batch return at once: their statistics are
// never read or written. half / bfloat16 features are read as they are and
// accumulated in float32 (at::acc_type).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/AccumulateType.h>
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

constexpr int kTile = 64;   // output tile of a D x D matrix
constexpr int kChunk = 16;  // samples staged in shared memory at a time
constexpr int kTx = 32;     // threads along a tile row (one warp: coalesced)
constexpr int kTy = 8;
constexpr int kRowsPerThread = kTile / kTy;  // 8
constexpr int kColsPerThread = kTile / kTx;  // 2
constexpr int kMeanThreads = 256;

// offset[b] = first position of bin b in the sorted bin indices (lower bound).
// Out-of-range indices (rejected by the Python wrappers) fall outside every run.
__global__ void bin_offsets_kernel(const int64_t* sorted_bins, int64_t n, int64_t num_bins, int64_t* offset) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b <= num_bins;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sorted_bins[mid] < b) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    offset[b] = lo;
  }
}

// The batch grouped by bin: samples of bin b are order[offset[b] .. offset[b + 1]).
struct Buckets {
  at::Tensor order;   // [n] int64
  at::Tensor offset;  // [B + 1] int64
};

Buckets bucket_by_bin(const at::Tensor& bin_index, int64_t num_bins, cudaStream_t stream) {
  // A stable sort keeps each bin's samples in batch order, so the sums below
  // are reproducible run to run.
  auto sorted = at::sort(bin_index, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  Buckets bk{std::get<1>(sorted), at::empty({num_bins + 1}, bin_index.options())};
  const int threads = 128;
  const int64_t blocks = std::min<int64_t>(ceil_div(num_bins + 1, threads), 1024);
  bin_offsets_kernel<<<blocks, threads, 0, stream>>>(std::get<0>(sorted).data_ptr<int64_t>(), bin_index.size(0),
                                                     num_bins, bk.offset.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bk;
}

// bmean[b] = batch mean of bin b, for bins present. With count_out (plain
// moments) the counts are written too and absent bins get a zero mean.
template <typename scalar_t, typename acc_t>
__global__ void bin_mean_kernel(const scalar_t* __restrict__ z, const int64_t* __restrict__ order,
                                const int64_t* __restrict__ offset, int64_t D, int64_t num_bins,
                                acc_t* __restrict__ bmean, int64_t* __restrict__ count_out) {
  const int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t b = blockIdx.y; b < num_bins; b += gridDim.y) {
    const int64_t lo = offset[b], nb = offset[b + 1] - lo;
    if (count_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0) count_out[b] = nb;
    if (d >= D) continue;
    if (nb == 0) {
      if (count_out != nullptr) bmean[b * D + d] = acc_t(0);
      continue;
    }
    acc_t s = acc_t(0);
    for (int64_t r = 0; r < nb; ++r) s += static_cast<acc_t>(z[order[lo + r] * D + d]);
    bmean[b * D + d] = s / static_cast<acc_t>(nb);
  }
}

// One 64 x 64 tile of every bin's D x D matrix per block (blockIdx.x = tile,
// blockIdx.y = bin). kMoments: out = scatter (zeros for absent bins).
// Otherwise the merge: cov = keep * cov + sample_w * scatter + delta_w * delta delta^T,
// delta = m_b - mu_old, reading count and mean before bin_mean_merge_kernel updates them.
// The tile (r, c) and its transpose (c, r) sum the same products in the same
// order, so the result is exactly symmetric.
template <typename scalar_t, typename acc_t, bool kMoments>
__global__ void __launch_bounds__(kTx* kTy)
    bin_cov_kernel(const scalar_t* __restrict__ z, const int64_t* __restrict__ order,
                   const int64_t* __restrict__ offset, const acc_t* __restrict__ bmean,
                   const int64_t* __restrict__ count, const acc_t* __restrict__ mean_old, acc_t* __restrict__ cov,
                   int64_t D, int64_t num_bins, double momentum) {
  __shared__ acc_t rows_s[kChunk][kTile];  // centred samples on the tile's row dimensions
  __shared__ acc_t cols_s[kChunk][kTile];  // ... and on its column dimensions
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTx + tx;
  const int64_t tiles = ceil_div(D, kTile);
  const int64_t r0 = (blockIdx.x / tiles) * kTile, c0 = (blockIdx.x % tiles) * kTile;

  for (int64_t b = blockIdx.y; b < num_bins; b += gridDim.y) {
    const int64_t lo = offset[b], nb = offset[b + 1] - lo;
    if (!kMoments && nb == 0) continue;  // absent bin: untouched (uniform over the block)
    const acc_t* m = bmean + b * D;

    acc_t acc[kRowsPerThread][kColsPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) acc[i][j] = acc_t(0);

    for (int64_t s0 = 0; s0 < nb; s0 += kChunk) {
      for (int idx = tid; idx < kChunk * kTile; idx += kTx * kTy) {
        const int r = idx / kTile, c = idx % kTile;
        const int64_t s = s0 + r;
        acc_t vr = acc_t(0), vc = acc_t(0);
        if (s < nb) {
          const scalar_t* zi = z + order[lo + s] * D;
          if (r0 + c < D) vr = static_cast<acc_t>(zi[r0 + c]) - m[r0 + c];
          if (c0 + c < D) vc = static_cast<acc_t>(zi[c0 + c]) - m[c0 + c];
        }
        rows_s[r][c] = vr;
        cols_s[r][c] = vc;
      }
      __syncthreads();
      const int steps = static_cast<int>(nb - s0 < kChunk ? nb - s0 : kChunk);
      for (int k = 0; k < steps; ++k) {
        acc_t cv[kColsPerThread];
#pragma unroll
        for (int j = 0; j < kColsPerThread; ++j) cv[j] = cols_s[k][tx + kTx * j];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          const acc_t rv = rows_s[k][ty + kTy * i];
#pragma unroll
          for (int j = 0; j < kColsPerThread; ++j) acc[i][j] += rv * cv[j];
        }
      }
      __syncthreads();
    }

    const MergeCoef coef = kMoments ? moment_coefficients() : merge_coefficients(count[b], nb, momentum);
    const acc_t keep = static_cast<acc_t>(coef.keep);
    const acc_t sample_w = static_cast<acc_t>(coef.sample_w);
    const acc_t delta_w = static_cast<acc_t>(coef.delta_w);
    acc_t delta_c[kColsPerThread];
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int64_t c = c0 + tx + kTx * j;
      delta_c[j] = (!kMoments && delta_w != acc_t(0) && c < D) ? m[c] - mean_old[b * D + c] : acc_t(0);
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t r = r0 + ty + kTy * i;
      if (r >= D) continue;
      const acc_t delta_r = (!kMoments && delta_w != acc_t(0)) ? m[r] - mean_old[b * D + r] : acc_t(0);
      acc_t* row = cov + (b * D + r) * D;
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) {
        const int64_t c = c0 + tx + kTx * j;
        if (c >= D) continue;
        if (kMoments) {
          row[c] = acc[i][j];
        } else {  // keep == 0: the old cov is never read
          row[c] = merged_cov_entry(keep, sample_w, delta_w, acc[i][j], delta_r, delta_c[j], row[c]);
        }
      }
    }
  }
}

// New mean and count of every present bin; one block per bin, so the block
// reads count[b] before its thread 0 advances it.
template <typename acc_t>
__global__ void bin_mean_merge_kernel(const int64_t* __restrict__ offset, const acc_t* __restrict__ bmean,
                                      int64_t* __restrict__ count, acc_t* __restrict__ mean, int64_t D,
                                      int64_t num_bins, double momentum) {
  for (int64_t b = blockIdx.x; b < num_bins; b += gridDim.x) {
    const int64_t nb = offset[b + 1] - offset[b];
    if (nb == 0) continue;
    const MergeCoef coef = merge_coefficients(count[b], nb, momentum);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      mean[b * D + d] = static_cast<acc_t>(
          merged_mean(coef, static_cast<double>(mean[b * D + d]), static_cast<double>(bmean[b * D + d])));
    }
    __syncthreads();
    if (threadIdx.x == 0) count[b] += nb;
    __syncthreads();
  }
}

dim3 cov_grid(int64_t D, int64_t num_bins) {
  const int64_t tiles = ceil_div(D, kTile);
  TORCH_CHECK(tiles * tiles <= INT32_MAX, "feature dimension ", D, " is too large for the CUDA kernel");
  return dim3(static_cast<unsigned>(tiles * tiles), static_cast<unsigned>(std::min(num_bins, kMaxGridY)));
}

dim3 mean_grid(int64_t D, int64_t num_bins) {
  return dim3(static_cast<unsigned>(ceil_div(D, kMeanThreads)), static_cast<unsigned>(std::min(num_bins, kMaxGridY)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_moments_cuda(const at::Tensor& z, const at::Tensor& bin_index,
                                                                int64_t num_bins) {
  check_features(z, bin_index, -1);
  TORCH_CHECK_VALUE(num_bins >= 1, "num_bins must be at least 1, got ", num_bins);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t n = z.size(0), D = z.size(1);
  // half / bfloat16 features are accumulated in float32
  const auto acc = (z.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  at::Tensor count = at::empty({num_bins}, bin_index.options());
  at::Tensor mean = at::empty({num_bins, D}, z.options().dtype(acc));
  at::Tensor scatter = at::empty({num_bins, D, D}, z.options().dtype(acc));
  if (n == 0 || D == 0) {
    count.zero_();
    mean.zero_();
    scatter.zero_();
    return {count, mean, scatter};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor zc = z.contiguous();
  const Buckets bk = bucket_by_bin(bin_index.contiguous(), num_bins, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zc.scalar_type(), "bin_moments_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* zp = zc.data_ptr<scalar_t>();
    const int64_t* order = bk.order.data_ptr<int64_t>();
    const int64_t* offset = bk.offset.data_ptr<int64_t>();
    acc_t* mp = mean.data_ptr<acc_t>();
    bin_mean_kernel<scalar_t, acc_t><<<mean_grid(D, num_bins), kMeanThreads, 0, stream>>>(
        zp, order, offset, D, num_bins, mp, count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bin_cov_kernel<scalar_t, acc_t, true><<<cov_grid(D, num_bins), dim3(kTx, kTy), 0, stream>>>(
        zp, order, offset, mp, nullptr, nullptr, scatter.data_ptr<acc_t>(), D, num_bins, -1.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {count, mean, scatter};
}

void bin_stats_update_cuda(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& z,
                           const at::Tensor& bin_index, std::optional<double> momentum) {
  check_stats(count, mean, cov);
  check_features(z, bin_index, mean.size(1));
  check_same_device(z, mean, "z", "mean");
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous() && cov.is_contiguous(),
                    "the statistics (count, mean, cov) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t D = mean.size(1), B = mean.size(0);
  if (z.size(0) == 0 || D == 0) return;
  const c10::cuda::CUDAGuard guard(mean.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // The statistics' dtype is the accumulation type: float32 statistics read
  // half / bfloat16 / float32 features as they are; other combinations are
  // converted first, as the CPU kernel does.
  const bool native = mean.scalar_type() == at::kDouble ? z.scalar_type() == at::kDouble
                                                        : z.scalar_type() != at::kDouble;
  const at::Tensor zc = native ? z.contiguous() : z.to(mean.scalar_type()).contiguous();
  const Buckets bk = bucket_by_bin(bin_index.contiguous(), B, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zc.scalar_type(), "bin_stats_update_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* zp = zc.data_ptr<scalar_t>();
    const int64_t* order = bk.order.data_ptr<int64_t>();
    const int64_t* offset = bk.offset.data_ptr<int64_t>();
    // Batch means of the present bins (rows of absent bins stay unwritten and unread).
    at::Tensor bmean = at::empty({B, D}, mean.options());
    acc_t* bm = bmean.data_ptr<acc_t>();
    bin_mean_kernel<scalar_t, acc_t><<<mean_grid(D, B), kMeanThreads, 0, stream>>>(zp, order, offset, D, B, bm,
                                                                                   nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bin_cov_kernel<scalar_t, acc_t, false><<<cov_grid(D, B), dim3(kTx, kTy), 0, stream>>>(
        zp, order, offset, bm, count.data_ptr<int64_t>(), mean.data_ptr<acc_t>(), cov.data_ptr<acc_t>(), D, B, rho);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bin_mean_merge_kernel<acc_t><<<static_cast<unsigned>(std::min(B, kMaxGridY)), kMeanThreads, 0, stream>>>(
        offset, bm, count.data_ptr<int64_t>(), mean.data_ptr<acc_t>(), D, B, rho);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) {
  m.impl("bin_moments", &irda::bin_moments_cuda);
  m.impl("bin_stats_update_", &irda::bin_stats_update_cuda);
}
