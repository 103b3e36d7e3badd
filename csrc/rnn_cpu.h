// The recurrence op on the CPU: declarations shared by the kernels and the registration.
#pragma once

#include <ATen/ATen.h>

#include "activations.h"
#include "blas.h"

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

namespace fastrnn {

constexpr int64_t kTanh = 0;
constexpr int64_t kRelu = 1;

// Packed batch sizes (a 1-D int64 CPU tensor) against the `rows` of the packed tensor `x_name`: positive,
// non-increasing, summing to rows; TORCH_CHECK with the offending step otherwise.
void check_batch_sizes(const at::Tensor& batch_sizes, int64_t rows, const char* x_name);

// a [M, K] @ b [K, N] (+ bias [N]) on the microkernel GEMM, checked (linear_cpu.cpp: fastrnn::mm_nn's kernel); the
// output comes from the step-buffer cache. b may be a weight's transpose.
at::Tensor mm_nn_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias);

// out[r, j] (+)= sum_k a[r, k] * w[j, k] for a [rows, K], w [H, K] (cell.cpp): one vectorised dot per
// output, for a few rows where a BLAS call costs more than the arithmetic.
void rows_times_wt(const float* a, int64_t rows, int64_t K, const float* w, int64_t H, float* out,
                   bool accumulate);
void rows_times_wt(const double* a, int64_t rows, int64_t K, const double* w, int64_t H, double* out,
                   bool accumulate);

// out[rows, H] (+)= a[rows, K] @ w[H, K]^T for one cell step (RNNCell, GRUCell, LSTMCell). For a few rows and
// below this many multiply-adds a BLAS call costs more than the arithmetic; with more rows the dot loop's one
// reduction per output loses to the BLAS (0.87x torch at B = 32, H = 32).
constexpr int64_t kSmallCell = 64 * 64 * 8;
constexpr int64_t kSmallCellRows = 4;

template <typename T>
void cell_matmul(const T* a, int64_t rows, int64_t K, const T* w, int64_t H, T* out, bool accumulate) {
  if ((rows <= kSmallCellRows && rows * K * H <= kSmallCell) || !have_fortran_gemm<T>()) {
    rows_times_wt(a, rows, K, w, H, out, accumulate);
  } else {
    gemm_rowmajor<T>(rows, H, K, a, K, w, K, true, accumulate ? T(1) : T(0), out, H);
  }
}

// y[0, n) += a x[0, n): the small-step gradient loops of the cells' backwards (cell.cpp).
template <typename T>
FASTRNN_INLINE void axpy(T a, const T* __restrict x, T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// out[cols] = the sum of rows[r, :cols] over r < n_rows, rows ld apart: a bias gradient.
template <typename T>
void sum_rows(const T* rows, int64_t n_rows, int64_t cols, T* out, int64_t ld) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t j = 0; j < cols; ++j) out[j] += rows[r * ld + j];
}

// t's data, or nullptr for an undefined t; t made contiguous, or undefined.
template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
inline at::Tensor dense(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

// Every cell's layer forward and backward with their argument checks, what the layer ops run (recurrence.cpp
// says what they take and return).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const char* op, int64_t gates, int64_t act, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool save,
    const std::optional<at::Tensor>& w_ih = std::nullopt, const std::optional<at::Tensor>& bias = std::nullopt,
    const std::optional<at::Tensor>& b_hh = std::nullopt);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_backward(
    const char* op, int64_t gates, int64_t act, const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
    const at::Tensor& y, const at::Tensor& ws, const at::Tensor& state0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    bool need_dh0);

// One RNNCell step with its autograd (cell.cpp): h' = act(input W_ih^T + b_ih + hx W_hh^T + b_hh).
at::Tensor rnn_cell_autograd(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, int64_t activation);

}  // namespace fastrnn
