// Banded W-FDS smoothing (SPEC 3) on the CPU:
//   mean_s[b] = sum_{|b'-b| <= h} S[b, b'] mean[b'],  cov_s[b] likewise.
// Each output row is written once and reads only the 2h + 1 rows in its band.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../wfds_math.h"
#include "grain.h"

namespace irda {
namespace {

// out[b] = sum over the band of S[b, b'] in[b'], rows of length `row` and `rows` rows per bin.
template <typename T>
void banded_apply(const T* S, const T* in, T* out, int64_t B, int64_t rows, int64_t row, int64_t h) {
  at::parallel_for(0, B * rows, grain_for((2 * h + 1) * row), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, d = r % rows;
      T* o = out + (b * rows + d) * row;
      const Band band = band_of(b, h, B);
      std::fill(o, o + row, T(0));
      for (int64_t bp = band.lo; bp <= band.hi; ++bp) {
        const T w = S[b * B + bp];
        if (w == T(0)) continue;
        const T* x = in + (bp * rows + d) * row;
        for (int64_t e = 0; e < row; ++e) o[e] += w * x[e];
      }
    }
  });
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

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) { m.impl("wfds_smooth", &irda::wfds_smooth_cpu); }
