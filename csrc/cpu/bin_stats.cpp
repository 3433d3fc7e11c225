// Per-bin feature statistics (SPEC 2) on the CPU.
//
// The batch is bucketed by bin with a counting sort; for every bin present we
// build its centred sample vectors (two-pass: batch mean first, so float32
// never forms E[zz^T] - mu mu^T) and then stream once over that bin's D x D
// covariance, row by row, applying the merge of merge_math.h:
//   cov[d, :] = keep * cov[d, :] + sum_j w_j x_j[d] x_j[:]
// Absent bins are never touched.
//
// The covariance part can also be deferred (host-only ops bin_stats_plan_ and
// bin_stats_apply_): the plan of each batch (its centred vectors, weights and
// factors) is built when the batch comes, and the plans of many batches are later
// folded into one update per bin (apply_plans_folded): one pass over the D x D
// blocks instead of one per batch, the result of one bin_stats_update_ per batch
// to rounding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "../merge_math.h"
#include "grain.h"
#include "simd.h"

// The folded flush's tiles in AVX2 and AVX-512 intrinsics (gcc on x86-64, where simd.h builds
// those variants), each inclusion compiled for its instruction set.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define IRDA_X86_TILES 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define IRDA_TILE_BYTES 32
#define IRDA_TILE_NAMESPACE avx2_tiles
#include "folded_tiles_x86.h"
#undef IRDA_TILE_NAMESPACE
#undef IRDA_TILE_BYTES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f")
#define IRDA_TILE_BYTES 64
#define IRDA_TILE_NAMESPACE avx512_tiles
#include "folded_tiles_x86.h"
#undef IRDA_TILE_NAMESPACE
#undef IRDA_TILE_BYTES
#pragma GCC pop_options
#else
#define IRDA_X86_TILES 0
#endif

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

// For each present bin p (bins[p]): the vectors whose weighted outer products are added
// (centred samples, then delta), their weights, and the factor on the old cov. A view:
// the arrays live in a PlanStorage or in the tensors of bin_stats_plan_.
template <typename T>
struct Plan {
  int64_t D = 0, P = 0;
  const int64_t* bins = nullptr;        // [P]
  const int64_t* vec_offset = nullptr;  // vectors of present bin p: [vec_offset[p], vec_offset[p+1])
  const T* vecs = nullptr;              // [num_vectors, D]
  const T* weights = nullptr;           // [num_vectors]
  const T* keep = nullptr;              // [P]
};

// Where build_plan writes; sized by plan_layout.
template <typename T>
struct PlanOut {
  int64_t* vec_offset;
  T* vecs;
  T* weights;
  T* keep;
};

template <typename T>
struct PlanStorage {
  std::vector<int64_t> vec_offset;
  std::vector<T> vecs, weights, keep;
};

// vec_offset of the plan of `bk` (P + 1 entries): a bin's samples, and its delta when merging.
inline void plan_layout(const Buckets& bk, bool plain_moments, int64_t* vec_offset) {
  const int64_t P = static_cast<int64_t>(bk.bins.size());
  vec_offset[0] = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t nb = bk.offset[p + 1] - bk.offset[p];
    vec_offset[p + 1] = vec_offset[p] + nb + (plain_moments ? 0 : 1);
  }
}

void check_finite(const at::Tensor& z) {
  TORCH_CHECK_VALUE(at::isfinite(z).all().item<bool>(), "z contains NaN or infinite features");
}

// The rows of bin_means and build_plan, compiled for AVX-512, AVX2 and baseline x86-64
// (IRDA_TARGET_CLONES, simd.h): as plain template code they were SSE2, two doubles an
// instruction. Element by element, so every instruction set gives the same bits.
// acc[d] += z[d] in float64
#define IRDA_ROW_FUNCTIONS(T)                                                                             \
  IRDA_TARGET_CLONES void add_row(double* __restrict acc, const T* __restrict z, int64_t D) {             \
    for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<double>(z[d]);                                  \
  }                                                                                                       \
  /* out[d] = z[d] - m[d], computed in float64 and rounded to T */                                        \
  IRDA_TARGET_CLONES void centre_row(T* __restrict out, const T* __restrict z, const double* __restrict m, \
                                     int64_t D) {                                                         \
    for (int64_t d = 0; d < D; ++d) out[d] = static_cast<T>(static_cast<double>(z[d]) - m[d]);           \
  }
IRDA_ROW_FUNCTIONS(float)
IRDA_ROW_FUNCTIONS(double)
#undef IRDA_ROW_FUNCTIONS

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
        add_row(mp, z + bk.order[s] * D, D);
      }
      for (int64_t d = 0; d < D; ++d) mp[d] /= static_cast<double>(hi - lo);
    }
  });
  bool finite = true;
  for (const double v : m) finite = finite && std::isfinite(v);
  if (!finite) check_finite(zc);
}

// Updates mean/count in place (when merging) from the batch means m and writes the plan
// into `out` (its vec_offset already laid out by plan_layout).
template <typename T>
void build_plan(const Buckets& bk, const T* z, const std::vector<double>& means, int64_t D, int64_t* count, T* mean,
                double momentum, bool plain_moments, const PlanOut<T>& out) {
  const int64_t P = static_cast<int64_t>(bk.bins.size());
  at::parallel_for(0, P, grain_for(D * bk.order.size() / std::max<int64_t>(P, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = bk.bins[p];
      const int64_t lo = bk.offset[p], hi = bk.offset[p + 1], nb = hi - lo;
      const double* m = means.data() + p * D;
      const MergeCoef c = plain_moments ? moment_coefficients() : merge_coefficients(count[b], nb, momentum);
      T* v = out.vecs + out.vec_offset[p] * D;
      for (int64_t s = lo; s < hi; ++s, v += D) {
        centre_row(v, z + bk.order[s] * D, m, D);
        out.weights[out.vec_offset[p] + (s - lo)] = static_cast<T>(c.sample_w);
      }
      T* mb = mean + b * D;
      if (!plain_moments) {  // delta = m_b - mu_old, then the new mean
        for (int64_t d = 0; d < D; ++d) v[d] = static_cast<T>(m[d] - static_cast<double>(mb[d]));
        out.weights[out.vec_offset[p + 1] - 1] = static_cast<T>(c.delta_w);
        for (int64_t d = 0; d < D; ++d) mb[d] = static_cast<T>(merged_mean(c, static_cast<double>(mb[d]), m[d]));
        count[b] += nb;
      } else {
        for (int64_t d = 0; d < D; ++d) mb[d] = static_cast<T>(m[d]);
        count[b] = nb;
      }
      out.keep[p] = static_cast<T>(c.keep);
    }
  });
}

// The plan of one batch in PlanStorage (bin_moments, bin_stats_update_).
template <typename T>
Plan<T> plan_batch(const Buckets& bk, const T* z, const std::vector<double>& means, int64_t D, int64_t* count,
                   T* mean, double momentum, bool plain_moments, PlanStorage<T>& st) {
  const int64_t P = static_cast<int64_t>(bk.bins.size());
  st.vec_offset.resize(P + 1);
  plan_layout(bk, plain_moments, st.vec_offset.data());
  st.vecs.assign(static_cast<size_t>(st.vec_offset[P] * D), T(0));
  st.weights.assign(st.vec_offset[P], T(0));
  st.keep.assign(P, T(0));
  build_plan<T>(bk, z, means, D, count, mean, momentum, plain_moments,
                {st.vec_offset.data(), st.vecs.data(), st.weights.data(), st.keep.data()});
  return {D, P, bk.bins.data(), st.vec_offset.data(), st.vecs.data(), st.weights.data(), st.keep.data()};
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

// Row d of present bin p's covariance receives the plan's update. Vectors whose
// coefficient is zero in this row are skipped (ReLU features hold many zeros), but one is
// kept so that a row is still written (and scaled by keep).
template <typename T>
inline void update_row(const Plan<T>& plan, int64_t p, int64_t d, T* row, std::vector<const T*>& x,
                       std::vector<T>& coef) {
  const int64_t D = plan.D;
  x.clear();
  coef.clear();
  for (int64_t v = plan.vec_offset[p]; v < plan.vec_offset[p + 1]; ++v) {
    const T* xv = plan.vecs + v * D;
    const T c = plan.weights[v] * xv[d];
    if (c == T(0) && !x.empty()) continue;
    x.push_back(xv);
    coef.push_back(c);
  }
  row_update(row, x.data(), coef.data(), static_cast<int64_t>(x.size()), D, plan.keep[p]);
}

// Where each bin sits in each plan: where[t * B + b] is bin b's position in plan t, or -1;
// bins lists the bins present in any plan, ascending.
struct PlanIndex {
  std::vector<int64_t> where, bins;
};

template <typename T>
PlanIndex index_plans(const std::vector<Plan<T>>& plans, int64_t num_bins) {
  PlanIndex ix{std::vector<int64_t>(plans.size() * num_bins, -1), {}};
  std::vector<char> present(num_bins, 0);
  for (size_t t = 0; t < plans.size(); ++t) {
    for (int64_t p = 0; p < plans[t].P; ++p) {
      ix.where[t * num_bins + plans[t].bins[p]] = p;
      present[plans[t].bins[p]] = 1;
    }
  }
  for (int64_t b = 0; b < num_bins; ++b) {
    if (present[b]) ix.bins.push_back(b);
  }
  return ix;
}

// Applies the plans, in their order, to the rows of every bin present in any of them: a
// row gets all its updates while it is in cache (bin_stats_update_ and bin_moments: one
// plan, one batch).
template <typename T>
void apply_plans(const std::vector<Plan<T>>& plans, int64_t num_bins, T* cov) {
  if (plans.empty()) return;
  const int64_t D = plans[0].D;
  const PlanIndex ix = index_plans(plans, num_bins);
  const std::vector<int64_t>& where = ix.where;  // (a lambda below reads them: no structured binding)
  const std::vector<int64_t>& bins = ix.bins;
  const int64_t U = static_cast<int64_t>(bins.size());
  // Rows of all present bins form one flat range, so both cores stay busy
  // however the samples are spread over bins.
  at::parallel_for(0, U * D, grain_for(4 * D * static_cast<int64_t>(plans.size())), [&](int64_t begin, int64_t end) {
    std::vector<const T*> x;
    std::vector<T> coef;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = bins[r / D], d = r % D;
      if (r + 1 < end) {  // the next row comes from memory: ask for it while this one is computed
        const char* next = reinterpret_cast<const char*>(cov + (bins[(r + 1) / D] * D + (r + 1) % D) * D);
        for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(next + off, 1);
      }
      T* row = cov + (b * D + d) * D;
      for (size_t t = 0; t < plans.size(); ++t) {
        const int64_t p = where[t * num_bins + b];
        if (p >= 0) update_row(plans[t], p, d, row, x, coef);
      }
    }
  });
}

// bin_stats_apply_'s pass: the plans of many batches folded into one update per bin.
// Applied one after another, plan t gives cov <- k_t cov + sum_{v in t} w_v x_v x_v^T, so
// after all of them
//   cov <- (prod_t k_t) cov + sum_t sum_{v in t} (w_v prod_{s > t} k_s) x_v x_v^T,
// one rank-M update of the bin's D x D block (M: its vectors in all the plans) with the
// later keeps folded into the weights (in float64, then rounded to T). A plan with keep 0
// (the bin's first batch of the epoch) drops the old block and every earlier plan's
// vectors: their factor is 0, and the old block, which may hold anything, is not read.
// The block is computed in tiles of R rows x C columns, held in registers over all M
// vectors (fused multiply-adds where the instruction set has them), then stored once: under
// AVX2 and AVX-512 in intrinsics (folded_tiles_x86.h), elsewhere in loops gcc vectorises
// (folded_tile). Each element's sum runs over the vectors in the same order whatever the
// tiles, so the bits do not depend on them. The sums are in another order than
// apply_plans', hence other roundings (relative 1e-7 in float32); bin_stats_update_ keeps
// apply_plans, one plan at a time. At abalone's sizes (7 batches of 256 in 29 bins, D = 128,
// one thread, hot caches; AMD EPYC, Zen 5) a flush takes 0.34 ms in float32 with AVX-512,
// 0.59 ms with AVX2 (0.37 and 0.84 ms when gcc vectorised the tiles itself), and 0.61 / 1.2 ms
// in float64 (2.3 / 13.7 ms before).
// Bins are handed to the threads in bands of kBandRows rows (a multiple of every R).
constexpr int64_t kBandRows = 24;

template <typename T>
struct FoldedBin {
  std::vector<const T*> vecs;  // [M]
  std::vector<T> weights;      // [M], the later keeps folded in
  T keep = T(1);               // on the old block; 0: not read
};

template <typename T>
void fold_bin(const std::vector<Plan<T>>& plans, const std::vector<int64_t>& where, int64_t num_bins, int64_t b,
              FoldedBin<T>& out) {
  out.vecs.clear();
  out.weights.clear();
  const int64_t D = plans[0].D;
  double later = 1.0;  // prod of the keeps of the plans after the current one
  // from the last plan back to the last one with keep 0 (or the first)
  for (int64_t t = static_cast<int64_t>(plans.size()) - 1; t >= 0; --t) {
    const int64_t p = where[t * num_bins + b];
    if (p < 0) continue;
    const Plan<T>& plan = plans[t];
    for (int64_t v = plan.vec_offset[p + 1] - 1; v >= plan.vec_offset[p]; --v) {
      out.vecs.push_back(plan.vecs + v * D);
      out.weights.push_back(static_cast<T>(static_cast<double>(plan.weights[v]) * later));
    }
    later *= static_cast<double>(plan.keep[p]);
    if (plan.keep[p] == T(0)) break;
  }
  // plan order, vectors in their order: the sums run over them first to last
  std::reverse(out.vecs.begin(), out.vecs.end());
  std::reverse(out.weights.begin(), out.weights.end());
  out.keep = static_cast<T>(later);
}

// The tile of the instruction sets without vector intrinsics here (baseline x86-64, other
// architectures): R = 4 rows x C = 128 / sizeof(T) columns, which gcc vectorises itself. Rows
// [d0, d0 + R) x columns [e0, e0 + C) of the block: sum_v a_v[r] x_v[e] in registers,
// a_v[r] = w_v x_v[d0 + r], then keep * old + sum (or the sum alone when keep is 0).
template <bool kFma, typename T, int64_t R, int64_t C>
__attribute__((always_inline)) inline void folded_tile(T* __restrict block, const T* const* vecs, const T* weights,
                                                       int64_t M, int64_t D, int64_t d0, int64_t e0, T keep) {
  T acc[R][C] = {};
  for (int64_t v = 0; v < M; ++v) {
    const T* __restrict x = vecs[v];
    for (int64_t r = 0; r < R; ++r) {
      const T a = weights[v] * x[d0 + r];
      for (int64_t e = 0; e < C; ++e) acc[r][e] = mul_add<kFma>(a, x[e0 + e], acc[r][e]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    T* __restrict row = block + (d0 + r) * D + e0;
    if (keep == T(0)) {
      for (int64_t e = 0; e < C; ++e) row[e] = acc[r][e];
    } else {
      for (int64_t e = 0; e < C; ++e) row[e] = keep * row[e] + acc[r][e];
    }
  }
}

// Rows [d0, d0 + R) of a bin's block, every column: whole tiles of C columns, then the columns
// left over one by one.
template <bool kFma, typename T, int64_t R>
__attribute__((always_inline)) inline void folded_row_tiles(T* block, const T* const* vecs, const T* weights,
                                                            int64_t M, int64_t D, int64_t d0, T keep) {
  constexpr int64_t C = 128 / sizeof(T);
  const int64_t whole_cols = D / C * C;
  for (int64_t e0 = 0; e0 < whole_cols; e0 += C) folded_tile<kFma, T, R, C>(block, vecs, weights, M, D, d0, e0, keep);
  for (int64_t e = whole_cols; e < D; ++e) folded_tile<kFma, T, R, 1>(block, vecs, weights, M, D, d0, e, keep);
}

// Rows [d0, d1) of a bin's block: AVX2 and AVX-512 in folded_tiles_x86.h's tiles, the other
// instruction sets in tiles of 4 rows, then 2 and 1 for the rows left over.
template <bool kFma, int64_t kVectorBytes, typename T>
__attribute__((always_inline)) inline void folded_rows_impl(T* block, const T* const* vecs, const T* weights,
                                                            int64_t M, int64_t D, int64_t d0, int64_t d1, T keep) {
#if IRDA_X86_TILES
  if constexpr (kVectorBytes == 64) {
    return avx512_tiles::folded_rows(block, vecs, weights, M, D, d0, d1, keep);
  } else if constexpr (kVectorBytes == 32) {
    return avx2_tiles::folded_rows(block, vecs, weights, M, D, d0, d1, keep);
  }
#endif
  int64_t d = d0;
  for (; d + 4 <= d1; d += 4) {
    for (int64_t r = 4; r < 8 && d + r < d1; ++r) {  // the next tile's rows of the block, from memory
      const char* next = reinterpret_cast<const char*>(block + (d + r) * D);
      for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(next + off, 1);
    }
    folded_row_tiles<kFma, T, 4>(block, vecs, weights, M, D, d, keep);
  }
  for (; d + 2 <= d1; d += 2) folded_row_tiles<kFma, T, 2>(block, vecs, weights, M, D, d, keep);
  for (; d < d1; ++d) folded_row_tiles<kFma, T, 1>(block, vecs, weights, M, D, d, keep);
}

#define IRDA_FOLDED_ENTRY_POINTS(TARGET, FMA, BYTES, T)                                                     \
  TARGET void folded_rows(T* block, const T* const* vecs, const T* weights, int64_t M, int64_t D, int64_t d0, \
                          int64_t d1, T keep) {                                                             \
    folded_rows_impl<FMA, BYTES, T>(block, vecs, weights, M, D, d0, d1, keep);                              \
  }
#define IRDA_FOLDED_VARIANT(TARGET, FMA, BYTES) \
  IRDA_FOLDED_ENTRY_POINTS(TARGET, FMA, BYTES, float) IRDA_FOLDED_ENTRY_POINTS(TARGET, FMA, BYTES, double)
IRDA_WIDTH_VARIANTS(IRDA_FOLDED_VARIANT)
#undef IRDA_FOLDED_VARIANT
#undef IRDA_FOLDED_ENTRY_POINTS

template <typename T>
void apply_plans_folded(const std::vector<Plan<T>>& plans, int64_t num_bins, T* cov) {
  if (plans.empty()) return;
  const int64_t D = plans[0].D;
  const PlanIndex ix = index_plans(plans, num_bins);
  const std::vector<int64_t>& where = ix.where;
  const std::vector<int64_t>& bins = ix.bins;
  std::vector<FoldedBin<T>> folded(num_bins);
  int64_t vectors = 0;
  for (const int64_t b : bins) {
    fold_bin(plans, where, num_bins, b, folded[b]);
    vectors += static_cast<int64_t>(folded[b].vecs.size());
  }
  // items: (bin, a band of kBandRows rows), so that both cores stay busy whatever the spread
  const int64_t bands = (D + kBandRows - 1) / kBandRows, U = static_cast<int64_t>(bins.size());
  const int64_t work_per_band = 2 * kBandRows * D * std::max<int64_t>(1, vectors / std::max<int64_t>(U, 1));
  at::parallel_for(0, U * bands, grain_for(work_per_band), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end;) {
      // consecutive bands of one bin in one call
      const int64_t u = item / bands, first = item % bands;
      const int64_t last = std::min(bands, first + (end - item));
      const FoldedBin<T>& f = folded[bins[u]];
      folded_rows(cov + bins[u] * D * D, f.vecs.data(), f.weights.data(), static_cast<int64_t>(f.vecs.size()), D,
                  first * kBandRows, std::min(D, last * kBandRows), f.keep);
      item += last - first;
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
    PlanStorage<scalar_t> st;
    const Plan<scalar_t> plan = plan_batch<scalar_t>(bk, zc.data_ptr<scalar_t>(), means, D, count.data_ptr<int64_t>(),
                                                     mean.data_ptr<scalar_t>(), -1.0, /*plain_moments=*/true, st);
    apply_plans<scalar_t>({plan}, num_bins, scatter.data_ptr<scalar_t>());
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
    PlanStorage<scalar_t> st;
    const Plan<scalar_t> plan = plan_batch<scalar_t>(bk, zc.data_ptr<scalar_t>(), means, D, count.data_ptr<int64_t>(),
                                                     mean.data_ptr<scalar_t>(), rho, /*plain_moments=*/false, st);
    apply_plans<scalar_t>({plan}, B, cov.data_ptr<scalar_t>());
  });
}

// bin_stats_update_'s merge of the batch into count and mean, now; its covariance part
// returned as a plan for bin_stats_apply_. Shapes depend on the inputs only (S = min(n, B)
// present bins at most): bins [S] (the present ones, ascending, then -1), vec_offset
// [S + 1] (the last entry repeated after the present bins), vecs [n + S, D], weights
// [n + S], keep [S] (unused entries zero).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bin_stats_plan_cpu(
    at::Tensor& count, at::Tensor& mean, const at::Tensor& z, const at::Tensor& bin_index,
    std::optional<double> momentum) {
  check_count_mean(count, mean);
  check_features(z, bin_index, mean.size(1));
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous(), "the statistics (count, mean) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t n = z.size(0), B = mean.size(0), D = mean.size(1), S = std::min(n, B);
  if (n == 0 || D == 0) {
    return {at::full({S}, -1, count.options()), at::zeros({S + 1}, count.options()),
            at::zeros({n + S, D}, mean.options()), at::zeros({n + S}, mean.options()), at::zeros({S}, mean.options())};
  }
  // Uninitialised, then every entry written: build_plan writes the first n + P vectors and
  // weights and P keeps (P: the bins present), the rest is padding (-1, zeros) written here.
  // Zero-filling the vectors first was another pass over the step's largest output.
  at::Tensor bins = at::empty({S}, count.options());
  at::Tensor vec_offset = at::empty({S + 1}, count.options());
  at::Tensor vecs = at::empty({n + S, D}, mean.options());
  at::Tensor weights = at::empty({n + S}, mean.options());
  at::Tensor keep = at::empty({S}, mean.options());
  const at::Tensor zc = z.to(mean.scalar_type()).contiguous();
  const Buckets bk = bucket_by_bin(bin_index.contiguous(), B);
  const int64_t P = static_cast<int64_t>(bk.bins.size());
  int64_t* offsets = vec_offset.data_ptr<int64_t>();
  plan_layout(bk, /*plain_moments=*/false, offsets);
  for (int64_t p = P + 1; p <= S; ++p) offsets[p] = offsets[P];
  int64_t* bin_out = bins.data_ptr<int64_t>();
  std::copy(bk.bins.begin(), bk.bins.end(), bin_out);
  std::fill(bin_out + P, bin_out + S, int64_t(-1));
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "bin_stats_plan_cpu", [&] {
    std::vector<double> means;
    bin_means<scalar_t>(bk, zc, D, means);
    scalar_t *v = vecs.data_ptr<scalar_t>(), *w = weights.data_ptr<scalar_t>(), *k = keep.data_ptr<scalar_t>();
    build_plan<scalar_t>(bk, zc.data_ptr<scalar_t>(), means, D, count.data_ptr<int64_t>(), mean.data_ptr<scalar_t>(),
                         rho, /*plain_moments=*/false, {offsets, v, w, k});
    std::fill(v + (n + P) * D, v + (n + S) * D, scalar_t(0));
    std::fill(w + n + P, w + n + S, scalar_t(0));
    std::fill(k + P, k + S, scalar_t(0));
  });
  return {bins, vec_offset, vecs, weights, keep};
}

// BinStats.update's CPU step under the "epoch" estimator: bin_stats_plan_ on the epoch's
// count and mean, and the running count's bookkeeping of BinStats (irda_ext/bin_stats.py)
// that took six small tensor ops a step: count += the batch's counts, and first[b] flags
// the bins that got samples and had no finished epoch (count == epoch_count before the
// batch); num_first (0-dim int64) says how many.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
bin_stats_epoch_plan_cpu(at::Tensor& count, at::Tensor& epoch_count, at::Tensor& epoch_mean, const at::Tensor& z,
                         const at::Tensor& bin_index) {
  check_count_mean(epoch_count, epoch_mean);
  const int64_t B = epoch_mean.size(0);
  TORCH_CHECK_TYPE(count.scalar_type() == at::kLong, "count must be int64, got ", count.scalar_type());
  TORCH_CHECK_VALUE(count.dim() == 1 && count.size(0) == B && count.is_contiguous(), "count must be contiguous of shape [",
                    B, "], got ", shape_str(count));
  TORCH_CHECK_VALUE(epoch_count.is_contiguous(), "the statistics (count, mean) must be contiguous");
  const int64_t* ec = epoch_count.data_ptr<int64_t>();
  const std::vector<int64_t> before(ec, ec + B);
  auto [bins, vec_offset, vecs, weights, keep] = bin_stats_plan_cpu(epoch_count, epoch_mean, z, bin_index,
                                                                     std::nullopt);
  at::Tensor first = at::empty({B}, count.options().dtype(at::kBool));
  bool* f = first.data_ptr<bool>();
  int64_t* c = count.data_ptr<int64_t>();
  int64_t num_first = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t added = ec[b] - before[b];
    f[b] = added > 0 && c[b] == before[b];
    num_first += f[b];
    c[b] += added;
  }
  return {bins, vec_offset, vecs, weights, keep, first, at::scalar_tensor(num_first, count.options())};
}

// Applies plans of bin_stats_plan_, in list order, to cov [B, D, D]: one bin_stats_update_
// per batch to rounding, each block of the covariances read and written once.
void bin_stats_apply_cpu(at::Tensor& cov, at::TensorList bins, at::TensorList vec_offset, at::TensorList vecs,
                         at::TensorList weights, at::TensorList keep) {
  TORCH_CHECK_VALUE(cov.dim() == 3 && cov.size(1) == cov.size(2), "cov must have shape [B, D, D], got ",
                    shape_str(cov));
  TORCH_CHECK_TYPE(cov.scalar_type() == at::kFloat || cov.scalar_type() == at::kDouble,
                   "cov must be float32 or float64, got ", cov.scalar_type());
  TORCH_CHECK_VALUE(cov.is_contiguous(), "cov must be contiguous");
  const size_t num_plans = bins.size();
  TORCH_CHECK_VALUE(vec_offset.size() == num_plans && vecs.size() == num_plans && weights.size() == num_plans &&
                        keep.size() == num_plans,
                    "bin_stats_apply_: the plan lists must have one entry per plan, got ", bins.size(), ", ",
                    vec_offset.size(), ", ", vecs.size(), ", ", weights.size(), ", ", keep.size());
  const int64_t B = cov.size(0), D = cov.size(1);
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "bin_stats_apply_cpu", [&] {
    std::vector<Plan<scalar_t>> plans;
    for (size_t t = 0; t < num_plans; ++t) {
      const at::Tensor &bt = bins[t], &ot = vec_offset[t], &vt = vecs[t], &wt = weights[t], &kt = keep[t];
      TORCH_CHECK_TYPE(bt.scalar_type() == at::kLong && ot.scalar_type() == at::kLong,
                       "plan ", t, ": bins and vec_offset must be int64");
      for (const at::Tensor* x : {&vt, &wt, &kt}) {
        TORCH_CHECK_TYPE(x->scalar_type() == cov.scalar_type(), "plan ", t, ": vecs, weights and keep must be ",
                         cov.scalar_type(), " like cov, got ", x->scalar_type());
      }
      for (const at::Tensor* x : {&bt, &ot, &vt, &wt, &kt}) {
        TORCH_CHECK_VALUE(x->device().is_cpu() && x->is_contiguous(), "plan ", t,
                          ": tensors must be contiguous, on the CPU");
      }
      const int64_t S = bt.dim() == 1 ? bt.size(0) : -1;
      TORCH_CHECK_VALUE(S >= 0 && ot.dim() == 1 && ot.size(0) == S + 1 && kt.dim() == 1 && kt.size(0) == S &&
                            vt.dim() == 2 && vt.size(1) == D && wt.dim() == 1 && wt.size(0) == vt.size(0),
                        "plan ", t, ": expected bins [S], vec_offset [S + 1], vecs [V, ", D, "], weights [V], keep [S] "
                        "(bin_stats_plan_'s), got ", shape_str(bt), ", ", shape_str(ot), ", ", shape_str(vt), ", ",
                        shape_str(wt), ", ", shape_str(kt));
      const int64_t* b = bt.data_ptr<int64_t>();
      const int64_t* o = ot.data_ptr<int64_t>();
      int64_t P = 0;
      while (P < S && b[P] >= 0) ++P;
      TORCH_CHECK_VALUE(o[0] == 0, "plan ", t, ": vec_offset must start at 0");
      for (int64_t p = 0; p < S; ++p) {
        TORCH_CHECK_VALUE(p < P ? (b[p] < B && (p == 0 || b[p] > b[p - 1])) : b[p] == -1, "plan ", t,
                          ": bins must be distinct ascending bins in [0, ", B, ") followed by -1");
        TORCH_CHECK_VALUE(o[p + 1] >= o[p] && o[p + 1] <= vt.size(0) && (p >= P || o[p + 1] > o[p]), "plan ", t,
                          ": vec_offset must increase within [0, ", vt.size(0), "], each present bin with a vector");
      }
      plans.push_back({D, P, b, o, vt.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), kt.data_ptr<scalar_t>()});
    }
    if (D > 0) apply_plans_folded<scalar_t>(plans, B, cov.data_ptr<scalar_t>());
  });
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("bin_moments", &irda::bin_moments_cpu);
  m.impl("bin_stats_update_", &irda::bin_stats_update_cpu);
  m.impl("bin_stats_plan_", &irda::bin_stats_plan_cpu);
  m.impl("bin_stats_apply_", &irda::bin_stats_apply_cpu);
  m.impl("bin_stats_epoch_plan_", &irda::bin_stats_epoch_plan_cpu);
}
