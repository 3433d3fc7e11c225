// Operator schemas of irda_ext, defined once. Backends register kernels in
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(irda_ext, CPU, m)) and csrc/cuda/*.cu
// (TORCH_LIBRARY_IMPL(irda_ext, CUDA, m)); fake kernels and autograd are
// attached from Python (irda_ext/_ops.py). The same schemas form the namespace
// irda_ext_emulated: the CUDA kernels run on CPU tensors by the emulated launch
// (csrc/emulated/), a debug backend for tests on machines without a GPU.
#include <torch/library.h>

#ifdef IRDA_PYTHON_MODULE  // set by setup.py; the CMake build for C++ users has no Python
#include <Python.h>
extern "C" {
// `import irda_ext._C` loads this shared library, which runs the static
// registrations below. No pybind11 module: the ops live in torch.ops.irda_ext.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

namespace {

void define_schemas(torch::Library& m) {
  // SPEC 2. Dense per-bin moments of one batch: count[B] (int64), mean[B, D]
  // and scatter[B, D, D] centred on the batch mean of each bin; zeros for
  // empty bins. Accumulated in float32 for half/bfloat16 features.
  m.def("bin_moments(Tensor z, Tensor bin_index, int num_bins) -> (Tensor count, Tensor mean, Tensor scatter)");
  // SPEC 2. Streaming merge of one batch into running statistics, in place.
  // count[B] int64, mean[B, D], cov[B, D, D] (unbiased). momentum=None is
  // Chan's exact pooled merge; otherwise an exponential moving average with
  // that momentum. Only bins present in the batch are read or written.
  m.def("bin_stats_update_(Tensor(a!) count, Tensor(b!) mean, Tensor(c!) cov, Tensor z, Tensor bin_index, float? momentum) -> ()");
  // SPEC 2. The same merge given the dense moments of a batch pooled elsewhere
  // (batch_count[B] int64, batch_mean[B, D], batch_scatter[B, D, D] as
  // bin_moments returns them, in the statistics' dtype): the union of every
  // rank's batch under torch.distributed. Only bins with batch_count > 0 are
  // read or written.
  m.def("merge_bin_moments_(Tensor(a!) count, Tensor(b!) mean, Tensor(c!) cov, Tensor batch_count, Tensor batch_mean, Tensor batch_scatter, float? momentum) -> ()");
  // SPEC 3. mean_s = S @ mean, cov_s[b] = sum_b' S[b, b'] cov[b'], with S
  // banded: S[b, b'] = 0 for |b - b'| > bandwidth (entries outside are ignored).
  m.def("wfds_smooth(Tensor weights, Tensor mean, Tensor cov, int bandwidth) -> (Tensor mean_s, Tensor cov_s)");
  // SPEC 6. Fused surrogate: per-sample loss[n] and the saved log-sum-exp
  // lse[n, K] (mode "exact") or lse[n, 1] (mode "paper").
  m.def("irda_surrogate(Tensor pred, Tensor target, Tensor bin_index, Tensor centers, Tensor eta, Tensor log_prior, Tensor shift, Tensor var, float alpha, float beta, Tensor noise_var, str mode) -> (Tensor loss, Tensor lse)");
  // Backward of irda_surrogate, recomputing the grid from the saved lse.
  // Returns d/dpred[n], d/dshift[n], d/dvar[n] and the per-sample
  // contributions to d/dnoise_var[n] (summed by the caller, deterministically).
  m.def("irda_surrogate_backward(Tensor grad_loss, Tensor pred, Tensor target, Tensor bin_index, Tensor centers, Tensor eta, Tensor log_prior, Tensor shift, Tensor var, float alpha, float beta, Tensor noise_var, str mode, Tensor lse) -> (Tensor grad_pred, Tensor grad_shift, Tensor grad_var, Tensor grad_noise_var)");
}

// Host-only ops: a CPU kernel and no CUDA or emulated twin (.ci/check_cuda_kernels.py asks
// these for a CPU kernel only).
void define_host_schemas(torch::Library& m) {
  // SPEC 5. The epoch-end k-means, which runs on the host in float64: Lloyd's k-means from
  // init[K, D] (float64) on the rows of x[N, D] (float32 or float64, read as float64), at
  // most max_iter iterations, stopping when no label changes or the centres move (squared,
  // summed) at most tol (relative: tol times the features' mean variance, scikit-learn's
  // convention); labels[N] (int64) are those of the final centres[K, D].
  m.def("kmeans(Tensor x, Tensor init, int max_iter, float tol, bool relative=False) -> (Tensor labels, Tensor centres)");
  // SPEC 6. irda_surrogate's loss reduced, "mean" (an empty batch gives 0) or "sum":
  // irda_surrogate then loss.mean() / loss.sum(), the same bits, on every device (a
  // composite, csrc/autograd.cpp); on the CPU under autograd one node where those take two
  // (irda_ext.irda_surrogate without weights). Defined here, not in the emulated twin: the
  // emulated kernels see its parts.
  m.def("irda_surrogate_reduced(Tensor pred, Tensor target, Tensor bin_index, Tensor centers, Tensor eta, Tensor log_prior, Tensor shift, Tensor var, float alpha, float beta, Tensor noise_var, str mode, str reduction) -> Tensor");
  // The rows of features [N, D] (float32 or float64) and their bins [N] (int64) in canonical
  // order (csrc/cpu/canonical_order.cpp): by bin, then by the key sum_d features[i, d] w_d
  // (float64, w = 1 .. 2 evenly spaced), then by position, whatever order they came in.
  m.def("canonical_order(Tensor features, Tensor bins) -> (Tensor features_sorted, Tensor bins_sorted)");
  // SPEC 2. bin_stats_update_ in two halves, so that the covariance part of many batches
  // is applied in one pass over the blocks (BinStats defers it on the CPU): bin_stats_plan_
  // merges a batch into count and mean now and returns the covariance update as a plan,
  // S = min(n, B): bins[S] int64 (the present bins ascending, then -1), vec_offset[S + 1]
  // int64, vecs[n + S, D], weights[n + S], keep[S] (the statistics' dtype); bin_stats_apply_
  // applies plans in list order, folded into one update per bin: one bin_stats_update_ per
  // batch to rounding.
  m.def("bin_stats_plan_(Tensor(a!) count, Tensor(b!) mean, Tensor z, Tensor bin_index, float? momentum) -> (Tensor bins, Tensor vec_offset, Tensor vecs, Tensor weights, Tensor keep)");
  m.def("bin_stats_apply_(Tensor(a!) cov, Tensor[] bins, Tensor[] vec_offset, Tensor[] vecs, Tensor[] weights, Tensor[] keep) -> ()");
  // BinStats.update under the "epoch" estimator: bin_stats_plan_(epoch_count, epoch_mean, z,
  // bin_index, None) and the running count += the batch's counts; first [B] (bool) flags the
  // bins with samples in the batch and no finished epoch (count == epoch_count before it),
  // num_first (0-dim int64) counts them.
  m.def("bin_stats_epoch_plan_(Tensor(a!) count, Tensor(b!) epoch_count, Tensor(c!) epoch_mean, Tensor z, Tensor bin_index) -> (Tensor bins, Tensor vec_offset, Tensor vecs, Tensor weights, Tensor keep, Tensor first, Tensor num_first)");
  // FeatureReservoir.add on the host (csrc/cpu/reservoir.cpp): the rows of z and their bins
  // written into features [capacity + 1, D] and bins [capacity + 1] by Vitter's algorithm R
  // (slots drawn with n float64 uniforms from the default generator, the spare last row for
  // rows not kept), seen (0-dim int64) += n.
  m.def("reservoir_add_(Tensor(a!) features, Tensor(b!) bins, Tensor(c!) seen, Tensor z, Tensor bin_index) -> ()");
  // wfds_smooth for IRDALoss's fused step on the host (csrc/cpu/wfds_smooth.cpp): mean_s as
  // wfds_smooth's, each smoothed covariance (symmetric: only the upper triangles of cov are
  // read) as its packed upper triangle [B, D (D + 1) / 2] (irda_head_loss's cov_upper, the
  // entries of wfds_smooth's cov_s), its diagonal [B, D] and its sum of squares [B] (float64).
  m.def("wfds_smooth_upper(Tensor weights, Tensor mean, Tensor cov, int bandwidth) -> (Tensor mean_s, Tensor cov_upper, Tensor diag, Tensor sum_sq)");
  // SPEC 1. Bins.index on the host: index (int64, y's shape) = clamp(floor((y - low) / width),
  // 0, num_bins - 1) in float64, and bad (0-dim int64): how many targets are NaN or, unless
  // clamp, outside [low, high] (irda_ext/binning.py raises, naming one).
  m.def("bin_index(Tensor y, float low, float high, float width, int num_bins, bool clamp) -> (Tensor index, Tensor bad)");
  // The confusion of an epoch's predictions (paper eq. 6) on the host: counts [B * B] (float64)
  // += 1 at true_bin[i] * B + (pred[i]'s bin, clamped as bin_index(..., clamp=True)), unless
  // some prediction is NaN: then counts stay as they were and bad (0-dim int64) counts the
  // NaNs (irda_ext/confusion.py raises, naming one).
  m.def("confusion_add_(Tensor(a!) counts, Tensor true_bin, Tensor pred, float low, float high, float width, int num_bins) -> Tensor bad");
  // SPEC 6. irda_surrogate when a gradient will follow (its autograd on the CPU,
  // csrc/autograd.cpp): loss and lse as irda_surrogate's, the same bits, and per-sample
  // partials[n, 5] (exact mode: the softmax-weighted sums of the terms' derivatives in m,
  // s^2 and u, then s^2 and whether it was capped; paper mode: d loss_i / d (pred, shift,
  // var, u), then 0), each term evaluated once;
  // irda_surrogate_partials_backward scales them by grad_loss into
  // irda_surrogate_backward's four outputs, to its bits.
  m.def("irda_surrogate_with_partials(Tensor pred, Tensor target, Tensor bin_index, Tensor centers, Tensor eta, Tensor log_prior, Tensor shift, Tensor var, float alpha, float beta, Tensor noise_var, str mode) -> (Tensor loss, Tensor lse, Tensor partials)");
  m.def("irda_surrogate_partials_backward(Tensor grad_loss, Tensor partials, float alpha, float beta, Tensor noise_var, int num_clusters, str mode) -> (Tensor grad_pred, Tensor grad_shift, Tensor grad_var, Tensor grad_noise_var)");
  // SPEC 3-6. IRDALoss's loss of a linear head (weight [1, D], bias [1]) on a batch, in one op
  // (its training step on the CPU; csrc/cpu/irda_head.cpp): the per-bin shift a_b = offset_b . w
  // (+ bias in mode "paper") and variance q_b = keep_b w^T cov_b w + iso_b |w|^2 (statistics'
  // dtype: offset [B, D]; cov_upper [B, D (D + 1) / 2], the upper triangle of each symmetric
  // cov_b packed row by row (irda_ext.loss.upper_triangles); keep, iso [B]), the
  // surrogate of pred with shift a_{b_i} (paper: |a_{b_i} - y_i|) and var max(q_{b_i}, 0),
  // reduced ("mean", "sum", "none") and scaled by 2 sigma^2, sigma^2 = exp(2 log_sigma) (the
  // scale a constant). Also returns, for the backward, a [B] (pred's dtype), q [B] and
  // cov_w = cov w [B, D] (the statistics' dtype; q and cov_w of the bins with samples in the
  // batch, zeros elsewhere: nothing reads those) and the partials.
  m.def("irda_head_loss(Tensor pred, Tensor target, Tensor bin_index, Tensor weight, Tensor bias, Tensor offset, Tensor cov_upper, Tensor keep, Tensor iso, Tensor centers, Tensor eta, Tensor log_prior, float alpha, float beta, Tensor log_sigma, str mode, str reduction) -> (Tensor loss, Tensor bin_shift, Tensor bin_var, Tensor cov_w, Tensor partials)");
  m.def("irda_head_loss_backward(Tensor grad, Tensor target, Tensor bin_index, Tensor weight, Tensor bias, Tensor offset, Tensor keep, Tensor iso, Tensor bin_shift, Tensor bin_var, Tensor cov_w, Tensor partials, float alpha, float beta, Tensor log_sigma, int num_clusters, str mode, str reduction) -> (Tensor grad_pred, Tensor grad_weight, Tensor grad_bias, Tensor grad_log_sigma)");
}

}  // namespace

TORCH_LIBRARY(irda_ext, m) {
  define_schemas(m);
  define_host_schemas(m);
}

TORCH_LIBRARY(irda_ext_emulated, m) { define_schemas(m); }
