// The merge of dense per-bin batch moments into running statistics (SPEC 2) on
// the CPU. The batch was pooled elsewhere (the union of every rank's batch,
// irda_ext/distributed.py), so only its moments are at hand; they are merged
// with the formulas of merge_math.h, the ones bin_stats_update_ applies to raw
// features. Only bins with batch_count > 0 are read or written.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../merge_math.h"
#include "grain.h"

namespace irda {
namespace {

template <typename T>
void merge_moments(int64_t* count, T* mean, T* cov, const int64_t* batch_count, const T* batch_mean,
                   const T* batch_scatter, int64_t B, int64_t D, double momentum) {
  // Covariance rows first: they read the old count and mean, which the second
  // pass overwrites. All rows of all bins form one flat range.
  at::parallel_for(0, B * D, grain_for(2 * D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / D, d = r % D;
      const int64_t nb = batch_count[b];
      if (nb == 0) continue;
      const MergeCoef c = merge_coefficients(count[b], nb, momentum);
      const T keep = static_cast<T>(c.keep), sample_w = static_cast<T>(c.sample_w);
      const T delta_w = static_cast<T>(c.delta_w);
      const T* mu = mean + b * D;
      const T* m = batch_mean + b * D;
      const T* scatter_row = batch_scatter + r * D;
      T* row = cov + r * D;
      const T delta_r = m[d] - mu[d];
      for (int64_t e = 0; e < D; ++e) {
        row[e] = merged_cov_entry(keep, sample_w, delta_w, scatter_row[e], delta_r, m[e] - mu[e], row[e]);
      }
    }
  });
  at::parallel_for(0, B, grain_for(D), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t nb = batch_count[b];
      if (nb == 0) continue;
      const MergeCoef c = merge_coefficients(count[b], nb, momentum);
      for (int64_t d = 0; d < D; ++d) {
        mean[b * D + d] = static_cast<T>(
            merged_mean(c, static_cast<double>(mean[b * D + d]), static_cast<double>(batch_mean[b * D + d])));
      }
      count[b] += nb;
    }
  });
}

void merge_bin_moments_cpu(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& batch_count,
                           const at::Tensor& batch_mean, const at::Tensor& batch_scatter,
                           std::optional<double> momentum) {
  check_stats(count, mean, cov);
  check_batch_moments(batch_count, batch_mean, batch_scatter, mean);
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous() && cov.is_contiguous(),
                    "the statistics (count, mean, cov) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t B = mean.size(0), D = mean.size(1);
  const at::Tensor bc = batch_count.contiguous();
  const int64_t* nb = bc.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(nb[b] >= 0, "batch_count[", b, "] = ", nb[b], " is negative");
  }
  const at::Tensor bm = batch_mean.contiguous(), bs = batch_scatter.contiguous();
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "merge_bin_moments_cpu", [&] {
    merge_moments<scalar_t>(count.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(), cov.data_ptr<scalar_t>(), nb,
                            bm.data_ptr<scalar_t>(), bs.data_ptr<scalar_t>(), B, D, rho);
  });
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) { m.impl("merge_bin_moments_", &irda::merge_bin_moments_cpu); }
