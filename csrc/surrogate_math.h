// Scalar math of the IRDA surrogate (SPEC 6), shared by the CPU and CUDA kernels.
//
// Everything is written in terms of u = 1 / (2 sigma^2) and the unscaled cluster
// shares eta, so that eta_hat = u * eta and the derivative in u (hence in the
// noise variance, d u / d sigma^2 = -2 u^2) is a sum of simple terms.
#pragma once
#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace irda {

// Relative margin of the cap on s^2 in exact mode: 1 - 2 a s^2 >= 1e-3.
constexpr double kCapMargin = 1e-3;

// A running log-sum-exp: (max, sum of exp(x - max)). add() takes one term,
// merge() another partial state (an empty state has max -inf), value() is the
// log-sum-exp. merge is symmetric: a xor butterfly of merges leaves every lane with
// the same state.
template <typename T>
struct OnlineLse {
  T mx = -INFINITY;
  T sum = T(0);

  IRDA_HOST_DEVICE void add(T x) {
    if (x > mx) {
      sum = sum * std::exp(mx - x) + T(1);
      mx = x;
    } else {
      sum += std::exp(x - mx);
    }
  }

  IRDA_HOST_DEVICE void merge(T other_mx, T other_sum) {
    if (other_mx == -INFINITY) return;
    if (mx == -INFINITY) {
      mx = other_mx;
      sum = other_sum;
    } else if (other_mx > mx) {
      sum = sum * std::exp(mx - other_mx) + other_sum;
      mx = other_mx;
    } else {
      sum += other_sum * std::exp(other_mx - mx);
    }
  }

  IRDA_HOST_DEVICE T value() const { return mx + std::log(sum); }
};

// The logarithm of exact_term: std::log by default; the CPU kernels pass their
// polynomial log, which vectorises (cpu/simd.h).
struct StdLog {
  template <typename T>
  IRDA_HOST_DEVICE static T log(T x) {
    return std::log(x);
  }
};

// One competitor (k', b') of numerator cluster k in exact mode, for a sample
// whose own bin b has share eta_own = eta[k, b] and target y, against label
// t = t_{b'} with share eta_comp = eta[k', b'] and log-prior difference
// lp = l_{b'} - l_b.
//   a = u (eta_own - eta_comp), c = 2 u (eta_comp t - eta_own y),
//   d = u (eta_own y^2 - eta_comp t^2) + lp,  r = 1 - 2 a s2,
//   N = a m^2 + c m + c^2 s2 / 2,
//   F = -log(r) / 2 + d + N / r      (log E exp(a g^2 + c g + d), g ~ N(m, s2))
template <typename T>
struct ExactTerm {
  T F;
  T dF_dm;   // d F / d m
  T dF_ds2;  // d F / d s2
  T dF_du;   // d F / d u at fixed s2
};

// The CUDA kernels' forward and backward both evaluate F here, with the same operations
// (and no fused multiply-adds: --fmad=false), so a float32 logit of 1e6 rounds the same
// way in forward and backward and the dominant term's exp(F - lse) stays exactly 1. The
// CPU kernel regroups the same terms (exact_parts in csrc/cpu/irda_surrogate.cpp, about
// half the operations), one function for its forward and backward, for the same reason.
//
// The parts that do not depend on the sample's target and prediction, a, 1 / r and
// -log(r) / 2, are exact_term_denominator's; the CPU kernel computes them once per
// (bin, s2) when many samples share them (exact_term_given takes them so, as exact_term
// does).
template <typename T>
struct ExactDenominator {
  T a;           // u (eta_own - eta_comp)
  T inv_r;       // 1 / (1 - 2 a s2)
  T half_log_r;  // -log(1 - 2 a s2) / 2
};

template <typename T, class Log = StdLog>
IRDA_INLINE ExactDenominator<T> exact_term_denominator(T eta_own, T eta_comp, T s2, T u) {
  const T delta = eta_own - eta_comp;
  const T a = u * delta;
  const T r = T(1) - T(2) * a * s2;
  return {a, T(1) / r, T(-0.5) * Log::log(r)};
}

template <typename T>
IRDA_INLINE ExactTerm<T> exact_term_given(const ExactDenominator<T>& den, T eta_own, T eta_comp, T y, T t, T lp, T m,
                                          T s2, T u) {
  const T delta = eta_own - eta_comp;
  const T C = T(2) * (eta_comp * t - eta_own * y);
  const T E = eta_own * y * y - eta_comp * t * t;
  const T a = den.a;
  const T c = u * C;
  const T d = u * E + lp;
  const T inv_r = den.inv_r;
  const T N = a * m * m + c * m + T(0.5) * c * c * s2;
  ExactTerm<T> out;
  out.F = den.half_log_r + d + N * inv_r;
  out.dF_dm = (T(2) * a * m + c) * inv_r;
  out.dF_ds2 = (a + T(0.5) * c * c) * inv_r + T(2) * a * N * inv_r * inv_r;
  const T dF_da = (s2 + m * m) * inv_r + T(2) * s2 * N * inv_r * inv_r;
  const T dF_dc = (m + c * s2) * inv_r;
  out.dF_du = delta * dF_da + C * dF_dc + E;
  return out;
}

template <typename T, class Log = StdLog>
IRDA_INLINE ExactTerm<T> exact_term(T eta_own, T eta_comp, T y, T t, T lp, T m, T s2, T u) {
  return exact_term_given<T>(exact_term_denominator<T, Log>(eta_own, eta_comp, s2, u), eta_own, eta_comp, y, t, lp, m,
                             s2, u);
}

// Paper mode (eq. 22 as printed, SPEC 6.1): the logit of competitor (k', b')
// for a sample of bin b with target y, prediction p, shift and var:
//   Z = -u e' (t - p)^2 + alpha u R1 shift + beta u^2 R2 var + l_{b'}
//   R1 = (e - e') + 2 (e' t - e y),  R2 = (e' t - e y)^2 + (e - e')^2 / 4
// with e = eta[k', b] and e' = eta[k', b'].
template <typename T>
struct PaperTerm {
  T Z;
  T dZ_dp;
  T dZ_dshift;
  T dZ_dvar;
  T dZ_du;
};

template <typename T>
IRDA_INLINE PaperTerm<T> paper_term(T e_own, T e_comp, T y, T t, T lp_comp, T p, T shift, T var,
                                        T alpha, T beta, T u) {
  const T diff = t - p;
  const T lin = e_comp * t - e_own * y;
  const T de = e_own - e_comp;
  const T R1 = de + T(2) * lin;
  const T R2 = lin * lin + T(0.25) * de * de;
  PaperTerm<T> out;
  out.Z = -u * e_comp * diff * diff + alpha * u * R1 * shift + beta * u * u * R2 * var + lp_comp;
  out.dZ_dp = T(2) * u * e_comp * diff;
  out.dZ_dshift = alpha * u * R1;
  out.dZ_dvar = beta * u * u * R2;
  out.dZ_du = -e_comp * diff * diff + alpha * R1 * shift + T(2) * beta * u * R2 * var;
  return out;
}

// The variance of the augmented prediction in exact mode, s2 = min(beta var, cap),
// cap = (1 - 1e-3) / (2 amax), amax = u * spread, spread = max_k eta[k, b] - min
// over the valid competitors of eta[k', b'] (only when spread > 0). Returns
// whether the cap is active: then d s2 / d var = 0 and d s2 / d u = -s2 / u.
template <typename T>
IRDA_HOST_DEVICE bool capped_variance(T beta_var, T spread, T u, T* s2) {
  if (spread > T(0)) {
    const T cap = T(1.0 - kCapMargin) / (T(2) * u * spread);
    if (beta_var > cap) {
      *s2 = cap;
      return true;
    }
  }
  *s2 = beta_var;
  return false;
}

}  // namespace irda
