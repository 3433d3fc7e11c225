// FeatureReservoir.add on the host in one op (irda_ext/clusters.py): Vitter's algorithm R
// over the rows of a batch, as the module's tensor path computes it (which a compiled step
// or a GPU runs). The tensor path took five small ops a training step (a uniform draw, a
// host read of `seen`, two slice copies, an increment): ~0.1 ms of an abalone step, where
// each op costs several microseconds of dispatch and the copies land in cold memory.
//
// For row i of the batch at position p = seen + i: slot p while p < capacity, else
// floor(u_i (p + 1)) with u_i uniform in [0, 1) (float64, the product in float64 as the
// tensor path's), kept when below capacity and written to the spare last row otherwise.
// The uniforms are drawn on every call from the default generator, as the tensor path does,
// so the random stream after a call is the same whichever path ran. Rows are written in
// batch order: of two rows drawing one slot the later stays (index_copy_'s order on the CPU).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>

#include "../checks.h"

namespace irda {
namespace {

void reservoir_add_cpu(at::Tensor& features, at::Tensor& bins, at::Tensor& seen, const at::Tensor& z,
                       const at::Tensor& bin_index) {
  TORCH_CHECK_VALUE(features.dim() == 2 && features.size(0) >= 2 && features.is_contiguous(),
                    "features must be a contiguous [capacity + 1, D] buffer, got ", shape_str(features));
  TORCH_CHECK_TYPE(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
                   "features must be float32 or float64, got ", features.scalar_type());
  const int64_t rows = features.size(0), capacity = rows - 1, D = features.size(1);
  TORCH_CHECK_VALUE(bins.dim() == 1 && bins.size(0) == rows && bins.is_contiguous(),
                    "bins must be a contiguous [", rows, "] buffer (one bin per row of features), got ",
                    shape_str(bins));
  TORCH_CHECK_TYPE(bins.scalar_type() == at::kLong, "bins must be int64, got ", bins.scalar_type());
  TORCH_CHECK_VALUE(seen.dim() == 0, "seen must be a 0-dim tensor, got shape ", shape_str(seen));
  TORCH_CHECK_TYPE(seen.scalar_type() == at::kLong, "seen must be int64, got ", seen.scalar_type());
  TORCH_CHECK_VALUE(z.dim() == 2 && z.size(1) == D, "z must have shape [n, ", D, "], got ", shape_str(z));
  check_float(z, "z");
  const int64_t n = z.size(0);
  TORCH_CHECK_VALUE(bin_index.dim() == 1 && bin_index.size(0) == n, "bin_index must have shape [", n,
                    "] (one bin per row of z), got ", shape_str(bin_index));
  TORCH_CHECK_TYPE(!at::isFloatingType(bin_index.scalar_type()) && !at::isComplexType(bin_index.scalar_type()),
                   "bin_index must be an integer tensor, got ", bin_index.scalar_type());
  const at::Tensor uniform = at::rand({n}, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor zc = z.to(features.scalar_type()).contiguous();
  const at::Tensor bc = bin_index.to(at::kLong).contiguous();
  int64_t* count = seen.data_ptr<int64_t>();
  const int64_t start = *count;
  TORCH_CHECK_VALUE(start >= 0, "seen must not be negative, got ", start);
  const double* u = uniform.data_ptr<double>();
  const int64_t* b = bc.data_ptr<int64_t>();
  int64_t* out_bins = bins.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "reservoir_add_cpu", [&] {
    const scalar_t* src = zc.data_ptr<scalar_t>();
    scalar_t* dst = features.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t position = start + i;
      int64_t slot = position < capacity ? position
                                         : static_cast<int64_t>(std::floor(u[i] * static_cast<double>(position + 1)));
      if (slot >= capacity) slot = capacity;  // not kept: the spare row
      std::memcpy(dst + slot * D, src + i * D, sizeof(scalar_t) * D);
      out_bins[slot] = b[i];
    }
  });
  *count = start + n;
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) { m.impl("reservoir_add_", &irda::reservoir_add_cpu); }
