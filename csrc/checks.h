// Input checks shared by the CPU and CUDA kernels. Shape and dtype problems
// raise ValueError / TypeError in Python (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE)
// with what was expected and what came. Value checks (bin index range, NaN) read
// the data: the CPU kernels make them inline, the CUDA kernels on the device
// (IRDA_KERNEL_CHECK, csrc/kernels/launch.h), never with a host synchronisation.
#pragma once
// Tensor.h, not ATen.h: these headers are parsed by nvcc for every .cu file too.
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace irda {

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
                   t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have shape ", layout, ", got ", shape_str(t));
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (",
                   ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (", ref.device(),
                    "), got ", t.device());
}

inline void check_index(const at::Tensor& bin_index, int64_t n) {
  TORCH_CHECK_TYPE(bin_index.scalar_type() == at::kLong, "bin_index must be int64, got ", bin_index.scalar_type());
  TORCH_CHECK_VALUE(bin_index.dim() == 1 && bin_index.size(0) == n, "bin_index must have shape [", n,
                    "] (one bin per sample), got ", shape_str(bin_index));
}

// The momentum of a merge: None is Chan's exact merge, passed on as -1 (the
// convention of merge_coefficients); otherwise it must lie in [0, 1).
inline double checked_momentum(std::optional<double> momentum) {
  if (!momentum.has_value()) return -1.0;
  TORCH_CHECK_VALUE(*momentum >= 0.0 && *momentum < 1.0, "momentum must be in [0, 1), got ", *momentum);
  return *momentum;
}

// Statistics without their covariance: count [B] int64, mean [B, D] float32 or float64.
inline void check_count_mean(const at::Tensor& count, const at::Tensor& mean) {
  check_dim(mean, 2, "mean", "[B, D]");
  const int64_t B = mean.size(0);
  check_float(mean, "mean");
  TORCH_CHECK_TYPE(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble,
                   "statistics must be float32 or float64, got ", mean.scalar_type());
  TORCH_CHECK_TYPE(count.scalar_type() == at::kLong, "count must be int64, got ", count.scalar_type());
  TORCH_CHECK_VALUE(count.dim() == 1 && count.size(0) == B, "count must have shape [", B, "], got ",
                    shape_str(count));
  check_same_device(count, mean, "count", "mean");
}

// Statistics: count [B] int64, mean [B, D], cov [B, D, D] of one float dtype.
inline void check_stats(const at::Tensor& count, const at::Tensor& mean, const at::Tensor& cov) {
  check_count_mean(count, mean);
  const int64_t B = mean.size(0), D = mean.size(1);
  TORCH_CHECK_VALUE(cov.dim() == 3 && cov.size(0) == B && cov.size(1) == D && cov.size(2) == D,
                    "cov must have shape [", B, ", ", D, ", ", D, "], got ", shape_str(cov));
  check_same_dtype(cov, mean, "cov", "mean");
  check_same_device(cov, mean, "cov", "mean");
}

// Dense batch moments merged into statistics (count, mean, cov) checked with
// check_stats: batch_count [B] int64, batch_mean [B, D], batch_scatter [B, D, D]
// of the statistics' dtype and device.
inline void check_batch_moments(const at::Tensor& batch_count, const at::Tensor& batch_mean,
                                const at::Tensor& batch_scatter, const at::Tensor& mean) {
  const int64_t B = mean.size(0), D = mean.size(1);
  TORCH_CHECK_TYPE(batch_count.scalar_type() == at::kLong, "batch_count must be int64, got ",
                   batch_count.scalar_type());
  TORCH_CHECK_VALUE(batch_count.dim() == 1 && batch_count.size(0) == B, "batch_count must have shape [", B,
                    "], got ", shape_str(batch_count));
  TORCH_CHECK_VALUE(batch_mean.dim() == 2 && batch_mean.size(0) == B && batch_mean.size(1) == D,
                    "batch_mean must have shape [", B, ", ", D, "] like mean, got ", shape_str(batch_mean));
  TORCH_CHECK_VALUE(batch_scatter.dim() == 3 && batch_scatter.size(0) == B && batch_scatter.size(1) == D &&
                        batch_scatter.size(2) == D,
                    "batch_scatter must have shape [", B, ", ", D, ", ", D, "], got ", shape_str(batch_scatter));
  check_same_dtype(batch_mean, mean, "batch_mean", "mean");
  check_same_dtype(batch_scatter, mean, "batch_scatter", "mean");
  check_same_device(batch_count, mean, "batch_count", "mean");
  check_same_device(batch_mean, mean, "batch_mean", "mean");
  check_same_device(batch_scatter, mean, "batch_scatter", "mean");
}

inline void check_features(const at::Tensor& z, const at::Tensor& bin_index, int64_t D) {
  check_dim(z, 2, "z", "[n, D]");
  check_float(z, "z");
  TORCH_CHECK_VALUE(D < 0 || z.size(1) == D, "z must have shape [n, ", D, "], got ", shape_str(z));
  check_index(bin_index, z.size(0));
  check_same_device(bin_index, z, "bin_index", "z");
}

// W-FDS smoothing: weights [B, B], mean [B, D], cov [B, D, D] of one dtype and device.
inline void check_smooth_inputs(const at::Tensor& weights, const at::Tensor& mean, const at::Tensor& cov,
                                int64_t bandwidth) {
  check_dim(mean, 2, "mean", "[B, D]");
  check_float(mean, "mean");
  TORCH_CHECK_TYPE(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble,
                   "wfds_smooth takes float32 or float64 statistics (weights, mean, cov), got ", mean.scalar_type());
  const int64_t B = mean.size(0), D = mean.size(1);
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == B && weights.size(1) == B, "weights must have shape [",
                    B, ", ", B, "], got ", shape_str(weights));
  TORCH_CHECK_VALUE(cov.dim() == 3 && cov.size(0) == B && cov.size(1) == D && cov.size(2) == D,
                    "cov must have shape [", B, ", ", D, ", ", D, "], got ", shape_str(cov));
  check_same_dtype(weights, mean, "weights", "mean");
  check_same_dtype(cov, mean, "cov", "mean");
  check_same_device(weights, mean, "weights", "mean");
  check_same_device(cov, mean, "cov", "mean");
  TORCH_CHECK_VALUE(bandwidth >= 0, "bandwidth must be non-negative, got ", bandwidth);
}

inline void check_surrogate_inputs(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
                                   const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior,
                                   const at::Tensor& shift, const at::Tensor& var, const at::Tensor& noise_var,
                                   c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "exact" || mode == "paper", "mode must be \"exact\" or \"paper\", got \"",
                    std::string(mode), "\"");
  check_dim(pred, 1, "pred", "[n]");
  check_float(pred, "pred");
  TORCH_CHECK_TYPE(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
                   "irda_surrogate takes float32 or float64 inputs (pred and the rest; cast half or bfloat16 "
                   "predictions to float32), got ", pred.scalar_type());
  const int64_t n = pred.size(0);
  check_dim(centers, 1, "centers", "[B]");
  const int64_t B = centers.size(0);
  TORCH_CHECK_VALUE(B >= 1, "there must be at least one bin, got centers of shape ", shape_str(centers));
  check_dim(eta, 2, "eta", "[K, B]");
  TORCH_CHECK_VALUE(eta.size(1) == B && eta.size(0) >= 1, "eta must have shape [K, ", B, "] with K >= 1, got ",
                    shape_str(eta));
  TORCH_CHECK_VALUE(log_prior.dim() == 1 && log_prior.size(0) == B, "log_prior must have shape [", B, "], got ",
                    shape_str(log_prior));
  const at::Tensor* per_sample[] = {&target, &shift, &var};
  const char* names[] = {"target", "shift", "var"};
  for (int j = 0; j < 3; ++j) {
    TORCH_CHECK_VALUE(per_sample[j]->dim() == 1 && per_sample[j]->size(0) == n, names[j], " must have shape [", n,
                      "] like pred, got ", shape_str(*per_sample[j]));
    check_same_dtype(*per_sample[j], pred, names[j], "pred");
    check_same_device(*per_sample[j], pred, names[j], "pred");
  }
  check_same_dtype(centers, pred, "centers", "pred");
  check_same_dtype(eta, pred, "eta", "pred");
  check_same_dtype(log_prior, pred, "log_prior", "pred");
  check_same_dtype(noise_var, pred, "noise_var", "pred");
  TORCH_CHECK_VALUE(noise_var.numel() == 1 && noise_var.dim() <= 1, "noise_var must be a scalar tensor, got shape ",
                    shape_str(noise_var));
  check_same_device(centers, pred, "centers", "pred");
  check_same_device(eta, pred, "eta", "pred");
  check_same_device(log_prior, pred, "log_prior", "pred");
  check_same_device(noise_var, pred, "noise_var", "pred");
  check_index(bin_index, n);
  check_same_device(bin_index, pred, "bin_index", "pred");
}

}  // namespace irda
