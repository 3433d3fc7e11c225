// Banded W-FDS smoothing (SPEC 3): the CUDA kernels, written once for the GPU
// (csrc/cuda/wfds_smooth.cu) and the emulated launch, the same sums as
// csrc/cpu/wfds_smooth.cpp:
//   out[b, e] = sum_{|b'-b| <= h} S[b, b'] in[b', e]   (b' ascending, zero weights skipped)
// for in = mean [B, D] and cov [B, D*D]. Memory-bound: each thread owns one element e
// and walks down a run of bins keeping the 2h + 1 rows of its band in registers, so
// every statistic is read about once and every output written once. The grid covers
// the elements (x) and runs of at least kMinRun bins (y): enough blocks to fill a GPU
// for a mean of D = 64 too. Bandwidths above kMaxWindowHalf (wider than the paper's
// kernels) read their band straight from global memory instead.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "../wfds_math.h"
#include "launch.h"

namespace irda {
namespace wfds {

constexpr int kThreads = 256;
constexpr int kMaxWindowHalf = 4;  // kernel sizes up to 9 use the register window
constexpr int64_t kMinRun = 16;    // bins per thread at least: the window's 2h extra reads stay small
constexpr int64_t kTargetBlocks = 1024;

// The bins [first, last) of the run of blockIdx.y.
struct Run {
  int64_t first, last;
};

IRDA_HOST_DEVICE Run run_of(unsigned y, unsigned runs, int64_t B) {
  const int64_t len = ceil_div(B, runs);
  const int64_t first = int64_t(y) * len;
  return Run{first, first + len < B ? first + len : B};
}

template <typename T, int H>
struct BandedWindow {
  static constexpr int kThreads = wfds::kThreads;
  using Shared = NoShared;
  const T* S;
  const T* in;
  T* out;
  int64_t B, E;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    constexpr int W = 2 * H + 1;
    blk.threads([&](const Thread& t) {
      const int64_t stride = int64_t(blk.grid_dim().x) * blk.block_dim().x;
      const Run run = run_of(blk.block_idx().y, blk.grid_dim().y, B);
      for (int64_t e = int64_t(blk.block_idx().x) * blk.block_dim().x + t.x; e < E; e += stride) {
        T win[W];  // win[j] = in[b - H + j, e], zero outside [0, B)
        IRDA_UNROLL
        for (int j = 0; j < W; ++j) {
          const int64_t bp = run.first + j - H;
          win[j] = (bp >= 0 && bp < B) ? in[bp * E + e] : T(0);
        }
        for (int64_t b = run.first; b < run.last; ++b) {
          T o = T(0);
          IRDA_UNROLL
          for (int j = 0; j < W; ++j) {
            const int64_t bp = b - H + j;
            if (bp < 0 || bp >= B) continue;
            const T w = S[b * B + bp];
            if (w == T(0)) continue;
            o += w * win[j];
          }
          out[b * E + e] = o;
          IRDA_UNROLL
          for (int j = 0; j + 1 < W; ++j) win[j] = win[j + 1];
          const int64_t next = b + H + 1;
          win[W - 1] = next < B ? in[next * E + e] : T(0);
        }
      }
    });
  }
};

template <typename T>
struct BandedDirect {
  static constexpr int kThreads = wfds::kThreads;
  using Shared = NoShared;
  const T* S;
  const T* in;
  T* out;
  int64_t B, E, h;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    blk.threads([&](const Thread& t) {
      const int64_t stride = int64_t(blk.grid_dim().x) * blk.block_dim().x;
      const Run run = run_of(blk.block_idx().y, blk.grid_dim().y, B);
      for (int64_t e = int64_t(blk.block_idx().x) * blk.block_dim().x + t.x; e < E; e += stride) {
        for (int64_t b = run.first; b < run.last; ++b) {
          const Band band = band_of(b, h, B);
          T o = T(0);
          for (int64_t bp = band.lo; bp <= band.hi; ++bp) {
            const T w = S[b * B + bp];
            if (w == T(0)) continue;
            o += w * in[bp * E + e];
          }
          out[b * E + e] = o;
        }
      }
    });
  }
};

template <typename T, class Exec>
void banded_apply(const Exec& ex, const T* S, const T* in, T* out, int64_t B, int64_t E, int64_t h) {
  if (E == 0) return;
  const int64_t blocks_x = std::min<int64_t>(ceil_div(E, kThreads), 1 << 20);
  const int64_t runs = std::max<int64_t>(1, std::min(ceil_div(kTargetBlocks, blocks_x), B / kMinRun));
  // as many runs as non-empty ones: ceil_div(B, runs) bins each
  const Dim3 grid{static_cast<unsigned>(blocks_x), static_cast<unsigned>(ceil_div(B, ceil_div(B, runs)))};
  const Dim3 block{kThreads};
  switch (h) {
    case 0:
      return ex.launch("wfds_window<0>", grid, block, BandedWindow<T, 0>{S, in, out, B, E});
    case 1:
      return ex.launch("wfds_window<1>", grid, block, BandedWindow<T, 1>{S, in, out, B, E});
    case 2:
      return ex.launch("wfds_window<2>", grid, block, BandedWindow<T, 2>{S, in, out, B, E});
    case 3:
      return ex.launch("wfds_window<3>", grid, block, BandedWindow<T, 3>{S, in, out, B, E});
    case 4:
      return ex.launch("wfds_window<4>", grid, block, BandedWindow<T, 4>{S, in, out, B, E});
    default:
      return ex.launch("wfds_direct", grid, block, BandedDirect<T>{S, in, out, B, E, h});
  }
}
static_assert(kMaxWindowHalf == 4, "banded_apply instantiates windows for h = 0 .. 4");

template <class Exec>
std::tuple<at::Tensor, at::Tensor> wfds_smooth(const Exec& ex, const at::Tensor& weights, const at::Tensor& mean,
                                               const at::Tensor& cov, int64_t bandwidth) {
  check_smooth_inputs(weights, mean, cov, bandwidth);
  const int64_t B = mean.size(0), D = mean.size(1);
  const at::Tensor S = weights.contiguous(), m = mean.contiguous(), c = cov.contiguous();
  at::Tensor mean_s = at::empty_like(m);
  at::Tensor cov_s = at::empty_like(c);
  if (B == 0 || D == 0) return {mean_s, cov_s};
  const int64_t h = clamped_bandwidth(bandwidth, B);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "wfds_smooth", [&] {
    const scalar_t* s = S.data_ptr<scalar_t>();
    banded_apply<scalar_t>(ex, s, m.data_ptr<scalar_t>(), mean_s.data_ptr<scalar_t>(), B, D, h);
    banded_apply<scalar_t>(ex, s, c.data_ptr<scalar_t>(), cov_s.data_ptr<scalar_t>(), B, D * D, h);
  });
  return {mean_s, cov_s};
}

}  // namespace wfds
}  // namespace irda
