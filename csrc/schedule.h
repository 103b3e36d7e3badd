// The step schedule every CPU recurrence walks (recurrence.cpp): T steps over B batch rows, padded [T, B, .]
// or packed [N, .] (step t updates rows [0, batch_sizes[t]) of the running state, batch_sizes non-increasing).
// Every batch row is an independent chain, so rows are split across threads once and each thread runs all T
// steps on its rows with no synchronisation (a layer with a large W_hh and few rows a thread splits the units
// instead: recurrence.cpp's run_forward_units / run_backward_units).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastrnn {

// Padded steps hold no arrays (a tiny call allocates nothing here); packed ones their sizes and offsets.
class Steps {
 public:
  // `steps` steps of `batch_sizes` rows (nullptr: padded, `batch` rows each).
  Steps(const int64_t* batch_sizes, int64_t steps, int64_t batch) : count_(steps), batch_(batch) {
    if (batch_sizes == nullptr) return;
    sizes_.assign(batch_sizes, batch_sizes + steps);
    offsets_.resize(steps + 1, 0);
    for (int64_t t = 0; t < steps; ++t) offsets_[t + 1] = offsets_[t] + sizes_[t];
  }
  int64_t count() const { return count_; }
  bool packed() const { return !sizes_.empty(); }
  int64_t size(int64_t t) const { return sizes_.empty() ? batch_ : sizes_[t]; }  // rows active at step t
  int64_t offset(int64_t t) const { return sizes_.empty() ? t * batch_ : offsets_[t]; }  // its first packed row

 private:
  int64_t count_, batch_;
  std::vector<int64_t> sizes_, offsets_;
};

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
    const int64_t end = std::min(hi, s.size(t));
    if (end <= lo) continue;
    StepRows r{t, lo, end, lo, -1, s.offset(t), 0, i + 1 == n};
    if ((backward ? n - 1 - i : i) > 0) {
      r.prev = reverse ? t + 1 : t - 1;
      r.split = std::min(end, std::max(lo, s.size(r.prev)));
      r.prev_first = s.offset(r.prev);
    }
    body(r);
  }
}

// The packed row of row r at the step (in walking order) where it is last active, which holds its final state;
// -1 where there are no steps.
inline int64_t final_row(const Steps& s, int64_t r, bool reverse) {
  if (s.count() == 0) return -1;
  int64_t t = 0;
  while (!reverse && t + 1 < s.count() && s.size(t + 1) > r) ++t;
  return s.offset(t) + r;
}

}  // namespace fastrnn
