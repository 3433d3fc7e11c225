// The one streaming merge of per-bin statistics (SPEC 2), shared by the CPU and
// CUDA kernels. A batch with n_b samples in a bin, batch mean m_b and centred
// scatter M_b = sum (z - m_b)(z - m_b)^T, merges into the running (n, mu, cov) as
//   mu  <- mean_old * mu + mean_batch * m_b
//   cov <- keep * cov + sample_w * M_b + delta_w * (m_b - mu_old)(m_b - mu_old)^T
// which covers Chan's exact pooled merge, the momentum (EMA) update and the
// plain batch moments. When keep == 0 the old covariance is never read.
#pragma once
#include <cstdint>

#include "host_device.h"

namespace irda {

struct MergeCoef {
  double keep;        // factor on the old covariance
  double sample_w;    // factor on the batch scatter
  double delta_w;     // factor on delta delta^T, delta = m_b - mu_old
  double mean_old;    // factor on the old mean
  double mean_batch;  // factor on the batch mean
};

// momentum < 0 means "no momentum": Chan's exact merge.
IRDA_HOST_DEVICE MergeCoef merge_coefficients(int64_t n_old, int64_t n_b, double momentum) {
  MergeCoef c{0.0, 0.0, 0.0, 0.0, 1.0};
  if (n_b <= 0) {  // absent bin: unchanged (callers skip it anyway)
    c.keep = 1.0;
    c.mean_old = 1.0;
    c.mean_batch = 0.0;
    return c;
  }
  if (momentum < 0.0 || n_old == 0) {
    // Chan et al.'s pairwise update; with n_old == 0 it is the batch statistics.
    const double n = static_cast<double>(n_old + n_b);
    c.mean_old = static_cast<double>(n_old) / n;
    c.mean_batch = static_cast<double>(n_b) / n;
    if (n_old + n_b >= 2) {
      c.keep = n_old >= 2 ? (static_cast<double>(n_old) - 1.0) / (n - 1.0) : 0.0;
      c.sample_w = 1.0 / (n - 1.0);
      c.delta_w = static_cast<double>(n_old) * static_cast<double>(n_b) / (n * (n - 1.0));
    }
    return c;
  }
  // Exponential moving average as FDS: the batch covariance of a bin with a
  // single sample is zero (FDS's biased fallback), so it only decays.
  c.keep = momentum;
  c.mean_old = momentum;
  c.mean_batch = 1.0 - momentum;
  c.sample_w = n_b >= 2 ? (1.0 - momentum) / (static_cast<double>(n_b) - 1.0) : 0.0;
  return c;
}

// Plain batch moments: mean and un-normalised scatter.
IRDA_HOST_DEVICE MergeCoef moment_coefficients() { return MergeCoef{0.0, 1.0, 0.0, 0.0, 1.0}; }

// One coordinate of the merged mean. A zero factor never multiplies the old
// mean, so a running mean that was never written (or is NaN) cannot leak in.
IRDA_HOST_DEVICE double merged_mean(const MergeCoef& c, double mu_old, double m_b) {
  return (c.mean_old == 0.0 ? 0.0 : c.mean_old * mu_old) + c.mean_batch * m_b;
}

// One entry of the merged covariance, with the coefficients already in the
// kernel's type: sample_w * scatter + delta_w * delta_r * delta_c + keep * old.
// `old` is taken by reference and read only when keep != 0.
template <typename T>
IRDA_HOST_DEVICE T merged_cov_entry(T keep, T sample_w, T delta_w, T scatter, T delta_r, T delta_c, const T& old) {
  T v = sample_w * scatter;
  if (delta_w != T(0)) v += delta_w * (delta_r * delta_c);
  if (keep != T(0)) v += keep * old;
  return v;
}

}  // namespace irda
