// CPU implementation of the recurrence op (float32, float64).
//
//   forward:  h_t = act(xw_t + h_{t-1} W_hh^T)          saves nothing but y
//   backward: g_t = dy_t + dh_{t+1}; dz_t = g_t * act'(y_t); dh_t = dz_t W_hh
//
// T steps, B batch rows, H hidden units. Packed input: step t updates rows [0, batch_sizes[t]) of the
// running state (batch_sizes non-increasing), so every batch row is an independent chain: rows are split
// across threads once and each thread runs all T steps on its rows with no synchronisation.
// Small steps (rows per thread * H * H up to kSmallStep) use an in-register axpy loop compiled for the
// CPU's vector width at load time; larger steps call the BLAS directly on raw pointers.
#include "rnn_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "activations.h"
#include "blas.h"
#include "register_block.h"
#include "row_recurrence.h"
#include "step_buffers.h"

// Bodies are inlined (FASTRNN_INLINE, activations.h) into each clone so that every clone compiles them for
// its own vector width.

namespace fastrnn {

void check_batch_sizes(const at::Tensor& batch_sizes, int64_t rows, const char* x_name) {
  const auto c = batch_sizes.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  // The running total is compared before it is added to, so no sum of batch sizes can wrap around.
  int64_t total = 0;
  for (int64_t t = 0; t < c.numel(); ++t) {
    TORCH_CHECK(p[t] > 0, "fastrnn: batch_sizes must be positive, got ", p[t], " at step ", t);
    TORCH_CHECK(t == 0 || p[t] <= p[t - 1],
                "fastrnn: batch_sizes must be non-increasing, got ", p[t - (t > 0)], " then ",
                p[t], " at step ", t);
    TORCH_CHECK(p[t] <= rows - total, "fastrnn: batch_sizes sum to more than the ", rows,
                " rows of ", x_name, " (at step ", t, ")");
    total += p[t];
  }
  TORCH_CHECK(total == rows, "fastrnn: batch_sizes sum to ", total, " but ", x_name, " has ",
              rows, " rows");
}

namespace {

constexpr int64_t kSmallStep = 64 * 64 * 64;
constexpr int64_t kRowsPerThreadMin = 2;

// out[r, :] (+)= sum_k a[r, k] * b[k, :] for a [rows, n], b [n, n], in register blocks (mm_block) of
// kRowBlock rows by 128 bytes of columns.
constexpr int64_t kRowBlock = 2;

template <typename T, int64_t R>
FASTRNN_INLINE void matmul_row_block(const T* a, const T* b, int64_t n, T* out, bool accumulate) {
  constexpr int64_t J = 128 / sizeof(T);
  int64_t j0 = 0;
  for (; j0 + J <= n; j0 += J) mm_block<T, R, J>(a, n, b, n, n, j0, out, n, accumulate);
  for (; j0 + 8 <= n; j0 += 8) mm_block<T, R, 8>(a, n, b, n, n, j0, out, n, accumulate);
  for (; j0 < n; ++j0) mm_block<T, R, 1>(a, n, b, n, n, j0, out, n, accumulate);
}

template <typename T>
FASTRNN_INLINE void matmul_rows_impl(const T* a, int64_t rows, const T* b, int64_t n, T* out,
                             bool accumulate) {
  int64_t r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock)
    matmul_row_block<T, kRowBlock>(a + r * n, b, n, out + r * n, accumulate);
  for (; r < rows; ++r) matmul_row_block<T, 1>(a + r * n, b, n, out + r * n, accumulate);
}

FASTRNN_CLONES void matmul_rows(const float* a, int64_t rows, const float* b, int64_t n, float* out,
                                bool accumulate) {
  matmul_rows_impl(a, rows, b, n, out, accumulate);
}
FASTRNN_CLONES void matmul_rows(const double* a, int64_t rows, const double* b, int64_t n,
                                double* out, bool accumulate) {
  matmul_rows_impl(a, rows, b, n, out, accumulate);
}


template <typename T>
FASTRNN_INLINE void activate_impl(T* __restrict x, int64_t n, int64_t act) {
  if (act == kTanh) {
    for (int64_t i = 0; i < n; ++i) x[i] = tanh_scalar(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = relu_scalar(x[i]);
  }
}

FASTRNN_CLONES void activate(float* x, int64_t n, int64_t act) { activate_impl(x, n, act); }
FASTRNN_CLONES void activate(double* x, int64_t n, int64_t act) { activate_impl(x, n, act); }

template <typename T>
FASTRNN_INLINE void grad_through_act_impl(const T* __restrict dy, const T* __restrict dh,
                                  const T* __restrict y, int64_t n, int64_t act,
                                  T* __restrict dz) {
  if (act == kTanh) {
    for (int64_t i = 0; i < n; ++i) dz[i] = (dy[i] + dh[i]) * (T(1) - y[i] * y[i]);
  } else {
    // Written as torch's threshold_backward: a NaN output passes its gradient through.
    for (int64_t i = 0; i < n; ++i) dz[i] = y[i] <= T(0) ? T(0) : dy[i] + dh[i];
  }
}

FASTRNN_CLONES void grad_through_act(const float* dy, const float* dh, const float* y, int64_t n,
                                     int64_t act, float* dz) {
  grad_through_act_impl(dy, dh, y, n, act, dz);
}
FASTRNN_CLONES void grad_through_act(const double* dy, const double* dh, const double* y,
                                     int64_t n, int64_t act, double* dz) {
  grad_through_act_impl(dy, dh, y, n, act, dz);
}

// out[rows, H] (+)= a[rows, H] @ op(W); op(W) = W^T when trans_w.
// The small path takes `w_small`, already laid out so that op(W) = w_small read row by row.
template <typename T>
void step_matmul(const T* a, int64_t rows, const T* w, const T* w_small, bool trans_w, int64_t H,
                 T* out, bool accumulate, bool small) {
  if (rows <= 0) return;
  if (small) {
    matmul_rows(a, rows, w_small, H, out, accumulate);
  } else {
    gemm_rowmajor<T>(rows, H, H, a, H, w, H, trans_w, accumulate ? T(1) : T(0), out, H);
  }
}

struct Steps {
  std::vector<int64_t> sizes;    // rows active at each step
  std::vector<int64_t> offsets;  // first packed row of each step, size T + 1
  int64_t batch = 0;
};

Steps make_steps(const at::Tensor& x, const std::optional<at::Tensor>& batch_sizes) {
  Steps s;
  if (batch_sizes.has_value()) {
    const auto bs = batch_sizes->contiguous();
    const int64_t* p = bs.data_ptr<int64_t>();
    s.sizes.assign(p, p + bs.numel());
  } else {
    s.sizes.assign(x.size(0), x.size(1));
  }
  s.offsets.resize(s.sizes.size() + 1, 0);
  for (size_t t = 0; t < s.sizes.size(); ++t) s.offsets[t + 1] = s.offsets[t] + s.sizes[t];
  s.batch = s.sizes.empty() ? 0 : s.sizes[0];
  return s;
}

// Runs `body(lo, hi)` over batch-row chunks in parallel. Large steps too: a single-threaded BLAS call per
// thread on its own rows beats one BLAS call threading each step (5-20% at H = 256..1024, 2 cores), since
// the threads never meet between steps. The BLAS sees it is inside a parallel region and stays serial.
template <typename F>
void for_row_chunks(int64_t batch, const F& body) {
  if (batch >= 2 * kRowsPerThreadMin) {
    at::parallel_for(0, batch, kRowsPerThreadMin, body);
  } else {
    body(0, batch);
  }
}

template <typename T>
void forward_rows(const Steps& s, int64_t lo, int64_t hi, const T* xw, const T* h0, const T* w,
                  const T* w_small, int64_t H, bool reverse, int64_t act, bool small, T* y, T* hn) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = reverse ? nsteps - 1 - i : i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    T* out = y + (s.offsets[t] + lo) * H;
    const T* in = xw + (s.offsets[t] + lo) * H;
    if (in != out) std::memcpy(out, in, sizeof(T) * (end - lo) * H);  // xw == y: in place
    // Rows [lo, split) continue the chain of the neighbouring step; rows [split, end) start from h0.
    int64_t split = lo;
    const T* prev = nullptr;
    if (i > 0) {
      const int64_t tp = reverse ? t + 1 : t - 1;
      split = std::min(end, std::max(lo, s.sizes[tp]));
      prev = y + (s.offsets[tp] + lo) * H;
    }
    step_matmul(prev, split - lo, w, w_small, true, H, out, true, small);
    step_matmul(h0 + split * H, end - split, w, w_small, true, H, out + (split - lo) * H, true,
                small);
    activate(out, (end - lo) * H, act);
  }
  // h_n row r is y at the last step that row r is active in (walking direction): step 0 when reversed.
  for (int64_t r = lo; r < hi; ++r) {
    int64_t t_last = 0;
    if (!reverse) {
      while (t_last + 1 < nsteps && s.sizes[t_last + 1] > r) ++t_last;
    }
    const T* src = nsteps > 0 ? y + (s.offsets[t_last] + r) * H : h0 + r * H;
    std::memcpy(hn + r * H, src, sizeof(T) * H);
  }
}

template <typename T>
void backward_rows(const Steps& s, int64_t lo, int64_t hi, const T* dy, const T* y, const T* w,
                   int64_t H, bool reverse, int64_t act, bool small, bool need_dh0, T* dz, T* dh) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  std::vector<T> dz_step;
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = reverse ? i : nsteps - 1 - i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    const int64_t base = (s.offsets[t] + lo) * H;
    const int64_t n = (end - lo) * H;
    grad_through_act(dy + base, dh + lo * H, y + base, n, act, dz + base);
    // dh_t = dz_t W_hh overwrites the running gradient of the rows it covers. After the last step
    // it is only dh0, which nobody may want.
    if (i + 1 < nsteps || need_dh0) {
      step_matmul(dz + base, end - lo, w, w, false, H, dh + lo * H, false, small);
    }
  }
}

// Python's None reaches a Tensor argument of a torch.ops call as an undefined tensor.
void check_defined(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors,
                   const std::optional<at::Tensor>& batch_sizes, const char* op) {
  for (const auto& [t, name] : tensors) {
    TORCH_CHECK(t->defined(), "fastrnn::", op, ": argument '", name, "' must be a Tensor, got None");
  }
  TORCH_CHECK(!batch_sizes.has_value() || batch_sizes->defined(), "fastrnn::", op,
              ": argument 'batch_sizes' must be a Tensor or None");
}

template <typename T>
void check_common(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& batch_sizes, int64_t activation,
                  const char* x_name, const char* h_name) {
  TORCH_CHECK(activation == kTanh || activation == kRelu,
              "fastrnn: activation must be 0 (tanh) or 1 (relu), got ", activation);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == w_hh.size(1),
              "fastrnn: w_hh must be a square matrix [H, H], got ", w_hh.sizes());
  const int64_t H = w_hh.size(0);
  for (const at::Tensor* t : {&x, &h, &w_hh}) {
    TORCH_CHECK(t->device().is_cpu(), "fastrnn: the CPU op got a tensor on ", t->device());
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "fastrnn: ", x_name, ", ", h_name,
                " and w_hh must share a dtype, got ", x.scalar_type(), " and ", t->scalar_type());
  }
  if (batch_sizes.has_value()) {
    const auto& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
                "fastrnn: batch_sizes must be a 1-D int64 CPU tensor, got ", bs.dim(), "-D ",
                bs.scalar_type(), " on ", bs.device());
    TORCH_CHECK(x.dim() == 2, "fastrnn: packed ", x_name, " must be [N, H], got ", x.sizes());
    check_batch_sizes(bs, x.size(0), x_name);
    const auto c = bs.contiguous();
    const int64_t batch = c.numel() > 0 ? c.data_ptr<int64_t>()[0] : h.size(0);
    TORCH_CHECK(h.dim() == 2 && h.size(0) == batch && h.size(1) == H, "fastrnn: expected ", h_name,
                " of shape [", batch, ", ", H, "], got ", h.sizes());
  } else {
    TORCH_CHECK(x.dim() == 3, "fastrnn: padded ", x_name, " must be [T, B, H], got ", x.sizes());
    TORCH_CHECK(h.dim() == 2 && h.size(0) == x.size(1) && h.size(1) == H, "fastrnn: expected ",
                h_name, " of shape [", x.size(1), ", ", H, "], got ", h.sizes());
  }
  TORCH_CHECK(x.size(-1) == H, "fastrnn: ", x_name, " has ", x.size(-1),
              " features but w_hh is [", H, ", ", H, "]");
}

int64_t rows_per_thread(int64_t batch) {
  const int64_t threads = std::max(1, at::get_num_threads());
  return std::max<int64_t>(1, (batch + threads - 1) / threads);
}

template <typename T>
bool is_small_step(int64_t rows, int64_t H) {
  return rows * H * H <= kSmallStep || !have_fortran_gemm<T>();
}

}  // namespace

template <typename T>
void recurrence_forward_raw(const int64_t* batch_sizes, int64_t steps, int64_t batch, const T* xw,
                            const T* h0, const T* w, int64_t H, bool reverse, int64_t activation, T* y,
                            T* hn) {
  Steps s;
  if (batch_sizes != nullptr) {
    s.sizes.assign(batch_sizes, batch_sizes + steps);
  } else {
    s.sizes.assign(steps, batch);
  }
  s.offsets.resize(steps + 1, 0);
  for (int64_t t = 0; t < steps; ++t) s.offsets[t + 1] = s.offsets[t] + s.sizes[t];
  const bool small = is_small_step<T>(rows_per_thread(batch), H);
  std::vector<T> wt;  // the axpy loop wants op(W) = W^T row by row
  if (small) {
    wt.resize(H * H);
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < H; ++j) wt[j * H + i] = w[i * H + j];
  }
  if constexpr (std::is_same_v<T, float>) {
    if (small && batch == 1 && row_kernel_takes(1, H)) {  // latency-bound: row_recurrence.h
      elman_row_forward(steps, [&](int64_t i) { return s.offsets[reverse ? steps - 1 - i : i]; }, xw, h0,
                        wt.data(), H, activation, y, hn);
      return;
    }
  }
  for_row_chunks(batch, [&](int64_t lo, int64_t hi) {
    forward_rows<T>(s, lo, hi, xw, h0, w, wt.data(), H, reverse, activation, small, y, hn);
  });
}

template void recurrence_forward_raw<float>(const int64_t*, int64_t, int64_t, const float*, const float*,
                                            const float*, int64_t, bool, int64_t, float*, float*);
template void recurrence_forward_raw<double>(const int64_t*, int64_t, int64_t, const double*,
                                             const double*, const double*, int64_t, bool, int64_t,
                                             double*, double*);

template <typename T>
void recurrence_backward_raw(int64_t steps, int64_t batch, const T* dy, const T* y, const T* w, int64_t H,
                             bool reverse, int64_t activation, bool need_dh0, T* dz, T* dh) {
  Steps s;
  s.sizes.assign(steps, batch);
  s.offsets.resize(steps + 1, 0);
  for (int64_t t = 0; t < steps; ++t) s.offsets[t + 1] = s.offsets[t] + s.sizes[t];
  const bool small = is_small_step<T>(rows_per_thread(batch), H);
  for_row_chunks(batch, [&](int64_t lo, int64_t hi) {
    backward_rows<T>(s, lo, hi, dy, y, w, H, reverse, activation, small, need_dh0, dz, dh);
  });
}

template void recurrence_backward_raw<float>(int64_t, int64_t, const float*, const float*, const float*, int64_t,
                                             bool, int64_t, bool, float*, float*);
template void recurrence_backward_raw<double>(int64_t, int64_t, const double*, const double*, const double*,
                                              int64_t, bool, int64_t, bool, double*, double*);

std::tuple<at::Tensor, at::Tensor> rnn_fwd_cpu(const at::Tensor& xw, const at::Tensor& h0,
                                               const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               bool reverse, int64_t activation) {
  check_defined({{&xw, "xw"}, {&h0, "h0"}, {&w_hh, "w_hh"}}, batch_sizes, "rnn_fwd");
  TORCH_CHECK(xw.scalar_type() == at::kFloat || xw.scalar_type() == at::kDouble,
              "fastrnn: the CPU op supports float32 and float64, got ", xw.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "fastrnn_rnn_fwd", [&] {
    check_common<scalar_t>(xw, h0, w_hh, batch_sizes, activation, "xw", "h0");
  });
  const auto x = xw.contiguous();
  const auto h = h0.contiguous();
  const auto w = w_hh.contiguous();
  const int64_t H = w.size(0);
  const int64_t batch = h.size(0);
  at::Tensor bs;
  if (batch_sizes.has_value()) bs = batch_sizes->contiguous();
  const int64_t steps = bs.defined() ? bs.numel() : x.size(0);
  auto y = step_buffer(x.sizes(), x.options());  // [T, B, H] or [N, H]
  auto hn = at::empty({batch, H}, h.options());  // [B, H]
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_rnn_fwd", [&] {
    recurrence_forward_raw<scalar_t>(bs.defined() ? bs.data_ptr<int64_t>() : nullptr, steps, batch,
                                     x.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                     w.data_ptr<scalar_t>(), H, reverse, activation,
                                     y.data_ptr<scalar_t>(), hn.data_ptr<scalar_t>());
  });
  return {y, hn};
}

std::tuple<at::Tensor, at::Tensor> rnn_bwd_cpu(const at::Tensor& dy, const at::Tensor& dh_n,
                                               const at::Tensor& y, const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               bool reverse, int64_t activation, bool need_dh0) {
  check_defined({{&dy, "dy"}, {&dh_n, "dh_n"}, {&y, "y"}, {&w_hh, "w_hh"}}, batch_sizes, "rnn_bwd");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "fastrnn: the CPU op supports float32 and float64, got ", y.scalar_type());
  TORCH_CHECK(dy.sizes() == y.sizes(), "fastrnn: dy must have the shape of y ", y.sizes(),
              ", got ", dy.sizes());
  TORCH_CHECK(dy.scalar_type() == y.scalar_type() && dy.device().is_cpu(),
              "fastrnn: dy must be a CPU tensor of dtype ", y.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fastrnn_rnn_bwd", [&] {
    check_common<scalar_t>(y, dh_n, w_hh, batch_sizes, activation, "y", "dh_n");
  });
  const auto g = step_contiguous(dy);
  const auto yc = y.contiguous();
  const auto w = w_hh.contiguous();
  const int64_t H = w.size(0);
  const Steps s = make_steps(yc, batch_sizes);
  auto dz = step_buffer(yc.sizes(), yc.options());  // [T, B, H] or [N, H]
  auto dh = dh_n.contiguous().clone();  // [B, H]: dh_n in, dh0 out
  const int64_t batch = dh.size(0);
  AT_DISPATCH_FLOATING_TYPES(yc.scalar_type(), "fastrnn_rnn_bwd", [&] {
    const bool small = is_small_step<scalar_t>(rows_per_thread(batch), H);
    for_row_chunks(batch, [&](int64_t lo, int64_t hi) {
      backward_rows<scalar_t>(s, lo, hi, g.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(),
                              w.data_ptr<scalar_t>(), H, reverse, activation, small,
                              need_dh0, dz.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>());
    });
  });
  return {dz, dh};
}

}  // namespace fastrnn
