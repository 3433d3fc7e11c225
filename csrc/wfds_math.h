// The band of W-FDS smoothing (SPEC 3), shared by the CPU and CUDA kernels:
//   out[b] = sum over b' in band_of(b) of S[b, b'] in[b'], b' ascending, zero weights skipped.
#pragma once
#include <cstdint>

#include "host_device.h"

namespace irda {

// A band wider than the matrix is the whole matrix; clamping first keeps b + h and
// (2h + 1) * row from overflowing for any bandwidth.
IRDA_HOST_DEVICE int64_t clamped_bandwidth(int64_t bandwidth, int64_t B) {
  return bandwidth < B - 1 ? bandwidth : B - 1;
}

// The bins [lo, hi] within h of b, for 0 <= h <= B - 1.
struct Band {
  int64_t lo, hi;
};

IRDA_HOST_DEVICE Band band_of(int64_t b, int64_t h, int64_t B) {
  return Band{b - h < 0 ? 0 : b - h, b + h > B - 1 ? B - 1 : b + h};
}

}  // namespace irda
