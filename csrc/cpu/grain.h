// Grain sizes for at::parallel_for: an item count that is worth a thread.
// Small problems (a tabular model's 64-dim features) then run on one thread;
// waking OpenMP threads costs more than the work, and far more on a busy machine.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace irda {

// Items of `work_per_item` scalar operations each, at least at::internal::GRAIN_SIZE
// operations per chunk.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

}  // namespace irda
