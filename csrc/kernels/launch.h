// The vocabulary the CUDA kernel bodies in csrc/kernels/ are written in, so that one
// source runs on a GPU (csrc/cuda/launch.cuh) and, for tests, in an emulated launch on
// the CPU (csrc/emulated/launch.h) over the same grid, block by block.
//
// A kernel is a functor with a block size, the struct of its shared memory and
//   template <class Blk> IRDA_HOST_DEVICE void operator()(Blk& blk) const;
// which runs once per block. A block context `blk` offers
//   blk.block_idx(), blk.block_dim(), blk.grid_dim()  as Dim3;
//   blk.threads([&](const Thread& t) { ... })        the work of each thread;
//   blk.sync()                                       a barrier (__syncthreads);
//   blk.warps([&](auto& w) { ... })                  the work of each warp, where
//       w.lane_reduce(lane_fn, combine) runs lane_fn(lane) on lanes 0-31 and combines
//       the results by the xor butterfly of the shuffles (with a symmetric combine, as
//       all of them are, every lane ends with the same value), w.leader() is lane 0;
//   typename Blk::template PerThread<S> s(blk); s[t]  a thread's registers across phases;
//   blk.shared(), blk.load(t, cell), blk.store(t, cell, v)  shared memory.
// Code outside threads() and warps() is block-uniform: a GPU runs it on every thread,
// the emulation once per block, so it may not depend on the thread; a barrier is
// therefore only ever reached by the whole block. The emulation runs the threads of a
// phase (the code between two barriers) one after the other and flags two threads
// that touch the same shared-memory cell in one phase when one of them writes it.
//
// No CUDA-only header here: g++ compiles these bodies for the emulation.
#pragma once
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>

#include "../host_device.h"

namespace irda {

// #pragma unroll in device code; host compilers unroll constant trip counts on their own.
#if defined(__CUDA_ARCH__)
#define IRDA_UNROLL _Pragma("unroll")
#else
#define IRDA_UNROLL
#endif

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// A thread's index within its block; `linear` = x + y * bx + z * bx * by.
struct Thread {
  unsigned x, y, z, linear;
};

constexpr int kWarp = 32;
// Grid y and z dimensions are limited to 65535; kernels stride over the rest.
constexpr int64_t kMaxGridY = 65535;

IRDA_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Kernels without shared memory.
struct NoShared {
  char unused;
};

// A value check inside a kernel. On a GPU it is a device-side assertion (the kernel
// stops and the next CUDA call raises, as PyTorch's own index checks do: no host
// synchronisation is spent on inputs that are almost always fine); in the emulated
// launch it raises the ValueError the CPU kernels raise. `msg` is a string literal
// that names the input.
#if defined(__CUDA_ARCH__) && defined(CUDA_KERNEL_ASSERT_MSG)
#define IRDA_KERNEL_CHECK(cond, msg) CUDA_KERNEL_ASSERT_MSG(cond, "irda_ext: " msg)
#elif defined(__CUDA_ARCH__)  // an older torch: the assertion prints the condition
#define IRDA_KERNEL_CHECK(cond, msg) CUDA_KERNEL_ASSERT(cond)
#else
#define IRDA_KERNEL_CHECK(cond, msg) TORCH_CHECK_VALUE(cond, msg)
#endif

// The launch limits of every CUDA GPU since sm_35, checked before a launch on both
// executors: a bad configuration (an empty grid, a grid of more than 65535 rows) then
// fails the same way with and without a GPU, and says which kernel and shape.
inline void check_launch(const char* kernel, Dim3 grid, Dim3 block, size_t shared_bytes) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const bool ok = grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535u &&
                  grid.z <= 65535u && block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024u &&
                  block.y <= 1024u && block.z <= 64u && threads <= 1024u && shared_bytes <= 48 * 1024;
  TORCH_CHECK(ok, "invalid configuration argument: ", kernel, " launched with grid (", grid.x, ", ", grid.y, ", ",
              grid.z, "), block (", block.x, ", ", block.y, ", ", block.z, ") and ", shared_bytes,
              " bytes of shared memory");
}

}  // namespace irda
