// The cells' fused pointwise math for one block of rows (cell_rows.cpp, compiled per vector width), shared by the
// layer ops (cells.h) and the single cell steps (cell.cpp). Layouts, per row of H units:
//
//   Elman forward: x <- act(x) over n values; backward: dz = (dy + dh) act'(y) (act 0 tanh, 1 relu).
//   GRU  forward:  xw = [x_r, x_z, x_n] (x W_ih^T + b_ih + [b_hr, b_hz, 0]), a = h W_hh^T (3H each);
//                  writes h' (y) and ws = [r, z, n, m] with m = a_n + b_hn.
//        backward: dy = dL/dh'; dh holds the gradient already flowing into h (added to dy) and returns the
//                  part through z; writes dxw = [dr, dz, dn] (dL/dxw) and dg = [dr, dz, dm] (dL/d(h W_hh^T + b_hh)).
//   LSTM forward:  ws = [a_i, a_f, a_g, a_o] on entry (the pre-activations), [i, f, g, o, c'] on return (5H);
//                  writes u = o tanh(c').
//        backward: du = dL/du; dc holds dL/dc' on entry, dL/dc on return; writes da (4H).
// The rows take H (the distance between gates) apart from n, the units they compute from the pointers given:
// n = H for a whole row, fewer for a thread's share of the units (recurrence.cpp's run_forward_units and
// run_backward_units).
#pragma once

#include <cstdint>

namespace fastrnn {

#define FASTRNN_DECLARE_ROWS(T)                                                                        \
  void activate(T* x, int64_t n, int64_t act);                                                         \
  void grad_through_act(const T* dy, const T* dh, const T* y, int64_t n, int64_t act, T* dz);          \
  void gru_fwd_row(const T* xw, const T* a, const T* h, const T* b_hn, int64_t H, int64_t n, T* y, T* ws); \
  void gru_bwd_row(const T* dy, T* dh, const T* h, const T* ws, int64_t H, int64_t n, T* dxw, T* dg);  \
  void lstm_fwd_row(T* ws, const T* c_prev, int64_t H, int64_t n, T* u);                               \
  void lstm_bwd_row(const T* du, T* dc, const T* ws, const T* c_prev, int64_t H, int64_t n, T* da);
FASTRNN_DECLARE_ROWS(float)
FASTRNN_DECLARE_ROWS(double)
#undef FASTRNN_DECLARE_ROWS

}  // namespace fastrnn
