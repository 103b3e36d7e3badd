// One RNNCell / GRUCell / LSTMCell step as one C++ call with one autograd node, written once over a cell
// (Elman, Gru, Lstm: the step's pointwise math forward and backward):
//
//   forward:  xw = x W_ih^T, a = h W_hh^T (cell_matmul: a dot loop or the BLAS), then the cell's rows:
//             Elman h' = act(xw + a + b_ih + b_hh); Gru / Lstm the layer op's gate rows (gate_rows.h), which
//             leave the gates in ws. Saves what torch's cell saves, and ws (Elman: h' itself).
//   backward: the cell's rows give, per row, dxw = dL/d(x W_ih^T + b_ih) and dg = dL/d(h W_hh^T + b_hh)
//             (one tensor but for the GRU); then dx = dxw W_ih, dh = dg W_hh (+ the GRU's path through z),
//             dW_ih = dxw^T x, dW_hh = dg^T h, db_ih = sum of dxw's rows, db_hh = sum of dg's.
//
// A Python loop over torch's cells pays per step for four (RNNCell) to a dozen ATen ops and autograd nodes;
// this is one call and one node. Under create_graph (and for batched gradients, or tensors the raw kernels
// do not take) the backward differentiates torch's own cell recomputed on the inputs, so gradients of any
// order are torch's. fastrnn::rnn_cell is the Elman step as an op (TorchScript records it): its kernel runs
// ATen ops on any device and dtype the raw kernels do not take.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "activations.h"
#include "blas.h"
#include "gate_rows.h"
#include "rnn_cpu.h"
#include "saved_inputs.h"
#include "whole_call.h"

namespace fastrnn {

// out[r, j] (+)= sum_k a[r, k] * w[j, k] for a [rows, K], w [H, K] (W as stored: no transpose). One dot
// product per output; `omp simd reduction` lets the compiler reassociate the sum into vector lanes.
template <typename T>
FASTRNN_INLINE void rows_times_wt_impl(const T* __restrict a, int64_t rows, int64_t K,
                                       const T* __restrict w, int64_t H, T* __restrict out,
                                       bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict ar = a + r * K;
    for (int64_t j = 0; j < H; ++j) {
      const T* __restrict wj = w + j * K;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += ar[k] * wj[k];
      out[r * H + j] = accumulate ? out[r * H + j] + acc : acc;
    }
  }
}

FASTRNN_CLONES void rows_times_wt(const float* a, int64_t rows, int64_t K, const float* w, int64_t H,
                                  float* out, bool accumulate) {
  rows_times_wt_impl(a, rows, K, w, H, out, accumulate);
}
FASTRNN_CLONES void rows_times_wt(const double* a, int64_t rows, int64_t K, const double* w,
                                  int64_t H, double* out, bool accumulate) {
  rows_times_wt_impl(a, rows, K, w, H, out, accumulate);
}

namespace {

// out[r, :] = act(out[r, :] + b_ih + b_hh) (either bias may be nullptr).
template <typename T>
FASTRNN_INLINE void bias_activate_impl(T* __restrict out, int64_t rows, int64_t H, const T* __restrict b_ih,
                                       const T* __restrict b_hh, int64_t act) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict o = out + r * H;
    if (b_ih != nullptr)
      for (int64_t j = 0; j < H; ++j) o[j] += b_ih[j];
    if (b_hh != nullptr)
      for (int64_t j = 0; j < H; ++j) o[j] += b_hh[j];
    if (act == kTanh) {
      for (int64_t j = 0; j < H; ++j) o[j] = tanh_scalar(o[j]);
    } else {
      for (int64_t j = 0; j < H; ++j) o[j] = relu_scalar(o[j]);
    }
  }
}

FASTRNN_CLONES void bias_activate(float* out, int64_t rows, int64_t H, const float* b_ih, const float* b_hh,
                                  int64_t act) {
  bias_activate_impl(out, rows, H, b_ih, b_hh, act);
}
FASTRNN_CLONES void bias_activate(double* out, int64_t rows, int64_t H, const double* b_ih, const double* b_hh,
                                  int64_t act) {
  bias_activate_impl(out, rows, H, b_ih, b_hh, act);
}

// N rows, I inputs, H units, G = gates * H rows in W_ih and W_hh.
struct CellShape {
  int64_t N, I, H, G;
};

// The cells. forward: h' (and c') of every row from x, h (, c), the weights and biases (nullptr: none),
// the gates into ws [N, width] (Elman: ws is h'). backward: dxw (and dg where kSeparateHidden, else dg is
// dxw) from dL/dh' (gh) and dL/dc' (gc, nullptr: zero); Gru adds its path through z to dh_z, Lstm writes dc.
struct Elman {
  static constexpr bool kSeparateHidden = false;
  int64_t activation;

  template <typename T>
  void forward(const CellShape& d, const T* x, const T* h, const T*, const T* w_ih, const T* w_hh, const T* bi,
               const T* bh, T* ho, T*, T*) const {
    cell_matmul<T>(x, d.N, d.I, w_ih, d.H, ho, false);
    cell_matmul<T>(h, d.N, d.H, w_hh, d.H, ho, true);
    bias_activate(ho, d.N, d.H, bi, bh, activation);
  }

  template <typename T>
  void backward(const CellShape& d, const T* gh, const T*, const T*, const T*, const T* out, T* dz, T*, T*,
                T*) const {
    for (int64_t i = 0; i < d.N * d.H; ++i) {  // tanh_backward and threshold_backward, as torch's graph has them
      dz[i] = activation == kTanh ? gh[i] * (T(1) - out[i] * out[i]) : (out[i] <= T(0) ? T(0) : gh[i]);
    }
  }
};

struct Gru {  // ws row: [r, z, n, m]
  static constexpr bool kSeparateHidden = true;

  template <typename T>
  void forward(const CellShape& d, const T* x, const T* h, const T*, const T* w_ih, const T* w_hh, const T* bi,
               const T* bh, T* ho, T*, T* ws) const {
    const int64_t N = d.N, H = d.H, G = d.G;
    std::vector<T> xw(N * G), a(N * G), b_hn(H, T(0));
    cell_matmul<T>(x, N, d.I, w_ih, G, xw.data(), false);
    cell_matmul<T>(h, N, H, w_hh, G, a.data(), false);
    if (bi != nullptr) {  // b_hh folds into r and z; b_hn stays inside the reset product, as torch computes it
      for (int64_t r = 0; r < N; ++r) {
        T* row = xw.data() + r * G;
        for (int64_t j = 0; j < 2 * H; ++j) row[j] += bi[j] + bh[j];
        for (int64_t j = 2 * H; j < G; ++j) row[j] += bi[j];
      }
      std::copy(bh + 2 * H, bh + G, b_hn.begin());
    }
    for (int64_t r = 0; r < N; ++r)
      gru_fwd_row(xw.data() + r * G, a.data() + r * G, h + r * H, b_hn.data(), H, H, ho + r * H, ws + r * 4 * H);
  }

  template <typename T>
  void backward(const CellShape& d, const T* gh, const T*, const T* h, const T*, const T* ws, T* dxw, T* dg,
                T* dh_z, T*) const {
    const int64_t H = d.H, G = d.G;
    for (int64_t r = 0; r < d.N; ++r)
      gru_bwd_row(gh + r * H, dh_z + r * H, h + r * H, ws + r * 4 * H, H, H, dxw + r * G, dg + r * G);
  }
};

struct Lstm {  // ws row: [i, f, g, o, c']
  static constexpr bool kSeparateHidden = false;

  template <typename T>
  void forward(const CellShape& d, const T* x, const T* h, const T* c, const T* w_ih, const T* w_hh, const T* bi,
               const T* bh, T* ho, T* co, T* ws) const {
    const int64_t N = d.N, H = d.H, G = d.G;
    std::vector<T> pre(N * G);
    cell_matmul<T>(x, N, d.I, w_ih, G, pre.data(), false);
    cell_matmul<T>(h, N, H, w_hh, G, pre.data(), true);
    for (int64_t r = 0; r < N; ++r) {
      const T* row = pre.data() + r * G;
      T* wr = ws + r * 5 * H;
      for (int64_t j = 0; j < G; ++j) wr[j] = bi != nullptr ? row[j] + bi[j] + bh[j] : row[j];
      lstm_fwd_row(wr, c + r * H, H, H, ho + r * H);
      std::memcpy(co + r * H, wr + 4 * H, sizeof(T) * H);
    }
  }

  template <typename T>
  void backward(const CellShape& d, const T* gh, const T* gc, const T*, const T* c, const T* ws, T* da, T*, T*,
                T* dc) const {
    const int64_t H = d.H;
    std::vector<T> dcr(H);
    for (int64_t r = 0; r < d.N; ++r) {
      if (gc != nullptr) {
        std::memcpy(dcr.data(), gc + r * H, sizeof(T) * H);
      } else {
        std::fill(dcr.begin(), dcr.end(), T(0));
      }
      lstm_bwd_row(gh + r * H, dcr.data(), ws + r * 5 * H, c + r * H, H, H, da + r * d.G);
      if (dc != nullptr) std::memcpy(dc + r * H, dcr.data(), sizeof(T) * H);
    }
  }
};

// A gradient matmul of the step, d [rows, G]: out[rows, K] = d @ b with b [G, K] (a weight as stored), or
// with trans out[G, K] = d^T @ b with b [rows, K] (an input). A few small rows: axpy loops (a BLAS call
// costs more than the arithmetic there).
template <typename T>
void cell_grad_mm(bool trans, int64_t rows, int64_t G, int64_t K, const T* d, const T* b, T* out) {
  if (rows <= kSmallCellRows && rows * G * K <= kSmallCell) {
    std::fill(out, out + (trans ? G : rows) * K, T(0));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < G; ++j) {
        if (trans) {
          axpy(d[r * G + j], b + r * K, out + j * K, K);
        } else {
          axpy(d[r * G + j], b + j * K, out + r * K, K);
        }
      }
    }
  } else if (trans) {
    gemm_rowmajor_ex<T>(true, G, K, rows, d, G, b, K, false, T(0), out, K);
  } else {
    gemm_rowmajor_ex<T>(false, rows, K, G, d, G, b, K, false, T(0), out, K);
  }
}

// Every wanted gradient (nullptr: not wanted) into out: dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh.
template <class Cell, typename T>
void backward_raw(const Cell& cell, const CellShape& d, const T* gh, const T* gc, const T* x, const T* h,
                  const T* c, const T* w_ih, const T* w_hh, const T* ws, const std::array<T*, 7>& out) {
  const int64_t N = d.N, I = d.I, H = d.H, G = d.G;
  std::vector<T> dxw(N * G), dg(Cell::kSeparateHidden ? N * G : 0), dh_z(Cell::kSeparateHidden ? N * H : 0, T(0));
  cell.backward(d, gh, gc, h, c, ws, dxw.data(), dg.data(), dh_z.data(), out[2]);
  const T* dgp = Cell::kSeparateHidden ? dg.data() : dxw.data();
  if (out[0] != nullptr) cell_grad_mm<T>(false, N, G, I, dxw.data(), w_ih, out[0]);
  if (out[1] != nullptr) {
    cell_grad_mm<T>(false, N, G, H, dgp, w_hh, out[1]);
    for (int64_t i = 0; i < static_cast<int64_t>(dh_z.size()); ++i) out[1][i] += dh_z[i];
  }
  if (out[3] != nullptr) cell_grad_mm<T>(true, N, G, I, dxw.data(), x, out[3]);
  if (out[4] != nullptr) cell_grad_mm<T>(true, N, G, H, dgp, h, out[4]);
  if (out[5] != nullptr) sum_rows(dxw.data(), N, G, out[5], G);
  if (out[6] != nullptr) sum_rows(dgp, N, G, out[6], G);
}

at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

std::optional<at::Tensor> given(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Whether the raw kernels take these tensors: CPU, one float32 / float64 dtype, biases (undefined: none) [G].
bool raw_takes(const at::Tensor& x, std::initializer_list<const at::Tensor*> operands, const at::Tensor& b_ih,
               const at::Tensor& b_hh, int64_t G) {
  const auto dtype = x.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kDouble) || !x.device().is_cpu()) return false;
  for (const at::Tensor* t : operands)
    if (t->defined() && (!t->device().is_cpu() || t->scalar_type() != dtype)) return false;
  for (const at::Tensor* b : {&b_ih, &b_hh})
    if (b->defined() && (!b->device().is_cpu() || b->scalar_type() != dtype || !b->sizes().equals({G}))) return false;
  return true;
}

// One step without autograd: h', c' (Lstm, else undefined) and ws (Elman: h'). x [N, I], h [N, H], c [N, H].
// Tensors the raw kernels do not take (Elman only; the entries check them for the gated cells) run ATen ops.
std::array<at::Tensor, 3> step(int64_t kind, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                               const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                               const at::Tensor& b_hh) {
  const int64_t N = input.size(0), H = w_hh.size(1), G = gates_of(kind) * H;
  if (!raw_takes(input, {&hx, &cx, &w_ih, &w_hh}, b_ih, b_hh, G)) {
    at::Tensor z = b_ih.defined() ? at::addmm(b_ih, input, w_ih.t()) : at::mm(input, w_ih.t());  // [N, H]
    z.addmm_(hx, w_hh.t());
    if (b_hh.defined()) z.add_(b_hh);
    z = kind == kTanh ? z.tanh_() : z.relu_();
    return {z, at::Tensor(), z};
  }
  const CellShape d{N, input.size(1), H, G};
  const at::Tensor x = dense(input), h = dense(hx), c = dense(cx), wi = dense(w_ih), wh = dense(w_hh),
                   bi = dense(b_ih), bh = dense(b_hh);
  at::Tensor ho = at::empty({N, H}, x.options());
  at::Tensor co = kind == 4 ? at::empty({N, H}, x.options()) : at::Tensor();
  at::Tensor ws = kind >= 3 ? at::empty({N, kind == 4 ? 5 * H : 4 * H}, x.options()) : ho;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_cell", [&] {
    using T = scalar_t;
    by_kind<Elman, Gru, Lstm>(kind, [&](const auto& cell) {
      cell.template forward<T>(d, x.data_ptr<T>(), h.data_ptr<T>(), ptr_or_null<T>(c), wi.data_ptr<T>(),
                               wh.data_ptr<T>(), ptr_or_null<T>(bi), ptr_or_null<T>(bh), ho.data_ptr<T>(),
                               ptr_or_null<T>(co), ws.data_ptr<T>());
    });
  });
  return {ho, co, ws};
}

// The step's autograd node. Inputs x, h, c (Lstm only), w_ih, w_hh, b_ih, b_hh (absent: no bias; not
// undefined tensors, which Function::apply rejects) and the kind (by_kind); outputs h' (and c').
// RnnCellFunction and GatedCellFunction are its two names (the Elman cell's, the gated cells').
template <class Self>
class CellFunction : public torch::autograd::Function<Self> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& h, const std::optional<at::Tensor>& c_opt,
                                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                const std::optional<at::Tensor>& b_ih_opt,
                                                const std::optional<at::Tensor>& b_hh_opt, int64_t kind) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor c = value_or_undefined(c_opt), b_ih = value_or_undefined(b_ih_opt),
                     b_hh = value_or_undefined(b_hh_opt);
    auto [ho, co, ws] = step(kind, x, h, c, w_ih, w_hh, b_ih, b_hh);
    // What torch's cell saves (saved_inputs.h): each operand of a product only if the other needs a gradient;
    // plus copies of h (Gru: h - n) and c (Lstm: c * f') where torch saves an intermediate made from them
    // instead and the raw backward reads them.
    const bool any_but_c = any_requires_grad({x, h, w_ih, w_hh, b_ih, b_hh});
    // saved[i]: whether inputs[i] itself is saved (x, h, c, w_ih, w_hh, b_ih, b_hh).
    const std::vector<bool> saved = {w_ih.requires_grad(), w_hh.requires_grad(), kind != 4 || any_but_c,
                                     x.requires_grad(),    h.requires_grad(),    false, false};
    const at::Tensor h_kept = saved[1] ? h : kind == 3 ? h.clone() : at::Tensor();
    const at::Tensor c_kept = saved[2] ? c : c.clone();
    ctx->save_for_backward({if_saved(saved[0], x), h_kept, c_kept, if_saved(saved[3], w_ih), if_saved(saved[4], w_hh),
                            ws});
    keep_for_recompute(ctx, {x, h, c, w_ih, w_hh, b_ih, b_hh}, saved);
    const bool raw = raw_takes(x, {&h, &c, &w_ih, &w_hh}, b_ih, b_hh, gates_of(kind) * h.size(1));
    ctx->saved_data["shape"] = std::vector<int64_t>{kind, x.size(1), h.size(1), b_ih.defined(), b_hh.defined(), raw};
    if (kind == 4) return {ho, co};
    return {ho};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &h = saved[1], &c = saved[2], &w_ih = saved[3], &w_hh = saved[4],
                     &ws = saved[5];
    const auto info = ctx->saved_data["shape"].toIntVector();
    const int64_t kind = info[0];
    const CellShape d{ws.size(0), info[1], info[2], gates_of(kind) * info[2]};
    at::Tensor gh = grads[0], gc = kind == 4 ? grads[1] : at::Tensor();
    torch::autograd::variable_list result(8);
    if (!gh.defined() && !gc.defined()) return result;
    if (!gh.defined()) gh = at::zeros({d.N, d.H}, ws.options());
    // needs_input_grad counts graph inputs, which skip the absent optional arguments (c, the biases).
    const std::vector<bool> present = {true, true, kind == 4, true, true, info[3] != 0, info[4] != 0};
    std::vector<bool> wanted(present.size(), false);
    for (size_t i = 0, edge = 0; i < present.size(); ++i) {
      if (present[i]) wanted[i] = ctx->needs_input_grad(edge++);
    }
    const bool raw = info[5] != 0 && gh.device().is_cpu() && gh.scalar_type() == ws.scalar_type() &&
                     (!gc.defined() || gc.scalar_type() == ws.scalar_type());
    if (at::GradMode::is_enabled() || !plain_grads(grads) || !raw) {
      // create_graph, batched gradients or ATen tensors: differentiate torch's own cell, recomputed on the inputs.
      const bool create_graph = at::GradMode::is_enabled();
      at::AutoGradMode recording(true);
      const std::vector<at::Tensor> in = recompute_inputs(ctx, {x, h, c, w_ih, w_hh, {}, {}});
      std::vector<at::Tensor> outputs;
      if (kind == 4) {
        auto [h1, c1] = at::lstm_cell(in[0], {in[1], in[2]}, in[3], in[4], given(in[5]), given(in[6]));
        outputs = {h1, c1};
      } else if (kind == 3) {
        outputs = {at::gru_cell(in[0], in[1], in[3], in[4], given(in[5]), given(in[6]))};
      } else {
        const auto step = kind == kTanh ? &at::rnn_tanh_cell : &at::rnn_relu_cell;
        outputs = {step(in[0], in[1], in[3], in[4], given(in[5]), given(in[6]))};
      }
      differentiate(outputs, {gh, gc}, in, wanted, create_graph, result);
      return result;
    }
    const std::vector<std::vector<int64_t>> shapes = {{d.N, d.I}, {d.N, d.H}, {d.N, d.H}, {d.G, d.I},
                                                      {d.G, d.H}, {d.G},      {d.G}};
    for (size_t i = 0; i < 7; ++i) {
      if (present[i] && wanted[i]) result[i] = at::empty(shapes[i], ws.options());
    }
    const at::Tensor ghc = dense(gh), gcc = dense(gc), xc = dense(x), hc = dense(h), cc = dense(c), wi = dense(w_ih),
                     wh = dense(w_hh), wsc = dense(ws);
    AT_DISPATCH_FLOATING_TYPES(ws.scalar_type(), "fastrnn_cell_backward", [&] {
      using T = scalar_t;
      std::array<T*, 7> out;
      for (size_t i = 0; i < 7; ++i) out[i] = ptr_or_null<T>(result[i]);
      by_kind<Elman, Gru, Lstm>(kind, [&](const auto& cell) {
        backward_raw<std::decay_t<decltype(cell)>, T>(cell, d, ghc.data_ptr<T>(), ptr_or_null<T>(gcc),
                                                       ptr_or_null<T>(xc), ptr_or_null<T>(hc), ptr_or_null<T>(cc),
                                                       ptr_or_null<T>(wi), ptr_or_null<T>(wh), wsc.data_ptr<T>(), out);
      });
    });
    return result;
  }
};

class RnnCellFunction : public CellFunction<RnnCellFunction> {};
class GatedCellFunction : public CellFunction<GatedCellFunction> {};

// The fastrnn::rnn_cell op's checks, with its messages.
void check_rnn_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    int64_t activation) {
  TORCH_CHECK(activation == kTanh || activation == kRelu,
              "fastrnn::rnn_cell: activation must be 0 (tanh) or 1 (relu), got ", activation);
  for (const auto* t : {&input, &hx, &w_ih, &w_hh}) {
    TORCH_CHECK(t->defined(), "fastrnn::rnn_cell: input, hx, w_ih and w_hh must be Tensors, got None");
  }
  TORCH_CHECK(input.dim() == 2 && hx.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2,
              "fastrnn::rnn_cell: expected 2-D input [N, H_in], hx [N, H], w_ih [H, H_in], w_hh [H, H]");
  TORCH_CHECK(w_ih.size(1) == input.size(1) && w_hh.size(0) == w_ih.size(0) && w_hh.size(1) == w_hh.size(0) &&
                  hx.size(0) == input.size(0) && hx.size(1) == w_hh.size(0),
              "fastrnn::rnn_cell: inconsistent shapes: input ", input.sizes(), ", hx ", hx.sizes(), ", w_ih ",
              w_ih.sizes(), ", w_hh ", w_hh.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "fastrnn::rnn_cell: expected a floating point input, got ",
              input.scalar_type());
}

// The op's kernel (CompositeExplicitAutograd): any device and dtype.
at::Tensor cell_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                        int64_t activation) {
  check_rnn_cell(input, hx, w_ih, w_hh, activation);
  return step(activation, input, hx, at::Tensor(), w_ih, w_hh, value_or_undefined(b_ih), value_or_undefined(b_hh))[0];
}

// Whether a plain eager step takes these: input [N, I], h [N, H], c [N, H] (Lstm) or undefined, weights
// [G, I] and [G, H], biases [G] or undefined (the gated cells: both or neither), everything on the CPU in
// one float32 / float64 dtype; `dense`: contiguous too.
bool plain_step_takes(int64_t kind, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                      bool dense) {
  if (!x.defined() || !h.defined() || !w_ih.defined() || !w_hh.defined() || (kind == 4) != c.defined()) return false;
  if (x.dim() != 2 || h.dim() != 2 || w_ih.dim() != 2 || w_hh.dim() != 2) return false;
  const int64_t N = x.size(0), H = w_hh.size(1), G = gates_of(kind) * H;
  if (!h.sizes().equals({N, H}) || !w_ih.sizes().equals({G, x.size(1)}) || !w_hh.sizes().equals({G, H}) ||
      (c.defined() && !c.sizes().equals({N, H})) || (kind >= 3 && b_ih.defined() != b_hh.defined()))
    return false;
  if (!raw_takes(x, {&h, &c, &w_ih, &w_hh}, b_ih, b_hh, G)) return false;
  if (dense) {
    for (const at::Tensor* t : {&x, &h, &c, &w_ih, &w_hh, &b_ih, &b_hh})
      if (t->defined() && (!t->is_contiguous() || t->is_neg() || t->is_conj())) return false;
  }
  return true;
}

}  // namespace

at::Tensor rnn_cell_autograd(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, int64_t activation) {
  // With nothing to record, skip Function::apply: it builds a graph node even when it will not keep it.
  if (!at::GradMode::is_enabled() ||
      !any_requires_grad({input, hx, w_ih, w_hh, value_or_undefined(b_ih), value_or_undefined(b_hh)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, activation);
  }
  check_rnn_cell(input, hx, w_ih, w_hh, activation);
  return RnnCellFunction::apply(input, hx, std::nullopt, w_ih, w_hh, given(value_or_undefined(b_ih)),
                                given(value_or_undefined(b_hh)), activation)[0];
}

std::optional<std::array<at::Tensor, 2>> cell_if_plain(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                       const at::Tensor& cx, const at::Tensor& w_ih,
                                                       const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                                       const std::optional<at::Tensor>& b_hh) {
  if ((kind != kTanh && kind != kRelu && kind != 3 && kind != 4) || !input.defined() || !w_hh.defined() ||
      w_hh.dim() != 2 || (kind == 4 && hx.defined() != cx.defined()) || (kind != 4 && cx.defined()))
    return std::nullopt;
  const bool batched = input.dim() == 2;
  if ((!batched && input.dim() != 1) || (hx.defined() && hx.dim() != input.dim()) ||
      (cx.defined() && cx.dim() != input.dim()))
    return std::nullopt;
  const at::Tensor x = batched ? input : input.unsqueeze(0);
  const auto state = [&](const at::Tensor& s) {
    return !s.defined() ? at::zeros({x.size(0), w_hh.size(1)}, input.options()) : batched ? s : s.unsqueeze(0);
  };
  const at::Tensor h = state(hx), c = kind == 4 ? state(cx) : at::Tensor();
  const at::Tensor bi = value_or_undefined(b_ih), bh = value_or_undefined(b_hh);
  if (!plain_step_takes(kind, x, h, c, w_ih, w_hh, bi, bh, kind >= 3)) return std::nullopt;
  std::array<at::Tensor, 2> out;
  if (at::GradMode::is_enabled() && any_requires_grad({x, h, c, w_ih, w_hh, bi, bh})) {
    const auto got = kind >= 3 ? GatedCellFunction::apply(x, h, given(c), w_ih, w_hh, given(bi), given(bh), kind)
                               : RnnCellFunction::apply(x, h, given(c), w_ih, w_hh, given(bi), given(bh), kind);
    out = {got[0], kind == 4 ? got[1] : at::Tensor()};
  } else {
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto got = step(kind, x, h, c, w_ih, w_hh, bi, bh);
    out = {got[0], got[1]};
  }
  if (!batched) {
    for (at::Tensor& t : out)
      if (t.defined()) t = t.squeeze(0);
  }
  return out;
}

}  // namespace fastrnn

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def(
      "rnn_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "int activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastrnn, CompositeExplicitAutograd, m) {
  m.impl("rnn_cell", &fastrnn::cell_forward);
}

TORCH_LIBRARY_IMPL(fastrnn, Autograd, m) {
  m.impl("rnn_cell", &fastrnn::rnn_cell_autograd);
}
