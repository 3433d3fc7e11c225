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
#include <vector>

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

void check_grid(int64_t num_bins, double width) {
  TORCH_CHECK_VALUE(num_bins >= 1, "num_bins must be at least 1, got ", num_bins);
  TORCH_CHECK_VALUE(width > 0 && std::isfinite(width), "width must be positive and finite, got ", width);
}

std::tuple<at::Tensor, at::Tensor> bin_index_cpu(const at::Tensor& y, double low, double high, double width,
                                                 int64_t num_bins, bool clamp) {
  check_grid(num_bins, width);
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

// ConfusionCounter.add of a step's predictions in one pass (six small tensor ops before):
// the predictions' bins as bin_index(pred, clamp=True) gives them, then the pair counts.
at::Tensor confusion_add_cpu(at::Tensor& counts, const at::Tensor& true_bin, const at::Tensor& pred, double low,
                             double high, double width, int64_t num_bins) {
  check_grid(num_bins, width);
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kDouble, "counts must be float64, got ", counts.scalar_type());
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == num_bins * num_bins && counts.is_contiguous(),
                    "counts must be contiguous of shape [", num_bins * num_bins, "], got ", shape_str(counts));
  TORCH_CHECK_TYPE(true_bin.scalar_type() == at::kLong, "true_bin must be int64, got ", true_bin.scalar_type());
  TORCH_CHECK_TYPE(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
                   "pred must be float32 or float64, got ", pred.scalar_type());
  const int64_t n = pred.numel();
  TORCH_CHECK_VALUE(true_bin.numel() == n, "true_bin must have one bin per prediction (", n, "), got shape ",
                    shape_str(true_bin));
  const at::Tensor tb = true_bin.contiguous(), pc = pred.contiguous();
  std::vector<int64_t> pred_bin(n);
  int64_t bad = 0;
  AT_DISPATCH_FLOATING_TYPES(pc.scalar_type(), "confusion_add_cpu", [&] {
    bad = index_of(pc.data_ptr<scalar_t>(), n, low, high, width, num_bins, /*clamp=*/true, pred_bin.data());
  });
  const int64_t* t = tb.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(t[i] >= 0 && t[i] < num_bins, "true_bin must lie in [0, ", num_bins, "), got ", t[i],
                      " at sample ", i);
  }
  if (bad == 0) {
    double* c = counts.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) c[t[i] * num_bins + pred_bin[i]] += 1.0;
  }
  return at::scalar_tensor(bad, true_bin.options());
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("bin_index", &irda::bin_index_cpu);
  m.impl("confusion_add_", &irda::confusion_add_cpu);
}
