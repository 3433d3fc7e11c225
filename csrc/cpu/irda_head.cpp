// The IRDA loss of a linear head on a batch, in one op (host-only; IRDALoss.head_loss's
// training step on the CPU, SPEC 3-6 and the Balanced-MSE scaling). Eager PyTorch spent
// ~40 small autograd ops on what surrounds the fused surrogate (per-bin shift and variance
// of the head, gathers, clamp, casts, sigma^2, the reduction and the scaling), and the op
// itself first spent ~30 more (matrix-vector products, casts, reductions): in an abalone
// step each small op costs several microseconds, most of it dispatch. Here they are plain
// loops around irda_surrogate_with_partials, and each covariance is read as its packed
// upper triangle: half the bytes of the [B, D, D] blocks, which a training step finds
// out of cache (1.8 MiB at abalone's sizes: a full matrix-vector product over them took
// 0.2-0.3 ms of the step, the packed one about half).
//
// Forward, with w = weight [1, D] and w0 = bias [1] (the head g(z) = w z + w0) read in the
// statistics' dtype S:
//   a_b   = offset_b . w  (+ w0 in mode "paper")   offset [B, D]: mu_s - mu (exact) or mu_s (paper)
//   Sw_b  = cov_b w                                 cov_upper [B, D (D + 1) / 2]: the upper triangle
//                                                   of each smoothed Sigma_s (symmetric), row by row
//   q_b   = keep_b (w . Sw_b) + iso_b ||w||^2       keep = 1 - v, iso = v lambda (SPEC 4)
//   shift_i = a_{b_i} (exact) or |a_{b_i} - y_i| (paper, eq. 20), var_i = max(q_{b_i}, 0)
//   sigma^2 = exp(2 log_sigma)
//   loss  = reduce_i(irda_surrogate_i(pred, y, ..., shift, var, ..., sigma^2)) * 2 sigma^2,
// the last factor a constant (Balanced MSE's scaling: the gradient in pred has MSE's scale).
// The dot products are summed in float64, then rounded to S; Sw_b is summed in S.
// It returns a [B] (pred's dtype), q [B], Sw [B, D] (S; q and Sw of the bins with samples in
// the batch, zeros elsewhere) and the surrogate's partials [n, 5],
// which irda_head_loss_backward turns into the gradients in pred, w, w0 and log_sigma in
// O(n + B D): the chain rule of the expression above, the clamp passing where q_b >= 0
// and |.|'s derivative sign(a_b - y_i) (0 at 0), as autograd through the eager ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../surrogate_calls.h"
#include "grain.h"
#include "simd.h"

namespace irda {
namespace {

bool check_reduction(c10::string_view reduction) {
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "none",
                    "reduction must be \"mean\", \"sum\" or \"none\", got \"", std::string(reduction), "\"");
  return reduction != "none";
}

// The head and the per-bin statistics; returns B.
int64_t check_head_inputs(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
                          const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& offset,
                          const at::Tensor& keep, const at::Tensor& iso, const at::Tensor& log_sigma,
                          c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "exact" || mode == "paper", "mode must be \"exact\" or \"paper\", got \"",
                    std::string(mode), "\"");
  check_dim(pred, 1, "pred", "[n]");
  TORCH_CHECK_TYPE(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
                   "irda_head_loss takes float32 or float64 predictions, got ", pred.scalar_type());
  const int64_t n = pred.size(0);
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == n, "target must have shape [", n, "] like pred, got ",
                    shape_str(target));
  check_same_dtype(target, pred, "target", "pred");
  check_index(bin_index, n);
  check_dim(offset, 2, "offset", "[B, D]");
  TORCH_CHECK_TYPE(offset.scalar_type() == at::kFloat || offset.scalar_type() == at::kDouble,
                   "the statistics (offset, cov, keep, iso) must be float32 or float64, got ", offset.scalar_type());
  const int64_t B = offset.size(0), D = offset.size(1);
  check_float(weight, "weight");
  TORCH_CHECK_VALUE(weight.numel() == D, "weight must have D = ", D, " entries (the head's [1, D]), got shape ",
                    shape_str(weight));
  check_float(bias, "bias");
  TORCH_CHECK_VALUE(bias.numel() == 1, "bias must have one entry (the head's [1]), got shape ", shape_str(bias));
  const at::Tensor* per_bin[] = {&keep, &iso};
  const char* names[] = {"keep", "iso"};
  for (int j = 0; j < 2; ++j) {
    TORCH_CHECK_VALUE(per_bin[j]->dim() == 1 && per_bin[j]->size(0) == B, names[j], " must have shape [", B,
                      "], got ", shape_str(*per_bin[j]));
    check_same_dtype(*per_bin[j], offset, names[j], "offset");
  }
  check_float(log_sigma, "log_sigma");
  TORCH_CHECK_VALUE(log_sigma.numel() == 1, "log_sigma must be a scalar tensor, got shape ", shape_str(log_sigma));
  return B;
}

// sigma^2 = exp(2 log_sigma) in float64, as NoiseScale.var
double noise_variance(const at::Tensor& log_sigma) {
  const double nv = std::exp(2.0 * log_sigma.item<double>());
  TORCH_CHECK_VALUE(nv > 0 && std::isfinite(nv), "sigma^2 = exp(2 log_sigma) must be positive and finite, got ", nv,
                    " (log_sigma = ", log_sigma.item<double>(), ")");
  return nv;
}

// The bins with samples in the batch, in increasing order, checking every bin index before
// anything reads through it.
std::vector<int64_t> bins_present(const int64_t* bins, int64_t n, int64_t B) {
  std::vector<char> seen(B, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = bins[i];
    TORCH_CHECK_VALUE(b >= 0 && b < B, "bin_index must lie in [0, ", B, "), got ", b, " at sample ", i);
    seen[b] = 1;
  }
  std::vector<int64_t> present;
  for (int64_t b = 0; b < B; ++b) {
    if (seen[b]) present.push_back(b);
  }
  return present;
}

// shift_i and var_i from the per-bin a (pred's dtype T) and q (the statistics' dtype S: the
// clamp comes before the cast, as q[bin_index].clamp_min(0).to(dtype) did); the bin indices
// were checked by bins_present.
template <typename T, typename S>
void gather_per_sample(const T* a, const S* q, const T* y, const int64_t* bins, int64_t n, bool paper, T* shift,
                       T* var) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = bins[i];
    shift[i] = paper ? std::abs(a[b] - y[i]) : a[b];
    var[i] = static_cast<T>(q[b] < S(0) ? S(0) : q[b]);  // clamp_min(0); NaN passes (the surrogate names it)
  }
}

// Software prefetch running kPrefetchBytes ahead of the rows a packed_symv reads, on into the
// start of the next bin's triangle: in a training step the triangles come from memory (the
// rest of the step has pushed them out of the caches), and without it the loads at the rows'
// starts stalled (a quarter of packed_symv's samples in a profile of the step). Alone, on 17
// triangles of D = 128 in float32 after 64 MiB written elsewhere (AVX-512, one thread): 54-61
// us without, 44 us with, as with hot caches (41-44 us).
constexpr int64_t kPrefetchBytes = 4096;

struct PrefetchAhead {
  const char* cur;   // this triangle, `bytes` long
  const char* next;  // the next one read, or nullptr
  int64_t bytes;
  int64_t done = 0;  // bytes of [this triangle, the next one's first kPrefetchBytes) asked for
  // `read`: bytes of this triangle read so far
  __attribute__((always_inline)) inline void to(int64_t read) {
    const int64_t until = std::min(read + kPrefetchBytes, next != nullptr ? bytes + kPrefetchBytes : bytes);
    for (; done < until; done += 64) __builtin_prefetch(done < bytes ? cur + done : next + (done - bytes), 0, 3);
  }
};

// Sw = cov w for one bin, cov given as its packed upper triangle (row i: columns i .. D-1),
// in S: row i's dot product with w goes to Sw_i, and its entries right of the diagonal,
// times w_i, go to the Sw_j below them (the symmetric half), so every stored entry is read
// once. The lanes of the dot product are summed after the row. `next_upper`: the triangle
// read after this one (prefetched), or nullptr.
template <bool kFma, typename S>
__attribute__((always_inline)) inline void packed_symv_impl(const S* __restrict upper, const S* __restrict w,
                                                            int64_t D, S* __restrict Sw, const S* next_upper) {
  constexpr int64_t kLanes = 64 / sizeof(S);  // one AVX-512 register, two AVX2 ones
  PrefetchAhead ahead{reinterpret_cast<const char*>(upper), reinterpret_cast<const char*>(next_upper),
                      static_cast<int64_t>(D * (D + 1) / 2 * sizeof(S))};
  int64_t read = 0;
  for (int64_t j = 0; j < D; ++j) Sw[j] = S(0);
  for (int64_t i = 0; i < D; ++i) {
    read += (D - i) * static_cast<int64_t>(sizeof(S));
    ahead.to(read);
    const S* __restrict r = upper - i;  // r[j] = cov[i][j] for j >= i
    const S wi = w[i];
    S acc[kLanes] = {};
    int64_t j = i + 1;
    for (; j + kLanes <= D; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        acc[l] = mul_add<kFma>(r[j + l], w[j + l], acc[l]);
        Sw[j + l] = mul_add<kFma>(r[j + l], wi, Sw[j + l]);
      }
    }
    S dot = r[i] * wi;
    for (int64_t l = 0; l < kLanes; ++l) dot += acc[l];
    for (; j < D; ++j) {
      dot = mul_add<kFma>(r[j], w[j], dot);
      Sw[j] = mul_add<kFma>(r[j], wi, Sw[j]);
    }
    Sw[i] += dot;
    upper += D - i;
  }
}

#define IRDA_SYMV_ENTRY_POINTS(TARGET, FMA, S)                                                  \
  TARGET void packed_symv(const S* upper, const S* w, int64_t D, S* Sw, const S* next_upper) { \
    packed_symv_impl<FMA, S>(upper, w, D, Sw, next_upper);                                      \
  }
#define IRDA_SYMV_VARIANT(TARGET, FMA) IRDA_SYMV_ENTRY_POINTS(TARGET, FMA, float) IRDA_SYMV_ENTRY_POINTS(TARGET, FMA, double)
IRDA_FMA_VARIANTS(IRDA_SYMV_VARIANT)
#undef IRDA_SYMV_VARIANT
#undef IRDA_SYMV_ENTRY_POINTS

// sum_d x[d] y[d] in float64
template <typename A, typename B>
double dot64(const A* x, const B* y, int64_t D) {
  double s = 0.0;
  for (int64_t d = 0; d < D; ++d) s += static_cast<double>(x[d]) * static_cast<double>(y[d]);
  return s;
}

// A [1, D] or [1] tensor's values in S (its own dtype float or double: check_float).
template <typename S>
std::vector<S> values_as(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<S> out(c.numel());
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "irda_head_values", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    for (size_t j = 0; j < out.size(); ++j) out[j] = static_cast<S>(p[j]);
  });
  return out;
}

// The per-bin a (in S, then pred's dtype T) of every bin, and Sw and q of the forward's
// header comment for the bins in `present`; the other bins' Sw and q are zeros, which
// nothing reads (a bin without samples has no gradient). Reading only the covariances of
// the bins in the batch is most of the saving: an abalone batch of 256 holds 11-21 of the
// 29 bins, and these triangles are the largest data a step reads.
template <typename T, typename S>
void head_per_bin(const S* w, S w0, const S* offset, const S* upper, const S* keep, const S* iso, int64_t B, int64_t D,
                  const std::vector<int64_t>& present, bool paper, T* a_n, S* Sw, S* q) {
  const S ww = static_cast<S>(dot64(w, w, D));
  const int64_t P = D * (D + 1) / 2;
  for (int64_t b = 0; b < B; ++b) {
    S a = static_cast<S>(dot64(offset + b * D, w, D));
    if (paper) a = a + w0;
    a_n[b] = static_cast<T>(a);
  }
  std::fill(Sw, Sw + B * D, S(0));
  std::fill(q, q + B, S(0));
  const int64_t U = static_cast<int64_t>(present.size());
  at::parallel_for(0, U, grain_for(2 * P), [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = present[u];
      packed_symv(upper + b * P, w, D, Sw + b * D, u + 1 < end ? upper + present[u + 1] * P : nullptr);
      q[b] = keep[b] * static_cast<S>(dot64(w, Sw + b * D, D)) + iso[b] * ww;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_head_loss_cpu(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& offset, const at::Tensor& cov_upper, const at::Tensor& keep,
    const at::Tensor& iso, const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, double alpha,
    double beta, const at::Tensor& log_sigma, c10::string_view mode, c10::string_view reduction) {
  const bool reduce = check_reduction(reduction);
  const int64_t B = check_head_inputs(pred, target, bin_index, weight, bias, offset, keep, iso, log_sigma, mode);
  const int64_t D = offset.size(1), n = pred.size(0);
  TORCH_CHECK_VALUE(cov_upper.dim() == 2 && cov_upper.size(0) == B && cov_upper.size(1) == D * (D + 1) / 2,
                    "cov_upper must have shape [", B, ", ", D * (D + 1) / 2, "] (the packed upper triangles of ", B,
                    " covariances of ", D, " x ", D, ", irda_ext.loss.upper_triangles), got ", shape_str(cov_upper));
  check_same_dtype(cov_upper, offset, "cov_upper", "offset");
  const bool paper = mode == "paper";
  const auto stats_dtype = offset.scalar_type(), dtype = pred.scalar_type();

  at::Tensor a_n = at::empty({B}, pred.options());
  at::Tensor q = at::empty({B}, offset.options());
  at::Tensor cov_w = at::empty({B, D}, offset.options());
  const at::Tensor off = offset.contiguous(), up = cov_upper.contiguous(), kp = keep.contiguous(),
                   is = iso.contiguous();
  const at::Tensor y = target.contiguous(), bins = bin_index.contiguous();
  at::Tensor shift = at::empty({n}, pred.options()), var = at::empty({n}, pred.options());
  const std::vector<int64_t> present = bins_present(bins.data_ptr<int64_t>(), n, B);
  AT_DISPATCH_FLOATING_TYPES(dtype, "irda_head_loss", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(stats_dtype, "irda_head_loss", [&] {
      using S = scalar_t;
      const std::vector<S> w = values_as<S>(weight), w0 = values_as<S>(bias);
      head_per_bin<T, S>(w.data(), w0[0], off.data_ptr<S>(), up.data_ptr<S>(), kp.data_ptr<S>(), is.data_ptr<S>(), B,
                         D, present, paper, a_n.data_ptr<T>(), cov_w.data_ptr<S>(), q.data_ptr<S>());
      gather_per_sample(a_n.data_ptr<T>(), q.data_ptr<S>(), y.data_ptr<T>(), bins.data_ptr<int64_t>(), n, paper,
                        shift.data_ptr<T>(), var.data_ptr<T>());
    });
  });
  const double nv = noise_variance(log_sigma);
  const at::Tensor noise_var = at::scalar_tensor(nv, pred.options());  // rounded to pred's dtype
  auto [loss, lse, partials] =
      call_surrogate_with_partials(pred, y, bins, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode);
  at::Tensor out = reduce ? at::empty({}, pred.options()) : loss;
  AT_DISPATCH_FLOATING_TYPES(dtype, "irda_head_loss_reduce", [&] {
    using T = scalar_t;
    const T scale = static_cast<T>(nv) * T(2);  // 2 sigma^2, sigma^2 rounded to T first
    T* l = loss.data_ptr<T>();
    if (reduce) {
      double total = 0.0;
      for (int64_t i = 0; i < n; ++i) total += static_cast<double>(l[i]);
      if (reduction == "mean") total /= static_cast<double>(std::max<int64_t>(n, 1));
      *out.data_ptr<T>() = static_cast<T>(total) * scale;
    } else {
      for (int64_t i = 0; i < n; ++i) l[i] = l[i] * scale;
    }
  });
  return {out, a_n, q, cov_w, partials};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_head_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& offset, const at::Tensor& keep, const at::Tensor& iso,
    const at::Tensor& bin_shift, const at::Tensor& bin_var, const at::Tensor& cov_w, const at::Tensor& partials,
    double alpha, double beta, const at::Tensor& log_sigma, int64_t num_clusters, c10::string_view mode,
    c10::string_view reduction) {
  const bool reduce = check_reduction(reduction);
  const int64_t B = check_head_inputs(target, target, bin_index, weight, bias, offset, keep, iso, log_sigma, mode);
  const int64_t n = target.size(0), D = offset.size(1);
  const auto stats_dtype = offset.scalar_type(), dtype = target.scalar_type();
  TORCH_CHECK_VALUE(reduce ? grad.numel() == 1 : (grad.dim() == 1 && grad.size(0) == n), "grad must have ",
                    reduce ? "one entry" : "shape [n]", " (reduction \"", std::string(reduction), "\"), got shape ",
                    shape_str(grad));
  check_float(grad, "grad");
  const at::Tensor* per_bin[] = {&bin_shift, &bin_var};
  const char* names[] = {"bin_shift", "bin_var"};
  for (int j = 0; j < 2; ++j) {
    TORCH_CHECK_VALUE(per_bin[j]->dim() == 1 && per_bin[j]->size(0) == B, names[j], " must have shape [", B,
                      "], got ", shape_str(*per_bin[j]));
  }
  check_same_dtype(bin_shift, target, "bin_shift", "target");
  check_same_dtype(bin_var, offset, "bin_var", "offset");
  TORCH_CHECK_VALUE(cov_w.dim() == 2 && cov_w.size(0) == B && cov_w.size(1) == D, "cov_w must have shape [", B, ", ",
                    D, "], got ", shape_str(cov_w));
  check_same_dtype(cov_w, offset, "cov_w", "offset");
  TORCH_CHECK_VALUE(partials.dim() == 2 && partials.size(0) == n, "partials must have ", n, " rows, got shape ",
                    shape_str(partials));
  const bool paper = mode == "paper";
  const double nv = noise_variance(log_sigma);
  const at::Tensor noise_var = at::scalar_tensor(nv, target.options());

  // d loss / d loss_i: the scaling, then the reduction's, as autograd through `out` above
  at::Tensor g_loss = at::empty({n}, target.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "irda_head_loss_grad", [&] {
    using T = scalar_t;
    const at::Tensor gc = grad.to(dtype).contiguous();
    const T* g = gc.data_ptr<T>();
    const T scale = static_cast<T>(nv) * T(2);
    T* out = g_loss.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      T gi = (reduce ? g[0] : g[i]) * scale;
      if (reduction == "mean") gi = gi / static_cast<T>(std::max<int64_t>(n, 1));
      out[i] = gi;
    }
  });
  auto [g_pred, g_shift, g_var, g_nv] =
      call_surrogate_partials_backward(g_loss, partials, alpha, beta, noise_var, num_clusters, mode);

  // back through the gathers, in sample order (deterministic), into the per-bin a and q,
  // then into w: a_b = offset_b . w, q_b = keep_b w.(cov_b w) + iso_b w.w (cov_b symmetric),
  // all in float64
  std::vector<double> g_a(B, 0.0), g_q(B, 0.0), g_w(D, 0.0);
  double g_bias = 0.0, g_sigma = 0.0;
  const at::Tensor y = target.contiguous(), bins = bin_index.contiguous();
  const at::Tensor a_n = bin_shift.contiguous(), q_s = bin_var.contiguous(), off = offset.contiguous(),
                   cw = cov_w.contiguous(), kp = keep.contiguous(), is = iso.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "irda_head_loss_scatter", [&] {
    using T = scalar_t;
    const T *a = a_n.data_ptr<T>(), *yp = y.data_ptr<T>();
    const T *gs = g_shift.data_ptr<T>(), *gv = g_var.data_ptr<T>(), *gn = g_nv.data_ptr<T>();
    const int64_t* bp = bins.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) g_sigma += static_cast<double>(gn[i]);
    AT_DISPATCH_FLOATING_TYPES(stats_dtype, "irda_head_loss_scatter", [&] {
      using S = scalar_t;
      const S* q = q_s.data_ptr<S>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = bp[i];
        TORCH_CHECK_VALUE(b >= 0 && b < B, "bin_index must lie in [0, ", B, "), got ", b, " at sample ", i);
        T ds = gs[i];
        if (paper) {
          const T d = a[b] - yp[i];
          ds = d > T(0) ? ds : (d < T(0) ? -ds : T(0));  // abs's derivative, 0 at 0
        }
        g_a[b] += static_cast<double>(ds);
        if (q[b] >= S(0)) g_q[b] += static_cast<double>(gv[i]);  // clamp_min(0)'s: where q >= 0
      }
      const S *o = off.data_ptr<S>(), *c = cw.data_ptr<S>(), *k = kp.data_ptr<S>(), *s = is.data_ptr<S>();
      double iso_gq = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        const double ca = g_a[b], cq = 2.0 * static_cast<double>(k[b]) * g_q[b];
        iso_gq += static_cast<double>(s[b]) * g_q[b];
        if (paper) g_bias += ca;
        if (ca == 0.0 && cq == 0.0) continue;  // a bin without samples
        for (int64_t d = 0; d < D; ++d) {
          g_w[d] += static_cast<double>(o[b * D + d]) * ca + static_cast<double>(c[b * D + d]) * cq;
        }
      }
      const std::vector<double> w = values_as<double>(weight);
      for (int64_t d = 0; d < D; ++d) g_w[d] += w[d] * (2.0 * iso_gq);
    });
  });
  at::Tensor grad_w = at::empty(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "irda_head_loss_grad_w", [&] {
    scalar_t* p = grad_w.data_ptr<scalar_t>();
    for (int64_t d = 0; d < D; ++d) p[d] = static_cast<scalar_t>(g_w[d]);
  });
  const at::Tensor grad_bias = at::full(bias.sizes(), g_bias, bias.options());
  const at::Tensor grad_log_sigma = at::full(log_sigma.sizes(), g_sigma * (2.0 * nv), log_sigma.options());
  return {g_pred, grad_w, grad_bias, grad_log_sigma};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("irda_head_loss", &irda::irda_head_loss_cpu);
  m.impl("irda_head_loss_backward", &irda::irda_head_loss_backward_cpu);
}
