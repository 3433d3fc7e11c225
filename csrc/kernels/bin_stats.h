// Per-bin feature statistics (SPEC 2): the CUDA kernels, written once for the GPU
// (csrc/cuda/bin_stats.cu) and the emulated launch (csrc/emulated/), the same math as
// csrc/cpu/bin_stats.cpp.
//
// The batch is grouped by bin segment-wise: a stable device sort of the bin indices
// gives each bin's samples as a contiguous run order[offset[b] .. offset[b + 1])
// (offsets by binary search, no host synchronisation). Then
//   1. BinMean: the batch mean m_b of every bin (two-pass centring), summed and kept
//      in float64 as on the CPU: the centred samples and m_b - mu_old are rounded to
//      the accumulation type once,
//   2. BinCov: for every bin, the upper triangle of tiles of its D x D matrix; a block
//      stages the bin's centred samples in shared memory, accumulates
//      sum (z - m_b)(z - m_b)^T in registers and applies the merge of merge_math.h in
//      one read-modify-write of its tile of cov, mirrored to the lower triangle,
//   3. BinMeanMerge: the new mean and count, after 2 has read the old ones.
// Blocks of bins absent from the batch return at once: their statistics are never
// read or written. half / bfloat16 features are read as they are and accumulated in
// float32 (at::acc_type).
#pragma once
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "../host_device.h"
#include "../merge_math.h"
#include "launch.h"

namespace irda {
namespace bin_stats {

constexpr int kChunk = 16;  // samples staged in shared memory at a time
constexpr int kMeanThreads = 256;
// The D x D matrices are cut into tiles of 64, or of 16 up to D = kSmallD, where tiles
// of 64 would give a bin (a dominant one with most of the batch) 1 to 3 blocks.
constexpr int kSmallD = 128;

// offset[b] = first position of bin b in the sorted bin indices (lower bound). The
// first thread checks the sorted extremes: an index outside [0, num_bins) would fall
// outside every run and its sample would be dropped.
struct BinOffsets {
  static constexpr int kThreads = 128;
  using Shared = NoShared;
  const int64_t* sorted_bins;
  int64_t n, num_bins;
  int64_t* offset;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    blk.threads([&](const Thread& t) {
      if (blk.block_idx().x == 0 && t.x == 0) {
        IRDA_KERNEL_CHECK(sorted_bins[0] >= 0 && sorted_bins[n - 1] < num_bins,
                          "bin_index values must lie in [0, num_bins)");
      }
      const int64_t stride = int64_t(blk.grid_dim().x) * blk.block_dim().x;
      for (int64_t b = int64_t(blk.block_idx().x) * blk.block_dim().x + t.x; b <= num_bins; b += stride) {
        int64_t lo = 0, hi = n;
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (sorted_bins[mid] < b) {
            lo = mid + 1;
          } else {
            hi = mid;
          }
        }
        offset[b] = lo;
      }
    });
  }
};

// bmean[b] = batch mean of bin b in float64, for bins present; every feature is checked
// to be finite on the way (each is read here once). With count_out (plain
// moments) the counts and the mean in the accumulation type (mean_out) are written
// too, and absent bins get a zero mean.
template <typename scalar_t, typename acc_t>
struct BinMean {
  static constexpr int kThreads = kMeanThreads;
  using Shared = NoShared;
  const scalar_t* z;
  const int64_t* order;
  const int64_t* offset;
  int64_t D, num_bins;
  double* bmean;
  int64_t* count_out;
  acc_t* mean_out;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    blk.threads([&](const Thread& t) {
      const int64_t d = int64_t(blk.block_idx().x) * blk.block_dim().x + t.x;
      for (int64_t b = blk.block_idx().y; b < num_bins; b += blk.grid_dim().y) {
        const int64_t lo = offset[b], nb = offset[b + 1] - lo;
        if (count_out != nullptr && blk.block_idx().x == 0 && t.x == 0) count_out[b] = nb;
        if (d >= D) continue;
        if (nb == 0) {
          if (mean_out != nullptr) mean_out[b * D + d] = acc_t(0);
          continue;
        }
        double s = 0.0;
        for (int64_t r = 0; r < nb; ++r) {
          const double v = static_cast<double>(z[order[lo + r] * D + d]);
          IRDA_KERNEL_CHECK(is_finite(v), "z contains NaN or infinite features");
          s += v;
        }
        const double m = s / static_cast<double>(nb);
        bmean[b * D + d] = m;
        if (mean_out != nullptr) mean_out[b * D + d] = static_cast<acc_t>(m);
      }
    });
  }
};

// The thread layout of a kTile x kTile output tile: 256 threads, kTx along a row
// (coalesced), each owning kTile / kTy rows and kTile / kTx columns.
template <int kTile>
struct TileShape {
  static constexpr int kTx = kTile < 32 ? kTile : 32;
  static constexpr int kTy = 256 / kTx;
  static constexpr int kRows = kTile / kTy;  // per thread
  static constexpr int kCols = kTile / kTx;
  static_assert(kRows >= 1 && kCols >= 1 && kTile % kTy == 0, "a tile of at least 16");
};

// The tile pair (R, C), R <= C, of block x of the upper triangle of tiles x tiles.
IRDA_HOST_DEVICE void triangle_tile(int64_t x, int64_t tiles, int64_t* R, int64_t* C) {
  int64_t r = 0;
  while (x >= tiles - r) {
    x -= tiles - r;
    ++r;
  }
  *R = r;
  *C = r + x;
}

// One kTile x kTile tile of the upper triangle of every bin's D x D matrix per block
// (blockIdx.x = tile pair (R, C), R <= C; blockIdx.y = bin); an off-diagonal tile is
// written at (R, C) and, transposed through shared memory (coalesced), at (C, R), so
// the result is exactly symmetric and half the products are computed. kMoments:
// out = scatter (zeros for absent bins). Otherwise the merge:
// cov = keep * cov + sample_w * scatter + delta_w * delta delta^T, delta = m_b - mu_old,
// reading count and mean before BinMeanMerge updates them (and only the (R, C) half of
// the old cov, which is symmetric).
template <typename scalar_t, typename acc_t, bool kMoments, int kTile>
struct BinCov {
  using Shape = TileShape<kTile>;
  static constexpr int kThreads = Shape::kTx * Shape::kTy;
  union Shared {
    struct {
      acc_t rows[kChunk][kTile];  // centred samples on the tile's row dimensions
      acc_t cols[kChunk][kTile];  // ... and on its column dimensions
    } stage;
    acc_t tile[kTile][kTile + 1];  // the finished tile, for its transposed copy (+1: no bank conflicts)
  };
  struct Acc {
    acc_t v[Shape::kRows][Shape::kCols];
  };
  const scalar_t* z;
  const int64_t* order;
  const int64_t* offset;
  const double* bmean;
  const int64_t* count;
  const acc_t* mean_old;
  acc_t* cov;
  int64_t D, num_bins;
  double momentum;

  // m_b - mu_old, in float64 and rounded once
  static IRDA_HOST_DEVICE acc_t delta(double m, acc_t mu_old) { return static_cast<acc_t>(m - double(mu_old)); }

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    constexpr int kTx = Shape::kTx, kTy = Shape::kTy, kRows = Shape::kRows, kCols = Shape::kCols;
    Shared& sm = blk.shared();
    int64_t R, C;
    triangle_tile(blk.block_idx().x, ceil_div(D, kTile), &R, &C);
    const int64_t r0 = R * kTile, c0 = C * kTile;
    typename Blk::template PerThread<Acc> acc(blk);

    for (int64_t b = blk.block_idx().y; b < num_bins; b += blk.grid_dim().y) {
      const int64_t lo = offset[b], nb = offset[b + 1] - lo;
      if (!kMoments && nb == 0) continue;  // absent bin: untouched (uniform over the block)
      const double* m = bmean + b * D;
      blk.threads([&](const Thread& t) {
        IRDA_UNROLL
        for (int i = 0; i < kRows; ++i)
          IRDA_UNROLL
          for (int j = 0; j < kCols; ++j) acc[t].v[i][j] = acc_t(0);
      });
      for (int64_t s0 = 0; s0 < nb; s0 += kChunk) {
        blk.threads([&](const Thread& t) {
          for (int idx = static_cast<int>(t.linear); idx < kChunk * kTile; idx += kThreads) {
            const int r = idx / kTile, c = idx % kTile;
            const int64_t s = s0 + r;
            acc_t vr = acc_t(0), vc = acc_t(0);
            if (s < nb) {
              const scalar_t* zi = z + order[lo + s] * D;
              if (r0 + c < D) vr = static_cast<acc_t>(static_cast<double>(zi[r0 + c]) - m[r0 + c]);
              if (c0 + c < D) vc = static_cast<acc_t>(static_cast<double>(zi[c0 + c]) - m[c0 + c]);
            }
            blk.store(t, sm.stage.rows[r][c], vr);
            blk.store(t, sm.stage.cols[r][c], vc);
          }
        });
        blk.sync();
        blk.threads([&](const Thread& t) {
          const int steps = static_cast<int>(nb - s0 < kChunk ? nb - s0 : kChunk);
          for (int k = 0; k < steps; ++k) {
            acc_t cv[kCols];
            IRDA_UNROLL
            for (int j = 0; j < kCols; ++j) cv[j] = blk.load(t, sm.stage.cols[k][t.x + kTx * j]);
            IRDA_UNROLL
            for (int i = 0; i < kRows; ++i) {
              const acc_t rv = blk.load(t, sm.stage.rows[k][t.y + kTy * i]);
              IRDA_UNROLL
              for (int j = 0; j < kCols; ++j) acc[t].v[i][j] += rv * cv[j];
            }
          }
        });
        blk.sync();
      }

      const MergeCoef coef = kMoments ? moment_coefficients() : merge_coefficients(count[b], nb, momentum);
      const acc_t keep = static_cast<acc_t>(coef.keep);
      const acc_t sample_w = static_cast<acc_t>(coef.sample_w);
      const acc_t delta_w = static_cast<acc_t>(coef.delta_w);
      const bool mirror = R != C;
      blk.threads([&](const Thread& t) {
        acc_t delta_c[kCols];
        IRDA_UNROLL
        for (int j = 0; j < kCols; ++j) {
          const int64_t c = c0 + t.x + kTx * j;
          delta_c[j] = (!kMoments && delta_w != acc_t(0) && c < D) ? delta(m[c], mean_old[b * D + c]) : acc_t(0);
        }
        IRDA_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const int64_t r = r0 + t.y + kTy * i;
          if (r >= D) continue;
          const acc_t delta_r = (!kMoments && delta_w != acc_t(0)) ? delta(m[r], mean_old[b * D + r]) : acc_t(0);
          acc_t* row = cov + (b * D + r) * D;
          IRDA_UNROLL
          for (int j = 0; j < kCols; ++j) {
            const int64_t c = c0 + t.x + kTx * j;
            if (c >= D) continue;
            // keep == 0: the old cov is never read
            const acc_t v = kMoments ? acc[t].v[i][j]
                                     : merged_cov_entry(keep, sample_w, delta_w, acc[t].v[i][j], delta_r, delta_c[j],
                                                        row[c]);
            row[c] = v;
            if (mirror) blk.store(t, sm.tile[t.x + kTx * j][t.y + kTy * i], v);
          }
        }
      });
      if (!mirror) continue;  // uniform over the block
      blk.sync();
      // the transposed tile: row c0 + y of the (C, R) tile is column c0 + y of (R, C)
      blk.threads([&](const Thread& t) {
        IRDA_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const int64_t c = c0 + t.y + kTy * i;
          if (c >= D) continue;
          acc_t* row = cov + (b * D + c) * D;
          IRDA_UNROLL
          for (int j = 0; j < kCols; ++j) {
            const int64_t r = r0 + t.x + kTx * j;
            if (r < D) row[r] = blk.load(t, sm.tile[t.y + kTy * i][t.x + kTx * j]);
          }
        }
      });
      blk.sync();  // the next bin stages into the same shared memory
    }
  }
};

// New mean and count of every present bin; one block per bin, so the block reads
// count[b] before its thread 0 advances it.
template <typename acc_t>
struct BinMeanMerge {
  static constexpr int kThreads = kMeanThreads;
  using Shared = NoShared;
  const int64_t* offset;
  const double* bmean;
  int64_t* count;
  acc_t* mean;
  int64_t D, num_bins;
  double momentum;

  template <class Blk>
  IRDA_HOST_DEVICE void operator()(Blk& blk) const {
    for (int64_t b = blk.block_idx().x; b < num_bins; b += blk.grid_dim().x) {
      const int64_t nb = offset[b + 1] - offset[b];
      if (nb == 0) continue;
      blk.threads([&](const Thread& t) {
        const MergeCoef coef = merge_coefficients(count[b], nb, momentum);
        for (int64_t d = t.x; d < D; d += blk.block_dim().x) {
          mean[b * D + d] = static_cast<acc_t>(merged_mean(coef, static_cast<double>(mean[b * D + d]), bmean[b * D + d]));
        }
      });
      blk.sync();
      blk.threads([&](const Thread& t) {
        if (t.x == 0) count[b] += nb;
      });
      blk.sync();
    }
  }
};

// The batch grouped by bin: samples of bin b are order[offset[b] .. offset[b + 1]).
struct Buckets {
  at::Tensor order;   // [n] int64
  at::Tensor offset;  // [B + 1] int64
};

template <class Exec>
Buckets bucket_by_bin(const Exec& ex, const at::Tensor& bin_index, int64_t num_bins) {
  // A stable sort keeps each bin's samples in batch order, so the sums are
  // reproducible run to run.
  auto sorted = at::sort(bin_index, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  Buckets bk{std::get<1>(sorted), at::empty({num_bins + 1}, bin_index.options())};
  const int64_t blocks = std::min<int64_t>(ceil_div(num_bins + 1, BinOffsets::kThreads), 1024);
  ex.launch("bin_offsets", Dim3{unsigned(blocks)}, Dim3{BinOffsets::kThreads},
            BinOffsets{std::get<0>(sorted).data_ptr<int64_t>(), bin_index.size(0), num_bins,
                       bk.offset.data_ptr<int64_t>()});
  return bk;
}

template <int kTile>
Dim3 cov_grid(int64_t D, int64_t num_bins) {
  const int64_t tiles = ceil_div(D, kTile);
  TORCH_CHECK(tiles * (tiles + 1) / 2 <= INT32_MAX, "feature dimension ", D, " is too large for the CUDA kernel");
  return Dim3{unsigned(tiles * (tiles + 1) / 2), unsigned(std::min(num_bins, kMaxGridY))};
}

// Launches BinCov with the tile size for D.
template <typename scalar_t, typename acc_t, bool kMoments, class Exec, class... Args>
void launch_cov(const Exec& ex, int64_t D, int64_t num_bins, Args... args) {
  if (D <= kSmallD) {
    using K = BinCov<scalar_t, acc_t, kMoments, 16>;
    ex.launch("bin_cov<16>", cov_grid<16>(D, num_bins), Dim3{K::Shape::kTx, K::Shape::kTy}, K{args...});
  } else {
    using K = BinCov<scalar_t, acc_t, kMoments, 64>;
    ex.launch("bin_cov<64>", cov_grid<64>(D, num_bins), Dim3{K::Shape::kTx, K::Shape::kTy}, K{args...});
  }
}

inline Dim3 mean_grid(int64_t D, int64_t num_bins) {
  return Dim3{unsigned(ceil_div(D, kMeanThreads)), unsigned(std::min(num_bins, kMaxGridY))};
}

template <class Exec>
std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_moments(const Exec& ex, const at::Tensor& z,
                                                           const at::Tensor& bin_index, int64_t num_bins) {
  check_features(z, bin_index, -1);
  TORCH_CHECK_VALUE(num_bins >= 1, "num_bins must be at least 1, got ", num_bins);
  const int64_t n = z.size(0), D = z.size(1);
  // half / bfloat16 features are accumulated in float32
  const auto acc = (z.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  at::Tensor count = at::empty({num_bins}, bin_index.options());
  at::Tensor mean = at::empty({num_bins, D}, z.options().dtype(acc));
  at::Tensor scatter = at::empty({num_bins, D, D}, z.options().dtype(acc));
  if (n == 0 || D == 0) {
    count.zero_();
    mean.zero_();
    scatter.zero_();
    return {count, mean, scatter};
  }
  const at::Tensor zc = z.contiguous();
  const Buckets bk = bucket_by_bin(ex, bin_index.contiguous(), num_bins);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zc.scalar_type(), "bin_moments", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* zp = zc.data_ptr<scalar_t>();
    const int64_t* order = bk.order.data_ptr<int64_t>();
    const int64_t* offset = bk.offset.data_ptr<int64_t>();
    at::Tensor bmean = at::empty({num_bins, D}, z.options().dtype(at::kDouble));
    double* bm = bmean.data_ptr<double>();
    ex.launch("bin_mean", mean_grid(D, num_bins), Dim3{kMeanThreads},
              BinMean<scalar_t, acc_t>{zp, order, offset, D, num_bins, bm, count.data_ptr<int64_t>(),
                                       mean.data_ptr<acc_t>()});
    launch_cov<scalar_t, acc_t, true>(ex, D, num_bins, zp, order, offset, static_cast<const double*>(bm),
                                      static_cast<const int64_t*>(nullptr), static_cast<const acc_t*>(nullptr),
                                      scatter.data_ptr<acc_t>(), D, num_bins, -1.0);
  });
  return {count, mean, scatter};
}

template <class Exec>
void bin_stats_update(const Exec& ex, at::Tensor& count, at::Tensor& mean, at::Tensor& cov, const at::Tensor& z,
                      const at::Tensor& bin_index, std::optional<double> momentum) {
  check_stats(count, mean, cov);
  check_features(z, bin_index, mean.size(1));
  check_same_device(z, mean, "z", "mean");
  TORCH_CHECK_VALUE(count.is_contiguous() && mean.is_contiguous() && cov.is_contiguous(),
                    "the statistics (count, mean, cov) must be contiguous");
  const double rho = checked_momentum(momentum);
  const int64_t D = mean.size(1), B = mean.size(0);
  if (z.size(0) == 0 || D == 0) return;
  // checked on the host: no bin index can be valid, and an empty grid would not launch
  TORCH_CHECK_VALUE(B >= 1, "bin_index values must lie in [0, 0): the statistics have no bins, got mean of shape ",
                    shape_str(mean));
  // The statistics' dtype is the accumulation type: float32 statistics read half /
  // bfloat16 / float32 features as they are; other combinations are converted first,
  // as the CPU kernel does.
  const bool native =
      mean.scalar_type() == at::kDouble ? z.scalar_type() == at::kDouble : z.scalar_type() != at::kDouble;
  const at::Tensor zc = native ? z.contiguous() : z.to(mean.scalar_type()).contiguous();
  const Buckets bk = bucket_by_bin(ex, bin_index.contiguous(), B);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, zc.scalar_type(), "bin_stats_update", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* zp = zc.data_ptr<scalar_t>();
    const int64_t* order = bk.order.data_ptr<int64_t>();
    const int64_t* offset = bk.offset.data_ptr<int64_t>();
    // Batch means of the present bins in float64 (rows of absent bins stay unwritten and unread).
    at::Tensor bmean = at::empty({B, D}, mean.options().dtype(at::kDouble));
    double* bm = bmean.data_ptr<double>();
    ex.launch("bin_mean", mean_grid(D, B), Dim3{kMeanThreads},
              BinMean<scalar_t, acc_t>{zp, order, offset, D, B, bm, nullptr, nullptr});
    launch_cov<scalar_t, acc_t, false>(ex, D, B, zp, order, offset, static_cast<const double*>(bm),
                                       static_cast<const int64_t*>(count.data_ptr<int64_t>()),
                                       static_cast<const acc_t*>(mean.data_ptr<acc_t>()), cov.data_ptr<acc_t>(), D, B,
                                       rho);
    ex.launch("bin_mean_merge", Dim3{unsigned(std::min(B, kMaxGridY))}, Dim3{kMeanThreads},
              BinMeanMerge<acc_t>{offset, bm, count.data_ptr<int64_t>(), mean.data_ptr<acc_t>(), D, B, rho});
  });
}

}  // namespace bin_stats
}  // namespace irda
