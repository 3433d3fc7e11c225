// Banded W-FDS smoothing (SPEC 3) on the CPU:
//   mean_s[b] = sum_{|b'-b| <= h} S[b, b'] mean[b'],  cov_s[b] likewise.
// Each output row is written once and reads only the 2h + 1 rows in its band.
//
// wfds_smooth_upper is the same smoothing for IRDALoss's fused training step on the CPU
// (irda_head_loss), which reads each smoothed covariance as its packed upper triangle and
// the isotropic adjustment's diagonal and sum of squares (SPEC 4): written in one pass over
// the upper triangles of the covariances, where wfds_smooth, the adjustment's reductions
// and the packing took three passes over full [B, D, D] blocks, each written or read out of
// cache (2.9 ms at abalone's sizes, once an epoch, in the epoch's first step).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../wfds_math.h"
#include "grain.h"
#include "simd.h"

namespace irda {
namespace {

// o[e] = sum_j w[j] x[j][e] over the nb rows of a band in their order, each product rounded
// and added to the sum so far from 0 (no contraction: -ffp-contract=off): the bits of
// filling o with 0 and adding one row after another, in one pass over o instead of one a
// row of the band. Compiled for AVX-512, AVX2 and baseline x86-64 (IRDA_TARGET_CLONES,
// simd.h); element by element, so every instruction set gives the same bits.
constexpr int64_t kBandLanes = 16;
#define IRDA_BAND_ROW(T)                                                                                  \
  IRDA_TARGET_CLONES void band_row(T* __restrict o, const T* const* x, const T* w, int64_t nb, int64_t len) { \
    int64_t e = 0;                                                                                        \
    for (; e + kBandLanes <= len; e += kBandLanes) {                                                      \
      T acc[kBandLanes] = {};                                                                             \
      for (int64_t j = 0; j < nb; ++j) {                                                                  \
        const T wj = w[j];                                                                                \
        const T* __restrict xj = x[j] + e;                                                                \
        for (int64_t l = 0; l < kBandLanes; ++l) acc[l] += wj * xj[l];                                    \
      }                                                                                                   \
      for (int64_t l = 0; l < kBandLanes; ++l) o[e + l] = acc[l];                                         \
    }                                                                                                     \
    for (; e < len; ++e) {                                                                                \
      T acc = T(0);                                                                                       \
      for (int64_t j = 0; j < nb; ++j) acc += w[j] * x[j][e];                                             \
      o[e] = acc;                                                                                         \
    }                                                                                                     \
  }                                                                                                       \
  /* lanes[l] += o[e]^2 in float64 for e in [1, len): eight lanes, e = 1 + 8 j + l, the rest on lane 0 */ \
  IRDA_TARGET_CLONES void add_squares(double* __restrict lanes, const T* __restrict o, int64_t len) {     \
    int64_t e = 1;                                                                                        \
    for (; e + 8 <= len; e += 8) {                                                                        \
      for (int64_t l = 0; l < 8; ++l) lanes[l] += static_cast<double>(o[e + l]) * static_cast<double>(o[e + l]); \
    }                                                                                                     \
    for (; e < len; ++e) lanes[0] += static_cast<double>(o[e]) * static_cast<double>(o[e]);               \
  }
IRDA_BAND_ROW(float)
IRDA_BAND_ROW(double)
#undef IRDA_BAND_ROW

// The rows of bin b's band with a nonzero weight, in band order: their weights into w and
// the start of row `offset` of each into x, for band_row (at most 2 h + 1 of them).
template <typename T>
int64_t band_rows(const T* S, const T* in, int64_t B, int64_t b, int64_t h, int64_t block, int64_t offset, T* w,
                  const T** x) {
  const Band band = band_of(b, h, B);
  int64_t nb = 0;
  for (int64_t bp = band.lo; bp <= band.hi; ++bp) {
    const T wb = S[b * B + bp];
    if (wb == T(0)) continue;
    w[nb] = wb;
    x[nb++] = in + bp * block + offset;
  }
  return nb;
}

// out[b] = sum over the band of S[b, b'] in[b'], rows of length `row` and `rows` rows per bin.
template <typename T>
void banded_apply(const T* S, const T* in, T* out, int64_t B, int64_t rows, int64_t row, int64_t h) {
  at::parallel_for(0, B * rows, grain_for((2 * h + 1) * row), [&](int64_t begin, int64_t end) {
    std::vector<T> w(2 * h + 1);
    std::vector<const T*> x(2 * h + 1);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, d = r % rows;
      const int64_t nb = band_rows(S, in, B, b, h, rows * row, d * row, w.data(), x.data());
      band_row(out + (b * rows + d) * row, x.data(), w.data(), nb, row);
    }
  });
}

// The upper triangle of out[b] = sum over the band of S[b, b'] cov[b'] (cov symmetric), packed
// row by row into upper [B, D (D + 1) / 2]: the entries of wfds_smooth's cov_s, bit for bit
// (the same products and sums in the same order); also each bin's diagonal [B, D] and its
// sum of squares, the off-diagonal entries twice (float64, lane-wise sums in a fixed order).
template <typename T>
void banded_apply_upper(const T* S, const T* cov, T* upper, T* diag, double* sum_sq, int64_t B, int64_t D,
                        int64_t h) {
  const int64_t P = D * (D + 1) / 2;
  at::parallel_for(0, B, grain_for((2 * h + 1) * P), [&](int64_t begin, int64_t end) {
    std::vector<T> w(2 * h + 1);
    std::vector<const T*> x(2 * h + 1);
    for (int64_t b = begin; b < end; ++b) {
      T* o = upper + b * P;
      double on_diag = 0.0, lanes[8] = {};  // add_squares' lanes
      const int64_t nb = band_rows(S, cov, B, b, h, D * D, 0, w.data(), x.data());
      for (int64_t i = 0; i < D; ++i) {
        const int64_t len = D - i;
        band_row(o, x.data(), w.data(), nb, len);
        for (int64_t j = 0; j < nb; ++j) x[j] += D + 1;  // row i + 1 from its diagonal
        diag[b * D + i] = o[0];
        on_diag += static_cast<double>(o[0]) * static_cast<double>(o[0]);
        add_squares(lanes, o, len);
        o += len;
      }
      double off_diag = 0.0;
      for (int64_t l = 0; l < 8; ++l) off_diag += lanes[l];
      sum_sq[b] = on_diag + 2.0 * off_diag;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wfds_smooth_upper_cpu(const at::Tensor& weights,
                                                                                  const at::Tensor& mean,
                                                                                  const at::Tensor& cov,
                                                                                  int64_t bandwidth) {
  check_smooth_inputs(weights, mean, cov, bandwidth);
  const int64_t B = mean.size(0), D = mean.size(1);
  const at::Tensor S = weights.contiguous(), m = mean.contiguous(), c = cov.contiguous();
  at::Tensor mean_s = at::empty_like(m);
  at::Tensor upper = at::empty({B, D * (D + 1) / 2}, m.options());
  at::Tensor diag = at::empty({B, D}, m.options());
  at::Tensor sum_sq = at::zeros({B}, m.options().dtype(at::kDouble));
  if (B == 0 || D == 0) return {mean_s, upper, diag, sum_sq};
  const int64_t h = clamped_bandwidth(bandwidth, B);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "wfds_smooth_upper_cpu", [&] {
    const scalar_t* s = S.data_ptr<scalar_t>();
    banded_apply<scalar_t>(s, m.data_ptr<scalar_t>(), mean_s.data_ptr<scalar_t>(), B, 1, D, h);
    banded_apply_upper<scalar_t>(s, c.data_ptr<scalar_t>(), upper.data_ptr<scalar_t>(), diag.data_ptr<scalar_t>(),
                                 sum_sq.data_ptr<double>(), B, D, h);
  });
  return {mean_s, upper, diag, sum_sq};
}

std::tuple<at::Tensor, at::Tensor> wfds_smooth_cpu(const at::Tensor& weights, const at::Tensor& mean,
                                                   const at::Tensor& cov, int64_t bandwidth) {
  check_smooth_inputs(weights, mean, cov, bandwidth);
  const int64_t B = mean.size(0), D = mean.size(1);
  const at::Tensor S = weights.contiguous(), m = mean.contiguous(), c = cov.contiguous();
  at::Tensor mean_s = at::empty_like(m);
  at::Tensor cov_s = at::empty_like(c);
  if (B == 0 || D == 0) return {mean_s, cov_s};
  const int64_t h = clamped_bandwidth(bandwidth, B);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "wfds_smooth_cpu", [&] {
    const scalar_t* s = S.data_ptr<scalar_t>();
    banded_apply<scalar_t>(s, m.data_ptr<scalar_t>(), mean_s.data_ptr<scalar_t>(), B, 1, D, h);
    banded_apply<scalar_t>(s, c.data_ptr<scalar_t>(), cov_s.data_ptr<scalar_t>(), B, D, D, h);
  });
  return {mean_s, cov_s};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("wfds_smooth", &irda::wfds_smooth_cpu);
  m.impl("wfds_smooth_upper", &irda::wfds_smooth_upper_cpu);
}
