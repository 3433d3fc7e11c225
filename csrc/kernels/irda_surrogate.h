// Fused IRDA surrogate (SPEC 6): the CUDA kernels, written once for the GPU
// (csrc/cuda/irda_surrogate.cu) and the emulated launch, the same math as
// csrc/cpu/irda_surrogate.cpp (the per-term formulas are shared through
// surrogate_math.h). One warp per sample: its lanes stride over the (cluster, bin)
// grid with an online log-sum-exp, merged by a fixed butterfly; forward saves one LSE
// per (sample, numerator cluster) and backward recomputes the grid from it. Nothing
// of size [n, K, K, B] or [n, K, B] is built, and every reduction has a fixed order:
// the per-sample noise_var gradients are summed by the caller, so the whole op is
// deterministic. noise_var is read on the device: no host synchronisation.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "../checks.h"
#include "../surrogate_math.h"
#include "launch.h"

namespace irda {
namespace surrogate {

constexpr int kWarpsPerBlock = 2;  // small blocks spread n = 256 samples over the SMs
constexpr int kThreads = kWarpsPerBlock * kWarp;

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
  const T* noise_var;  // one element, on the device
  T alpha, beta;
  int64_t n, K, B;
};

// Sums of N values, reduced together.
template <typename T, int N>
struct Sums {
  T v[N];
};

template <typename T, int N>
IRDA_HOST_DEVICE Sums<T, N> add_sums(Sums<T, N> x, const Sums<T, N>& y) {
  for (int j = 0; j < N; ++j) x.v[j] += y.v[j];
  return x;
}

template <typename T>
IRDA_HOST_DEVICE OnlineLse<T> merge_lse(OnlineLse<T> x, const OnlineLse<T>& y) {
  x.merge(y.mx, y.sum);
  return x;
}

// A lane's walk over the (cluster, bin) grid j = kc * B + bc = lane, lane + 32, ...
// < K * B in 32-bit steps, with no division in the loop (the host checks K * B + 32
// fits in an int).
struct GridWalk {
  int kc, bc, j;
  IRDA_HOST_DEVICE GridWalk(int lane, int B) : kc(lane / B), bc(lane % B), j(lane) {}
  IRDA_HOST_DEVICE void next(int B) {
    j += kWarp;
    bc += kWarp;
    while (bc >= B) {
      bc -= B;
      ++kc;
    }
  }
};

// A competitor bin takes part if its prior is positive; the sample's own bin always does.
template <typename T>
IRDA_HOST_DEVICE bool competes(int bc, int b, T lp) {
  return bc == b || is_finite(lp);
}

// The augmented prediction's variance in exact mode (SPEC 6.2): the spread of eta
// between the own bin's clusters and every valid competitor.
template <typename T, class Warp>
IRDA_HOST_DEVICE bool sample_variance(const SurrogateArgs<T>& a, const Warp& w, int64_t i, int b, T u, T* s2) {
  T own_max = -INFINITY;
  for (int64_t k = 0; k < a.K; ++k) own_max = max_of(own_max, a.eta[k * a.B + b]);
  // min of eta over bins with a finite log prior (valid_eta_min on the CPU)
  const T lo = w.lane_reduce(
      [&](int lane) {
        T m = INFINITY;
        for (GridWalk g(lane, int(a.B)); g.kc < a.K; g.next(int(a.B))) {
          if (is_finite(a.log_prior[g.bc])) m = min_of(m, a.eta[g.j]);
        }
        return m;
      },
      [](T x, T y) { return min_of(x, y); });
  return capped_variance<T>(a.beta * a.var[i], own_max - lo, u, s2);
}

// The value checks of the CPU kernel, on the device (no host synchronisation): each
// warp checks its sample, and the warp of sample 0 the inputs all samples share.
template <typename T, class Warp>
IRDA_HOST_DEVICE void check_values(const SurrogateArgs<T>& a, const Warp& w, int64_t i) {
  if (i == 0) {
    const int bad = w.lane_reduce(
        [&](int lane) {
          int flags = 0;
          for (int64_t j = lane; j < a.K * a.B; j += kWarp) flags |= is_finite(a.eta[j]) ? 0 : 1;
          for (int64_t j = lane; j < a.B; j += kWarp) {
            flags |= is_finite(a.centers[j]) ? 0 : 2;
            flags |= (a.log_prior[j] == a.log_prior[j] && a.log_prior[j] < T(INFINITY)) ? 0 : 4;
          }
          return flags;
        },
        [](int x, int y) { return x | y; });
    if (w.leader()) {
      IRDA_KERNEL_CHECK(!(bad & 1), "eta must be finite");
      IRDA_KERNEL_CHECK(!(bad & 2), "centers must be finite");
      IRDA_KERNEL_CHECK(!(bad & 4), "log_prior must be finite or -inf (a bin without prior), not NaN or +inf");
      const T nv = a.noise_var[0];
      IRDA_KERNEL_CHECK(nv > T(0) && is_finite(nv), "noise_var must be positive and finite");
    }
  }
  if (w.leader()) {
    const int64_t b = a.bin[i];
    IRDA_KERNEL_CHECK(b >= 0 && b < a.B, "bin_index values must lie in [0, num_bins)");
    IRDA_KERNEL_CHECK(is_finite(a.log_prior[b]),
                      "log_prior of a sample's own bin must be finite: a bin without prior cannot hold a sample");
    IRDA_KERNEL_CHECK(is_finite(a.pred[i]), "pred must be finite");
    IRDA_KERNEL_CHECK(is_finite(a.target[i]), "target must be finite");
    IRDA_KERNEL_CHECK(is_finite(a.shift[i]), "shift must be finite");
    IRDA_KERNEL_CHECK(a.var[i] >= T(0) && is_finite(a.var[i]), "var must be non-negative and finite");
  }
}

template <typename T>
struct PaperForwardLane {
  OnlineLse<T> acc;
  T own;
};

// Forward: one LSE per (sample, numerator cluster) in exact mode, one per sample in
// paper mode (kExact picks the mode at compile time).
template <typename T, bool kExact>
struct SurrogateForward {
  static constexpr int kThreads = surrogate::kThreads;
  using Shared = NoShared;
  SurrogateArgs<T> a;
  T* loss;
  T* lse;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    blk.warps([&](const auto& w) {
      const int64_t i = int64_t(blk.block_idx().x) * (blk.block_dim().x / kWarp) + w.index();
      if (i >= a.n) return;  // uniform over the warp
      check_values(a, w, i);
      const int b = int(a.bin[i]), B = int(a.B), K = int(a.K);
      const T u = T(0.5) / a.noise_var[0];
      const T y = a.target[i];
      if constexpr (kExact) {
        T s2;
        sample_variance(a, w, i, b, u, &s2);
        const T m = a.pred[i] + a.alpha * a.shift[i];
        const T lp_own = a.log_prior[b];
        T total = T(0);
        for (int k = 0; k < K; ++k) {
          const T eta_own = a.eta[k * B + b];
          const OnlineLse<T> acc = w.lane_reduce(
              [&](int lane) {
                OnlineLse<T> part;
                for (GridWalk g(lane, B); g.kc < K; g.next(B)) {
                  const T lp = a.log_prior[g.bc];
                  if (!competes(g.bc, b, lp)) continue;
                  const T t = g.bc == b ? y : a.centers[g.bc];
                  part.add(exact_term<T>(eta_own, a.eta[g.j], y, t, lp - lp_own, m, s2, u).F);
                }
                return part;
              },
              [](const OnlineLse<T>& x, const OnlineLse<T>& o) { return merge_lse(x, o); });
          const T value = acc.value();
          if (w.leader()) lse[i * K + k] = value;
          total += value;
        }
        if (w.leader()) loss[i] = total / T(K);
      } else {
        const T p = a.pred[i], shift = a.shift[i], var = a.var[i];
        const PaperForwardLane<T> r = w.lane_reduce(
            [&](int lane) {
              PaperForwardLane<T> part{OnlineLse<T>(), T(0)};
              for (GridWalk g(lane, B); g.kc < K; g.next(B)) {
                const T lp = a.log_prior[g.bc];
                if (!competes(g.bc, b, lp)) continue;
                const T t = g.bc == b ? y : a.centers[g.bc];
                const T z =
                    paper_term<T>(a.eta[g.kc * B + b], a.eta[g.j], y, t, lp, p, shift, var, a.alpha, a.beta, u).Z;
                part.acc.add(z);
                if (g.bc == b) part.own += z;
              }
              return part;
            },
            [](PaperForwardLane<T> x, const PaperForwardLane<T>& o) {
              x.acc.merge(o.acc.mx, o.acc.sum);
              x.own += o.own;
              return x;
            });
        if (w.leader()) {
          const T value = r.acc.value();
          lse[i] = value;
          loss[i] = value - r.own / T(K);
        }
      }
    });
  }
};

template <typename T, bool kExact>
struct SurrogateBackward {
  static constexpr int kThreads = surrogate::kThreads;
  using Shared = NoShared;
  SurrogateArgs<T> a;
  const T* grad;
  const T* lse;
  T* g_pred;
  T* g_shift;
  T* g_var;
  T* g_nv;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    blk.warps([&](const auto& w) {
      const int64_t i = int64_t(blk.block_idx().x) * (blk.block_dim().x / kWarp) + w.index();
      if (i >= a.n) return;  // uniform over the warp
      check_values(a, w, i);
      const int b = int(a.bin[i]), B = int(a.B), K = int(a.K);
      const T u = T(0.5) / a.noise_var[0];
      const T y = a.target[i];
      if constexpr (kExact) {
        T s2;
        const bool capped = sample_variance(a, w, i, b, u, &s2);
        const T m = a.pred[i] + a.alpha * a.shift[i];
        const T lp_own = a.log_prior[b];
        const Sums<T, 3> g = w.lane_reduce(
            [&](int lane) {
              Sums<T, 3> part{{T(0), T(0), T(0)}};  // d/dm, d/ds2, d/du
              for (int k = 0; k < K; ++k) {
                const T eta_own = a.eta[k * B + b];
                const T lse_k = lse[i * K + k];
                for (GridWalk gw(lane, B); gw.kc < K; gw.next(B)) {
                  const T lp = a.log_prior[gw.bc];
                  if (!competes(gw.bc, b, lp)) continue;
                  const T t = gw.bc == b ? y : a.centers[gw.bc];
                  const ExactTerm<T> e = exact_term<T>(eta_own, a.eta[gw.j], y, t, lp - lp_own, m, s2, u);
                  const T p = std::exp(e.F - lse_k);
                  part.v[0] += p * e.dF_dm;
                  part.v[1] += p * e.dF_ds2;
                  part.v[2] += p * e.dF_du;
                }
              }
              return part;
            },
            [](const Sums<T, 3>& x, const Sums<T, 3>& o) { return add_sums(x, o); });
        if (w.leader()) {
          const T scale = grad[i] / T(K);
          const T gm = g.v[0] * scale, gs2 = g.v[1] * scale;
          T gu = g.v[2] * scale;
          // A capped s2 = (1 - 1e-3) / (2 u spread) no longer depends on var, but on u.
          if (capped) gu += gs2 * (-s2 / u);
          g_pred[i] = gm;
          g_shift[i] = a.alpha * gm;
          g_var[i] = capped ? T(0) : a.beta * gs2;
          g_nv[i] = gu * (T(-2) * u * u);
        }
      } else {
        const T p = a.pred[i], shift = a.shift[i], var = a.var[i];
        const T lse_i = lse[i];
        // d/dp, d/dshift, d/dvar, d/du of the log-sum-exp, and the numerator terms
        // Z[k, b] (d/dp, d/du), averaged over k
        const Sums<T, 6> g = w.lane_reduce(
            [&](int lane) {
              Sums<T, 6> part{{T(0), T(0), T(0), T(0), T(0), T(0)}};
              for (GridWalk gw(lane, B); gw.kc < K; gw.next(B)) {
                const T lp = a.log_prior[gw.bc];
                if (!competes(gw.bc, b, lp)) continue;
                const T t = gw.bc == b ? y : a.centers[gw.bc];
                const PaperTerm<T> z =
                    paper_term<T>(a.eta[gw.kc * B + b], a.eta[gw.j], y, t, lp, p, shift, var, a.alpha, a.beta, u);
                const T wz = std::exp(z.Z - lse_i);
                part.v[0] += wz * z.dZ_dp;
                part.v[1] += wz * z.dZ_dshift;
                part.v[2] += wz * z.dZ_dvar;
                part.v[3] += wz * z.dZ_du;
                if (gw.bc == b) {  // its shift and var terms vanish (R1 = R2 = 0)
                  part.v[4] += z.dZ_dp;
                  part.v[5] += z.dZ_du;
                }
              }
              return part;
            },
            [](const Sums<T, 6>& x, const Sums<T, 6>& o) { return add_sums(x, o); });
        if (w.leader()) {
          const T gl = grad[i];
          g_pred[i] = gl * (g.v[0] - g.v[4] / T(K));
          g_shift[i] = gl * g.v[1];
          g_var[i] = gl * g.v[2];
          g_nv[i] = gl * (g.v[3] - g.v[5] / T(K)) * (T(-2) * u * u);
        }
      }
    });
  }
};

struct Prepared {
  at::Tensor pred, target, bin, centers, eta, log_prior, shift, var, noise_var;
  int64_t n, K, B;
};

// The CPU kernel's shape and dtype checks; its value checks are made by the kernels
// (check_values).
inline Prepared prepare(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
                        const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior,
                        const at::Tensor& shift, const at::Tensor& var, const at::Tensor& noise_var,
                        c10::string_view mode) {
  check_surrogate_inputs(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  TORCH_CHECK_VALUE(eta.size(0) * centers.size(0) <= INT32_MAX - kWarp, "a grid of K * B = ",
                    eta.size(0) * centers.size(0), " competitors is too large for the CUDA kernels");
  return Prepared{pred.contiguous(),      target.contiguous(),    bin_index.contiguous(), centers.contiguous(),
                  eta.contiguous(),       log_prior.contiguous(), shift.contiguous(),     var.contiguous(),
                  noise_var.contiguous(), pred.size(0),           eta.size(0),            centers.size(0)};
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
  a.noise_var = p.noise_var.data_ptr<T>();
  a.alpha = static_cast<T>(alpha);
  a.beta = static_cast<T>(beta);
  a.n = p.n;
  a.K = p.K;
  a.B = p.B;
  return a;
}

inline Dim3 sample_grid(int64_t n) { return Dim3{static_cast<unsigned>(ceil_div(n, kWarpsPerBlock))}; }

template <class Exec>
std::tuple<at::Tensor, at::Tensor> forward(const Exec& ex, const at::Tensor& pred, const at::Tensor& target,
                                           const at::Tensor& bin_index, const at::Tensor& centers,
                                           const at::Tensor& eta, const at::Tensor& log_prior,
                                           const at::Tensor& shift, const at::Tensor& var, double alpha,
                                           double beta, const at::Tensor& noise_var, c10::string_view mode) {
  const Prepared p = prepare(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  const bool exact = mode == "exact";
  const int64_t L = exact ? p.K : 1;
  at::Tensor loss = at::empty({p.n}, pred.options());
  at::Tensor lse = at::empty({p.n, L}, pred.options());
  if (p.n == 0) return {loss, lse};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate", [&] {
    const SurrogateArgs<scalar_t> args = make_args<scalar_t>(p, alpha, beta);
    scalar_t *lp = loss.data_ptr<scalar_t>(), *sp = lse.data_ptr<scalar_t>();
    if (exact) {
      ex.launch("surrogate_forward<exact>", sample_grid(p.n), Dim3{kThreads},
                SurrogateForward<scalar_t, true>{args, lp, sp});
    } else {
      ex.launch("surrogate_forward<paper>", sample_grid(p.n), Dim3{kThreads},
                SurrogateForward<scalar_t, false>{args, lp, sp});
    }
  });
  return {loss, lse};
}

template <class Exec>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const Exec& ex, const at::Tensor& grad_loss, const at::Tensor& pred, const at::Tensor& target,
    const at::Tensor& bin_index, const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior,
    const at::Tensor& shift, const at::Tensor& var, double alpha, double beta, const at::Tensor& noise_var,
    c10::string_view mode, const at::Tensor& lse) {
  const Prepared p = prepare(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  const bool exact = mode == "exact";
  const int64_t L = exact ? p.K : 1;
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == p.n, "grad_loss must have shape [", p.n, "], got ",
                    shape_str(grad_loss));
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == p.n && lse.size(1) == L, "lse must have shape [", p.n, ", ", L,
                    "], got ", shape_str(lse));
  check_same_device(grad_loss, pred, "grad_loss", "pred");
  check_same_device(lse, pred, "lse", "pred");
  const at::Tensor g = grad_loss.to(pred.scalar_type()).contiguous();
  const at::Tensor lse_c = lse.to(pred.scalar_type()).contiguous();
  at::Tensor g_pred = at::empty({p.n}, pred.options());
  at::Tensor g_shift = at::empty({p.n}, pred.options());
  at::Tensor g_var = at::empty({p.n}, pred.options());
  at::Tensor g_nv = at::empty({p.n}, pred.options());
  if (p.n == 0) return {g_pred, g_shift, g_var, g_nv};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_backward", [&] {
    const SurrogateArgs<scalar_t> args = make_args<scalar_t>(p, alpha, beta);
    const scalar_t *gp = g.data_ptr<scalar_t>(), *lp = lse_c.data_ptr<scalar_t>();
    scalar_t *o_pred = g_pred.data_ptr<scalar_t>(), *o_shift = g_shift.data_ptr<scalar_t>();
    scalar_t *o_var = g_var.data_ptr<scalar_t>(), *o_nv = g_nv.data_ptr<scalar_t>();
    if (exact) {
      ex.launch("surrogate_backward<exact>", sample_grid(p.n), Dim3{kThreads},
                SurrogateBackward<scalar_t, true>{args, gp, lp, o_pred, o_shift, o_var, o_nv});
    } else {
      ex.launch("surrogate_backward<paper>", sample_grid(p.n), Dim3{kThreads},
                SurrogateBackward<scalar_t, false>{args, gp, lp, o_pred, o_shift, o_var, o_nv});
    }
  });
  return {g_pred, g_shift, g_var, g_nv};
}

}  // namespace surrogate
}  // namespace irda
