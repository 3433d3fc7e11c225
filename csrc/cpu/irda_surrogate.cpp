// Fused IRDA surrogate (SPEC 6) on the CPU: one task per sample streams over the
// (cluster, bin) grid and saves one LSE per (sample, numerator cluster); backward
// recomputes the grid from it. When a gradient will follow, autograd calls
// irda_surrogate_with_partials instead, which evaluates each term with its derivatives
// once and keeps five partial sums per sample; its backward only scales them. Both
// backwards run one pass (the *_partials functions) and give the same bits. Nothing of
// size [n, K, K, B] or [n, K, B] is ever built.
//
// The loops run over a compacted grid of the bins with a finite prior and use a
// polynomial exp, so the compiler vectorises them (AVX-512, AVX2 or SSE2, picked at
// load time); forward takes the max of a sample's logits first, then sums exp(logit
// - max), instead of an online log-sum-exp with its branch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../surrogate_math.h"
#include "grain.h"
#include "simd.h"

namespace irda {
namespace {

// Read-only views of the inputs, contiguous.
template <typename T>
struct SurrogateArgs {
  const T* pred;
  const T* target;
  const int64_t* bin;
  const T* centers;
  const T* eta;  // [K, B]
  const T* log_prior;
  const T* shift;
  const T* var;
  T alpha, beta, u;
  int64_t n, K, B;
  T eta_min_valid;  // min of eta over clusters and bins with finite log prior
  // The competitors (k', b'): the V bins with a finite log prior, compacted, and laid
  // out as one row of K * V per quantity (padded), so a sample's numerator cluster
  // loops once over all of them.
  int64_t V;
  int64_t KV_padded;                // K * V rounded up to kGridPad
  const int64_t* grid_pos;          // [B]: a bin's index in 0..V-1, -1 without prior
  const T* grid_id;                 // [K * V]: that index of each competitor, as a T (exact below 2^24)
  const T* grid_t;                  // [K * V] bin centres
  const T* grid_lp;                 // [K * V] log prior
  const T* grid_eta;                // [K * V] eta[k', b']
};

// The grid is padded to whole blocks of kGridPad lanes (the widest vector: 16
// floats), which the lane loops below need. A padding competitor has the largest eta
// (so r = 1 - 2 u (eta_own - eta_max) s2 >= 1), centre 0 and a log prior of -1e30:
// its logit is about -1e30, its exp underflows to the clamp (1e-308 / 1e-38, next to
// a largest term of 1) and its gradient weight with it.
constexpr int64_t kGridPad = 16;
constexpr double kPadLogPrior = -1e30;

// Storage behind SurrogateArgs' grid pointers.
template <typename T>
struct CompactGrid {
  std::vector<int64_t> pos;
  std::vector<T> id;
  std::vector<T> t, lp, eta;
  CompactGrid(const T* centers, const T* log_prior, const T* eta_full, int64_t K, int64_t B) : pos(B, -1) {
    std::vector<int64_t> live;
    live.reserve(B);
    for (int64_t b = 0; b < B; ++b) {
      if (!std::isfinite(log_prior[b])) continue;
      pos[b] = static_cast<int64_t>(live.size());
      live.push_back(b);
    }
    const int64_t V = static_cast<int64_t>(live.size());
    unpadded = K * V;
    const int64_t padded = (unpadded + kGridPad - 1) / kGridPad * kGridPad;
    // sized once (a call's fixed cost: this is built every call), then filled
    id.resize(padded), t.resize(padded), lp.resize(padded), eta.resize(padded);
    T eta_max = T(1);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t v = 0; v < V; ++v) {
        const int64_t j = k * V + v, b = live[v];
        id[j] = static_cast<T>(v);
        t[j] = centers[b];
        lp[j] = log_prior[b];
        eta[j] = eta_full[k * B + b];
        eta_max = std::max(eta_max, eta[j]);
      }
    }
    for (int64_t j = unpadded; j < padded; ++j) {
      id[j] = T(-1);
      t[j] = T(0);
      lp[j] = static_cast<T>(kPadLogPrior);
      eta[j] = eta_max;
    }
  }
  int64_t unpadded = 0;  // K * V
  int64_t padded() const { return static_cast<int64_t>(t.size()); }
};

template <typename T>
T valid_eta_min(const T* eta, const T* log_prior, int64_t K, int64_t B) {
  T lo = std::numeric_limits<T>::infinity();
  for (int64_t b = 0; b < B; ++b) {
    if (!std::isfinite(log_prior[b])) continue;
    for (int64_t k = 0; k < K; ++k) lo = std::min(lo, eta[k * B + b]);
  }
  return lo;
}

// The augmented prediction's variance of sample i in exact mode (SPEC 6.2).
template <typename T>
bool sample_variance(const SurrogateArgs<T>& a, int64_t i, T* s2) {
  const int64_t b = a.bin[i];
  T own_max = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < a.K; ++k) own_max = std::max(own_max, a.eta[k * a.B + b]);
  return capped_variance<T>(a.beta * a.var[i], own_max - a.eta_min_valid, a.u, s2);
}

// lane[l] (op)= lane[l + W] for l < W as one vector operation of W lanes (GCC's vector
// extension: gcc vectorised neither the loop nor its unrolled form, it extracted the lanes).
template <int64_t W, bool kMax, typename T>
__attribute__((always_inline)) inline void fold_lanes(T* __restrict lane) {
  typedef T Lanes __attribute__((vector_size(W * sizeof(T))));
  Lanes lo, hi;
  std::memcpy(&lo, lane, sizeof(Lanes));
  std::memcpy(&hi, lane + W, sizeof(Lanes));
  if constexpr (kMax) {
    lo = hi > lo ? hi : lo;
  } else {
    lo += hi;
  }
  std::memcpy(lane, &lo, sizeof(Lanes));
}

// max_j x[j] of a row padded to whole blocks of kGridPad, lane-wise first (a fixed-length
// loop gcc vectorises).
template <typename T>
__attribute__((always_inline)) inline T row_max(const T* __restrict x, int64_t n) {
  constexpr int64_t kLanes = kGridPad;
  T lane[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lane[l] = -std::numeric_limits<T>::infinity();
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    // Not unrolled before the vectoriser: unrolled, the 16 selects stayed 16 scalar maxss.
#pragma GCC unroll 1
    for (int64_t l = 0; l < kLanes; ++l) lane[l] = x[j0 + l] > lane[l] ? x[j0 + l] : lane[l];
  }
  static_assert(kGridPad == 16, "row_max folds 16 lanes");
  fold_lanes<8, true>(lane);  // pairwise, as lane_sum (below)
  fold_lanes<4, true>(lane);
  fold_lanes<2, true>(lane);
  return lane[1] > lane[0] ? lane[1] : lane[0];
}

// The sum of kGridPad lane-wise partial sums, pairwise (lane l + w onto lane l, halving w):
// three vector additions and one scalar one, where summing the lanes in order took an
// extract and a scalar addition a lane, ~30 instructions for each of a row's five sums (max,
// weights, three derivatives) against some 300 for the row's terms at abalone's K = 5,
// B = 29 (ten vectors of 16). Overwrites `lane`.
template <typename T>
__attribute__((always_inline)) inline T lane_sum(T* __restrict lane) {
  static_assert(kGridPad == 16, "lane_sum folds 16 lanes");
  fold_lanes<8, false>(lane);
  fold_lanes<4, false>(lane);
  fold_lanes<2, false>(lane);
  return lane[0] + lane[1];
}

// log sum_j exp(x[j]) of a row padded to whole blocks of kGridPad: the maximum, then
// lane-wise sums of exp(x - max), in fixed-length loops gcc vectorises.
template <bool kFma, typename T>
__attribute__((always_inline)) inline T row_logsumexp(const T* __restrict x, int64_t n) {
  constexpr int64_t kLanes = kGridPad;
  const T mx = row_max(x, n);
  T lane[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lane[l] = T(0);
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += exp_nonpositive<kFma, T>(x[j0 + l] - mx);
  }
  return mx + std::log(lane_sum(lane));
}

// exact_term's logarithm on the CPU: the polynomial log_positive, which vectorises.
template <bool kFma>
struct PolyLog {
  template <typename T>
  __attribute__((always_inline)) static T log(T x) {
    return log_positive<kFma, T>(x);
  }
};

// The target of competitor j of a sample of grid position jb: its own target y in its
// own bin, else the bin's centre; as arithmetic gcc vectorises (exact).
template <typename T>
__attribute__((always_inline)) inline T competitor_target(const SurrogateArgs<T>& a, int64_t j, T jb, T y) {
  return a.grid_t[j] * (a.grid_id[j] == jb ? T(0) : T(1)) + (a.grid_id[j] == jb ? y : T(0));
}

// exact_term (surrogate_math.h) regrouped for the CPU: with eo = eta[k, b] (the numerator's
// share), e = eta_j, t = t_j, and u,
//   c  = 2 u e t - 2 u eo y  = P_j - Q_k          (P_j = (2 u e) t,  Q_k = (2 u eo) y)
//   dd = u eo y^2 - u e t^2  = R_k - S_j          (R_k = (u eo) y y,  S_j = (u e) t t)
//   d  = dd + lpd_j,  N = a m^2 + c (m + c s2 / 2),  F = (-log(r) / 2 + d) + N / r,
// the per-competitor products P, S and lpd (a row each, the same for the sample's K
// numerator clusters) and Q, R once per numerator cluster, so a term costs about half
// the operations of exact_term's form, and the chain rule is read off the same parts:
//   dF/dm  = (2 a m + c) / r
//   dF/ds2 = (a + c^2 / 2 + 2 a N / r) / r
//   dF/du  = (a dF/da + c dF/dc + dd) / u,  dF/da = (s2 + m^2 + 2 s2 N / r) / r,
//            dF/dc = (m + c s2) / r           (a, c and dd are u times their u-free parts)
// The numerator's own term (k' = k, b' = b: e = eo, t = y) has P = Q and S = R bit for bit
// (the same products), hence c = dd = 0 and F = 0, as in exact_term. The products are
// fused multiply-adds where the instruction set has them (mul_add); forward and backward
// call the same code, so their terms have the same bits.
template <typename T>
struct ExactSample {
  T m, m2, two_m, half_s2, s2, two_s2, s2_plus_m2;
  explicit ExactSample(T m_, T s2_)
      : m(m_), m2(m_ * m_), two_m(T(2) * m_), half_s2(T(0.5) * s2_), s2(s2_), two_s2(T(2) * s2_),
        s2_plus_m2(s2_ + m_ * m_) {}
};

template <typename T>
struct ExactParts {
  T c, dd, NI, F;  // NI = N / r
};

template <bool kFma, typename T>
__attribute__((always_inline)) inline ExactParts<T> exact_parts(T A, T IR, T HL, T P, T S, T lpd, T Q, T R,
                                                                const ExactSample<T>& s) {
  const T c = P - Q;
  const T dd = R - S;
  const T N = mul_add<kFma>(c, mul_add<kFma>(c, s.half_s2, s.m), A * s.m2);
  const T NI = N * IR;
  return {c, dd, NI, (HL + (dd + lpd)) + NI};
}

// A sample's competitor rows, the same for each of its numerator clusters: rows[j] = P_j,
// rows[KV + j] = S_j, rows[2 KV + j] = lpd_j = l_j - l_own (exact_parts), so the K loops
// over the grid read them instead of computing them K times.
constexpr int64_t kSampleRows = 3;

template <typename T>
__attribute__((always_inline)) inline void fill_sample_rows(const SurrogateArgs<T>& a, T jb, T y, T lp_own,
                                                            T* __restrict rows) {
  const int64_t KV = a.KV_padded;
  const T two_u = T(2) * a.u;
  for (int64_t j = 0; j < KV; ++j) {
    const T t = competitor_target(a, j, jb, y);
    rows[j] = (two_u * a.grid_eta[j]) * t;
    rows[KV + j] = ((a.u * a.grid_eta[j]) * t) * t;
    rows[2 * KV + j] = a.grid_lp[j] - lp_own;
  }
}

// exact_parts' Q and R of numerator share eo for a sample with target y (the same
// products as fill_sample_rows' P and S).
template <typename T>
__attribute__((always_inline)) inline void numerator_products(T u, T eo, T y, T* Q, T* R) {
  *Q = ((T(2) * u) * eo) * y;
  *R = ((u * eo) * y) * y;
}

// The denominators (a, 1 / r, -log(r) / 2) of competitor j for numerator share eo: read
// from the pair's table (kTable; rows A, IR, HL of numerator cluster k) or computed here.
// One template for both, so each loop below is written once and neither carries a branch.
template <bool kTable, bool kFma, typename T>
__attribute__((always_inline)) inline ExactDenominator<T> denominator_at(const SurrogateArgs<T>& a, const T* A,
                                                                         const T* IR, const T* HL, int64_t j, T eo,
                                                                         T s2) {
  if constexpr (kTable) {
    return {A[j], IR[j], HL[j]};
  } else {
    return exact_term_denominator<T, PolyLog<kFma>>(eo, a.grid_eta[j], s2, a.u);
  }
}

// Fs[j] = F of every competitor j of numerator cluster k (table: that cluster's rows, or
// unused; rows: the sample's fill_sample_rows).
template <bool kTable, bool kFma, typename T>
__attribute__((always_inline)) inline void exact_row(const SurrogateArgs<T>& a, const T* __restrict A,
                                                     const T* __restrict IR, const T* __restrict HL, T eo, T Q, T R,
                                                     const T* __restrict rows, const ExactSample<T>& s,
                                                     T* __restrict Fs) {
  const int64_t KV = a.KV_padded;
  const T *__restrict P = rows, *__restrict S = rows + KV, *__restrict lpd = rows + 2 * KV;
  for (int64_t j = 0; j < KV; ++j) {
    const ExactDenominator<T> den = denominator_at<kTable, kFma>(a, A, IR, HL, j, eo, s.s2);
    Fs[j] = exact_parts<kFma>(den.a, den.inv_r, den.half_log_r, P[j], S[j], lpd[j], Q, R, s).F;
  }
}

// Forward of sample i; Fs is scratch of K * V values, rows of kSampleRows KV_padded
// (fill_sample_rows). `table`: the sample's denominators ([3, K, KV_padded]: a, 1 / r,
// -log(r) / 2; see DenominatorPlan), or nullptr to compute them here.
template <bool kFma, typename T>
__attribute__((always_inline)) inline void exact_forward_impl(const SurrogateArgs<T>& a, int64_t i, T* loss, T* lse,
                                                              T* __restrict Fs, T* __restrict rows, const T* table) {
  const int64_t b = a.bin[i], B = a.B, K = a.K, KV = a.KV_padded;
  const T jb = static_cast<T>(a.grid_pos[b]);  // the own bin has a prior (checked)
  const T y = a.target[i];
  T s2;
  sample_variance(a, i, &s2);
  const ExactSample<T> s(a.pred[i] + a.alpha * a.shift[i], s2);
  fill_sample_rows(a, jb, y, a.log_prior[b], rows);
  T total = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T eo = a.eta[k * B + b];
    T Q, R;
    numerator_products(a.u, eo, y, &Q, &R);
    if (table != nullptr) {
      const T* A = table + k * KV;
      exact_row<true, kFma>(a, A, A + K * KV, A + 2 * K * KV, eo, Q, R, rows, s, Fs);
    } else {
      exact_row<false, kFma, T>(a, nullptr, nullptr, nullptr, eo, Q, R, rows, s, Fs);
    }
    lse[k] = row_logsumexp<kFma>(Fs, KV);
    total += lse[k];
  }
  *loss = total / T(K);
}

// Every competitor's F of numerator cluster k and its derivatives in m and s2 and u times
// its derivative in u (exact_parts' comment), stored as four rows: row[0] = F, row[1..3] =
// dF/dm, dF/ds2, u dF/du (rows of KV_padded each).
template <bool kTable, bool kFma, typename T>
__attribute__((always_inline)) inline void exact_row_terms(const SurrogateArgs<T>& a, const T* __restrict A,
                                                           const T* __restrict IR, const T* __restrict HL, T eo, T Q,
                                                           T R, const T* __restrict rows, const ExactSample<T>& s,
                                                           T* __restrict F, T* __restrict dm, T* __restrict ds2,
                                                           T* __restrict du) {
  const int64_t KV = a.KV_padded;
  const T *__restrict P = rows, *__restrict S = rows + KV, *__restrict lpd = rows + 2 * KV;
  for (int64_t j = 0; j < KV; ++j) {
    const ExactDenominator<T> den = denominator_at<kTable, kFma>(a, A, IR, HL, j, eo, s.s2);
    const T an = den.a, ir = den.inv_r;
    const ExactParts<T> e = exact_parts<kFma>(an, ir, den.half_log_r, P[j], S[j], lpd[j], Q, R, s);
    F[j] = e.F;
    dm[j] = mul_add<kFma>(an, s.two_m, e.c) * ir;
    ds2[j] = mul_add<kFma>(an + an, e.NI, mul_add<kFma>(T(0.5) * e.c, e.c, an)) * ir;
    const T dF_da = mul_add<kFma>(s.two_s2, e.NI, s.s2_plus_m2) * ir;
    const T dF_dc = mul_add<kFma>(e.c, s.s2, s.m) * ir;
    du[j] = mul_add<kFma>(an, dF_da, mul_add<kFma>(e.c, dF_dc, e.dd));
  }
}

// Sample i's gradient, exact mode, before the incoming gradient: the sums over numerator
// clusters k and competitors of exp(F - lse_k) times F's derivatives in m, s2, u, and
// whether s2 was capped, with s2 itself. The backward scales them (exact_gradient).
template <typename T>
struct ExactPartials {
  T m, s2, u, s2_value, capped;  // capped: 1 or 0 (the columns of a partials tensor)
};
constexpr int64_t kPartials = 5;  // the columns of the partials tensor (both modes)

// The loss of sample i and its ExactPartials in one pass over the grid, each row's terms
// and derivatives computed once; lse_out and loss are written when given (a forward that
// needs the gradient), the recomputing backward passes neither. Scratch: rows (kSampleRows
// KV_padded, fill_sample_rows) and terms (4 KV_padded). For each numerator cluster k the
// softmax weights are exp(F - max_k), summed with the weighted derivatives in the
// log-sum-exp's own pass and divided by that sum: one exponential a term, where weights
// exp(F - lse_k) took a second pass and a second exponential. The terms and the LSEs
// (hence the loss) are those of exact_forward_impl (row_logsumexp's lanes, in its order),
// and the recomputing backward runs this same code: both backwards give the same bits.
template <bool kFma, typename T>
__attribute__((always_inline)) inline ExactPartials<T> exact_partials_impl(const SurrogateArgs<T>& a, int64_t i,
                                                                           T* lse_out, T* loss, T* __restrict rows,
                                                                           T* __restrict terms, const T* table) {
  const int64_t b = a.bin[i], B = a.B, K = a.K, KV = a.KV_padded;
  const T jb = static_cast<T>(a.grid_pos[b]);
  const T y = a.target[i];
  T s2;
  const bool capped = sample_variance(a, i, &s2);
  const ExactSample<T> s(a.pred[i] + a.alpha * a.shift[i], s2);
  fill_sample_rows(a, jb, y, a.log_prior[b], rows);
  T* F = terms;
  const T *dm = terms + KV, *ds2 = terms + 2 * KV, *du = terms + 3 * KV;
  // Lane-wise partial sums over blocks of kLanes competitors (the grid is padded to
  // whole blocks): gcc turns the fixed-length inner loop into vector code, where it
  // gave up on the same loop under `omp simd` with reductions.
  constexpr int64_t kLanes = kGridPad;
  T gm = 0, gs2 = 0, gu = 0, total = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T eo = a.eta[k * B + b];
    T Q, R;
    numerator_products(a.u, eo, y, &Q, &R);
    if (table != nullptr) {
      const T* A = table + k * KV;
      exact_row_terms<true, kFma>(a, A, A + K * KV, A + 2 * K * KV, eo, Q, R, rows, s, F, terms + KV, terms + 2 * KV,
                                  terms + 3 * KV);
    } else {
      exact_row_terms<false, kFma, T>(a, nullptr, nullptr, nullptr, eo, Q, R, rows, s, F, terms + KV, terms + 2 * KV,
                                      terms + 3 * KV);
    }
    // row_logsumexp's maximum and lane sums, with the weighted derivatives beside them
    const T mx = row_max(F, KV);
    T acc_w[kLanes] = {}, acc_m[kLanes] = {}, acc_s2[kLanes] = {}, acc_u[kLanes] = {};
    for (int64_t j0 = 0; j0 < KV; j0 += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const T w = exp_nonpositive<kFma, T>(F[j0 + l] - mx);
        acc_w[l] += w;
        acc_m[l] = mul_add<kFma>(w, dm[j0 + l], acc_m[l]);
        acc_s2[l] = mul_add<kFma>(w, ds2[j0 + l], acc_s2[l]);
        acc_u[l] = mul_add<kFma>(w, du[j0 + l], acc_u[l]);
      }
    }
    const T sum = lane_sum(acc_w), sm = lane_sum(acc_m), ss2 = lane_sum(acc_s2), su = lane_sum(acc_u);
    if (lse_out != nullptr) {
      lse_out[k] = mx + std::log(sum);
      total += lse_out[k];
    }
    gm += sm / sum;
    gs2 += ss2 / sum;
    gu += su / sum;
  }
  if (loss != nullptr) *loss = total / T(K);
  return {gm, gs2, gu / a.u, s2, capped ? T(1) : T(0)};
}

// d loss_i / d (pred, shift, var, noise_var) from sample i's ExactPartials and the
// incoming gradient `grad` (one formula for both backwards, so both give the same bits).
template <typename T>
inline void exact_gradient(const ExactPartials<T>& s, T grad, T alpha, T beta, T u, int64_t K, T* g_pred, T* g_shift,
                           T* g_var, T* g_nv) {
  const T scale = grad / T(K);
  const T gm = s.m * scale, gs2 = s.s2 * scale;
  T gu = s.u * scale;
  const bool capped = s.capped != T(0);
  // A capped s2 = (1 - 1e-3) / (2 u spread) no longer depends on var, but on u.
  if (capped) gu += gs2 * (-s.s2_value / u);
  *g_pred = gm;
  *g_shift = alpha * gm;
  *g_var = capped ? T(0) : beta * gs2;
  *g_nv = gu * (T(-2) * u * u);
}

// Compiled once per instruction set (IRDA_FMA_VARIANTS, simd.h: where it has FMA the
// polynomials' multiply-adds are fused), overloads per dtype (multi-versioned functions
// cannot be templates).
#define IRDA_EXACT_ENTRY_POINTS(TARGET, FMA, T)                                                                     \
  TARGET void exact_forward(const SurrogateArgs<T>& a, int64_t i, T* loss, T* lse, T* Fs, T* rows,                 \
                            const T* table) {                                                                       \
    exact_forward_impl<FMA, T>(a, i, loss, lse, Fs, rows, table);                                                   \
  }                                                                                                                 \
  TARGET ExactPartials<T> exact_partials(const SurrogateArgs<T>& a, int64_t i, T* lse_out, T* loss, T* rows,       \
                                         T* terms, const T* table) {                                                \
    return exact_partials_impl<FMA, T>(a, i, lse_out, loss, rows, terms, table);                                    \
  }
#define IRDA_EXACT_VARIANT(TARGET, FMA) \
  IRDA_EXACT_ENTRY_POINTS(TARGET, FMA, float) IRDA_EXACT_ENTRY_POINTS(TARGET, FMA, double)
IRDA_FMA_VARIANTS(IRDA_EXACT_VARIANT)
#undef IRDA_EXACT_VARIANT
#undef IRDA_EXACT_ENTRY_POINTS

// One table of exact-mode denominators for bin b and variance s2: [3, K, KV_padded], the
// a, 1 / r and -log(r) / 2 of exact_term_denominator(eta[k, b], eta_j, s2) for every
// numerator cluster k and competitor j.
template <bool kFma, typename T>
__attribute__((always_inline)) inline void fill_denominators_impl(const SurrogateArgs<T>& a, int64_t b, T s2,
                                                                  T* __restrict table) {
  const int64_t KV = a.KV_padded, size = a.K * KV;
  for (int64_t k = 0; k < a.K; ++k) {
    const T eo = a.eta[k * a.B + b];
    for (int64_t j = 0; j < KV; ++j) {
      const ExactDenominator<T> den = exact_term_denominator<T, PolyLog<kFma>>(eo, a.grid_eta[j], s2, a.u);
      table[k * KV + j] = den.a;
      table[size + k * KV + j] = den.inv_r;
      table[2 * size + k * KV + j] = den.half_log_r;
    }
  }
}
#define IRDA_DENOMINATOR_VARIANT(TARGET, FMA)                                                         \
  TARGET void fill_denominators(const SurrogateArgs<float>& a, int64_t b, float s2, float* table) {    \
    fill_denominators_impl<FMA, float>(a, b, s2, table);                                              \
  }                                                                                                   \
  TARGET void fill_denominators(const SurrogateArgs<double>& a, int64_t b, double s2, double* table) { \
    fill_denominators_impl<FMA, double>(a, b, s2, table);                                             \
  }
IRDA_FMA_VARIANTS(IRDA_DENOMINATOR_VARIANT)
#undef IRDA_DENOMINATOR_VARIANT

// The samples in bin order, within a bin in sample order (a counting sort): exact mode's
// DenominatorPlan sorts each bin's run further; paper mode visits them in this order, so that a
// thread fills a bin's own shares (fill_own_eta) once for the run of the bin's samples instead
// of once a sample. Each sample's outputs are its own, whatever the order.
template <typename T>
std::vector<int64_t> samples_by_bin(const SurrogateArgs<T>& a) {
  std::vector<int64_t> start(a.B + 1, 0), order(a.n);
  for (int64_t i = 0; i < a.n; ++i) ++start[a.bin[i] + 1];
  for (int64_t b = 0; b < a.B; ++b) start[b + 1] += start[b];
  for (int64_t i = 0; i < a.n; ++i) order[start[a.bin[i]]++] = i;
  return order;
}

// In exact mode a competitor's a, 1 / r and -log(r) / 2 (a division and a log, most of a
// term's cost) depend on the sample only through its bin and its s2; IRDALoss gives
// every sample of a bin the same var, hence the same s2. When the (bin, s2) pairs number
// at most half the samples, the samples are visited sorted by pair and each thread
// computes a pair's denominators once, when its first sample of the pair comes, for the
// run of that pair's samples (no barrier between building and reading; a pair split
// between two threads is computed by both, to the same bits). The loops then read them
// and give the same bits as computing them per sample. Otherwise (a var per sample, as
// the functional API allows) nothing changes.
template <typename T>
struct DenominatorPlan {
  bool active = false;
  std::vector<int64_t> order;                 // the samples sorted by (bin, s2)
  std::vector<int64_t> pair_of;               // [n]: the sample's pair
  std::vector<std::pair<int64_t, T>> pairs;   // (bin, s2) of each pair

  DenominatorPlan() = default;
  explicit DenominatorPlan(const SurrogateArgs<T>& args) {
    const int64_t n = args.n;
    if (n < 2 || args.K == 0) return;
    using Bits = typename FloatLayout<T>::Bits;
    struct Key {
      int64_t bin;
      Bits s2;
      int64_t sample;
    };
    // Sorted by (bin, s2, sample): bucketed by bin in sample order (samples_by_bin), then
    // each bin's run sorted by s2, stably; with IRDALoss's one s2 a bin the runs come sorted.
    const std::vector<int64_t> by_bin = samples_by_bin(args);
    std::vector<Key> keys(n);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = by_bin[r];
      T s2;
      sample_variance(args, i, &s2);
      keys[r] = {args.bin[i], FloatLayout<T>::to_bits(s2), i};
    }
    const auto by_s2 = [](const Key& x, const Key& y) { return x.s2 < y.s2; };
    for (int64_t lo = 0, hi; lo < n; lo = hi) {
      for (hi = lo + 1; hi < n && keys[hi].bin == keys[lo].bin; ++hi) {
      }
      if (!std::is_sorted(keys.begin() + lo, keys.begin() + hi, by_s2)) {
        std::stable_sort(keys.begin() + lo, keys.begin() + hi, by_s2);
      }
    }
    order.resize(n);
    pair_of.resize(n);
    for (int64_t r = 0; r < n; ++r) {
      if (r == 0 || keys[r].bin != keys[r - 1].bin || keys[r].s2 != keys[r - 1].s2)
        pairs.emplace_back(keys[r].bin, FloatLayout<T>::from_bits(keys[r].s2));
      order[r] = keys[r].sample;
      pair_of[keys[r].sample] = static_cast<int64_t>(pairs.size()) - 1;
    }
    active = 2 * static_cast<int64_t>(pairs.size()) <= n;
  }

  int64_t sample_at(int64_t r) const { return active ? order[r] : r; }
};

// One thread's denominators: the samples come sorted by pair, so the table of the current
// pair is computed when its first sample comes and serves the run of samples after it;
// one table a thread at a time, whatever the number of pairs.
template <typename T>
struct ThreadDenominators {
  const DenominatorPlan<T>& plan;
  const SurrogateArgs<T>& args;
  int64_t current = -1;  // the pair whose table `store` holds
  std::vector<T> store;  // [3, K, KV_padded]

  ThreadDenominators(const DenominatorPlan<T>& p, const SurrogateArgs<T>& a)
      : plan(p), args(a), store(p.active ? 3 * a.K * a.KV_padded : 0) {}

  // The table of sample i, or nullptr when the plan is not active.
  const T* of(int64_t i) {
    if (!plan.active) return nullptr;
    const int64_t t = plan.pair_of[i];
    if (t != current) {
      fill_denominators(args, plan.pairs[t].first, plan.pairs[t].second, store.data());
      current = t;
    }
    return store.data();
  }
};

// Paper mode (eq. 22, paper_term): one log-sum-exp over the K B logits Z, over the
// padded grid in blocks of kGridPad lanes like exact mode. Es holds each competitor's
// eta[k', b] for the sample's own bin b.
template <typename T>
__attribute__((always_inline)) inline void fill_own_eta(const SurrogateArgs<T>& a, int64_t b, T* __restrict Es) {
  for (int64_t kc = 0; kc < a.K; ++kc) std::fill(Es + kc * a.V, Es + (kc + 1) * a.V, a.eta[kc * a.B + b]);
  std::fill(Es + a.K * a.V, Es + a.KV_padded, T(0));
}

// paper_term (surrogate_math.h) regrouped for the CPU. With eo = eta[k', b] (Es), e = eta_j,
// t = t_j and the sample's y, p, shift, var,
//   lin = e t - eo y,  de = eo - e,  l2 = 2 lin,  diff = t - p,  ed = e diff,
//   R1 = de + l2,  R2' = 4 R2 = l2^2 + de^2,
//   Z = lp - u ed diff + (alpha u shift) R1 + (beta u^2 var / 4) R2',
// the sample's constants multiplied once and the sums fused into multiply-adds (mul_add):
// 9 multiplies a term where paper_term's own order takes 15. R2' is 4 R2 exactly (scaling
// by 4 rounds nowhere), and so are its sums; the gradient takes the 1/4 at the end. lin is
// a plain difference of products, so at a sample's own bin (t = y, e = eo) it is exactly 0,
// as are R1 and R2: the numerator's terms have no shift or var part (SPEC 6.1).
template <typename T>
struct PaperSample {
  T neg_y, p, neg_u, c_shift, c_var;  // -y, p, -u, alpha u shift, beta u^2 var / 4
};

template <typename T>
__attribute__((always_inline)) inline PaperSample<T> paper_sample(const SurrogateArgs<T>& a, int64_t i) {
  return {-a.target[i], a.pred[i], -a.u, a.alpha * a.u * a.shift[i], T(0.25) * a.beta * a.u * a.u * a.var[i]};
}

// One competitor's Z and its factors ed, ed diff, R1, R2' (above).
template <typename T>
struct PaperCell {
  T Z, ed, edd, R1, R2x4;
};

template <bool kFma, typename T>
__attribute__((always_inline)) inline PaperCell<T> paper_cell(const PaperSample<T>& c, T eo, T e, T t, T lp) {
  const T lin = e * t + eo * c.neg_y;
  const T de = eo - e, l2 = lin + lin, diff = t - c.p;
  const T R1 = l2 + de, R2x4 = mul_add<kFma>(l2, l2, de * de);
  const T ed = e * diff, edd = ed * diff;
  const T Z = mul_add<kFma>(c.c_var, R2x4, mul_add<kFma>(c.c_shift, R1, mul_add<kFma>(c.neg_u, edd, lp)));
  return {Z, ed, edd, R1, R2x4};
}

// Z of every competitor over the padded grid (kFactors: and its factors, as five rows Z,
// ed, edd, R1, R2'; restrict parameters: gcc vectorises the loop). The target is a select
// (a compare and a blend): patching the K own-bin competitors after the loop cost more, the
// vector loads of the passes after it waiting on its scalar stores.
template <bool kFma, bool kFactors, typename T>
__attribute__((always_inline)) inline void paper_rows(const SurrogateArgs<T>& a, int64_t b, const PaperSample<T>& c,
                                                      T y, const T* __restrict Es, T* __restrict Z,
                                                      T* __restrict ed, T* __restrict edd, T* __restrict r1,
                                                      T* __restrict r2) {
  const T jb = static_cast<T>(a.grid_pos[b]);
  for (int64_t j = 0; j < a.KV_padded; ++j) {
    const T centre = a.grid_t[j];  // read unconditionally: a select, not a branch, is what vectorises
    const T t = a.grid_id[j] == jb ? y : centre;
    const PaperCell<T> f = paper_cell<kFma>(c, Es[j], a.grid_eta[j], t, a.grid_lp[j]);
    Z[j] = f.Z;
    if constexpr (kFactors) ed[j] = f.ed, edd[j] = f.edd, r1[j] = f.R1, r2[j] = f.R2x4;
  }
}

template <bool kFma, typename T>
__attribute__((always_inline)) inline void paper_forward_impl(const SurrogateArgs<T>& a, int64_t i, T* loss, T* lse,
                                                              T* __restrict Zs, const T* __restrict Es) {
  const int64_t b = a.bin[i], K = a.K, V = a.V, KV = a.KV_padded;
  T* const none = nullptr;  // no factor rows
  paper_rows<kFma, false>(a, b, paper_sample(a, i), a.target[i], Es, Zs, none, none, none, none);
  T own = 0;
  for (int64_t kc = 0; kc < K; ++kc) own += Zs[kc * V + a.grid_pos[b]];
  lse[0] = row_logsumexp<kFma>(Zs, KV);
  *loss = lse[0] - own / T(K);
}

// Sample i's loss (when lse_out is given: lse_out and loss are written) and its gradient
// before the incoming one, paper mode, in one pass over the grid after paper_rows (Es: the
// bin's own shares, fill_own_eta; scratch: terms, 5 KV_padded): d loss_i / d (pred, shift, var, u), the
// softmax-weighted sums of the terms' derivatives less the numerator terms' (averaged over
// k). paper_term's derivatives are constants of the sample times the factors,
//   dZ/dp = 2 u ed,  dZ/dshift = alpha u R1,  dZ/dvar = beta u^2 R2,
//   dZ/du = -ed diff + alpha shift R1 + 2 beta u var R2.
// The weights exp(Z - max) are summed with the weighted factors in the log-sum-exp's own
// pass, and the sums divided by it and multiplied by the sample's constants once at the
// end: one exponential a term, where weights exp(Z - lse) took a second pass and a second
// exponential. The loss has the bits of paper_forward_impl (row_logsumexp's lanes, in its
// order). The recomputing backward runs this same code, so its gradients have the bits of
// the training path's.
template <bool kFma, typename T>
__attribute__((always_inline)) inline std::array<T, 4> paper_partials_impl(const SurrogateArgs<T>& a, int64_t i,
                                                                          T* lse_out, T* loss,
                                                                          const T* __restrict Es,
                                                                          T* __restrict terms) {
  const int64_t b = a.bin[i], K = a.K, V = a.V, KV = a.KV_padded;
  const T y = a.target[i], p = a.pred[i], shift = a.shift[i], var = a.var[i], u = a.u;
  T *Z = terms, *ed = terms + KV, *edd = terms + 2 * KV, *r1 = terms + 3 * KV, *r2 = terms + 4 * KV;
  paper_rows<kFma, true>(a, b, paper_sample(a, i), y, Es, Z, ed, edd, r1, r2);
  constexpr int64_t kLanes = kGridPad;
  // row_logsumexp's maximum and lane sums, with the weighted factors beside them
  const T mx = row_max(Z, KV);
  T acc_s[kLanes] = {}, acc_ed[kLanes] = {}, acc_edd[kLanes] = {}, acc_r1[kLanes] = {}, acc_r2[kLanes] = {};
  for (int64_t j0 = 0; j0 < KV; j0 += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t j = j0 + l;
      const T w = exp_nonpositive<kFma, T>(Z[j] - mx);
      acc_s[l] += w;
      acc_ed[l] = mul_add<kFma>(w, ed[j], acc_ed[l]);
      acc_edd[l] = mul_add<kFma>(w, edd[j], acc_edd[l]);
      acc_r1[l] = mul_add<kFma>(w, r1[j], acc_r1[l]);
      acc_r2[l] = mul_add<kFma>(w, r2[j], acc_r2[l]);
    }
  }
  const T sum = lane_sum(acc_s);
  const T s_ed = lane_sum(acc_ed) / sum, s_edd = lane_sum(acc_edd) / sum;
  const T s_r1 = lane_sum(acc_r1) / sum, s_r2 = T(0.25) * (lane_sum(acc_r2) / sum);  // r2 holds 4 R2
  if (lse_out != nullptr) {
    T own = 0;
    for (int64_t kc = 0; kc < K; ++kc) own += Z[kc * V + a.grid_pos[b]];
    lse_out[0] = mx + std::log(sum);
    *loss = lse_out[0] - own / T(K);
  }
  const T g_p = T(2) * u * s_ed, g_shift = a.alpha * u * s_r1, g_var = a.beta * u * u * s_r2;
  const T g_u = (a.alpha * shift * s_r1 - s_edd) + T(2) * a.beta * u * var * s_r2;
  // the numerator terms Z[k, b], averaged over k (their shift and var terms vanish)
  T op = 0, ou = 0;
  for (int64_t kc = 0; kc < K; ++kc) {
    const T e_own = a.eta[kc * a.B + b];
    const PaperTerm<T> z = paper_term<T>(e_own, e_own, y, y, T(0), p, shift, var, a.alpha, a.beta, u);
    op += z.dZ_dp;
    ou += z.dZ_du;
  }
  return {g_p - op / T(K), g_shift, g_var, g_u - ou / T(K)};
}

// d loss_i / d (pred, shift, var, noise_var) from paper_partials and the incoming gradient.
template <typename T>
inline void paper_gradient(const T* partials, T grad, T u, T* g_pred, T* g_shift, T* g_var, T* g_nv) {
  *g_pred = grad * partials[0];
  *g_shift = grad * partials[1];
  *g_var = grad * partials[2];
  *g_nv = grad * partials[3] * (T(-2) * u * u);
}

#define IRDA_PAPER_ENTRY_POINTS(TARGET, FMA, T)                                                                     \
  TARGET void paper_forward(const SurrogateArgs<T>& a, int64_t i, T* loss, T* lse, T* Zs, const T* Es) {           \
    paper_forward_impl<FMA, T>(a, i, loss, lse, Zs, Es);                                                            \
  }                                                                                                                 \
  TARGET std::array<T, 4> paper_partials(const SurrogateArgs<T>& a, int64_t i, T* lse_out, T* loss, const T* Es,   \
                                         T* terms) {                                                                \
    return paper_partials_impl<FMA, T>(a, i, lse_out, loss, Es, terms);                                             \
  }
#define IRDA_PAPER_VARIANT(TARGET, FMA) \
  IRDA_PAPER_ENTRY_POINTS(TARGET, FMA, float) IRDA_PAPER_ENTRY_POINTS(TARGET, FMA, double)
IRDA_FMA_VARIANTS(IRDA_PAPER_VARIANT)
#undef IRDA_PAPER_VARIANT
#undef IRDA_PAPER_ENTRY_POINTS

struct Prepared {
  at::Tensor pred, target, bin, centers, eta, log_prior, shift, var;
  double noise_var;
  int64_t n, K, B;
};

Prepared prepare(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
                 const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior,
                 const at::Tensor& shift, const at::Tensor& var, const at::Tensor& noise_var, c10::string_view mode) {
  check_surrogate_inputs(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  Prepared p{pred.contiguous(),     target.contiguous(), bin_index.contiguous(), centers.contiguous(),
             eta.contiguous(),      log_prior.contiguous(), shift.contiguous(),   var.contiguous(),
             noise_var.item<double>(), pred.size(0),      eta.size(0),            centers.size(0)};
  TORCH_CHECK_VALUE(p.noise_var > 0 && std::isfinite(p.noise_var), "noise_var must be positive and finite, got ",
                    p.noise_var);
  const int64_t* bin = p.bin.data_ptr<int64_t>();
  for (int64_t i = 0; i < p.n; ++i) {
    TORCH_CHECK_VALUE(bin[i] >= 0 && bin[i] < p.B, "bin_index[", i, "] = ", bin[i], " is outside [0, ", p.B, ")");
  }
  AT_DISPATCH_FLOATING_TYPES(p.pred.scalar_type(), "irda_surrogate_check", [&] {
    const scalar_t* lp = p.log_prior.data_ptr<scalar_t>();
    const scalar_t* et = p.eta.data_ptr<scalar_t>();
    const scalar_t* ct = p.centers.data_ptr<scalar_t>();
    for (int64_t j = 0; j < p.K * p.B; ++j) {
      TORCH_CHECK_VALUE(std::isfinite(et[j]), "eta[", j / p.B, ", ", j % p.B, "] = ", et[j], ": eta must be finite");
    }
    for (int64_t j = 0; j < p.B; ++j) {
      TORCH_CHECK_VALUE(std::isfinite(ct[j]), "centers[", j, "] = ", ct[j], ": centers must be finite");
      TORCH_CHECK_VALUE(!std::isnan(lp[j]) && lp[j] < std::numeric_limits<scalar_t>::infinity(), "log_prior[", j,
                        "] = ", lp[j], ": log_prior must be finite or -inf (a bin without prior), not NaN or +inf");
    }
    // One pass per input, so that the first bad value of each is named.
    const struct {
      const char* name;
      const scalar_t* x;
    } per_sample[] = {{"pred", p.pred.data_ptr<scalar_t>()},
                      {"target", p.target.data_ptr<scalar_t>()},
                      {"shift", p.shift.data_ptr<scalar_t>()}};
    for (const auto& in : per_sample) {
      for (int64_t i = 0; i < p.n; ++i) {
        TORCH_CHECK_VALUE(std::isfinite(in.x[i]), in.name, "[", i, "] = ", in.x[i], ": ", in.name, " must be finite");
      }
    }
    const scalar_t* vr = p.var.data_ptr<scalar_t>();
    for (int64_t i = 0; i < p.n; ++i) {
      TORCH_CHECK_VALUE(std::isfinite(lp[bin[i]]), "log_prior of bin ", bin[i], " (the bin of sample ", i,
                        ") must be finite: a sample's own bin needs a positive prior");
      TORCH_CHECK_VALUE(vr[i] >= 0 && std::isfinite(vr[i]), "var[", i, "] = ", vr[i],
                        ": var must be non-negative and finite");
    }
  });
  return p;
}

template <typename T>
SurrogateArgs<T> make_args(const Prepared& p, double alpha, double beta, const CompactGrid<T>& grid) {
  SurrogateArgs<T> a;
  a.pred = p.pred.data_ptr<T>();
  a.target = p.target.data_ptr<T>();
  a.bin = p.bin.data_ptr<int64_t>();
  a.centers = p.centers.data_ptr<T>();
  a.eta = p.eta.data_ptr<T>();
  a.log_prior = p.log_prior.data_ptr<T>();
  a.shift = p.shift.data_ptr<T>();
  a.var = p.var.data_ptr<T>();
  a.alpha = static_cast<T>(alpha);
  a.beta = static_cast<T>(beta);
  a.u = static_cast<T>(0.5 / p.noise_var);
  a.n = p.n;
  a.K = p.K;
  a.B = p.B;
  a.eta_min_valid = valid_eta_min(a.eta, a.log_prior, a.K, a.B);
  a.V = a.K > 0 ? grid.unpadded / a.K : 0;
  a.KV_padded = grid.padded();
  a.grid_pos = grid.pos.data();
  a.grid_id = grid.id.data();
  a.grid_t = grid.t.data();
  a.grid_lp = grid.lp.data();
  a.grid_eta = grid.eta.data();
  return a;
}

// Work per sample: the grid, about 20 flops a point.
int64_t sample_grain(const Prepared& p, bool exact) { return grain_for(20 * p.B * p.K * (exact ? p.K : 1)); }

// One thread's own-bin shares (paper mode): refilled when the bin changes.
template <typename T>
struct ThreadOwnShares {
  const SurrogateArgs<T>& args;
  int64_t current = -1;  // the bin whose shares `row` holds
  std::vector<T> row;

  ThreadOwnShares(const SurrogateArgs<T>& a, bool active) : args(a), row(active ? a.KV_padded : 0) {}

  const T* of(int64_t i) {
    const int64_t b = args.bin[i];
    if (b != current) {
      fill_own_eta(args, b, row.data());
      current = b;
    }
    return row.data();
  }
};

// Calls fn(i, scratch, table) once for every sample i, in parallel over samples: scratch
// holds `scratch_rows` rows of KV_padded values, the thread's own; table is, in exact mode,
// the sample's denominators (ThreadDenominators) or nullptr, in paper mode its bin's own
// shares (ThreadOwnShares).
template <typename T, typename Fn>
void for_each_sample(const Prepared& p, const SurrogateArgs<T>& a, bool exact, int64_t scratch_rows, const Fn& fn) {
  const DenominatorPlan<T> plan = exact ? DenominatorPlan<T>(a) : DenominatorPlan<T>();
  const std::vector<int64_t> by_bin = exact ? std::vector<int64_t>() : samples_by_bin(a);
  at::parallel_for(0, p.n, sample_grain(p, exact), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(scratch_rows * a.KV_padded);
    ThreadDenominators<T> tables(plan, a);
    ThreadOwnShares<T> shares(a, !exact);
    for (int64_t r = begin; r < end; ++r) {
      if (exact) {
        const int64_t i = plan.sample_at(r);
        fn(i, scratch.data(), tables.of(i));
      } else {
        fn(by_bin[r], scratch.data(), shares.of(by_bin[r]));
      }
    }
  });
}

// Scratch rows of the partials' passes: exact, fill_sample_rows (kSampleRows) and a row's
// terms (4); paper, the terms (5).
constexpr int64_t kPartialScratchRows = kSampleRows + 4;

// The forward: loss [n] and lse [n, L]; with `partials` (a gradient will follow:
// csrc/autograd.cpp, on the CPU) also each sample's partials [n, 5] (ExactPartials, or
// paper_partials and a 0), which irda_surrogate_partials_backward scales by the incoming
// gradient, so that every term is evaluated once per step instead of twice. loss and lse
// are the same bits either way.
std::tuple<at::Tensor, at::Tensor, at::Tensor> surrogate_forward(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& centers,
    const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift, const at::Tensor& var, double alpha,
    double beta, const at::Tensor& noise_var, c10::string_view mode, bool with_partials) {
  const Prepared p = prepare(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  const bool exact = mode == "exact";
  const int64_t L = exact ? p.K : 1;
  at::Tensor loss = at::empty({p.n}, pred.options());
  at::Tensor lse = at::empty({p.n, L}, pred.options());
  at::Tensor partials = with_partials ? at::empty({p.n, kPartials}, pred.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_cpu", [&] {
    const CompactGrid<scalar_t> grid(p.centers.data_ptr<scalar_t>(), p.log_prior.data_ptr<scalar_t>(),
                                     p.eta.data_ptr<scalar_t>(), p.K, p.B);
    const SurrogateArgs<scalar_t> a = make_args<scalar_t>(p, alpha, beta, grid);
    const int64_t KV = a.KV_padded;
    scalar_t* loss_ptr = loss.data_ptr<scalar_t>();
    scalar_t* lse_ptr = lse.data_ptr<scalar_t>();
    if (!with_partials) {
      // one sample's row of logits over the padded grid, then (exact) its rows of
      // fill_sample_rows
      for_each_sample(p, a, exact, 1 + kSampleRows, [&](int64_t i, scalar_t* s, const scalar_t* table) {
        if (exact) {
          exact_forward(a, i, loss_ptr + i, lse_ptr + i * L, s, s + KV, table);
        } else {
          paper_forward(a, i, loss_ptr + i, lse_ptr + i * L, s, table);
        }
      });
      return;
    }
    scalar_t* out = partials.data_ptr<scalar_t>();
    for_each_sample(p, a, exact, kPartialScratchRows, [&](int64_t i, scalar_t* s, const scalar_t* table) {
      scalar_t* o = out + i * kPartials;
      if (exact) {
        const ExactPartials<scalar_t> e = exact_partials(a, i, lse_ptr + i * L, loss_ptr + i, s, s + kSampleRows * KV,
                                                         table);
        o[0] = e.m, o[1] = e.s2, o[2] = e.u, o[3] = e.s2_value, o[4] = e.capped;
      } else {
        const std::array<scalar_t, 4> g = paper_partials(a, i, lse_ptr + i * L, loss_ptr + i, table, s);
        o[0] = g[0], o[1] = g[1], o[2] = g[2], o[3] = g[3], o[4] = scalar_t(0);
      }
    });
  });
  return {loss, lse, partials};
}

std::tuple<at::Tensor, at::Tensor> irda_surrogate_cpu(const at::Tensor& pred, const at::Tensor& target,
                                                      const at::Tensor& bin_index, const at::Tensor& centers,
                                                      const at::Tensor& eta, const at::Tensor& log_prior,
                                                      const at::Tensor& shift, const at::Tensor& var, double alpha,
                                                      double beta, const at::Tensor& noise_var,
                                                      c10::string_view mode) {
  auto [loss, lse, unused] = surrogate_forward(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha,
                                               beta, noise_var, mode, /*with_partials=*/false);
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> irda_surrogate_with_partials_cpu(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& centers,
    const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift, const at::Tensor& var, double alpha,
    double beta, const at::Tensor& noise_var, c10::string_view mode) {
  return surrogate_forward(pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode,
                           /*with_partials=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_surrogate_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
    const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift,
    const at::Tensor& var, double alpha, double beta, const at::Tensor& noise_var, c10::string_view mode,
    const at::Tensor& lse) {
  const Prepared p = prepare(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  const bool exact = mode == "exact";
  const int64_t L = exact ? p.K : 1;
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == p.n, "grad_loss must have shape [", p.n, "], got ",
                    shape_str(grad_loss));
  // lse is the forward's (the schema's, which the CUDA kernels read); the CPU recomputes it
  // with the weights, in one exponential a term (exact_partials_impl, paper_partials_impl)
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == p.n && lse.size(1) == L, "lse must have shape [", p.n, ", ", L,
                    "], got ", shape_str(lse));
  const at::Tensor g = grad_loss.to(pred.scalar_type()).contiguous();
  at::Tensor g_pred = at::empty({p.n}, pred.options());
  at::Tensor g_shift = at::empty({p.n}, pred.options());
  at::Tensor g_var = at::empty({p.n}, pred.options());
  at::Tensor g_nv = at::empty({p.n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_backward_cpu", [&] {
    const CompactGrid<scalar_t> grid(p.centers.data_ptr<scalar_t>(), p.log_prior.data_ptr<scalar_t>(),
                                     p.eta.data_ptr<scalar_t>(), p.K, p.B);
    const SurrogateArgs<scalar_t> a = make_args<scalar_t>(p, alpha, beta, grid);
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* o_pred = g_pred.data_ptr<scalar_t>();
    scalar_t* o_shift = g_shift.data_ptr<scalar_t>();
    scalar_t* o_var = g_var.data_ptr<scalar_t>();
    scalar_t* o_nv = g_nv.data_ptr<scalar_t>();
    // the partials' pass, the grid recomputed: the training path's code, hence its bits
    for_each_sample(p, a, exact, kPartialScratchRows, [&](int64_t i, scalar_t* s, const scalar_t* table) {
      if (exact) {
        const ExactPartials<scalar_t> e = exact_partials(a, i, nullptr, nullptr, s, s + kSampleRows * a.KV_padded,
                                                         table);
        exact_gradient(e, gp[i], a.alpha, a.beta, a.u, a.K, o_pred + i, o_shift + i, o_var + i, o_nv + i);
      } else {
        const std::array<scalar_t, 4> part = paper_partials(a, i, nullptr, nullptr, table, s);
        paper_gradient(part.data(), gp[i], a.u, o_pred + i, o_shift + i, o_var + i, o_nv + i);
      }
    });
  });
  return {g_pred, g_shift, g_var, g_nv};
}

// irda_surrogate's gradients from irda_surrogate_with_partials' partials: an O(n) pass, the
// bits of irda_surrogate_backward (the same formula, exact_gradient or paper_gradient).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_surrogate_partials_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& partials, double alpha, double beta, const at::Tensor& noise_var,
    int64_t num_clusters, c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "exact" || mode == "paper", "mode must be 'exact' or 'paper', got '", mode, "'");
  TORCH_CHECK_VALUE(partials.dim() == 2 && partials.size(1) == kPartials, "partials must have shape [n, ", kPartials,
                    "], got ", shape_str(partials));
  TORCH_CHECK_TYPE(partials.scalar_type() == at::kFloat || partials.scalar_type() == at::kDouble,
                   "partials must be float32 or float64, got ", partials.scalar_type());
  const int64_t n = partials.size(0);
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == n, "grad_loss must have shape [", n, "], got ",
                    shape_str(grad_loss));
  TORCH_CHECK_VALUE(num_clusters >= 1, "num_clusters must be positive, got ", num_clusters);
  TORCH_CHECK_VALUE(noise_var.numel() == 1, "noise_var must be a scalar tensor, got ", shape_str(noise_var));
  const double nv = noise_var.item<double>();
  TORCH_CHECK_VALUE(nv > 0 && std::isfinite(nv), "noise_var must be positive and finite, got ", nv);
  const bool exact = mode == "exact";
  // read through its stride: a reduction's backward hands an expanded scalar (stride 0)
  const at::Tensor g = grad_loss.to(partials.scalar_type());
  const int64_t g_stride = g.stride(0);
  const at::Tensor part = partials.contiguous();
  at::Tensor g_pred = at::empty({n}, partials.options());
  at::Tensor g_shift = at::empty({n}, partials.options());
  at::Tensor g_var = at::empty({n}, partials.options());
  at::Tensor g_nv = at::empty({n}, partials.options());
  AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "irda_surrogate_partials_backward_cpu", [&] {
    using T = scalar_t;
    const T a = static_cast<T>(alpha), b = static_cast<T>(beta), u = static_cast<T>(0.5 / nv);  // as make_args
    const T* gp = g.data_ptr<T>();
    const T* pp = part.data_ptr<T>();
    T *o_pred = g_pred.data_ptr<T>(), *o_shift = g_shift.data_ptr<T>(), *o_var = g_var.data_ptr<T>();
    T* o_nv = g_nv.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* s = pp + i * kPartials;
      if (exact) {
        exact_gradient(ExactPartials<T>{s[0], s[1], s[2], s[3], s[4]}, gp[i * g_stride], a, b, u, num_clusters,
                       o_pred + i, o_shift + i, o_var + i, o_nv + i);
      } else {
        paper_gradient(s, gp[i * g_stride], u, o_pred + i, o_shift + i, o_var + i, o_nv + i);
      }
    }
  });
  return {g_pred, g_shift, g_var, g_nv};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("irda_surrogate", &irda::irda_surrogate_cpu);
  m.impl("irda_surrogate_backward", &irda::irda_surrogate_backward_cpu);
  m.impl("irda_surrogate_with_partials", &irda::irda_surrogate_with_partials_cpu);
  m.impl("irda_surrogate_partials_backward", &irda::irda_surrogate_partials_backward_cpu);
}
