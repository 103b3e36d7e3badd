// The Elman forward of a single batch row on AVX-512, float, H a multiple of 16 up to 64: the latency-bound case
// (T = 1000, B = 1, H = 32), where each step waits for the last. The general small path spent ~150 ns a step
// there: a memcpy of xw_t, a matmul with one FMA chain per 16 outputs (32 dependent FMAs at H = 32) and an
// activation call. Here the state stays in a stack buffer, each 16 outputs sum over k in kSplits independent
// chains (8 FMAs deep at H = 32) started from xw_t, and the activation runs on the registers' values before the
// one store of y_t: ~50 ns a step, against a floor of ~40 (benchmarks/NOTES.md, "latency floor").
#pragma once

#include <cstdint>
#include <cstring>

#include "activations.h"
#include "zmm_step_mm.h"

namespace fastrnn {

inline bool row_kernel_takes(int64_t rows, int64_t H) {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
  return rows == 1 && H % 16 == 0 && H > 0 && H <= 64 && have_avx512f();
#else
  return false;
#endif
}

#ifdef FASTRNN_HAVE_ZMM_KERNEL
#pragma GCC push_options
#pragma GCC target("avx512f")

// y[step] = act(xw[step] + h W^T) for the steps of one row, in walking order: step i reads xw + offset(i) * H
// and writes y + offset(i) * H (xw may equal y). wt is W^T ([k, j] = W[j, k]), h0 / hn the row's states.
template <int64_t V, typename Offset>
void elman_row_steps(int64_t steps, const Offset& offset, const float* xw, const float* h0, const float* wt,
                     int64_t act, float* y, float* hn) {
  constexpr int64_t H = 16 * V, kSplits = 4;  // V * kSplits independent chains: 8 at H = 32
  alignas(64) float h[H];
  std::memcpy(h, h0, sizeof(h));
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t row = offset(i) * H;
    __m512 acc[V][kSplits];
    for (int64_t v = 0; v < V; ++v) {
      acc[v][0] = _mm512_loadu_ps(xw + row + 16 * v);
      for (int64_t s = 1; s < kSplits; ++s) acc[v][s] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < H; k += kSplits) {
      for (int64_t s = 0; s < kSplits; ++s) {
        const __m512 hk = _mm512_set1_ps(h[k + s]);
        for (int64_t v = 0; v < V; ++v)
          acc[v][s] = _mm512_fmadd_ps(hk, _mm512_loadu_ps(wt + (k + s) * H + 16 * v), acc[v][s]);
      }
    }
    for (int64_t v = 0; v < V; ++v) {
      _mm512_store_ps(h + 16 * v, _mm512_add_ps(_mm512_add_ps(acc[v][0], acc[v][1]),
                                                _mm512_add_ps(acc[v][2], acc[v][3])));
    }
    if (act == 0) {
      for (int64_t j = 0; j < H; ++j) h[j] = tanh_float(h[j]);
    } else {
      for (int64_t j = 0; j < H; ++j) h[j] = relu_scalar(h[j]);
    }
    std::memcpy(y + row, h, sizeof(h));
  }
  std::memcpy(hn, h, sizeof(h));
}

template <typename Offset>
void elman_row_forward(int64_t steps, const Offset& offset, const float* xw, const float* h0, const float* wt,
                       int64_t H, int64_t act, float* y, float* hn) {
  switch (H / 16) {
    case 1: return elman_row_steps<1>(steps, offset, xw, h0, wt, act, y, hn);
    case 2: return elman_row_steps<2>(steps, offset, xw, h0, wt, act, y, hn);
    case 3: return elman_row_steps<3>(steps, offset, xw, h0, wt, act, y, hn);
    default: return elman_row_steps<4>(steps, offset, xw, h0, wt, act, y, hn);
  }
}

#pragma GCC pop_options
#endif

}  // namespace fastrnn
