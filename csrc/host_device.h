// Functions compiled for the host and, by nvcc, for the device too: the scalar math
// shared by the CPU and CUDA kernels (merge_math.h, surrogate_math.h) and the kernel
// bodies (kernels/).
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define IRDA_HOST_DEVICE __host__ __device__ __forceinline__
#define IRDA_INLINE __host__ __device__ __forceinline__
#else
#define IRDA_HOST_DEVICE inline
// Always inlined, also into the CPU kernels' AVX2 / AVX-512 clones, whose loops
// vectorise only with the function's body in them.
#define IRDA_INLINE inline __attribute__((always_inline))
#endif

namespace irda {

// isfinite, fmin and fmax for host and device code alike.
template <typename T>
IRDA_HOST_DEVICE bool is_finite(T x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

template <typename T>
IRDA_HOST_DEVICE T min_of(T x, T y) {
#if defined(__CUDA_ARCH__)
  return fmin(x, y);
#else
  return std::fmin(x, y);
#endif
}

template <typename T>
IRDA_HOST_DEVICE T max_of(T x, T y) {
#if defined(__CUDA_ARCH__)
  return fmax(x, y);
#else
  return std::fmax(x, y);
#endif
}

}  // namespace irda
