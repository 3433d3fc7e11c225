// Fused IRDA surrogate (SPEC 6) on the CPU: one task per sample streams over the
// (cluster, bin) grid with an online log-sum-exp and saves one LSE per
// (sample, numerator cluster); backward recomputes the grid from it. Nothing
// of size [n, K, K, B] or [n, K, B] is ever built.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../checks.h"
#include "../surrogate_math.h"
#include "grain.h"

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
};

template <typename T>
struct OnlineLse {
  T mx = -std::numeric_limits<T>::infinity();
  T sum = T(0);
  void add(T x) {
    if (x > mx) {
      sum = sum * std::exp(mx - x) + T(1);
      mx = x;
    } else {
      sum += std::exp(x - mx);
    }
  }
  T value() const { return mx + std::log(sum); }
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

template <typename T>
void exact_forward(const SurrogateArgs<T>& a, int64_t i, T* loss, T* lse) {
  const int64_t b = a.bin[i], B = a.B, K = a.K;
  const T y = a.target[i];
  const T m = a.pred[i] + a.alpha * a.shift[i];
  T s2;
  sample_variance(a, i, &s2);
  const T lp_own = a.log_prior[b];
  T total = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T eta_own = a.eta[k * B + b];
    OnlineLse<T> acc;
    for (int64_t kc = 0; kc < K; ++kc) {
      const T* eta_row = a.eta + kc * B;
      for (int64_t bc = 0; bc < B; ++bc) {
        const T lp = a.log_prior[bc];
        if (bc != b && !std::isfinite(lp)) continue;
        const T t = bc == b ? y : a.centers[bc];
        acc.add(exact_term<T>(eta_own, eta_row[bc], y, t, lp - lp_own, m, s2, a.u).F);
      }
    }
    lse[k] = acc.value();
    total += lse[k];
  }
  *loss = total / T(K);
}

// Returns d loss_i / d (m, s2, u) at fixed s2 for the explicit u term.
template <typename T>
void exact_backward(const SurrogateArgs<T>& a, int64_t i, const T* lse, T grad, T* g_pred, T* g_shift, T* g_var,
                    T* g_nv) {
  const int64_t b = a.bin[i], B = a.B, K = a.K;
  const T y = a.target[i];
  const T m = a.pred[i] + a.alpha * a.shift[i];
  T s2;
  const bool capped = sample_variance(a, i, &s2);
  const T lp_own = a.log_prior[b];
  T gm = 0, gs2 = 0, gu = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T eta_own = a.eta[k * B + b];
    for (int64_t kc = 0; kc < K; ++kc) {
      const T* eta_row = a.eta + kc * B;
      for (int64_t bc = 0; bc < B; ++bc) {
        const T lp = a.log_prior[bc];
        if (bc != b && !std::isfinite(lp)) continue;
        const T t = bc == b ? y : a.centers[bc];
        const ExactTerm<T> e = exact_term<T>(eta_own, eta_row[bc], y, t, lp - lp_own, m, s2, a.u);
        const T p = std::exp(e.F - lse[k]);
        gm += p * e.dF_dm;
        gs2 += p * e.dF_ds2;
        gu += p * e.dF_du;
      }
    }
  }
  const T scale = grad / T(K);
  gm *= scale;
  gs2 *= scale;
  gu *= scale;
  // A capped s2 = (1 - 1e-3) / (2 u spread) no longer depends on var, but on u.
  if (capped) gu += gs2 * (-s2 / a.u);
  *g_pred = gm;
  *g_shift = a.alpha * gm;
  *g_var = capped ? T(0) : a.beta * gs2;
  *g_nv = gu * (T(-2) * a.u * a.u);
}

template <typename T>
void paper_forward(const SurrogateArgs<T>& a, int64_t i, T* loss, T* lse) {
  const int64_t b = a.bin[i], B = a.B, K = a.K;
  const T y = a.target[i], p = a.pred[i], shift = a.shift[i], var = a.var[i];
  OnlineLse<T> acc;
  T own = 0;
  for (int64_t kc = 0; kc < K; ++kc) {
    const T* eta_row = a.eta + kc * B;
    const T e_own = eta_row[b];
    for (int64_t bc = 0; bc < B; ++bc) {
      const T lp = a.log_prior[bc];
      if (bc != b && !std::isfinite(lp)) continue;
      const T t = bc == b ? y : a.centers[bc];
      const T z = paper_term<T>(e_own, eta_row[bc], y, t, lp, p, shift, var, a.alpha, a.beta, a.u).Z;
      acc.add(z);
      if (bc == b) own += z;
    }
  }
  lse[0] = acc.value();
  *loss = lse[0] - own / T(K);
}

template <typename T>
void paper_backward(const SurrogateArgs<T>& a, int64_t i, const T* lse, T grad, T* g_pred, T* g_shift, T* g_var,
                    T* g_nv) {
  const int64_t b = a.bin[i], B = a.B, K = a.K;
  const T y = a.target[i], p = a.pred[i], shift = a.shift[i], var = a.var[i];
  T gp = 0, gsh = 0, gv = 0, gu = 0;
  T op = 0, ou = 0;  // the numerator terms Z[k, b], averaged over k
  for (int64_t kc = 0; kc < K; ++kc) {
    const T* eta_row = a.eta + kc * B;
    const T e_own = eta_row[b];
    for (int64_t bc = 0; bc < B; ++bc) {
      const T lp = a.log_prior[bc];
      if (bc != b && !std::isfinite(lp)) continue;
      const T t = bc == b ? y : a.centers[bc];
      const PaperTerm<T> z = paper_term<T>(e_own, eta_row[bc], y, t, lp, p, shift, var, a.alpha, a.beta, a.u);
      const T w = std::exp(z.Z - lse[0]);
      gp += w * z.dZ_dp;
      gsh += w * z.dZ_dshift;
      gv += w * z.dZ_dvar;
      gu += w * z.dZ_du;
      if (bc == b) {  // its shift and var terms vanish (R1 = R2 = 0)
        op += z.dZ_dp;
        ou += z.dZ_du;
      }
    }
  }
  *g_pred = grad * (gp - op / T(K));
  *g_shift = grad * gsh;
  *g_var = grad * gv;
  *g_nv = grad * (gu - ou / T(K)) * (T(-2) * a.u * a.u);
}

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
    const scalar_t* vr = p.var.data_ptr<scalar_t>();
    const scalar_t* pr = p.pred.data_ptr<scalar_t>();
    for (int64_t i = 0; i < p.n; ++i) {
      TORCH_CHECK_VALUE(std::isfinite(lp[bin[i]]), "log_prior of bin ", bin[i], " (the bin of sample ", i,
                        ") must be finite: a sample's own bin needs a positive prior");
      TORCH_CHECK_VALUE(vr[i] >= 0, "var must be non-negative, got var[", i, "] = ", vr[i]);
      TORCH_CHECK_VALUE(std::isfinite(pr[i]), "pred[", i, "] is not finite (", pr[i], ")");
    }
  });
  return p;
}

template <typename T>
SurrogateArgs<T> make_args(const Prepared& p, double alpha, double beta) {
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
  return a;
}

// Work per sample: the grid, about 20 flops a point.
int64_t sample_grain(const Prepared& p, bool exact) { return grain_for(20 * p.B * p.K * (exact ? p.K : 1)); }

std::tuple<at::Tensor, at::Tensor> irda_surrogate_cpu(const at::Tensor& pred, const at::Tensor& target,
                                                      const at::Tensor& bin_index, const at::Tensor& centers,
                                                      const at::Tensor& eta, const at::Tensor& log_prior,
                                                      const at::Tensor& shift, const at::Tensor& var, double alpha,
                                                      double beta, const at::Tensor& noise_var,
                                                      c10::string_view mode) {
  const Prepared p = prepare(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  const bool exact = mode == "exact";
  const int64_t L = exact ? p.K : 1;
  at::Tensor loss = at::empty({p.n}, pred.options());
  at::Tensor lse = at::empty({p.n, L}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_cpu", [&] {
    const SurrogateArgs<scalar_t> a = make_args<scalar_t>(p, alpha, beta);
    scalar_t* loss_ptr = loss.data_ptr<scalar_t>();
    scalar_t* lse_ptr = lse.data_ptr<scalar_t>();
    at::parallel_for(0, p.n, sample_grain(p, exact), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (exact) {
          exact_forward(a, i, loss_ptr + i, lse_ptr + i * L);
        } else {
          paper_forward(a, i, loss_ptr + i, lse_ptr + i * L);
        }
      }
    });
  });
  return {loss, lse};
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
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == p.n && lse.size(1) == L, "lse must have shape [", p.n, ", ", L,
                    "], got ", shape_str(lse));
  const at::Tensor g = grad_loss.to(pred.scalar_type()).contiguous();
  const at::Tensor lse_c = lse.contiguous();
  at::Tensor g_pred = at::empty({p.n}, pred.options());
  at::Tensor g_shift = at::empty({p.n}, pred.options());
  at::Tensor g_var = at::empty({p.n}, pred.options());
  at::Tensor g_nv = at::empty({p.n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_backward_cpu", [&] {
    const SurrogateArgs<scalar_t> a = make_args<scalar_t>(p, alpha, beta);
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* lp = lse_c.data_ptr<scalar_t>();
    scalar_t* o_pred = g_pred.data_ptr<scalar_t>();
    scalar_t* o_shift = g_shift.data_ptr<scalar_t>();
    scalar_t* o_var = g_var.data_ptr<scalar_t>();
    scalar_t* o_nv = g_nv.data_ptr<scalar_t>();
    at::parallel_for(0, p.n, sample_grain(p, exact), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (exact) {
          exact_backward(a, i, lp + i * L, gp[i], o_pred + i, o_shift + i, o_var + i, o_nv + i);
        } else {
          paper_backward(a, i, lp + i * L, gp[i], o_pred + i, o_shift + i, o_var + i, o_nv + i);
        }
      }
    });
  });
  return {g_pred, g_shift, g_var, g_nv};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("irda_surrogate", &irda::irda_surrogate_cpu);
  m.impl("irda_surrogate_backward", &irda::irda_surrogate_backward_cpu);
}
