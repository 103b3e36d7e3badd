// The step schedule every CPU recurrence walks (recurrence.cpp): T steps over B batch rows, padded [T, B, .]
// or packed [N, .] (step t updates rows [0, batch_sizes[t]) of the running state, batch_sizes non-increasing).
// Every batch row is an independent chain, so rows are split across threads once and each thread runs all T
// steps on its rows with no synchronisation.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastrnn {

struct Steps {
  std::vector<int64_t> sizes;    // rows active at each step
  std::vector<int64_t> offsets;  // first packed row of each step, size T + 1
  int64_t count() const { return static_cast<int64_t>(sizes.size()); }
};

// `steps` steps of `batch_sizes` rows (nullptr: padded, `batch` rows each).
inline Steps make_steps(const int64_t* batch_sizes, int64_t steps, int64_t batch) {
  Steps s;
  if (batch_sizes != nullptr) {
    s.sizes.assign(batch_sizes, batch_sizes + steps);
  } else {
    s.sizes.assign(steps, batch);
  }
  s.offsets.resize(steps + 1, 0);
  for (int64_t t = 0; t < steps; ++t) s.offsets[t + 1] = s.offsets[t] + s.sizes[t];
  return s;
}

// Runs `body(lo, hi)` over batch-row chunks in parallel. Large steps too: a single-threaded BLAS call per
// thread on its own rows beats one BLAS call threading each step (5-20% at H = 256..1024, 2 cores), since
// the threads never meet between steps. The BLAS sees it is inside a parallel region and stays serial.
constexpr int64_t kRowsPerThreadMin = 2;

template <typename F>
void for_row_chunks(int64_t batch, const F& body) {
  if (batch >= 2 * kRowsPerThreadMin) {
    at::parallel_for(0, batch, kRowsPerThreadMin, body);
  } else {
    body(0, batch);
  }
}

inline int64_t rows_per_thread(int64_t batch) {
  const int64_t threads = std::max(1, at::get_num_threads());
  return std::max<int64_t>(1, (batch + threads - 1) / threads);
}

// Step t's rows [lo, end) of a thread's chunk: rows [lo, split) continue the state of step `prev` (the
// neighbour the forward walk came from; -1: none), rows [split, end) start from the initial state.
struct StepRows {
  int64_t t, lo, end, split, prev;
  int64_t first;       // the packed row of (t, 0)
  int64_t prev_first;  // the packed row of (prev, 0)
  bool last;           // the last step of the walk
};

// Calls body(StepRows) for each step with rows in [lo, hi), in the order a forward walk (backward false)
// or a backward walk visits them.
template <typename F>
void walk_steps(const Steps& s, int64_t lo, int64_t hi, bool reverse, bool backward, const F& body) {
  const int64_t n = s.count();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = reverse != backward ? n - 1 - i : i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    StepRows r{t, lo, end, lo, -1, s.offsets[t], 0, i + 1 == n};
    if ((backward ? n - 1 - i : i) > 0) {
      r.prev = reverse ? t + 1 : t - 1;
      r.split = std::min(end, std::max(lo, s.sizes[r.prev]));
      r.prev_first = s.offsets[r.prev];
    }
    body(r);
  }
}

// The step (in walking order) at which row r is last active: its final state lives there.
inline int64_t last_step_of_row(const Steps& s, int64_t r, bool reverse) {
  if (reverse) return 0;
  int64_t t = 0;
  while (t + 1 < s.count() && s.sizes[t + 1] > r) ++t;
  return t;
}

}  // namespace fastrnn
