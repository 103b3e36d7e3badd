// The cells of the CPU recurrences (recurrence.cpp): what each step of a layer computes, around the step loop
// of recurrence.cpp that walks the steps (schedule.h) and multiplies the previous state by W_hh (step_mm.h).
//
//   Elman (G = H):  h' = act(xw + h W_hh^T)                                    saves nothing but y
//   GRU  (G = 3H):  a = h W_hh^T kept apart from xw (r scales a_n + b_hn)     ws = [r, z, n, m]       (4H)
//   LSTM (G = 4H):  gates = xw + h W_hh^T; h' = o tanh(c') (W_hr^T after it)  ws = [i, f, g, o, c'(, u)]
//
// A cell is a set of functions of one thread's rows (Chunk) and one step's rows (StepRows). Per step:
// `gates` (where h W_hh^T goes: onto the step's input, or into a buffer of its own), `input` (the step's input
// projection into place, read from xw or made by the step kernel), `pointwise` (the gate math of the rows, and
// the LSTM's projection); per row at the end `finish` (the final state). Backward, `backward` (the step's
// gradient math) returns the rows the loop multiplies by W_hh into dh (added to what the cell left there, or
// replacing it). `scratch` is the per-row width of the thread's scratch the cell uses.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "gate_rows.h"
#include "rnn_cpu.h"
#include "schedule.h"
#include "step_mm.h"

namespace fastrnn {

// One layer call's raw contiguous buffers; each cell reads the parts it has. Rows are packed rows (padded:
// t * B + b). P = H except for an LSTM with a projection.
template <typename T>
struct Layer {
  int64_t H = 0, P = 0, W = 0;     // cell units, state features, ws row width
  const T* x = nullptr;            // xw [rows, G]; with `proj` the layer input [rows, I]
  const StepWeight<T>* proj = nullptr;  // W_ih when the step kernel makes each step's x W_ih^T + bias
  int64_t I = 0;
  const T* bias = nullptr;         // [G] or nullptr (with proj)
  const T* h0 = nullptr;           // [B, P]
  const T* c0 = nullptr;           // [B, H] (LSTM)
  const T* b_hn = nullptr;         // [H] (GRU)
  const StepWeight<T>* w_hh = nullptr;  // op(W_hh): [P, G] forward, [G, P] backward
  const StepWeight<T>* w_hr = nullptr;  // op(W_hr) (LSTM with a projection)
  T* y = nullptr;                  // [rows, P]; backward: read
  T* ws = nullptr;                 // [rows, W]; nullptr: inference, nothing saved
  T* hn = nullptr;                 // [B, P]
  T* cn = nullptr;                 // [B, H]
  // backward
  const T* dy = nullptr;           // [rows, P]
  T* dh = nullptr;                 // [B, P]: dh_n in, dh0 out
  T* dc = nullptr;                 // [B, H]: dc_n in, dc0 out
  T* dgates = nullptr;             // [rows, G]: Elman dz, GRU dxw, LSTM da
  T* dg = nullptr;                 // [rows, 3H] (GRU): the gradient of h W_hh^T + [0, 0, b_hn]
  T* dh_all = nullptr;             // [rows, P] (LSTM with a projection): the gradient of each h'
};

// A thread with at most half this many rows (padded input, the projection fused) projects the input rows of the
// next steps in one kernel call: W_ih's panels are then loaded once a window instead of once a step, for 1-2 FMAs
// a weight vector (LSTM T=1000 B=1 H=64: 1.45 -> 1.17 ms, B=2 a thread 1.94 -> 1.80).
constexpr int64_t kWindowRows = 32;

// A thread's window: the next `count` steps' input rows in walking order, gathered (x), their x W_ih^T + bias
// (out, G a row), `used` of them read.
template <typename T>
struct Window {
  int64_t batch = 0, steps = 0, count = 0, used = 0;
  bool reverse = false;
  T *x = nullptr, *out = nullptr;
};

// One thread's rows [lo, hi) and units [u0, u1) of a layer (every unit, or a share of them for all rows: see
// run_forward_units), with its scratch (the cell's `scratch` values a row) and window.
template <typename T>
struct Chunk {
  const Layer<T>& L;
  int64_t lo, hi;
  T* scratch;
  Window<T>* window;
  int64_t u0, u1;
  bool all_units() const { return u0 == 0 && u1 == L.H; }
};

// Copies rows [lo, end) of step r of x (width G) into g (row stride ld), or has the step kernel project them.
template <typename T>
void load_input(const Chunk<T>& c, const StepRows& r, int64_t G, T* g, int64_t ld) {
  const Layer<T>& L = c.L;
  const int64_t rows = r.end - r.lo;
  const T* in = L.x + (r.first + r.lo) * G;
  if (c.window != nullptr) {
    Window<T>& w = *c.window;
    if (w.used == w.count) {
      w.count = std::min(kWindowRows / rows, w.reverse ? r.t + 1 : w.steps - r.t);
      for (int64_t j = 0; j < w.count; ++j) {
        const int64_t t = w.reverse ? r.t - j : r.t + j;
        std::memcpy(w.x + j * rows * L.I, L.x + (t * w.batch + r.lo) * L.I, sizeof(T) * rows * L.I);
      }
      L.proj->apply_from(L.bias, w.x, L.I, w.count * rows, w.out, G);
      w.used = 0;
    }
    in = w.out + w.used++ * rows * G;
  } else if (L.proj != nullptr) {
    return L.proj->apply_from(L.bias, L.x + (r.first + r.lo) * L.I, L.I, rows, g, ld);
  }
  if (in == g) return;  // xw == y: in place
  if (!c.all_units()) {  // this thread's units of each gate
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = c.u0; k < G; k += L.H) std::memcpy(g + i * ld + k, in + i * G + k, sizeof(T) * (c.u1 - c.u0));
  } else if (ld == G) {
    std::memcpy(g, in, sizeof(T) * rows * G);
  } else {
    for (int64_t i = 0; i < rows; ++i) std::memcpy(g + i * ld, in + i * G, sizeof(T) * G);
  }
}

// The state h a row read at step r: its previous step's output, or h0.
template <typename T>
const T* state_in(const Layer<T>& L, const StepRows& r, int64_t b) {
  return b < r.split ? L.y + (r.prev_first + b) * L.P : L.h0 + b * L.P;
}

template <typename T>
void copy_final_h(const Layer<T>& L, int64_t b, int64_t row) {
  std::memcpy(L.hn + b * L.P, row >= 0 ? L.y + row * L.P : L.h0 + b * L.P, sizeof(T) * L.P);
}

// Rows of a step's buffer: p[rows, ld]; `add`: a matmul into them adds to what they hold.
template <typename T>
struct StepBuffer {
  T* p;
  int64_t ld;
  bool add;
};

template <typename T, int64_t Act>
struct Elman {
  static int64_t scratch(const Layer<T>&) { return 0; }
  static StepBuffer<T> gates(const Chunk<T>& c, const StepRows& r) {
    return {c.L.y + (r.first + r.lo) * c.L.H, c.L.H, true};
  }
  static void input(const Chunk<T>& c, const StepRows& r, T* g) { load_input(c, r, c.L.H, g, c.L.H); }
  static void pointwise(const Chunk<T>& c, const StepRows& r, T* g) {
    if (c.all_units()) return activate(g, (r.end - r.lo) * c.L.H, Act);
    for (int64_t i = 0; i < r.end - r.lo; ++i) activate(g + i * c.L.H + c.u0, c.u1 - c.u0, Act);
  }
  static void finish(const Chunk<T>& c, int64_t b, int64_t row) { copy_final_h(c.L, b, row); }

  static StepBuffer<T> backward(const Chunk<T>& c, const StepRows& r) {
    const Layer<T>& L = c.L;
    const int64_t base = (r.first + r.lo) * L.H, rows = r.end - r.lo;
    if (c.all_units()) {
      grad_through_act(L.dy + base, L.dh + r.lo * L.H, L.y + base, rows * L.H, Act, L.dgates + base);
    } else {
      for (int64_t i = 0, at = base + c.u0; i < rows; ++i, at += L.H)
        grad_through_act(L.dy + at, L.dh + (r.lo + i) * L.H + c.u0, L.y + at, c.u1 - c.u0, Act, L.dgates + at);
    }
    return {L.dgates + base, L.H, false};
  }
};

template <typename T>
using ElmanTanh = Elman<T, kTanh>;
template <typename T>
using ElmanRelu = Elman<T, kRelu>;

// Scratch per row (forward): [3H] h W_hh^T, [3H] the step's projection (proj), [4H] the gates when nothing is
// saved (they stay in L1).
template <typename T>
struct Gru {
  static int64_t scratch(const Layer<T>& L) { return L.dy ? 0 : (L.proj ? 6 : 3) * L.H + (L.ws ? 0 : 4 * L.H); }
  static T* projected(const Chunk<T>& c) { return c.scratch + (c.hi - c.lo) * 3 * c.L.H; }
  static StepBuffer<T> gates(const Chunk<T>& c, const StepRows&) { return {c.scratch, 3 * c.L.H, false}; }
  static void input(const Chunk<T>& c, const StepRows& r, T*) {
    if (c.L.proj) load_input(c, r, 3 * c.L.H, projected(c), 3 * c.L.H);
  }
  static void pointwise(const Chunk<T>& c, const StepRows& r, T* g) {
    const Layer<T>& L = c.L;
    const int64_t H = L.H;
    T* unsaved = projected(c) + (L.proj ? (c.hi - c.lo) * 3 * H : 0);
    for (int64_t b = r.lo; b < r.end; ++b) {
      const int64_t row = r.first + b, i = b - r.lo;
      const T* xr = L.proj ? projected(c) + i * 3 * H : L.x + row * 3 * H;
      T* wsr = L.ws ? L.ws + row * 4 * H : unsaved + i * 4 * H;
      gru_fwd_row(xr + c.u0, g + i * 3 * H + c.u0, state_in(L, r, b) + c.u0, L.b_hn + c.u0, H, c.u1 - c.u0,
                  L.y + row * H + c.u0, wsr + c.u0);
    }
  }
  static void finish(const Chunk<T>& c, int64_t b, int64_t row) { copy_final_h(c.L, b, row); }

  static StepBuffer<T> backward(const Chunk<T>& c, const StepRows& r) {
    const Layer<T>& L = c.L;
    const int64_t H = L.H, u0 = c.u0;
    for (int64_t b = r.lo; b < r.end; ++b) {
      const int64_t row = r.first + b;
      gru_bwd_row(L.dy + row * H + u0, L.dh + b * H + u0, state_in(L, r, b) + u0, L.ws + row * 4 * H + u0, H,
                  c.u1 - u0, L.dgates + row * 3 * H + u0, L.dg + row * 3 * H + u0);
    }
    return {L.dg + (r.first + r.lo) * 3 * H, 3 * H, true};
  }
};

// Scratch per row: forward, [W] the gates when nothing is saved (cn then carries the running cell state, c0
// until a row starts); backward, [P] dy + dh and [H] its product with W_hr (with a projection).
template <typename T>
struct Lstm {
  static int64_t scratch(const Layer<T>& L) { return L.dy ? L.P + (L.w_hr ? L.H : 0) : L.ws ? 0 : L.W; }
  static const T* c_in(const Layer<T>& L, const StepRows& r, int64_t b) {
    return b < r.split ? L.ws + (r.prev_first + b) * L.W + 4 * L.H : L.c0 + b * L.H;
  }
  static StepBuffer<T> gates(const Chunk<T>& c, const StepRows& r) {
    return {c.L.ws ? c.L.ws + (r.first + r.lo) * c.L.W : c.scratch, c.L.W, true};
  }
  static void input(const Chunk<T>& c, const StepRows& r, T* g) { load_input(c, r, 4 * c.L.H, g, c.L.W); }
  static void pointwise(const Chunk<T>& c, const StepRows& r, T* gt) {
    const Layer<T>& L = c.L;
    const int64_t H = L.H, W = L.W, u0 = c.u0, n = c.u1 - c.u0;
    for (int64_t b = r.lo; b < r.end; ++b) {
      T* gates = gt + (b - r.lo) * W + u0;
      T* u = L.w_hr ? gates + 5 * H : L.y + (r.first + b) * L.P + u0;
      if (L.ws) {
        lstm_fwd_row(gates, c_in(L, r, b) + u0, H, n, u);
      } else {
        lstm_fwd_row(gates, L.cn + b * H + u0, H, n, u);
        std::memcpy(L.cn + b * H + u0, gates + 4 * H, sizeof(T) * n);
      }
    }
    if (L.w_hr) L.w_hr->apply(gt + 5 * H, W, r.end - r.lo, L.y + (r.first + r.lo) * L.P, L.P, false);
  }
  static void finish(const Chunk<T>& c, int64_t b, int64_t row) {
    const Layer<T>& L = c.L;
    copy_final_h(L, b, row);
    if (L.ws) std::memcpy(L.cn + b * L.H, row >= 0 ? L.ws + row * L.W + 4 * L.H : L.c0 + b * L.H, sizeof(T) * L.H);
  }

  static StepBuffer<T> backward(const Chunk<T>& c, const StepRows& r) {
    const Layer<T>& L = c.L;
    const int64_t H = L.H, P = L.P, rows = r.end - r.lo, u0 = c.u0;
    const int64_t k1 = c.all_units() ? P : c.u1;  // with w_hr (P != H) the units are all of them
    T* gt = L.w_hr ? L.dh_all + (r.first + r.lo) * P : c.scratch;
    T* du = c.scratch + (c.hi - c.lo) * P;
    for (int64_t i = 0; i < rows; ++i) {
      const T* dyr = L.dy + (r.first + r.lo + i) * P;
      const T* dhr = L.dh + (r.lo + i) * P;
      for (int64_t k = u0; k < k1; ++k) gt[i * P + k] = dyr[k] + dhr[k];
    }
    if (L.w_hr) L.w_hr->apply(gt, P, rows, du, H, false);
    const T* dup = L.w_hr ? du : gt;
    for (int64_t b = r.lo; b < r.end; ++b) {
      const int64_t row = r.first + b;
      lstm_bwd_row(dup + (b - r.lo) * H + u0, L.dc + b * H + u0, L.ws + row * L.W + u0, c_in(L, r, b) + u0, H,
                   c.u1 - u0, L.dgates + row * 4 * H + u0);
    }
    return {L.dgates + (r.first + r.lo) * 4 * H, 4 * H, false};
  }
};

}  // namespace fastrnn
