// Fused IRDA surrogate (SPEC 6) on CUDA, the same math as
// csrc/cpu/irda_surrogate.cpp (the per-term formulas are shared through
// surrogate_math.h). One warp per sample: its lanes stride over the
// (cluster, bin) grid with an online log-sum-exp, merged by a fixed butterfly;
// forward saves one LSE per (sample, numerator cluster) and backward
// recomputes the grid from it. Nothing of size [n, K, K, B] or [n, K, B] is
// built, and every reduction has a fixed order: the per-sample noise_var
// gradients are summed by the caller, so the whole op is deterministic.
// noise_var is read on the device: no host synchronisation.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../surrogate_math.h"
#include "device_utils.cuh"

namespace irda {
namespace {

using cuda::ceil_div;
using cuda::kWarp;
using cuda::OnlineLse;

constexpr int kWarpsPerBlock = 2;  // small blocks spread n = 256 samples over the SMs

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

// A competitor bin takes part if its prior is positive; the sample's own bin always does.
template <typename T>
__device__ __forceinline__ bool competes(int64_t bc, int64_t b, T lp) {
  return bc == b || isfinite(lp);
}

// The augmented prediction's variance in exact mode (SPEC 6.2): the spread of
// eta between the own bin's clusters and every valid competitor.
template <typename T>
__device__ bool sample_variance(const SurrogateArgs<T>& a, int64_t i, int64_t b, T u, int lane, T* s2) {
  T own_max = -INFINITY;
  for (int64_t k = 0; k < a.K; ++k) own_max = fmax(own_max, a.eta[k * a.B + b]);
  T lo = INFINITY;  // min of eta over bins with a finite log prior (valid_eta_min on the CPU)
  for (int64_t j = lane; j < a.K * a.B; j += kWarp) {
    if (isfinite(a.log_prior[j % a.B])) lo = fmin(lo, a.eta[j]);
  }
  lo = cuda::warp_min(lo);
  return capped_variance<T>(a.beta * a.var[i], own_max - lo, u, s2);
}

template <typename T>
__global__ void surrogate_forward_kernel(SurrogateArgs<T> a, bool exact, T* __restrict__ loss, T* __restrict__ lse) {
  const int lane = threadIdx.x % kWarp;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (i >= a.n) return;  // uniform over the warp
  const int64_t b = a.bin[i], B = a.B, K = a.K, G = K * B;
  const T u = T(0.5) / a.noise_var[0];
  const T y = a.target[i];
  if (exact) {
    T s2;
    sample_variance(a, i, b, u, lane, &s2);
    const T m = a.pred[i] + a.alpha * a.shift[i];
    const T lp_own = a.log_prior[b];
    T total = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T eta_own = a.eta[k * B + b];
      OnlineLse<T> acc;
      for (int64_t j = lane; j < G; j += kWarp) {
        const int64_t bc = j % B;
        const T lp = a.log_prior[bc];
        if (!competes(bc, b, lp)) continue;
        const T t = bc == b ? y : a.centers[bc];
        acc.add(exact_term<T>(eta_own, a.eta[j], y, t, lp - lp_own, m, s2, u).F);
      }
      const T value = cuda::warp_lse(acc).value();
      if (lane == 0) lse[i * K + k] = value;
      total += value;
    }
    if (lane == 0) loss[i] = total / T(K);
  } else {
    const T p = a.pred[i], shift = a.shift[i], var = a.var[i];
    OnlineLse<T> acc;
    T own = T(0);
    for (int64_t j = lane; j < G; j += kWarp) {
      const int64_t kc = j / B, bc = j - kc * B;
      const T lp = a.log_prior[bc];
      if (!competes(bc, b, lp)) continue;
      const T t = bc == b ? y : a.centers[bc];
      const T z = paper_term<T>(a.eta[kc * B + b], a.eta[j], y, t, lp, p, shift, var, a.alpha, a.beta, u).Z;
      acc.add(z);
      if (bc == b) own += z;
    }
    const T value = cuda::warp_lse(acc).value();
    own = cuda::warp_sum(own);
    if (lane == 0) {
      lse[i] = value;
      loss[i] = value - own / T(K);
    }
  }
}

template <typename T>
__global__ void surrogate_backward_kernel(SurrogateArgs<T> a, bool exact, const T* __restrict__ grad,
                                          const T* __restrict__ lse, T* __restrict__ g_pred,
                                          T* __restrict__ g_shift, T* __restrict__ g_var, T* __restrict__ g_nv) {
  const int lane = threadIdx.x % kWarp;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (i >= a.n) return;  // uniform over the warp
  const int64_t b = a.bin[i], B = a.B, K = a.K, G = K * B;
  const T u = T(0.5) / a.noise_var[0];
  const T y = a.target[i];
  if (exact) {
    T s2;
    const bool capped = sample_variance(a, i, b, u, lane, &s2);
    const T m = a.pred[i] + a.alpha * a.shift[i];
    const T lp_own = a.log_prior[b];
    T gm = T(0), gs2 = T(0), gu = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T eta_own = a.eta[k * B + b];
      const T lse_k = lse[i * K + k];
      for (int64_t j = lane; j < G; j += kWarp) {
        const int64_t bc = j % B;
        const T lp = a.log_prior[bc];
        if (!competes(bc, b, lp)) continue;
        const T t = bc == b ? y : a.centers[bc];
        const ExactTerm<T> e = exact_term<T>(eta_own, a.eta[j], y, t, lp - lp_own, m, s2, u);
        const T p = std::exp(e.F - lse_k);
        gm += p * e.dF_dm;
        gs2 += p * e.dF_ds2;
        gu += p * e.dF_du;
      }
    }
    gm = cuda::warp_sum(gm);
    gs2 = cuda::warp_sum(gs2);
    gu = cuda::warp_sum(gu);
    if (lane == 0) {
      const T scale = grad[i] / T(K);
      gm *= scale;
      gs2 *= scale;
      gu *= scale;
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
    T gp = T(0), gsh = T(0), gv = T(0), gu = T(0);
    T op = T(0), ou = T(0);  // the numerator terms Z[k, b], averaged over k
    for (int64_t j = lane; j < G; j += kWarp) {
      const int64_t kc = j / B, bc = j - kc * B;
      const T lp = a.log_prior[bc];
      if (!competes(bc, b, lp)) continue;
      const T t = bc == b ? y : a.centers[bc];
      const PaperTerm<T> z = paper_term<T>(a.eta[kc * B + b], a.eta[j], y, t, lp, p, shift, var, a.alpha, a.beta, u);
      const T w = std::exp(z.Z - lse_i);
      gp += w * z.dZ_dp;
      gsh += w * z.dZ_dshift;
      gv += w * z.dZ_dvar;
      gu += w * z.dZ_du;
      if (bc == b) {  // its shift and var terms vanish (R1 = R2 = 0)
        op += z.dZ_dp;
        ou += z.dZ_du;
      }
    }
    gp = cuda::warp_sum(gp);
    gsh = cuda::warp_sum(gsh);
    gv = cuda::warp_sum(gv);
    gu = cuda::warp_sum(gu);
    op = cuda::warp_sum(op);
    ou = cuda::warp_sum(ou);
    if (lane == 0) {
      const T g = grad[i];
      g_pred[i] = g * (gp - op / T(K));
      g_shift[i] = g * gsh;
      g_var[i] = g * gv;
      g_nv[i] = g * (gu - ou / T(K)) * (T(-2) * u * u);
    }
  }
}

struct Prepared {
  at::Tensor pred, target, bin, centers, eta, log_prior, shift, var, noise_var;
  int64_t n, K, B;
};

// The CPU kernel's shape and dtype checks. Its value checks (finite own-bin
// prior, var >= 0, positive noise_var) would need a device synchronisation and
// are made for CUDA tensors neither here nor in the Python wrapper, which reads
// only the bin index range and whether pred and var are finite: such input is
// not rejected on CUDA.
Prepared prepare(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
                 const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior,
                 const at::Tensor& shift, const at::Tensor& var, const at::Tensor& noise_var, c10::string_view mode) {
  check_surrogate_inputs(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  return Prepared{pred.contiguous(),      target.contiguous(), bin_index.contiguous(), centers.contiguous(),
                  eta.contiguous(),       log_prior.contiguous(), shift.contiguous(),  var.contiguous(),
                  noise_var.contiguous(), pred.size(0),          eta.size(0),          centers.size(0)};
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

unsigned sample_blocks(int64_t n) { return static_cast<unsigned>(ceil_div(n, kWarpsPerBlock)); }

std::tuple<at::Tensor, at::Tensor> irda_surrogate_cuda(const at::Tensor& pred, const at::Tensor& target,
                                                       const at::Tensor& bin_index, const at::Tensor& centers,
                                                       const at::Tensor& eta, const at::Tensor& log_prior,
                                                       const at::Tensor& shift, const at::Tensor& var, double alpha,
                                                       double beta, const at::Tensor& noise_var,
                                                       c10::string_view mode) {
  const Prepared p = prepare(pred, target, bin_index, centers, eta, log_prior, shift, var, noise_var, mode);
  const bool exact = mode == "exact";
  const int64_t L = exact ? p.K : 1;
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor loss = at::empty({p.n}, pred.options());
  at::Tensor lse = at::empty({p.n, L}, pred.options());
  if (p.n == 0) return {loss, lse};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_cuda", [&] {
    surrogate_forward_kernel<scalar_t><<<sample_blocks(p.n), kWarpsPerBlock * kWarp, 0, stream>>>(
        make_args<scalar_t>(p, alpha, beta), exact, loss.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_surrogate_backward_cuda(
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
  check_same_device(grad_loss, pred, "grad_loss", "pred");
  check_same_device(lse, pred, "lse", "pred");
  const c10::cuda::CUDAGuard guard(pred.device());
  const at::Tensor g = grad_loss.to(pred.scalar_type()).contiguous();
  const at::Tensor lse_c = lse.to(pred.scalar_type()).contiguous();
  at::Tensor g_pred = at::empty({p.n}, pred.options());
  at::Tensor g_shift = at::empty({p.n}, pred.options());
  at::Tensor g_var = at::empty({p.n}, pred.options());
  at::Tensor g_nv = at::empty({p.n}, pred.options());
  if (p.n == 0) return {g_pred, g_shift, g_var, g_nv};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "irda_surrogate_backward_cuda", [&] {
    surrogate_backward_kernel<scalar_t><<<sample_blocks(p.n), kWarpsPerBlock * kWarp, 0, stream>>>(
        make_args<scalar_t>(p, alpha, beta), exact, g.data_ptr<scalar_t>(), lse_c.data_ptr<scalar_t>(),
        g_pred.data_ptr<scalar_t>(), g_shift.data_ptr<scalar_t>(), g_var.data_ptr<scalar_t>(),
        g_nv.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {g_pred, g_shift, g_var, g_nv};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CUDA, m) {
  m.impl("irda_surrogate", &irda::irda_surrogate_cuda);
  m.impl("irda_surrogate_backward", &irda::irda_surrogate_backward_cuda);
}
