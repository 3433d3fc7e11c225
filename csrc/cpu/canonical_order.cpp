// The reservoir's rows in canonical order before the epoch-end k-means (irda_ext/distributed.py,
// canonical_order): by bin, then by a fixed projection of the feature, then by position, so
// that k-means (whose seeding and sums follow row order) gives the same eta whatever order
// the rows arrived in, one process or several ranks. As torch ops (a float64 copy of the
// features, a product, two stable argsorts and two gathers) this took 2.4 ms of an abalone
// epoch end; here one pass computes the keys, a counting sort by bin and a sort of each bin's
// keys order the rows, one pass copies them (0.12 ms at abalone's sizes, AMD EPYC Zen 5).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "simd.h"

namespace irda {
namespace {

// key_i = sum_d x[i, d] w_d in float64, w_d = 1 + d / (D - 1) (1 when D = 1): lane-wise sums
// in a fixed order (a multiply, then an add: the same bits in every clone).
template <typename T>
__attribute__((always_inline)) inline void projection_keys_impl(const T* x, const double* w, int64_t N, int64_t D,
                                                                double* key) {
  constexpr int64_t kLanes = 8;
  for (int64_t i = 0; i < N; ++i) {
    const T* row = x + i * D;
    double lanes[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= D; d += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(row[d + l]) * w[d + l];
    }
    double s = 0.0;
    for (; d < D; ++d) s += static_cast<double>(row[d]) * w[d];
    for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
    key[i] = s;
  }
}
IRDA_TARGET_CLONES void projection_keys(const float* x, const double* w, int64_t N, int64_t D, double* key) {
  projection_keys_impl(x, w, N, D, key);
}
IRDA_TARGET_CLONES void projection_keys(const double* x, const double* w, int64_t N, int64_t D, double* key) {
  projection_keys_impl(x, w, N, D, key);
}

// A row's place in the order: its bin, its key, its position (unique: a total order, so any
// sort gives the same result).
struct RowKey {
  int64_t bin;
  double key;
  int64_t pos;
  bool operator<(const RowKey& o) const {
    if (bin != o.bin) return bin < o.bin;
    if (key != o.key) return key < o.key;
    return pos < o.pos;
  }
};

std::tuple<at::Tensor, at::Tensor> canonical_order_cpu(const at::Tensor& features, const at::Tensor& bins) {
  TORCH_CHECK_VALUE(features.dim() == 2, "canonical_order: features must have shape [N, D], got ",
                    shape_str(features));
  TORCH_CHECK_TYPE(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
                   "canonical_order: features must be float32 or float64, got ", features.scalar_type());
  const int64_t N = features.size(0), D = features.size(1);
  TORCH_CHECK_TYPE(bins.scalar_type() == at::kLong, "canonical_order: bins must be int64, got ", bins.scalar_type());
  TORCH_CHECK_VALUE(bins.dim() == 1 && bins.size(0) == N, "canonical_order: bins must have shape [", N,
                    "] (one bin per row), got ", shape_str(bins));
  const at::Tensor x = features.contiguous(), b = bins.contiguous();
  at::Tensor out = at::empty_like(x), out_bins = at::empty_like(b);
  std::vector<double> key(N), w(D);
  for (int64_t d = 0; d < D; ++d) w[d] = D > 1 ? 1.0 + static_cast<double>(d) / static_cast<double>(D - 1) : 1.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "canonical_order_keys", [&] {
    projection_keys(x.data_ptr<scalar_t>(), w.data(), N, D, key.data());
  });
  for (int64_t i = 0; i < N; ++i) {
    // NaN or infinity in a row reaches its key (a NaN key would break the sort's order)
    TORCH_CHECK_VALUE(std::isfinite(key[i]), "canonical_order: row ", i, " of features holds NaN or infinite values");
  }
  const int64_t* bin = b.data_ptr<int64_t>();
  // the keys sorted beside their rows (an index sort's comparisons read bin and key through
  // the index: twice the time)
  std::vector<RowKey> rows(N);
  int64_t lo = 0, hi = -1;
  if (N > 0) lo = hi = bin[0];
  for (int64_t i = 0; i < N; ++i) lo = std::min(lo, bin[i]), hi = std::max(hi, bin[i]);
  // (the span in unsigned arithmetic: bins far apart would overflow a signed difference)
  if (N > 0 && static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) < static_cast<uint64_t>(4 * N)) {
    // bins of a small range (every use here): bucketed by bin first (a counting sort), then
    // each bin's run sorted, a few hundred rows at a time instead of all of them at once
    std::vector<int64_t> start(hi - lo + 2, 0);
    for (int64_t i = 0; i < N; ++i) ++start[bin[i] - lo + 1];
    for (size_t v = 1; v < start.size(); ++v) start[v] += start[v - 1];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N; ++i) rows[fill[bin[i] - lo]++] = {bin[i], key[i], i};
    for (size_t v = 0; v + 1 < start.size(); ++v) std::sort(rows.begin() + start[v], rows.begin() + start[v + 1]);
  } else {
    for (int64_t i = 0; i < N; ++i) rows[i] = {bin[i], key[i], i};
    std::sort(rows.begin(), rows.end());
  }
  std::vector<int64_t> order(N);
  for (int64_t r = 0; r < N; ++r) order[r] = rows[r].pos;
  const size_t row_bytes = static_cast<size_t>(D) * x.element_size();
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  int64_t* ob = out_bins.data_ptr<int64_t>();
  for (int64_t r = 0; r < N; ++r) {
    if (row_bytes) std::memcpy(dst + r * row_bytes, src + order[r] * row_bytes, row_bytes);
    ob[r] = bin[order[r]];
  }
  return {out, out_bins};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) { m.impl("canonical_order", &irda::canonical_order_cpu); }
