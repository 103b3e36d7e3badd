// One GRUCell / LSTMCell step as one C++ call with its autograd in C++ (fastrnn._C.gated_cell_if_plain):
//
//   forward:  gates = x W_ih^T + h W_hh^T and the biases (cell_matmul: a dot loop or the BLAS), then the
//             layer op's gate rows (gate_rows.h); saves x, h (, c), the weights and the gates ws
//   backward: the gate rows' backward gives, per row, dxw = dL/d(x W_ih^T + b_ih) and dg = dL/d(h W_hh^T +
//             b_hh) (the LSTM's are one da); then dx = dxw W_ih, dh = dg W_hh (+ the GRU's path through z),
//             dW_ih = dxw^T x, dW_hh = dg^T h, db_ih = sum of dxw's rows, db_hh = sum of dg's
//
// A Python loop over torch's cells pays per step for a dozen ATen ops and autograd nodes; this is one call
// and one node. Under create_graph the backward differentiates at::gru_cell / at::lstm_cell recomputed on
// the saved inputs, so gradients of any order are torch's.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "activations.h"
#include "gate_rows.h"
#include "rnn_cpu.h"
#include "saved_inputs.h"

namespace fastrnn {
namespace {

struct CellShape {
  int64_t N, I, H, G;
  bool lstm;
  int64_t W() const { return lstm ? 5 * H : 4 * H; }  // ws row: [i, f, g, o, c'] or [r, z, n, m]
};

// h' (and c') of every row; the gates into ws [N, W] (nullptr: a row scratch, nothing saved).
template <typename T>
void cell_forward_raw(const CellShape& d, const T* x, const T* h, const T* c, const T* w_ih, const T* w_hh,
                      const T* bi, const T* bh, T* ho, T* co, T* ws) {
  const int64_t N = d.N, I = d.I, H = d.H, G = d.G, W = d.W();
  std::vector<T> scratch(ws == nullptr ? W : 0);
  const auto row_ws = [&](int64_t r) { return ws == nullptr ? scratch.data() : ws + r * W; };
  if (d.lstm) {
    std::vector<T> pre(N * G);
    cell_matmul<T>(x, N, I, w_ih, G, pre.data(), false);
    cell_matmul<T>(h, N, H, w_hh, G, pre.data(), true);
    for (int64_t r = 0; r < N; ++r) {
      const T* row = pre.data() + r * G;
      T* wr = row_ws(r);
      for (int64_t j = 0; j < G; ++j) wr[j] = bi != nullptr ? row[j] + bi[j] + bh[j] : row[j];
      lstm_fwd_row(wr, c + r * H, H, ho + r * H);
      std::memcpy(co + r * H, wr + 4 * H, sizeof(T) * H);
    }
    return;
  }
  std::vector<T> xw(N * G), a(N * G), b_hn(H, T(0));
  cell_matmul<T>(x, N, I, w_ih, G, xw.data(), false);
  cell_matmul<T>(h, N, H, w_hh, G, a.data(), false);
  if (bi != nullptr) {
    for (int64_t r = 0; r < N; ++r) {
      T* row = xw.data() + r * G;
      for (int64_t j = 0; j < 2 * H; ++j) row[j] += bi[j] + bh[j];
      for (int64_t j = 2 * H; j < G; ++j) row[j] += bi[j];
    }
    std::copy(bh + 2 * H, bh + G, b_hn.begin());
  }
  for (int64_t r = 0; r < N; ++r)
    gru_fwd_row(xw.data() + r * G, a.data() + r * G, h + r * H, b_hn.data(), H, ho + r * H, row_ws(r));
}

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

// Every wanted gradient (nullptr: not wanted) from dL/dh' (gh) and dL/dc' (gc, nullptr: zero).
template <typename T>
void cell_backward_raw(const CellShape& d, const T* gh, const T* gc, const T* x, const T* h, const T* c,
                       const T* w_ih, const T* w_hh, const T* ws, T* dx, T* dh, T* dc, T* dw_ih, T* dw_hh,
                       T* db_ih, T* db_hh) {
  const int64_t N = d.N, I = d.I, H = d.H, G = d.G, W = d.W();
  std::vector<T> dxw(N * G), dg(d.lstm ? 0 : N * G), dh_z(d.lstm ? 0 : N * H, T(0)), dcr(d.lstm ? H : 0);
  for (int64_t r = 0; r < N; ++r) {
    if (d.lstm) {
      if (gc != nullptr) {
        std::memcpy(dcr.data(), gc + r * H, sizeof(T) * H);
      } else {
        std::fill(dcr.begin(), dcr.end(), T(0));
      }
      lstm_bwd_row(gh + r * H, dcr.data(), ws + r * W, c + r * H, H, dxw.data() + r * G);
      if (dc != nullptr) std::memcpy(dc + r * H, dcr.data(), sizeof(T) * H);
    } else {
      gru_bwd_row(gh + r * H, dh_z.data() + r * H, h + r * H, ws + r * W, H, dxw.data() + r * G,
                  dg.data() + r * G);
    }
  }
  const T* dgp = d.lstm ? dxw.data() : dg.data();
  if (dx != nullptr) cell_grad_mm<T>(false, N, G, I, dxw.data(), w_ih, dx);
  if (dh != nullptr) {
    cell_grad_mm<T>(false, N, G, H, dgp, w_hh, dh);
    for (int64_t i = 0; i < static_cast<int64_t>(dh_z.size()); ++i) dh[i] += dh_z[i];
  }
  if (dw_ih != nullptr) cell_grad_mm<T>(true, N, G, I, dxw.data(), x, dw_ih);
  if (dw_hh != nullptr) cell_grad_mm<T>(true, N, G, H, dgp, h, dw_hh);
  if (db_ih != nullptr) sum_rows(dxw.data(), N, G, db_ih);
  if (db_hh != nullptr) sum_rows(dgp, N, G, db_hh);
}

CellShape shape_of(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c) {
  const int64_t H = h.size(1);
  return {x.size(0), x.size(1), H, (c.defined() ? 4 : 3) * H, c.defined()};
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* ptr_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Inputs x, h, c (undefined: the GRU), w_ih, w_hh, b_ih, b_hh (undefined: no bias), all contiguous CPU
// tensors of one float dtype, checked by gated_cell_if_plain. Outputs h' (and c').
class GatedCellFunction : public torch::autograd::Function<GatedCellFunction> {
 public:
  // The optional ones are absent (not undefined tensors, which Function::apply rejects) when missing.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& h, const std::optional<at::Tensor>& c_opt,
                                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                const std::optional<at::Tensor>& b_ih_opt,
                                                const std::optional<at::Tensor>& b_hh_opt) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto value = [](const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); };
    const at::Tensor c = value(c_opt), b_ih = value(b_ih_opt), b_hh = value(b_hh_opt);
    const CellShape d = shape_of(x, h, c);
    at::Tensor ho = at::empty({d.N, d.H}, x.options());
    at::Tensor co = d.lstm ? at::empty({d.N, d.H}, x.options()) : at::Tensor();
    at::Tensor ws = at::empty({d.N, d.W()}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_gated_cell", [&] {
      using T = scalar_t;
      cell_forward_raw<T>(d, x.data_ptr<T>(), h.data_ptr<T>(), ptr_or_null<T>(c), w_ih.data_ptr<T>(),
                          w_hh.data_ptr<T>(), ptr_or_null<T>(b_ih), ptr_or_null<T>(b_hh), ho.data_ptr<T>(),
                          ptr_or_null<T>(co), ws.data_ptr<T>());
    });
    // What torch's cell saves (saved_inputs.h), plus copies of h (GRU: h - n) and c (LSTM: c * f') where torch
    // saves an intermediate made from them instead and the raw backward reads them.
    const bool any_but_c = x.requires_grad() || h.requires_grad() || w_ih.requires_grad() ||
                           w_hh.requires_grad() || (b_ih.defined() && (b_ih.requires_grad() || b_hh.requires_grad()));
    // saved[i]: whether inputs[i] itself is saved (x, h, c, w_ih, w_hh, b_ih, b_hh).
    const std::vector<bool> saved = {w_ih.requires_grad(), w_hh.requires_grad(), !d.lstm || any_but_c,
                                     x.requires_grad(), h.requires_grad(), false, false};
    const at::Tensor h_kept = saved[1] ? h : d.lstm ? at::Tensor() : h.clone();
    const at::Tensor c_kept = saved[2] ? c : c.clone();
    ctx->save_for_backward({if_saved(saved[0], x), h_kept, c_kept, if_saved(saved[3], w_ih), if_saved(saved[4], w_hh),
                            ws});
    keep_for_recompute(ctx, {x, h, c, w_ih, w_hh, b_ih, b_hh}, saved);
    ctx->saved_data["shape"] = std::vector<int64_t>{d.N, d.I, d.H, d.G, d.lstm, b_ih.defined()};
    if (d.lstm) return {ho, co};
    return {ho};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &h = saved[1], &c = saved[2], &w_ih = saved[3], &w_hh = saved[4],
                     &ws = saved[5];
    const auto dims = ctx->saved_data["shape"].toIntVector();
    const CellShape d{dims[0], dims[1], dims[2], dims[3], dims[4] != 0};
    const bool lstm = d.lstm;
    at::Tensor gh = grads[0], gc = lstm ? grads[1] : at::Tensor();
    torch::autograd::variable_list result(7);
    if (!gh.defined() && !gc.defined()) return result;
    if (!gh.defined()) gh = at::zeros({d.N, d.H}, ws.options());
    // needs_input_grad counts graph inputs, which skip the absent optional arguments (c, the biases).
    const std::vector<bool> present = {true, true, lstm, true, true, dims[5] != 0, dims[5] != 0};
    std::vector<bool> wanted(present.size(), false);
    for (size_t i = 0, edge = 0; i < present.size(); ++i) {
      if (present[i]) wanted[i] = ctx->needs_input_grad(edge++);
    }
    if (at::GradMode::is_enabled() || !plain_grads(grads)) {
      // create_graph, or batched gradients: differentiate torch's own cell, recomputed on the inputs.
      const bool create_graph = at::GradMode::is_enabled();
      at::AutoGradMode recording(true);
      const std::vector<at::Tensor> inputs = recompute_inputs(ctx, {x, h, c, w_ih, w_hh, {}, {}});
      const at::Tensor &x = inputs[0], &h = inputs[1], &c = inputs[2], &w_ih = inputs[3], &w_hh = inputs[4],
                       &b_ih = inputs[5], &b_hh = inputs[6];
      std::vector<at::Tensor> outputs, grad_outputs = {gh};
      const auto bias = [](const at::Tensor& b) {
        return b.defined() ? std::optional<at::Tensor>(b) : std::nullopt;
      };
      if (lstm) {
        auto [h1, c1] = at::lstm_cell(x, {h, c}, w_ih, w_hh, bias(b_ih), bias(b_hh));
        outputs = {h1, c1};
        grad_outputs.push_back(gc.defined() ? gc : at::zeros_like(c1));
      } else {
        outputs = {at::gru_cell(x, h, w_ih, w_hh, bias(b_ih), bias(b_hh))};
      }
      std::vector<at::Tensor> wrt;
      std::vector<size_t> where;
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (wanted[i] && inputs[i].requires_grad()) {
          wrt.push_back(inputs[i]);
          where.push_back(i);
        }
      }
      if (wrt.empty()) return result;
      auto got = torch::autograd::grad(outputs, wrt, grad_outputs, /*retain_graph=*/true, create_graph,
                                       /*allow_unused=*/true);
      for (size_t k = 0; k < where.size(); ++k) result[where[k]] = got[k];
      return result;
    }
    const int64_t G = d.G;
    const std::vector<std::vector<int64_t>> shapes = {{d.N, d.I}, {d.N, d.H}, {d.N, d.H}, {G, d.I}, {G, d.H}, {G}, {G}};
    for (size_t i = 0; i < 7; ++i) {
      if (present[i] && wanted[i]) result[i] = at::empty(shapes[i], ws.options());
    }
    const at::Tensor ghc = gh.contiguous(), gcc = gc.defined() ? gc.contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(ws.scalar_type(), "fastrnn_gated_cell_backward", [&] {
      using T = scalar_t;
      cell_backward_raw<T>(d, ghc.data_ptr<T>(), ptr_or_null<T>(gcc), ptr_or_null<T>(x), ptr_or_null<T>(h),
                           ptr_or_null<T>(c), ptr_or_null<T>(w_ih), ptr_or_null<T>(w_hh), ws.data_ptr<T>(),
                           ptr_or_null<T>(result[0]), ptr_or_null<T>(result[1]), ptr_or_null<T>(result[2]),
                           ptr_or_null<T>(result[3]), ptr_or_null<T>(result[4]), ptr_or_null<T>(result[5]),
                           ptr_or_null<T>(result[6]));
    });
    return result;
  }
};

}  // namespace

// One cell step (see rnn_cpu.h): the checks, then the raw forward without autograd, or the autograd node.
std::optional<std::tuple<at::Tensor, at::Tensor>> gated_cell_if_plain(
    int64_t gates, const at::Tensor& input, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const bool lstm = gates == 4;
  if ((gates != 3 && gates != 4) || !input.defined() || !h.defined() || lstm != c.defined()) return std::nullopt;
  const auto dtype = input.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return std::nullopt;
  if (input.dim() != 2 || h.dim() != 2 || w_ih.dim() != 2 || w_hh.dim() != 2) return std::nullopt;
  const int64_t N = input.size(0), I = input.size(1), H = h.size(1), G = gates * H;
  if (h.size(0) != N || w_ih.size(0) != G || w_ih.size(1) != I || w_hh.size(0) != G || w_hh.size(1) != H)
    return std::nullopt;
  if (lstm && (c.dim() != 2 || c.size(0) != N || c.size(1) != H)) return std::nullopt;
  const bool has_bias = b_ih.has_value() && b_ih->defined();
  if (has_bias != (b_hh.has_value() && b_hh->defined())) return std::nullopt;
  const at::Tensor bi = has_bias ? *b_ih : at::Tensor(), bh = has_bias ? *b_hh : at::Tensor();
  if (has_bias && (bi.dim() != 1 || bi.size(0) != G || bh.dim() != 1 || bh.size(0) != G)) return std::nullopt;
  bool record = false;
  for (const at::Tensor* t : {&input, &h, &c, &w_ih, &w_hh, &bi, &bh}) {
    if (!t->defined()) continue;
    if (!t->device().is_cpu() || t->scalar_type() != dtype || !t->is_contiguous() || t->is_neg() || t->is_conj())
      return std::nullopt;
    record = record || t->requires_grad();
  }
  if (record && at::GradMode::is_enabled()) {
    const auto given = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    auto out = GatedCellFunction::apply(input, h, given(c), w_ih, w_hh, given(bi), given(bh));
    return std::make_tuple(out[0], lstm ? out[1] : at::Tensor());
  }
  const CellShape d{N, I, H, G, lstm};
  at::Tensor h_out = at::empty({N, H}, input.options());
  at::Tensor c_out = lstm ? at::empty({N, H}, input.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastrnn_gated_cell", [&] {
    using T = scalar_t;
    cell_forward_raw<T>(d, input.data_ptr<T>(), h.data_ptr<T>(), ptr_or_null<T>(c), w_ih.data_ptr<T>(),
                        w_hh.data_ptr<T>(), ptr_or_null<T>(bi), ptr_or_null<T>(bh), h_out.data_ptr<T>(),
                        ptr_or_null<T>(c_out), static_cast<T*>(nullptr));
  });
  return std::make_tuple(h_out, c_out);
}

}  // namespace fastrnn
