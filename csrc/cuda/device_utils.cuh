// Small pieces shared by the CUDA kernels: warp reductions and the
// streaming log-sum-exp. Every reduction is a fixed xor butterfly, so results
// do not depend on scheduling (deterministic), and lane 0's value is the one
// written.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>

namespace irda {
namespace cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Grid y and z dimensions are limited to 65535; kernels stride over the rest.
constexpr int64_t kMaxGridY = 65535;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_min(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmin(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Running (max, sum of exp(x - max)). add() is the CPU kernel's update, term
// for term; merge() combines two partial states (an empty state has max -inf).
template <typename T>
struct OnlineLse {
  T mx = -INFINITY;
  T sum = T(0);

  __device__ __forceinline__ void add(T x) {
    if (x > mx) {
      sum = sum * std::exp(mx - x) + T(1);
      mx = x;
    } else {
      sum += std::exp(x - mx);
    }
  }

  __device__ __forceinline__ void merge(T other_mx, T other_sum) {
    if (other_mx == -INFINITY) return;
    if (mx == -INFINITY) {
      mx = other_mx;
      sum = other_sum;
    } else if (other_mx > mx) {
      sum = sum * std::exp(mx - other_mx) + other_sum;
      mx = other_mx;
    } else {
      sum += other_sum * std::exp(other_mx - mx);
    }
  }

  __device__ __forceinline__ T value() const { return mx + std::log(sum); }
};

template <typename T>
__device__ __forceinline__ OnlineLse<T> warp_lse(OnlineLse<T> s) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const T other_mx = __shfl_xor_sync(kFullMask, s.mx, o);
    const T other_sum = __shfl_xor_sync(kFullMask, s.sum, o);
    s.merge(other_mx, other_sum);
  }
  return s;
}

}  // namespace cuda
}  // namespace irda
