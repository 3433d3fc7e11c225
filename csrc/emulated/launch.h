// The emulated launch: the CUDA kernel bodies of csrc/kernels/ run on the CPU over
// their real grid, for tests on machines without a GPU (the vocabulary is in
// csrc/kernels/launch.h). A test harness, not a runtime: one thread, every block of
// the grid in turn, and within a block every thread of a phase (the code between two
// barriers) before the next phase. A warp's lanes run one after the other and their
// values are combined by the same xor butterfly as the shuffles, so reductions add in
// the GPU's order. Shared memory goes through a shadow map that flags, within one
// phase, a cell written by one thread and read or written by another (a race the GPU
// would resolve by timing), and reads of cells no thread has written.
#pragma once
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/launch.h"

namespace irda {
namespace emulated {

class ShadowMap {
 public:
  ShadowMap(const char* kernel, const void* base, size_t bytes) : kernel_(kernel), base_(base), cells_(bytes) {}
  void new_block() {
    for (Cell& c : cells_) c = Cell{};
    phase_ = 1;
  }
  void new_phase() { ++phase_; }
  void read(const void* cell, unsigned thread) {
    Cell& c = at(cell);
    fresh(c);
    TORCH_CHECK(c.ever_written, kernel_, ": thread ", thread, " reads shared memory (byte ", offset(cell),
                ") that no thread of the block has written");
    TORCH_CHECK(c.writer < 0 || c.writer == int64_t(thread), kernel_, ": shared-memory race: thread ", thread,
                " reads byte ", offset(cell), " that thread ", c.writer, " wrote in the same phase (no barrier between)");
    c.reader = (c.reader == kNone || c.reader == int64_t(thread)) ? int64_t(thread) : kMany;
  }
  void write(const void* cell, unsigned thread) {
    Cell& c = at(cell);
    fresh(c);
    TORCH_CHECK(c.writer < 0 || c.writer == int64_t(thread), kernel_, ": shared-memory race: threads ", c.writer,
                " and ", thread, " write byte ", offset(cell), " in the same phase");
    TORCH_CHECK(c.reader == kNone || c.reader == int64_t(thread), kernel_, ": shared-memory race: thread ", thread,
                " writes byte ", offset(cell), " that another thread read in the same phase");
    c.writer = thread;
    c.ever_written = true;
  }

 private:
  static constexpr int64_t kNone = -1, kMany = -2;
  struct Cell {
    uint64_t phase = 0;
    int64_t writer = kNone, reader = kNone;
    bool ever_written = false;
  };
  size_t offset(const void* cell) const {
    return static_cast<size_t>(static_cast<const char*>(cell) - static_cast<const char*>(base_));
  }
  Cell& at(const void* cell) {
    const size_t off = offset(cell);
    TORCH_CHECK(off < cells_.size(), kernel_, ": shared-memory access outside the kernel's Shared struct");
    return cells_[off];
  }
  void fresh(Cell& c) const {
    if (c.phase != phase_) {
      c.phase = phase_;
      c.writer = c.reader = kNone;
    }
  }
  const char* kernel_;
  const void* base_;
  std::vector<Cell> cells_;
  uint64_t phase_ = 1;
};

class Warp {
 public:
  explicit Warp(int index) : index_(index) {}
  int index() const { return index_; }
  // The code after a reduction runs once for the warp, as lane 0 (every lane holds
  // lane 0's value after the butterfly: the combines used here are symmetric).
  bool leader() const { return true; }
  template <class F, class C>
  auto lane_reduce(F&& lane_fn, C&& combine) const {
    using S = std::decay_t<decltype(lane_fn(0))>;
    std::array<S, kWarp> s;
    for (int l = 0; l < kWarp; ++l) s[l] = lane_fn(l);
    for (int o = kWarp / 2; o > 0; o >>= 1) {
      std::array<S, kWarp> next;
      for (int l = 0; l < kWarp; ++l) next[l] = combine(s[l], s[l ^ o]);
      s = next;
    }
    return s[0];
  }

 private:
  int index_;
};

template <class Shared>
class Block {
 public:
  Block(Dim3 block_idx, Dim3 block_dim, Dim3 grid_dim, Shared& smem, ShadowMap& shadow)
      : block_idx_(block_idx), block_dim_(block_dim), grid_dim_(grid_dim), smem_(smem), shadow_(shadow) {}
  Dim3 block_idx() const { return block_idx_; }
  Dim3 block_dim() const { return block_dim_; }
  Dim3 grid_dim() const { return grid_dim_; }
  unsigned num_threads() const { return block_dim_.x * block_dim_.y * block_dim_.z; }
  template <class F>
  void threads(F&& f) const {
    unsigned linear = 0;
    for (unsigned z = 0; z < block_dim_.z; ++z)
      for (unsigned y = 0; y < block_dim_.y; ++y)
        for (unsigned x = 0; x < block_dim_.x; ++x) f(Thread{x, y, z, linear++});
  }
  void sync() const { shadow_.new_phase(); }
  template <class F>
  void warps(F&& f) const {
    TORCH_CHECK(num_threads() % kWarp == 0, "a warp kernel needs whole warps, got ", num_threads(), " threads");
    for (unsigned w = 0; w < num_threads() / kWarp; ++w) {
      Warp warp(static_cast<int>(w));
      f(warp);
    }
  }
  template <class S>
  class PerThread {
   public:
    explicit PerThread(const Block& blk) : values_(blk.num_threads()) {}
    S& operator[](const Thread& t) { return values_[t.linear]; }

   private:
    std::vector<S> values_;
  };
  Shared& shared() const { return smem_; }
  template <class T>
  T load(const Thread& t, const T& cell) const {
    shadow_.read(&cell, t.linear);
    return cell;
  }
  template <class T>
  void store(const Thread& t, T& cell, T value) const {
    shadow_.write(&cell, t.linear);
    cell = value;
  }

 private:
  Dim3 block_idx_, block_dim_, grid_dim_;
  Shared& smem_;
  ShadowMap& shadow_;
};

// Every launch of the emulated kernels, as "name grid=(x,y,z) block=(x,y,z)", for tests
// of launch shapes (irda_ext_emulated::launch_log).
std::vector<std::string> take_launch_log(bool clear);
void record_launch(const char* name, Dim3 grid, Dim3 block);

struct Exec {
  template <class K>
  void launch(const char* name, Dim3 grid, Dim3 block, const K& kernel) const {
    using Shared = typename K::Shared;
    check_launch(name, grid, block, sizeof(Shared));
    TORCH_CHECK(uint64_t(block.x) * block.y * block.z <= unsigned(K::kThreads), name, ": a block of more than ",
                K::kThreads, " threads");
    record_launch(name, grid, block);
    // Uninitialised, as shared memory is; the shadow map flags reads before writes.
    std::unique_ptr<Shared> smem(new Shared);
    ShadowMap shadow(name, smem.get(), sizeof(Shared));
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          shadow.new_block();
          Block<Shared> blk(Dim3{x, y, z}, block, grid, *smem, shadow);
          kernel(blk);
        }
  }
};

}  // namespace emulated
}  // namespace irda
