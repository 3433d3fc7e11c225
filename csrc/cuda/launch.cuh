// The GPU executor of the kernel bodies in csrc/kernels/ (the vocabulary is in
// csrc/kernels/launch.h): each block context method is the CUDA construct it names,
// so a body compiles to the kernel one would write by hand. Launches go to the
// current stream.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>

#include "../kernels/launch.h"

namespace irda {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Any trivially copyable value through __shfl_xor_sync, 32 bits at a time.
template <class S>
__device__ __forceinline__ S shfl_xor(S s, int offset) {
  constexpr int kWords = (sizeof(S) + 3) / 4;
  unsigned w[kWords] = {};
  memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = __shfl_xor_sync(kFullMask, w[i], offset);
  memcpy(&s, w, sizeof(S));
  return s;
}

class Warp {
 public:
  __device__ Warp(int lane, int index) : lane_(lane), index_(index) {}
  __device__ int index() const { return index_; }
  __device__ bool leader() const { return lane_ == 0; }
  template <class F, class C>
  __device__ __forceinline__ auto lane_reduce(F&& lane_fn, C&& combine) const {
    auto s = lane_fn(lane_);
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) s = combine(s, shfl_xor(s, o));
    return s;
  }

 private:
  int lane_, index_;
};

template <class Shared>
class Block {
 public:
  __device__ explicit Block(Shared& smem) : smem_(smem) {}
  __device__ Dim3 block_idx() const { return Dim3{blockIdx.x, blockIdx.y, blockIdx.z}; }
  __device__ Dim3 block_dim() const { return Dim3{blockDim.x, blockDim.y, blockDim.z}; }
  __device__ Dim3 grid_dim() const { return Dim3{gridDim.x, gridDim.y, gridDim.z}; }
  template <class F>
  __device__ __forceinline__ void threads(F&& f) const {
    f(Thread{threadIdx.x, threadIdx.y, threadIdx.z,
             threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)});
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  template <class F>
  __device__ __forceinline__ void warps(F&& f) const {
    const unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    Warp w(static_cast<int>(linear % kWarp), static_cast<int>(linear / kWarp));
    f(w);
  }
  // A thread's own registers.
  template <class S>
  class PerThread {
   public:
    __device__ explicit PerThread(const Block&) {}
    __device__ __forceinline__ S& operator[](const Thread&) { return value_; }

   private:
    S value_;
  };
  __device__ Shared& shared() const { return smem_; }
  template <class T>
  __device__ __forceinline__ T load(const Thread&, const T& cell) const {
    return cell;
  }
  template <class T>
  __device__ __forceinline__ void store(const Thread&, T& cell, T value) const {
    cell = value;
  }

 private:
  Shared& smem_;
};

template <class K>
__global__ void __launch_bounds__(K::kThreads) run_kernel(const K kernel) {
  __shared__ typename K::Shared smem;
  Block<typename K::Shared> blk(smem);
  kernel(blk);
}

// Launches on a stream (the current one of the device under the caller's guard).
struct Exec {
  cudaStream_t stream;

  template <class K>
  void launch(const char* name, Dim3 grid, Dim3 block, const K& kernel) const {
    check_launch(name, grid, block, sizeof(typename K::Shared));
    TORCH_CHECK(uint64_t(block.x) * block.y * block.z <= unsigned(K::kThreads), name, ": a block of more than ",
                K::kThreads, " threads");
    run_kernel<K><<<dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), 0, stream>>>(kernel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

inline Exec current_exec() { return Exec{c10::cuda::getCurrentCUDAStream()}; }

}  // namespace cuda
}  // namespace irda
