// Bins.index on the CPU in one pass (SPEC 1): index[i] = clamp(floor((y[i] - low) / width),
// 0, num_bins - 1) in float64, the operations of the Python expression
// floor((y.to(float64) - low) / width).clamp_(0, num_bins - 1).to(int64), so the same bits;
// and the number of bad targets (NaN, or outside [low, high] unless clamp), which
// irda_ext/binning.py turns into its error. The Python version took ten small tensor ops
// (~100 us of a 5 ms training step on the bundled data; a step bins its targets and its
// predictions).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../checks.h"

namespace irda {
namespace {

template <typename T>
int64_t index_of(const T* y, int64_t n, double low, double high, double width, int64_t num_bins, bool clamp,
                 int64_t* out) {
  int64_t bad = 0;
  const double last = static_cast<double>(num_bins - 1);
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(y[i]);
    bad += std::isnan(v) || (!clamp && (v < low || v > high));
    const double f = std::floor((v - low) / width);
    // clamp_(0, last) as ATen's clamp: NaN stays NaN (its int64 is never read: it is bad)
    const double c = f < 0.0 ? 0.0 : (f > last ? last : f);
    out[i] = std::isnan(c) ? 0 : static_cast<int64_t>(c);
  }
  return bad;
}

std::tuple<at::Tensor, at::Tensor> bin_index_cpu(const at::Tensor& y, double low, double high, double width,
                                                 int64_t num_bins, bool clamp) {
  TORCH_CHECK_VALUE(num_bins >= 1, "num_bins must be at least 1, got ", num_bins);
  TORCH_CHECK_VALUE(width > 0 && std::isfinite(width), "width must be positive and finite, got ", width);
  TORCH_CHECK_TYPE(y.is_floating_point() || y.scalar_type() == at::kInt || y.scalar_type() == at::kLong ||
                       y.scalar_type() == at::kShort || y.scalar_type() == at::kByte,
                   "targets must be a real tensor, got dtype ", y.scalar_type());
  // float32 and float64 are read as they are; other dtypes are widened to float64 first (exact)
  const bool direct = y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble;
  const at::Tensor yc = (direct ? y : y.to(at::kDouble)).contiguous();
  at::Tensor index = at::empty(y.sizes(), y.options().dtype(at::kLong));
  int64_t bad = 0;
  AT_DISPATCH_FLOATING_TYPES(yc.scalar_type(), "bin_index_cpu", [&] {
    bad = index_of(yc.data_ptr<scalar_t>(), yc.numel(), low, high, width, num_bins, clamp,
                   index.data_ptr<int64_t>());
  });
  return {index, at::scalar_tensor(bad, y.options().dtype(at::kLong))};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) { m.impl("bin_index", &irda::bin_index_cpu); }
