// The IRDA loss of a linear head on a batch, in one op (host-only; IRDALoss.head_loss's
// training step on the CPU, SPEC 3-6 and the Balanced-MSE scaling). Eager PyTorch spent
// ~40 small autograd ops on what surrounds the fused surrogate (per-bin shift and variance
// of the head, gathers, clamp, casts, sigma^2, the reduction and the scaling): ~0.8 ms of
// an abalone training step whose MSE twin takes ~2 ms (bench/results/step_cost.md). Here
// they are a few loops and three matrix-vector products around irda_surrogate_with_partials.
//
// Forward, with w = weight [1, D] and w0 = bias [1] (the head g(z) = w z + w0) read in the
// statistics' dtype:
//   a_b   = offset_b . w  (+ w0 in mode "paper")   offset [B, D]: mu_s - mu (exact) or mu_s (paper)
//   Sw_b  = cov_b w                                 cov [B, D, D]: the smoothed Sigma_s (symmetric)
//   q_b   = keep_b (w . Sw_b) + iso_b ||w||^2       keep = 1 - v, iso = v lambda (SPEC 4)
//   shift_i = a_{b_i} (exact) or |a_{b_i} - y_i| (paper, eq. 20), var_i = max(q_{b_i}, 0)
//   sigma^2 = exp(2 log_sigma)
//   loss  = reduce_i(irda_surrogate_i(pred, y, ..., shift, var, ..., sigma^2)) * 2 sigma^2,
// the last factor a constant (Balanced MSE's scaling: the gradient in pred has MSE's scale).
// It returns a [B] (pred's dtype), q [B], Sw [B, D] (the statistics') and the surrogate's partials [n, 5],
// which irda_head_loss_backward turns into the gradients in pred, w, w0 and log_sigma in
// O(n + B D): the chain rule of the expression above, the clamp passing where q_b >= 0
// and |.|'s derivative sign(a_b - y_i) (0 at 0), as autograd through the eager ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../surrogate_calls.h"

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

// shift_i and var_i from the per-bin a (pred's dtype T) and q (the statistics' dtype S: the
// clamp comes before the cast, as q[bin_index].clamp_min(0).to(dtype) did), checking every
// bin index before it is read.
template <typename T, typename S>
void gather_per_sample(const T* a, const S* q, const T* y, const int64_t* bins, int64_t n, int64_t B, bool paper,
                       T* shift, T* var) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = bins[i];
    TORCH_CHECK_VALUE(b >= 0 && b < B, "bin_index must lie in [0, ", B, "), got ", b, " at sample ", i);
    shift[i] = paper ? std::abs(a[b] - y[i]) : a[b];
    var[i] = static_cast<T>(q[b] < S(0) ? S(0) : q[b]);  // clamp_min(0); NaN passes (the surrogate names it)
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_head_loss_cpu(
    const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& offset, const at::Tensor& cov, const at::Tensor& keep,
    const at::Tensor& iso, const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, double alpha,
    double beta, const at::Tensor& log_sigma, c10::string_view mode, c10::string_view reduction) {
  const bool reduce = check_reduction(reduction);
  const int64_t B = check_head_inputs(pred, target, bin_index, weight, bias, offset, keep, iso, log_sigma, mode);
  const int64_t D = offset.size(1), n = pred.size(0);
  TORCH_CHECK_VALUE(cov.dim() == 3 && cov.size(0) == B && cov.size(1) == D && cov.size(2) == D, "cov must have shape [",
                    B, ", ", D, ", ", D, "], got ", shape_str(cov));
  check_same_dtype(cov, offset, "cov", "offset");
  const bool paper = mode == "paper";
  const auto stats_dtype = offset.scalar_type(), dtype = pred.scalar_type();

  // the per-bin mean shift (or smoothed prediction) and variance of the head
  const at::Tensor w = weight.reshape({D}).to(stats_dtype).contiguous();
  at::Tensor a = at::mv(offset, w);
  if (paper) a.add_(bias.reshape({}).to(stats_dtype));
  const at::Tensor cov_w = at::mv(cov.reshape({B * D, D}), w).view({B, D});
  const at::Tensor q = keep * at::mv(cov_w, w) + iso * at::dot(w, w);
  const at::Tensor a_n = a.to(dtype).contiguous();

  const at::Tensor y = target.contiguous(), bins = bin_index.contiguous();
  at::Tensor shift = at::empty({n}, pred.options()), var = at::empty({n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "irda_head_loss_gather", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(stats_dtype, "irda_head_loss_gather", [&] {
      gather_per_sample(a_n.data_ptr<T>(), q.data_ptr<scalar_t>(), y.data_ptr<T>(), bins.data_ptr<int64_t>(), n, B,
                        paper, shift.data_ptr<T>(), var.data_ptr<T>());
    });
  });
  const double nv = noise_variance(log_sigma);
  const at::Tensor noise_var = at::scalar_tensor(nv, pred.options());  // rounded to pred's dtype
  auto [loss, lse, partials] =
      call_surrogate_with_partials(pred, y, bins, centers, eta, log_prior, shift, var, alpha, beta, noise_var, mode);
  at::Tensor out = reduce ? loss.sum() : loss;
  if (reduction == "mean") out = out / std::max<int64_t>(n, 1);
  out = out * (noise_var * 2);
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
  TORCH_CHECK_VALUE(partials.dim() == 2 && partials.size(0) == n, "partials must have ", n, " rows, got shape ",
                    shape_str(partials));
  const bool paper = mode == "paper";
  const double nv = noise_variance(log_sigma);
  const at::Tensor noise_var = at::scalar_tensor(nv, target.options());

  // d loss / d loss_i: the scaling, then the reduction's, as autograd through `out` above
  at::Tensor g_loss = grad.to(dtype).reshape(reduce ? at::IntArrayRef{} : at::IntArrayRef{n}) * (noise_var * 2);
  if (reduction == "mean") g_loss = g_loss / std::max<int64_t>(n, 1);
  if (reduce) g_loss = g_loss.expand({n});
  auto [g_pred, g_shift, g_var, g_nv] =
      call_surrogate_partials_backward(g_loss.contiguous(), partials, alpha, beta, noise_var, num_clusters, mode);

  // back through the gathers, in sample order (deterministic), into the per-bin a and q
  std::vector<double> g_a(B, 0.0), g_q(B, 0.0);
  const at::Tensor y = target.contiguous(), bins = bin_index.contiguous();
  const at::Tensor a_n = bin_shift.contiguous(), q_s = bin_var.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "irda_head_loss_scatter", [&] {
    using T = scalar_t;
    const T *a = a_n.data_ptr<T>(), *yp = y.data_ptr<T>();
    const T *gs = g_shift.data_ptr<T>(), *gv = g_var.data_ptr<T>();
    const int64_t* bp = bins.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(stats_dtype, "irda_head_loss_scatter", [&] {
      const scalar_t* q = q_s.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = bp[i];
        TORCH_CHECK_VALUE(b >= 0 && b < B, "bin_index must lie in [0, ", B, "), got ", b, " at sample ", i);
        T ds = gs[i];
        if (paper) {
          const T d = a[b] - yp[i];
          ds = d > T(0) ? ds : (d < T(0) ? -ds : T(0));  // abs's derivative, 0 at 0
        }
        g_a[b] += static_cast<double>(ds);
        if (q[b] >= scalar_t(0)) g_q[b] += static_cast<double>(gv[i]);  // clamp_min(0)'s: where q >= 0
      }
    });
  });
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // copies: the vectors die with this call
  const at::Tensor ga = at::from_blob(g_a.data(), {B}, f64).to(stats_dtype, /*non_blocking=*/false, /*copy=*/true);
  const at::Tensor gq = at::from_blob(g_q.data(), {B}, f64).to(stats_dtype, /*non_blocking=*/false, /*copy=*/true);

  // into w: a_b = offset_b . w, q_b = keep_b w.(cov_b w) + iso_b w.w (cov_b symmetric)
  const at::Tensor w = weight.reshape({D}).to(stats_dtype);
  at::Tensor g_w = at::mv(offset.t(), ga);
  g_w.add_(at::mv(cov_w.t(), keep * gq), 2);
  g_w.add_(w * (at::dot(iso, gq) * 2));
  at::Tensor g_bias = paper ? ga.sum() : at::zeros({}, ga.options());
  const at::Tensor g_log_sigma = (g_nv.sum().to(at::kDouble) * (2.0 * nv)).to(log_sigma.scalar_type());
  return {g_pred, g_w.to(weight.scalar_type()).reshape(weight.sizes()),
          g_bias.to(bias.scalar_type()).reshape(bias.sizes()), g_log_sigma.reshape(log_sigma.sizes())};
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) {
  m.impl("irda_head_loss", &irda::irda_head_loss_cpu);
  m.impl("irda_head_loss_backward", &irda::irda_head_loss_backward_cpu);
}
