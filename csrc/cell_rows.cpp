// The bodies compiled once per vector width (FASTRNN_CLONES, picked when the library loads): the cells'
// pointwise row math (gate_rows.h) and the portable per-step matmul (step_mm.h). Each body is an inlined
// template so that every clone compiles it for its own width.
#include <cstdint>

#include "activations.h"
#include "gate_activations.h"
#include "gate_rows.h"
#include "register_block.h"
#include "step_mm.h"

namespace fastrnn {
namespace {

template <typename T>
FASTRNN_INLINE void activate_impl(T* __restrict x, int64_t n, int64_t act) {
  if (act == 0) {
    for (int64_t i = 0; i < n; ++i) x[i] = tanh_scalar(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = relu_scalar(x[i]);
  }
}

template <typename T>
FASTRNN_INLINE void grad_through_act_impl(const T* __restrict dy, const T* __restrict dh, const T* __restrict y,
                                          int64_t n, int64_t act, T* __restrict dz) {
  if (act == 0) {
    for (int64_t i = 0; i < n; ++i) dz[i] = (dy[i] + dh[i]) * (T(1) - y[i] * y[i]);
  } else {
    // Written as torch's threshold_backward: a NaN output passes its gradient through.
    for (int64_t i = 0; i < n; ++i) dz[i] = y[i] <= T(0) ? T(0) : dy[i] + dh[i];
  }
}

template <typename T>
FASTRNN_INLINE void gru_fwd_row_impl(const T* __restrict xw, const T* __restrict a, const T* __restrict h,
                                     const T* __restrict b_hn, int64_t H, int64_t n_units, T* __restrict y,
                                     T* __restrict ws) {
  for (int64_t j = 0; j < n_units; ++j) {
    const T r = sigmoid_scalar(xw[j] + a[j]);
    const T z = sigmoid_scalar(xw[H + j] + a[H + j]);
    const T m = a[2 * H + j] + b_hn[j];
    const T n = tanh_scalar(xw[2 * H + j] + r * m);
    y[j] = (h[j] - n) * z + n;
    ws[j] = r;
    ws[H + j] = z;
    ws[2 * H + j] = n;
    ws[3 * H + j] = m;
  }
}

template <typename T>
FASTRNN_INLINE void gru_bwd_row_impl(const T* __restrict dy, T* __restrict dh, const T* __restrict h,
                                     const T* __restrict ws, int64_t H, int64_t n_units, T* __restrict dxw,
                                     T* __restrict dg) {
  for (int64_t j = 0; j < n_units; ++j) {
    const T r = ws[j], z = ws[H + j], n = ws[2 * H + j], m = ws[3 * H + j];
    const T g = dy[j] + dh[j];
    const T dn = g * (T(1) - z) * (T(1) - n * n);
    const T dz = g * (h[j] - n) * z * (T(1) - z);
    const T dr = dn * m * r * (T(1) - r);
    const T dmj = dn * r;
    dxw[j] = dr;
    dxw[H + j] = dz;
    dxw[2 * H + j] = dn;
    dg[j] = dr;
    dg[H + j] = dz;
    dg[2 * H + j] = dmj;
    dh[j] = g * z;
  }
}

template <typename T>
FASTRNN_INLINE void lstm_fwd_row_impl(T* __restrict ws, const T* __restrict c_prev, int64_t H, int64_t n,
                                      T* __restrict u) {
  for (int64_t j = 0; j < n; ++j) {
    const T i = sigmoid_scalar(ws[j]);
    const T f = sigmoid_scalar(ws[H + j]);
    const T g = tanh_scalar(ws[2 * H + j]);
    const T o = sigmoid_scalar(ws[3 * H + j]);
    const T c = f * c_prev[j] + i * g;
    ws[j] = i;
    ws[H + j] = f;
    ws[2 * H + j] = g;
    ws[3 * H + j] = o;
    ws[4 * H + j] = c;
    u[j] = o * tanh_scalar(c);
  }
}

template <typename T>
FASTRNN_INLINE void lstm_bwd_row_impl(const T* __restrict du, T* __restrict dc, const T* __restrict ws,
                                      const T* __restrict c_prev, int64_t H, int64_t n, T* __restrict da) {
  for (int64_t j = 0; j < n; ++j) {
    const T i = ws[j], f = ws[H + j], g = ws[2 * H + j], o = ws[3 * H + j], c = ws[4 * H + j];
    const T tc = tanh_scalar(c);
    const T d = dc[j] + du[j] * o * (T(1) - tc * tc);
    da[j] = d * g * i * (T(1) - i);
    da[H + j] = d * c_prev[j] * f * (T(1) - f);
    da[2 * H + j] = d * i * (T(1) - g * g);
    da[3 * H + j] = du[j] * tc * o * (T(1) - o);
    dc[j] = d * f;
  }
}

// R * J = 128 bytes' worth of rows by columns per block (8 AVX-512 accumulators): enough independent FMA
// chains to cover the FMA latency whether a thread has 1, 2 or 4+ rows.
template <typename T, int64_t R>
FASTRNN_INLINE void mm_rows_block(const T* a, int64_t lda, const T* b, int64_t K, int64_t N, T* out, int64_t ldo,
                                  bool accumulate) {
  constexpr int64_t J = 512 / sizeof(T) / R;
  constexpr int64_t J2 = 128 / sizeof(T);
  int64_t j0 = 0;
  for (; j0 + J <= N; j0 += J) mm_block<T, R, J>(a, lda, b, K, N, j0, out, ldo, accumulate);
  if constexpr (J2 < J) {
    for (; j0 + J2 <= N; j0 += J2) mm_block<T, R, J2>(a, lda, b, K, N, j0, out, ldo, accumulate);
  }
  for (; j0 + 8 <= N; j0 += 8) mm_block<T, R, 8>(a, lda, b, K, N, j0, out, ldo, accumulate);
  for (; j0 < N; ++j0) mm_block<T, R, 1>(a, lda, b, K, N, j0, out, ldo, accumulate);
}

template <typename T>
FASTRNN_INLINE void small_mm_impl(const T* a, int64_t lda, int64_t rows, const T* b, int64_t K, int64_t N, T* out,
                                  int64_t ldo, bool accumulate) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) mm_rows_block<T, 4>(a + r * lda, lda, b, K, N, out + r * ldo, ldo, accumulate);
  for (; r + 2 <= rows; r += 2) mm_rows_block<T, 2>(a + r * lda, lda, b, K, N, out + r * ldo, ldo, accumulate);
  for (; r < rows; ++r) mm_rows_block<T, 1>(a + r * lda, lda, b, K, N, out + r * ldo, ldo, accumulate);
}

}  // namespace

#define FASTRNN_DEFINE_ROWS(T)                                                                                   \
  FASTRNN_CLONES void activate(T* x, int64_t n, int64_t act) { activate_impl(x, n, act); }                      \
  FASTRNN_CLONES void grad_through_act(const T* dy, const T* dh, const T* y, int64_t n, int64_t act, T* dz) {   \
    grad_through_act_impl(dy, dh, y, n, act, dz);                                                                \
  }                                                                                                              \
  FASTRNN_CLONES void gru_fwd_row(const T* xw, const T* a, const T* h, const T* b_hn, int64_t H, int64_t n, T* y,  \
                                  T* ws) {                                                                       \
    gru_fwd_row_impl(xw, a, h, b_hn, H, n, y, ws);                                                               \
  }                                                                                                              \
  FASTRNN_CLONES void gru_bwd_row(const T* dy, T* dh, const T* h, const T* ws, int64_t H, int64_t n, T* dxw,    \
                                  T* dg) {                                                                       \
    gru_bwd_row_impl(dy, dh, h, ws, H, n, dxw, dg);                                                              \
  }                                                                                                              \
  FASTRNN_CLONES void lstm_fwd_row(T* ws, const T* c_prev, int64_t H, int64_t n, T* u) {                        \
    lstm_fwd_row_impl(ws, c_prev, H, n, u);                                                                      \
  }                                                                                                              \
  FASTRNN_CLONES void lstm_bwd_row(const T* du, T* dc, const T* ws, const T* c_prev, int64_t H, int64_t n,      \
                                   T* da) {                                                                      \
    lstm_bwd_row_impl(du, dc, ws, c_prev, H, n, da);                                                             \
  }                                                                                                              \
  FASTRNN_CLONES void small_mm(const T* a, int64_t lda, int64_t rows, const T* b, int64_t K, int64_t N, T* out, \
                               int64_t ldo, bool accumulate) {                                                   \
    small_mm_impl(a, lda, rows, b, K, N, out, ldo, accumulate);                                                  \
  }
FASTRNN_DEFINE_ROWS(float)
FASTRNN_DEFINE_ROWS(double)
#undef FASTRNN_DEFINE_ROWS

}  // namespace fastrnn
