// The CUDA kernels of csrc/kernels/ run on CPU tensors by the emulated launch
// (launch.h), registered as the CPU kernels of the debug namespace irda_ext_emulated
// (same schemas as irda_ext). Tests send the irda_ext ops there to run the CUDA code
// paths without a GPU (python_tests/testing.py, device "emulated"); nothing else
// should call them: they are slow.
#include <torch/library.h>

#include <mutex>
#include <sstream>

#include "../kernels/bin_stats.h"
#include "../kernels/irda_surrogate.h"
#include "../kernels/merge_bin_moments.h"
#include "../kernels/wfds_smooth.h"
#include "launch.h"

namespace irda {
namespace emulated {

namespace {
std::mutex log_mutex;
std::vector<std::string>& launches() {
  static std::vector<std::string> log;
  return log;
}
}  // namespace

void record_launch(const char* name, Dim3 grid, Dim3 block) {
  std::ostringstream line;
  line << name << " grid=(" << grid.x << "," << grid.y << "," << grid.z << ") block=(" << block.x << "," << block.y
       << "," << block.z << ")";
  const std::lock_guard<std::mutex> lock(log_mutex);
  if (launches().size() < 100000) launches().push_back(line.str());
}

std::vector<std::string> take_launch_log(bool clear) {
  const std::lock_guard<std::mutex> lock(log_mutex);
  std::vector<std::string> out = launches();
  if (clear) launches().clear();
  return out;
}

namespace {

// A block that breaks the rules of shared memory on purpose, to test the shadow map:
// case 0 every thread writes one cell; 1 a thread reads its neighbour's cell with no
// barrier after the write; 2 a thread reads a cell nobody wrote; 3 the correct code,
// with the barrier.
struct SharedMemoryCases {
  static constexpr int kThreads = 64;
  struct Shared {
    float cell[kThreads];
  };
  int64_t which;

  template <class Blk>
  void operator()(Blk& blk) const {
    Shared& sm = blk.shared();
    if (which == 2) {
      blk.threads([&](const Thread& t) { (void)blk.load(t, sm.cell[t.x]); });
      return;
    }
    blk.threads([&](const Thread& t) { blk.store(t, sm.cell[which == 0 ? 0 : t.x], float(t.x)); });
    if (which == 3) blk.sync();
    blk.threads([&](const Thread& t) { (void)blk.load(t, sm.cell[(t.x + 1) % kThreads]); });
  }
};

void shadow_map_selftest(int64_t which) {
  Exec{}.launch("shared_memory_case", Dim3{2}, Dim3{SharedMemoryCases::kThreads}, SharedMemoryCases{which});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_moments(const at::Tensor& z, const at::Tensor& bin_index,
                                                           int64_t num_bins) {
  return bin_stats::bin_moments(Exec{}, z, bin_index, num_bins);
}

void bin_stats_update(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& z,
                      const at::Tensor& bin_index, std::optional<double> momentum) {
  bin_stats::bin_stats_update(Exec{}, count, mean, cov, z, bin_index, momentum);
}

void merge_bin_moments(at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& batch_count,
                       const at::Tensor& batch_mean, const at::Tensor& batch_scatter, std::optional<double> momentum) {
  merge_moments::merge_bin_moments(Exec{}, count, mean, cov, batch_count, batch_mean, batch_scatter, momentum);
}

std::tuple<at::Tensor, at::Tensor> wfds_smooth(const at::Tensor& weights, const at::Tensor& mean, const at::Tensor& cov,
                                               int64_t bandwidth) {
  return wfds::wfds_smooth(Exec{}, weights, mean, cov, bandwidth);
}

std::tuple<at::Tensor, at::Tensor> irda_surrogate(const at::Tensor& pred, const at::Tensor& target,
                                                  const at::Tensor& bin_index, const at::Tensor& centers,
                                                  const at::Tensor& eta, const at::Tensor& log_prior,
                                                  const at::Tensor& shift, const at::Tensor& var, double alpha,
                                                  double beta, const at::Tensor& noise_var, c10::string_view mode) {
  return surrogate::forward(Exec{}, pred, target, bin_index, centers, eta, log_prior, shift, var, alpha, beta,
                            noise_var, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> irda_surrogate_backward(
    const at::Tensor& grad_loss, const at::Tensor& pred, const at::Tensor& target, const at::Tensor& bin_index,
    const at::Tensor& centers, const at::Tensor& eta, const at::Tensor& log_prior, const at::Tensor& shift,
    const at::Tensor& var, double alpha, double beta, const at::Tensor& noise_var, c10::string_view mode,
    const at::Tensor& lse) {
  return surrogate::backward(Exec{}, grad_loss, pred, target, bin_index, centers, eta, log_prior, shift, var, alpha,
                             beta, noise_var, mode, lse);
}

}  // namespace
}  // namespace emulated
}  // namespace irda

TORCH_LIBRARY_FRAGMENT(irda_ext_emulated, m) {
  // The launches made since the last clear, as "name grid=(x,y,z) block=(x,y,z)".
  m.def("launch_log(bool clear=False) -> str[]", &irda::emulated::take_launch_log);
  // The shadow map's own test: raises for the racy cases 0-2, passes for case 3.
  m.def("shadow_map_selftest(int which) -> ()", &irda::emulated::shadow_map_selftest);
}

TORCH_LIBRARY_IMPL(irda_ext_emulated, CPU, m) {
  m.impl("bin_moments", &irda::emulated::bin_moments);
  m.impl("bin_stats_update_", &irda::emulated::bin_stats_update);
  m.impl("merge_bin_moments_", &irda::emulated::merge_bin_moments);
  m.impl("wfds_smooth", &irda::emulated::wfds_smooth);
  m.impl("irda_surrogate", &irda::emulated::irda_surrogate);
  m.impl("irda_surrogate_backward", &irda::emulated::irda_surrogate_backward);
}
