// Lloyd's k-means with Hamerly's bounds (SPEC 5; G. Hamerly, "Making k-means even faster",
// SDM 2010), on the host in float64.
//
// The iterates are Lloyd's, as irda_ext.reference.kmeans_lloyd computes them: each point
// takes its nearest centre (argmin_k ||c_k||^2 - 2 x.c_k, the first on a tie), each centre
// the mean of its points (an empty cluster keeps its centre), until no label changes or
// the centres move (squared, summed) at most `tol` (with `relative`, tol times the features'
// mean variance, scikit-learn's convention, computed in the op's first pass). What Hamerly adds is which distances
// are computed: every point keeps an upper bound u on the distance to its centre and a
// lower bound l on the distance to any other; when the centres move by delta_k, u grows
// by its centre's delta and l shrinks by the largest other delta. While u stays below
// max(l, half the distance from its centre to the nearest other centre), by a margin
// well above the rounding of the distances, no other centre can be nearer and the point
// keeps its label without a distance computed. Warm-started epoch ends of an abalone run
// took 60 Lloyd iterations, each a pass over all N x K distances and all N rows in
// torch (30-50 ms); here the later iterations touch the few points near a boundary.
//
// The centre sums are kept incrementally (a point that moves is subtracted from its old
// cluster and added to its new one), so the centres agree with Lloyd's to rounding, and
// the labels wherever no two centres are equally near to within rounding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "grain.h"
#include "simd.h"

namespace irda {
namespace {

// x . y in float64 over 8 lanes (lane l sums the products of the elements l mod 8, each a
// multiply then an add), reduced as ((0+1)+(2+3))+((4+5)+(6+7)), then the tail. A plain
// array the vectoriser maps to one AVX-512, two AVX2 or four SSE2 registers per clone: a
// 64-byte vector type here made the AVX2 and SSE2 clones move the accumulators through
// the stack every step (k-means about 7x slower on an AVX2 machine than on an AVX-512 one).
// float32 features are widened to float64 as they are read (exactly), so the result is the
// one of their float64 copy, without the copy.
template <typename A, typename B>
__attribute__((always_inline)) inline double dot8(const A* a, const B* b, int64_t D) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(a[d + l]) * static_cast<double>(b[d + l]);
  }
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; d < D; ++d) s += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return s;
}

// v[k] = ||c_k||^2 - 2 x.c_k for K centres: Lloyd's comparison, whose argmin is the nearest centre.
template <typename T>
__attribute__((always_inline)) inline void centre_scores_impl(const T* x, const double* centres,
                                                              const double* centre_sq, int64_t K, int64_t D,
                                                              double* v) {
  for (int64_t k = 0; k < K; ++k) v[k] = centre_sq[k] - 2.0 * dot8(x, centres + k * D, D);
}
IRDA_TARGET_CLONES void centre_scores(const double* x, const double* centres, const double* centre_sq, int64_t K,
                                      int64_t D, double* v) {
  centre_scores_impl(x, centres, centre_sq, K, D, v);
}
IRDA_TARGET_CLONES void centre_scores(const float* x, const double* centres, const double* centre_sq, int64_t K,
                                      int64_t D, double* v) {
  centre_scores_impl(x, centres, centre_sq, K, D, v);
}
IRDA_TARGET_CLONES double squared_norm(const double* x, int64_t D) { return dot8(x, x, D); }
IRDA_TARGET_CLONES double squared_norm(const float* x, int64_t D) { return dot8(x, x, D); }

template <typename T>
struct Hamerly {
  const T* x;
  int64_t N, K, D;
  std::vector<double> row_sq;  // ||x_i||^2
  std::vector<double> upper, lower;
  double margin = 0;  // how far rounding may move a computed distance, and more

  // The distance from point i to centre k, from Lloyd's score.
  double distance_to(int64_t i, int64_t k, const std::vector<double>& centres, const std::vector<double>& centre_sq) {
    double v;
    centre_scores(x + i * D, centres.data() + k * D, centre_sq.data() + k, 1, D, &v);
    return std::sqrt(std::max(row_sq[i] + v, 0.0));
  }

  // All K scores of point i: its label, and its bounds made exact.
  int64_t assign(int64_t i, const std::vector<double>& centres, const std::vector<double>& centre_sq,
                 double* v) {
    centre_scores(x + i * D, centres.data(), centre_sq.data(), K, D, v);
    int64_t best = 0;
    for (int64_t k = 1; k < K; ++k)
      if (v[k] < v[best]) best = k;  // the first minimum, as torch.argmin
    double second = std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k)
      if (k != best) second = std::min(second, v[k]);
    upper[i] = std::sqrt(std::max(row_sq[i] + v[best], 0.0));
    lower[i] = K > 1 ? std::sqrt(std::max(row_sq[i] + second, 0.0)) : std::numeric_limits<double>::infinity();
    return best;
  }
};

double distance(const double* a, const double* b, int64_t D) {
  double s = 0;
  for (int64_t d = 0; d < D; ++d) s += (a[d] - b[d]) * (a[d] - b[d]);
  return std::sqrt(s);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> kmeans_impl(const at::Tensor& xc, const at::Tensor& init, int64_t max_iter,
                                               double tol, bool relative) {
  const int64_t N = xc.size(0), K = init.size(0), D = xc.size(1);
  std::vector<double> centres(init.numel());
  {
    const at::Tensor ic = init.contiguous();
    std::copy(ic.data_ptr<double>(), ic.data_ptr<double>() + ic.numel(), centres.begin());
  }
  at::Tensor labels_out = at::zeros({N}, at::TensorOptions().dtype(at::kLong));
  int64_t* label = labels_out.data_ptr<int64_t>();

  Hamerly<T> h{xc.data_ptr<T>(), N, K, D, std::vector<double>(N), std::vector<double>(N), std::vector<double>(N)};
  double max_row = 0, max_centre = 0;
  bool norms_finite = true;
  std::vector<double> column_sum(relative ? D : 0, 0.0);
  double row_sq_sum = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    h.row_sq[i] = squared_norm(h.x + i * D, D);
    norms_finite = norms_finite && std::isfinite(h.row_sq[i]);
    max_row = std::max(max_row, h.row_sq[i]);
    if (relative) {
      row_sq_sum += h.row_sq[i];
      const T* row = h.x + i * D;
      for (int64_t d = 0; d < D; ++d) column_sum[d] += static_cast<double>(row[d]);
    }
  }
  // NaN or infinity in a row makes its norm NaN or infinite (so may a finite row past
  // 1e154: the exact check decides then), without a pass of its own.
  if (!norms_finite)
    TORCH_CHECK_VALUE(at::isfinite(xc).all().item<bool>(), "kmeans: x contains NaN or infinite values");
  if (relative && N > 0 && D > 0) {
    // scikit-learn's: tol times the features' mean variance, (mean ||x||^2 - ||mean x||^2) / D,
    // from the norms above and the column sums read in the same pass
    double mean_sq = 0.0;
    for (int64_t d = 0; d < D; ++d) mean_sq += (column_sum[d] / N) * (column_sum[d] / N);
    tol *= std::max(row_sq_sum / N - mean_sq, 0.0) / D;
  } else if (relative) {
    tol = 0.0;
  }
  std::vector<double> centre_sq(K), delta(K, 0.0), half_gap(K), sums(K * D, 0.0), sizes(K, 0.0), moved(K * D);
  std::vector<uint8_t> changed(N, 0);
  std::vector<int64_t> previous(N, 0);  // a changed point's label before the last nearest()

  auto refresh_centres = [&] {  // ||c_k||^2 and half the distance to the nearest other centre
    for (int64_t k = 0; k < K; ++k) {
      double s = 0, gap = std::numeric_limits<double>::infinity();
      for (int64_t d = 0; d < D; ++d) s += centres[k * D + d] * centres[k * D + d];
      centre_sq[k] = s;
      max_centre = std::max(max_centre, s);
      for (int64_t j = 0; j < K; ++j)
        if (j != k) gap = std::min(gap, distance(&centres[k * D], &centres[j * D], D));
      half_gap[k] = 0.5 * gap;
    }
    // A distance from ||x||^2 + ||c||^2 - 2 x.c carries a rounding error of about
    // sqrt(D * eps) * (||x|| + ||c||): 1e-5 of that scale is far above it for any D here.
    h.margin = 1e-5 * (std::sqrt(max_row) + std::sqrt(max_centre));
  };

  // Labels of the current centres: every point on the first call, then only those whose
  // bounds do not certify their label. Marks the points whose label changed.
  auto nearest = [&](bool all) {
    double top = 0, second = 0;
    int64_t top_k = -1;
    for (int64_t k = 0; k < K; ++k) {
      if (delta[k] > top) {
        second = top;
        top = delta[k];
        top_k = k;
      } else if (delta[k] > second) {
        second = delta[k];
      }
    }
    at::parallel_for(0, N, grain_for(K * D), [&](int64_t begin, int64_t end) {
      std::vector<double> v(K);
      for (int64_t i = begin; i < end; ++i) {
        changed[i] = 0;
        if (!all) {
          const int64_t a = label[i];
          h.upper[i] += delta[a];
          h.lower[i] -= a == top_k ? second : top;
          const double bound = std::max(h.lower[i], half_gap[a]);
          if (bound - h.upper[i] > 2 * h.margin) continue;
          // the upper bound made exact (one distance) may still certify the label
          h.upper[i] = h.distance_to(i, a, centres, centre_sq);
          if (bound - h.upper[i] > 2 * h.margin) continue;
        }
        const int64_t a = h.assign(i, centres, centre_sq, v.data());
        changed[i] = all || a != label[i];
        previous[i] = label[i];
        label[i] = a;
      }
    });
  };

  auto result = [&] {
    return std::make_tuple(labels_out, at::tensor(centres, at::TensorOptions().dtype(at::kDouble)).reshape({K, D}));
  };

  refresh_centres();
  nearest(true);
  for (int64_t it = 0; it < max_iter; ++it) {
    if (it > 0) {
      nearest(false);
      bool any = false;
      for (int64_t i = 0; i < N && !any; ++i) any = changed[i];
      if (!any) return result();  // converged: these are already the labels of the final centres
    }
    // The centre sums: every row on the first pass (in row order), then the moves from
    // `previous` to the current label.
    for (int64_t i = 0; i < N; ++i) {
      if (!changed[i]) continue;
      const T* xi = h.x + i * D;
      if (it > 0) {
        const int64_t old = previous[i];
        double* so = &sums[old * D];
        for (int64_t d = 0; d < D; ++d) so[d] -= static_cast<double>(xi[d]);
        sizes[old] -= 1;
      }
      double* sn = &sums[label[i] * D];
      for (int64_t d = 0; d < D; ++d) sn[d] += static_cast<double>(xi[d]);
      sizes[label[i]] += 1;
    }
    double shift = 0;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t d = 0; d < D; ++d) {
        moved[k * D + d] = sizes[k] > 0 ? sums[k * D + d] / sizes[k] : centres[k * D + d];
        shift += (moved[k * D + d] - centres[k * D + d]) * (moved[k * D + d] - centres[k * D + d]);
      }
      delta[k] = distance(&moved[k * D], &centres[k * D], D);
    }
    centres.swap(moved);
    refresh_centres();
    if (shift <= tol) break;
  }
  if (max_iter > 0) nearest(false);  // the labels of the final centres
  return result();
}

std::tuple<at::Tensor, at::Tensor> kmeans_cpu(const at::Tensor& x, const at::Tensor& init, int64_t max_iter,
                                              double tol, bool relative) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kDouble || x.scalar_type() == at::kFloat,
                   "kmeans: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_TYPE(init.scalar_type() == at::kDouble, "kmeans: init must be float64, got ", init.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, "kmeans: x must have shape [N, D], got ", shape_str(x));
  TORCH_CHECK_VALUE(init.dim() == 2 && init.size(0) >= 1 && init.size(1) == x.size(1),
                    "kmeans: init must have shape [K, ", x.size(1), "] with K >= 1, got ", shape_str(init));
  TORCH_CHECK_VALUE(max_iter >= 0, "kmeans: max_iter must be >= 0, got ", max_iter);
  TORCH_CHECK_VALUE(tol >= 0, "kmeans: tol must be >= 0, got ", tol);
  const at::Tensor xc = x.contiguous();
  return xc.scalar_type() == at::kDouble ? kmeans_impl<double>(xc, init, max_iter, tol, relative)
                                         : kmeans_impl<float>(xc, init, max_iter, tol, relative);
}

}  // namespace
}  // namespace irda

TORCH_LIBRARY_IMPL(irda_ext, CPU, m) { m.impl("kmeans", &irda::kmeans_cpu); }
