// Per-bin feature statistics (SPEC 2) on the CPU.
//
// The batch is bucketed by bin with a counting sort; for every bin present we
// build its centred sample vectors (two-pass: batch mean first, so float32
// never forms E[zz^T] - mu mu^T) and then stream once over that bin's D x D
// covariance, row by row, applying the merge of merge_math.h:
//   cov[d, :] = keep * cov[d, :] + sum_j w_j x_j[d] x_j[:]
// Absent bins are never touched.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../merge_math.h"
#include "grain.h"
#include "simd.h"

namespace irda {
namespace {

// The batch bucketed by bin: samples of bin bins[p] are order[offset[p] .. offset[p+1]).
struct Buckets {
  std::vector<int64_t> bins, offset, order;
};

Buckets bucket_by_bin(const at::Tensor& bin_index, int64_t num_bins) {
  const int64_t n = bin_index.size(0);
  const int64_t* bin = bin_index.data_ptr<int64_t>();
  std::vector<int64_t> count(num_bins, 0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(bin[i] >= 0 && bin[i] < num_bins, "bin_index[", i, "] = ", bin[i], " is outside [0, ",
                      num_bins, ")");
    ++count[bin[i]];
  }
  Buckets out;
  std::vector<int64_t> slot(num_bins, -1);
  out.offset.push_back(0);
  for (int64_t b = 0; b < num_bins; ++b) {
    if (count[b] == 0) continue;
    slot[b] = static_cast<int64_t>(out.bins.size());
    out.bins.push_back(b);
    out.offset.push_back(out.offset.back() + count[b]);
  }
  std::vector<int64_t> fill(out.offset.begin(), out.offset.end() - 1);
  out.order.resize(n);
  for (int64_t i = 0; i < n; ++i) out.order[fill[slot[bin[i]]]++] = i;
  return out;
}

// For each present bin: the vectors whose weighted outer products are added
// (centred samples, then delta), their weights, and the factor on the old cov.
template <typename T>
struct Plan {
  int64_t D = 0;
  std::vector<int64_t> vec_offset;  // vectors of present bin p: [vec_offset[p], vec_offset[p+1])
  std::vector<T> vecs;              // [num_vectors, D]
  std::vector<T> weights;           // [num_vectors]
  std::vector<T> keep;              // [P]
};

void check_finite(const at::Tensor& z) {
  TORCH_CHECK_VALUE(at::isfinite(z).all().item<bool>(), "z contains NaN or infinite features");
}

// The batch mean of every present bin, in float64, into m[P, D]. A NaN or infinite feature
// makes its bin's mean NaN or infinite (a float32 sum cannot overflow a double), so the
// finiteness check of z reads these P x D values, not z itself, before anything is written
// (a float64 sum may overflow: the exact check decides then).
template <typename T>
void bin_means(const Buckets& bk, const at::Tensor& zc, int64_t D, std::vector<double>& m) {
  const int64_t P = static_cast<int64_t>(bk.bins.size());
  const T* z = zc.data_ptr<T>();
  m.assign(static_cast<size_t>(P * D), 0.0);
  at::parallel_for(0, P, grain_for(D * bk.order.size() / std::max<int64_t>(P, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      double* mp = m.data() + p * D;
      const int64_t lo = bk.offset[p], hi = bk.offset[p + 1];
      for (int64_t s = lo; s < hi; ++s) {
        const T* zi = z + bk.order[s] * D;
        for (int64_t d = 0; d < D; ++d) mp[d] += static_cast<double>(zi[d]);
      }
      for (int64_t d = 0; d < D; ++d) mp[d] /= static_cast<double>(hi - lo);
    }
  });
  bool finite = true;
  for (const double v : m) finite = finite && std::isfinite(v);
  if (!finite) check_finite(zc);
}

// Updates mean/count in place (when merging) from the batch means m and builds the plan.
template <typename T>
Plan<T> build_plan(const Buckets& bk, const T* z, const std::vector<double>& means, int64_t D, int64_t* count,
                   T* mean, double momentum, bool plain_moments) {
  const int64_t P = static_cast<int64_t>(bk.bins.size());
  Plan<T> plan;
  plan.D = D;
  plan.vec_offset.resize(P + 1);
  plan.vec_offset[0] = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t nb = bk.offset[p + 1] - bk.offset[p];
    plan.vec_offset[p + 1] = plan.vec_offset[p] + nb + (plain_moments ? 0 : 1);
  }
  plan.vecs.assign(static_cast<size_t>(plan.vec_offset[P] * D), T(0));
  plan.weights.assign(plan.vec_offset[P], T(0));
  plan.keep.assign(P, T(0));
  at::parallel_for(0, P, grain_for(D * bk.order.size() / std::max<int64_t>(P, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = bk.bins[p];
      const int64_t lo = bk.offset[p], hi = bk.offset[p + 1], nb = hi - lo;
      const double* m = means.data() + p * D;
      const MergeCoef c = plain_moments ? moment_coefficients() : merge_coefficients(count[b], nb, momentum);
      T* v = plan.vecs.data() + plan.vec_offset[p] * D;
      for (int64_t s = lo; s < hi; ++s, v += D) {
        const T* zi = z + bk.order[s] * D;
        for (int64_t d = 0; d < D; ++d) v[d] = static_cast<T>(static_cast<double>(zi[d]) - m[d]);
        plan.weights[plan.vec_offset[p] + (s - lo)] = static_cast<T>(c.sample_w);
      }
      T* mb = mean + b * D;
      if (!plain_moments) {  // delta = m_b - mu_old, then the new mean
        for (int64_t d = 0; d < D; ++d) v[d] = static_cast<T>(m[d] - static_cast<double>(mb[d]));
        plan.weights[plan.vec_offset[p + 1] - 1] = static_cast<T>(c.delta_w);
        for (int64_t d = 0; d < D; ++d) mb[d] = static_cast<T>(merged_mean(c, static_cast<double>(mb[d]), m[d]));
        count[b] += nb;
      } else {
        for (int64_t d = 0; d < D; ++d) mb[d] = static_cast<T>(m[d]);
        count[b] = nb;
      }
      plan.keep[p] = static_cast<T>(c.keep);
    }
  });
  return plan;
}

// The inner loop of the merge: row = keep * row + sum_j coef[j] * x_j, four
// vectors per sweep so the row (in L1) is loaded and stored once per four
// updates. Compiled for AVX-512, AVX2 and baseline x86-64 and picked at load
// time (IRDA_TARGET_CLONES, simd.h), so a plain source build is fast on any of
// them.

template <typename T>
__attribute__((always_inline)) inline void row_update_impl(T* __restrict row, const T* const* x, const T* coef, int64_t nv, int64_t D, T keep) {
  for (int64_t v = 0; v < nv || v == 0; v += 4) {
    // Missing vectors of the last group repeat the first with coefficient 0.
    const T* __restrict x0 = x[v];
    const T* __restrict x1 = v + 1 < nv ? x[v + 1] : x0;
    const T* __restrict x2 = v + 2 < nv ? x[v + 2] : x0;
    const T* __restrict x3 = v + 3 < nv ? x[v + 3] : x0;
    const T c0 = coef[v], c1 = v + 1 < nv ? coef[v + 1] : T(0);
    const T c2 = v + 2 < nv ? coef[v + 2] : T(0), c3 = v + 3 < nv ? coef[v + 3] : T(0);
    if (v == 0 && keep == T(0)) {  // the old row is not read (it may be uninitialised)
      for (int64_t e = 0; e < D; ++e) row[e] = c0 * x0[e] + c1 * x1[e] + c2 * x2[e] + c3 * x3[e];
    } else {
      const T k = v == 0 ? keep : T(1);
      for (int64_t e = 0; e < D; ++e) row[e] = k * row[e] + (c0 * x0[e] + c1 * x1[e] + c2 * x2[e] + c3 * x3[e]);
    }
  }
}

IRDA_TARGET_CLONES void row_update(float* row, const float* const* x, const float* coef, int64_t nv, int64_t D,
                                   float keep) {
  row_update_impl<float>(row, x, coef, nv, D, keep);
}
IRDA_TARGET_CLONES void row_update(double* row, const double* const* x, const double* coef, int64_t nv, int64_t D,
                                   double keep) {
  row_update_impl<double>(row, x, coef, nv, D, keep);
}

// One pass over the rows of every present bin's covariance.
template <typename T>
void apply_plan(const Plan<T>& plan, const Buckets& bk, T* cov) {
  const int64_t D = plan.D, P = static_cast<int64_t>(bk.bins.size());
  // Rows of all present bins form one flat range, so both cores stay busy
  // however the samples are spread over bins.
  at::parallel_for(0, P * D, grain_for(4 * D), [&](int64_t begin, int64_t end) {
    std::vector<const T*> x;
    std::vector<T> coef;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / D, d = r % D;
      x.clear();
      coef.clear();
      for (int64_t v = plan.vec_offset[p]; v < plan.vec_offset[p + 1]; ++v) {
        const T* xv = plan.vecs.data() + v * D;
        const T c = plan.weights[v] * xv[d];
        if (c == T(0) && !x.empty()) continue;  // keep one vector so a zero row is still written
        x.push_back(xv);
        coef.push_back(c);
      }
      if (r + 1 < end) {  // the next row comes from memory: ask for it while this one is computed
        const int64_t pn = (r + 1) / D, dn = (r + 1) % D;
        const char* next = reinterpret_cast<const char*>(cov + (bk.bins[pn] * D + dn) * D);
        for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(next + off, 1);
      }
      row_update(cov + (bk.bins[p] * D + d) * D, x.data(), coef.data(), static_cast<int64_t>(x.size()), D,
                 plan.keep[p]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_moments_cpu(const at::Tensor& z, const at::Tensor& bin_index,
                                                               int64_t num_bins) {
  check_features(z, bin_index, -1);
  TORCH_CHECK_VALUE(num_bins >= 1, "num_bins must be at least 1, got ", num_bins);
  const int64_t D = z.size(1);
  // half / bfloat16 features are accumulated in float32
  const auto acc = (z.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor zc = z.to(acc).contiguous();
  const at::Tensor bins = bin_index.contiguous();
  at::Tensor count = at::zeros({num_bins}, bin_index.options());
  at::Tensor mean = at::zeros({num_bins, D}, zc.options());
  at::Tensor scatter = at::zeros({num_bins, D, D}, zc.options());
  if (z.size(0) == 0 || D == 0) {
    check_finite(zc);
    return {count, mean, scatter};
  }
  const Buckets bk = bucket_by_bin(bins, num_bins);
  AT_DISPATCH_FLOATING_TYPES(acc, "bin_moments_cpu", [&] {
    std::vector<double> means;
    bin_means<scalar_t>(bk, zc, D, means);
    const Plan<scalar_t> plan = build_plan<scalar_t>(bk, zc.data_ptr<scalar_t>(), means, D, count.data_ptr<int64_t>(),
                                                     mean.data_ptr<scalar_t>(), -1.0, /*plain_moments=*/true);
    apply_plan(plan, bk, scatter.data_ptr<scalar_t>());
  });
  return {count, mean, scatter};
}

void bin_stats_update_cpu(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& z,
                          const at::Tensor& bin_index, std::optional<double> momentum) {
  check_stats(count, mean, cov);
  check_features(z, bin_index, mean.size(1));
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous() && cov.is_contiguous(),
                    "the statistics (count, mean, cov) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t D = mean.size(1), B = mean.size(0);
  if (z.size(0) == 0 || D == 0) return;
  const at::Tensor zc = z.to(mean.scalar_type()).contiguous();
  const Buckets bk = bucket_by_bin(bin_index.contiguous(), B);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "bin_stats_update_cpu", [&] {
    std::vector<double> means;
    bin_means<scalar_t>(bk, zc, D, means);
    const Plan<scalar_t> plan = build_plan<scalar_t>(bk, zc.data_ptr<scalar_t>(), means, D, count.data_ptr<int64_t>(),
                                                     mean.data_ptr<scalar_t>(), rho, /*plain_moments=*/false);
    apply_plan(plan, bk, cov.data_ptr<scalar_t>());
  });
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("bin_moments", &irda::bin_moments_cpu);
  m.impl("bin_stats_update_", &irda::bin_stats_update_cpu);
}
