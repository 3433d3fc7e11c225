// Banded W-FDS smoothing (SPEC 3) on CUDA, the same sums as
// csrc/cpu/wfds_smooth.cpp:
//   out[b, e] = sum_{|b'-b| <= h} S[b, b'] in[b', e]   (b' ascending, zero weights skipped)
// for in = mean [B, D] and cov [B, D*D]. Memory-bound: each thread owns one
// element e and walks down the bins keeping the 2h + 1 rows of its band in
// registers, so every statistic is read once and every output written once.
// Bandwidths above kMaxWindowHalf (wider than the paper's kernels) read their
// band straight from global memory instead.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "device_utils.cuh"

namespace irda {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;
constexpr int kMaxWindowHalf = 4;  // kernel sizes up to 9 use the register window

template <typename T, int H>
__global__ void banded_window_kernel(const T* __restrict__ S, const T* __restrict__ in, T* __restrict__ out,
                                     int64_t B, int64_t E) {
  constexpr int W = 2 * H + 1;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < E;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T win[W];  // win[j] = in[b - H + j, e], zero outside [0, B)
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const int64_t bp = j - H;
      win[j] = (bp >= 0 && bp < B) ? in[bp * E + e] : T(0);
    }
    for (int64_t b = 0; b < B; ++b) {
      T o = T(0);
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const int64_t bp = b - H + j;
        if (bp < 0 || bp >= B) continue;
        const T w = S[b * B + bp];
        if (w == T(0)) continue;
        o += w * win[j];
      }
      out[b * E + e] = o;
#pragma unroll
      for (int j = 0; j + 1 < W; ++j) win[j] = win[j + 1];
      const int64_t next = b + H + 1;
      win[W - 1] = next < B ? in[next * E + e] : T(0);
    }
  }
}

template <typename T>
__global__ void banded_direct_kernel(const T* __restrict__ S, const T* __restrict__ in, T* __restrict__ out,
                                     int64_t B, int64_t E, int64_t h) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < E;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t lo = b - h < 0 ? 0 : b - h, hi = b + h > B - 1 ? B - 1 : b + h;
      T o = T(0);
      for (int64_t bp = lo; bp <= hi; ++bp) {
        const T w = S[b * B + bp];
        if (w == T(0)) continue;
        o += w * in[bp * E + e];
      }
      out[b * E + e] = o;
    }
  }
}

template <typename T>
void banded_apply(const T* S, const T* in, T* out, int64_t B, int64_t E, int64_t h, cudaStream_t stream) {
  if (E == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(E, kThreads), 1 << 20));
  switch (h) {
#define IRDA_WINDOW_CASE(H)                                                                  \
  case H:                                                                                    \
    banded_window_kernel<T, H><<<blocks, kThreads, 0, stream>>>(S, in, out, B, E);           \
    break;
    IRDA_WINDOW_CASE(0)
    IRDA_WINDOW_CASE(1)
    IRDA_WINDOW_CASE(2)
    IRDA_WINDOW_CASE(3)
    IRDA_WINDOW_CASE(4)
#undef IRDA_WINDOW_CASE
    default:
      banded_direct_kernel<T><<<blocks, kThreads, 0, stream>>>(S, in, out, B, E, h);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
static_assert(kMaxWindowHalf == 4, "banded_apply instantiates windows for h = 0 .. 4");

std::tuple<at::Tensor, at::Tensor> wfds_smooth_cuda(const at::Tensor& weights, const at::Tensor& mean,
                                                    const at::Tensor& cov, int64_t bandwidth) {
  check_smooth_inputs(weights, mean, cov, bandwidth);
  const c10::cuda::CUDAGuard guard(mean.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = mean.size(0), D = mean.size(1);
  const at::Tensor S = weights.contiguous(), m = mean.contiguous(), c = cov.contiguous();
  at::Tensor mean_s = at::empty_like(m);
  at::Tensor cov_s = at::empty_like(c);
  if (B == 0 || D == 0) return {mean_s, cov_s};
  // A band wider than the matrix is the whole matrix.
  const int64_t h = std::min(bandwidth, B - 1);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "wfds_smooth_cuda", [&] {
    const scalar_t* s = S.data_ptr<scalar_t>();
    banded_apply<scalar_t>(s, m.data_ptr<scalar_t>(), mean_s.data_ptr<scalar_t>(), B, D, h, stream);
    banded_apply<scalar_t>(s, c.data_ptr<scalar_t>(), cov_s.data_ptr<scalar_t>(), B, D * D, h, stream);
  });
  return {mean_s, cov_s};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) { m.impl("wfds_smooth", &irda::wfds_smooth_cuda); }
