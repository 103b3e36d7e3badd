// One RNNCell step as one dispatcher call with its autograd in C++:
//
//   forward:  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)                 saves h' and what torch saves
//   backward: dz = dh' * act'(h');  dx = dz W_ih;  dh = dz W_hh;  dW_ih = dz^T x;  dW_hh = dz^T h;
//             db_ih = db_hh = sum over rows of dz
//
// A Python loop over torch.nn.RNNCell pays per step for four ATen ops and four autograd nodes; this op is
// one call and one node, with no Python autograd.Function. The math is ATen ops on any device (the kernel is
// CompositeExplicitAutograd, so CPU, CUDA and meta tensors all run it) and the backward is written in
// differentiable ATen ops, so double backward works. relu's gradient is torch's threshold_backward and
// tanh's is tanh_backward, so NaN travels exactly as through torch.nn.RNNCell.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "activations.h"
#include "blas.h"
#include "rnn_cpu.h"
#include "saved_inputs.h"

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

// out[r, :] = act(out[r, :] + bias), bias = b_ih + b_hh (either may be missing).
template <typename T>
FASTRNN_INLINE void bias_activate_impl(T* __restrict out, int64_t rows, int64_t H,
                                       const T* __restrict b_ih, const T* __restrict b_hh,
                                       int64_t act) {
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

FASTRNN_CLONES void bias_activate(float* out, int64_t rows, int64_t H, const float* b_ih,
                                  const float* b_hh, int64_t act) {
  bias_activate_impl(out, rows, H, b_ih, b_hh, act);
}
FASTRNN_CLONES void bias_activate(double* out, int64_t rows, int64_t H, const double* b_ih,
                                  const double* b_hh, int64_t act) {
  bias_activate_impl(out, rows, H, b_ih, b_hh, act);
}

// CPU float32/float64 on raw pointers: two GEMMs straight into the BLAS and one fused bias + activation
// pass, so a small step pays no per-op dispatch (four ATen calls cost more than the arithmetic at B = 1).
bool cpu_fast_path(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                   const std::optional<at::Tensor>& b_hh) {
  const auto dtype = input.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  for (const auto* t : {&input, &hx, &w_ih, &w_hh}) {
    if (!t->device().is_cpu() || t->scalar_type() != dtype) return false;
  }
  for (const auto* b : {&b_ih, &b_hh}) {
    if (b->has_value() && (*b)->defined() &&
        (!(*b)->device().is_cpu() || (*b)->scalar_type() != dtype || (*b)->dim() != 1 ||
         (*b)->size(0) != w_hh.size(0)))
      return false;
  }
  return true;
}

at::Tensor cell_forward_cpu(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh, int64_t activation) {
  const int64_t N = input.size(0), I = input.size(1), H = w_hh.size(0);
  const auto x = input.contiguous(), h = hx.contiguous(), wi = w_ih.contiguous(),
             wh = w_hh.contiguous();
  auto out = at::empty({N, H}, input.options());  // [N, H]
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastrnn_rnn_cell", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    cell_matmul<scalar_t>(x.data_ptr<scalar_t>(), N, I, wi.data_ptr<scalar_t>(), H, o, false);
    cell_matmul<scalar_t>(h.data_ptr<scalar_t>(), N, H, wh.data_ptr<scalar_t>(), H, o, true);
    const auto bias_ptr = [](const std::optional<at::Tensor>& b, at::Tensor& keep) -> const scalar_t* {
      if (!b.has_value() || !b->defined()) return nullptr;
      keep = b->contiguous();
      return keep.data_ptr<scalar_t>();
    };
    at::Tensor keep_ih, keep_hh;
    bias_activate(o, N, H, bias_ptr(b_ih, keep_ih), bias_ptr(b_hh, keep_hh), activation);
  });
  return out;
}

at::Tensor cell_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh, int64_t activation) {
  TORCH_CHECK(activation == kTanh || activation == kRelu,
              "fastrnn::rnn_cell: activation must be 0 (tanh) or 1 (relu), got ", activation);
  for (const auto* t : {&input, &hx, &w_ih, &w_hh}) {
    TORCH_CHECK(t->defined(), "fastrnn::rnn_cell: input, hx, w_ih and w_hh must be Tensors, got None");
  }
  TORCH_CHECK(input.dim() == 2 && hx.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2,
              "fastrnn::rnn_cell: expected 2-D input [N, H_in], hx [N, H], w_ih [H, H_in], w_hh [H, H]");
  TORCH_CHECK(w_ih.size(1) == input.size(1) && w_hh.size(0) == w_ih.size(0) &&
                  w_hh.size(1) == w_hh.size(0) && hx.size(0) == input.size(0) &&
                  hx.size(1) == w_hh.size(0),
              "fastrnn::rnn_cell: inconsistent shapes: input ", input.sizes(), ", hx ", hx.sizes(),
              ", w_ih ", w_ih.sizes(), ", w_hh ", w_hh.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "fastrnn::rnn_cell: expected a floating point input, got ", input.scalar_type());
  if (cpu_fast_path(input, hx, w_ih, w_hh, b_ih, b_hh)) {
    return cell_forward_cpu(input, hx, w_ih, w_hh, b_ih, b_hh, activation);
  }
  at::Tensor z = b_ih.has_value() && b_ih->defined() ? at::addmm(*b_ih, input, w_ih.t())
                                                     : at::mm(input, w_ih.t());  // [N, H]
  z.addmm_(hx, w_hh.t());
  if (b_hh.has_value() && b_hh->defined()) {
    z.add_(*b_hh);
  }
  return activation == kTanh ? z.tanh_() : z.relu_();
}

// The step's gradients on raw pointers (CPU float32/float64, no graph to record). dz [N, H] first, then
// every wanted gradient straight into its own buffer (nullptr: not wanted): dx = dz W_ih, dh = dz W_hh,
// dW_ih = dz^T x, dW_hh = dz^T h, db = sum of dz's rows. A few rows run axpy loops (a BLAS call costs more
// than the arithmetic there), more rows the BLAS.
template <typename T>
FASTRNN_INLINE void cell_backward_small_impl(int64_t N, int64_t I, int64_t H, const T* dz, const T* x,
                                             const T* h, const T* w_ih, const T* w_hh, T* dx, T* dh,
                                             T* dw_ih, T* dw_hh) {
  for (int64_t r = 0; r < N; ++r) {
    const T* dzr = dz + r * H;
    if (dx != nullptr) {
      std::fill(dx + r * I, dx + (r + 1) * I, T(0));
      for (int64_t j = 0; j < H; ++j) axpy(dzr[j], w_ih + j * I, dx + r * I, I);
    }
    if (dh != nullptr) {
      std::fill(dh + r * H, dh + (r + 1) * H, T(0));
      for (int64_t j = 0; j < H; ++j) axpy(dzr[j], w_hh + j * H, dh + r * H, H);
    }
  }
  if (dw_ih != nullptr) std::fill(dw_ih, dw_ih + H * I, T(0));
  if (dw_hh != nullptr) std::fill(dw_hh, dw_hh + H * H, T(0));
  for (int64_t j = 0; j < H; ++j) {
    for (int64_t r = 0; r < N; ++r) {
      const T g = dz[r * H + j];
      if (dw_ih != nullptr) axpy(g, x + r * I, dw_ih + j * I, I);
      if (dw_hh != nullptr) axpy(g, h + r * H, dw_hh + j * H, H);
    }
  }
}

FASTRNN_CLONES void cell_backward_small(int64_t N, int64_t I, int64_t H, const float* dz, const float* x,
                                        const float* h, const float* w_ih, const float* w_hh, float* dx,
                                        float* dh, float* dw_ih, float* dw_hh) {
  cell_backward_small_impl(N, I, H, dz, x, h, w_ih, w_hh, dx, dh, dw_ih, dw_hh);
}
FASTRNN_CLONES void cell_backward_small(int64_t N, int64_t I, int64_t H, const double* dz, const double* x,
                                        const double* h, const double* w_ih, const double* w_hh, double* dx,
                                        double* dh, double* dw_ih, double* dw_hh) {
  cell_backward_small_impl(N, I, H, dz, x, h, w_ih, w_hh, dx, dh, dw_ih, dw_hh);
}

template <typename T>
void cell_backward_raw(int64_t N, int64_t I, int64_t H, const T* grad, const T* out, const T* x, const T* h,
                       const T* w_ih, const T* w_hh, int64_t act, T* dx, T* dh, T* dw_ih, T* dw_hh, T* db) {
  std::vector<T> dz(N * H);
  for (int64_t i = 0; i < N * H; ++i) {
    // tanh_backward and threshold_backward, as torch.nn.RNNCell's graph computes them.
    dz[i] = act == kTanh ? grad[i] * (T(1) - out[i] * out[i]) : (out[i] <= T(0) ? T(0) : grad[i]);
  }
  if (N <= kSmallCellRows && N * H * std::max(I, H) <= kSmallCell) {
    cell_backward_small(N, I, H, dz.data(), x, h, w_ih, w_hh, dx, dh, dw_ih, dw_hh);
  } else {
    if (dx != nullptr) gemm_rowmajor_ex<T>(false, N, I, H, dz.data(), H, w_ih, I, false, T(0), dx, I);
    if (dh != nullptr) gemm_rowmajor_ex<T>(false, N, H, H, dz.data(), H, w_hh, H, false, T(0), dh, H);
    if (dw_ih != nullptr) gemm_rowmajor_ex<T>(true, H, I, N, dz.data(), H, x, I, false, T(0), dw_ih, I);
    if (dw_hh != nullptr) gemm_rowmajor_ex<T>(true, H, H, N, dz.data(), H, h, H, false, T(0), dw_hh, H);
  }
  if (db != nullptr) sum_rows(dz.data(), N, H, db);
}

class RnnCellFunction : public torch::autograd::Function<RnnCellFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh, int64_t activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, activation);
    // What torch's cell saves (saved_inputs.h): each operand of a product only if the other needs a gradient.
    ctx->save_for_backward({if_saved(w_ih.requires_grad(), input), if_saved(w_hh.requires_grad(), hx),
                            if_saved(input.requires_grad(), w_ih), if_saved(hx.requires_grad(), w_hh), out});
    ctx->saved_data["raw"] = cpu_fast_path(input, hx, w_ih, w_hh, b_ih, b_hh);
    ctx->saved_data["input_size"] = input.size(1);
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_b_ih"] = b_ih.has_value() && b_ih->defined();
    ctx->saved_data["has_b_hh"] = b_hh.has_value() && b_hh->defined();
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &hx = saved[1], &w_ih = saved[2], &w_hh = saved[3],
                     &out = saved[4];
    const at::Tensor& grad = grads[0];
    torch::autograd::variable_list result(7);
    if (!grad.defined()) {
      return result;
    }
    const int64_t activation = ctx->saved_data["activation"].toInt();
    const bool want_b_ih = ctx->saved_data["has_b_ih"].toBool() && ctx->needs_input_grad(4);
    const bool want_b_hh = ctx->saved_data["has_b_hh"].toBool() && ctx->needs_input_grad(5);
    if (!at::GradMode::is_enabled() && ctx->saved_data["raw"].toBool() && plain_grads(grads) &&
        grad.device().is_cpu() && grad.scalar_type() == out.scalar_type() && grad.sizes() == out.sizes()) {
      // No double backward to record: one pass on raw pointers instead of six ATen ops.
      const int64_t N = out.size(0), I = ctx->saved_data["input_size"].toInt(), H = out.size(1);
      const auto dense = [](const at::Tensor& t) { return t.defined() ? t.contiguous() : t; };
      const auto g = grad.contiguous(), o = out.contiguous(), x = dense(input), h = dense(hx), wi = dense(w_ih),
                 wh = dense(w_hh);
      const auto maybe = [&](bool want, at::IntArrayRef shape) {
        return want ? at::empty(shape, out.options()) : at::Tensor();
      };
      result[0] = maybe(ctx->needs_input_grad(0), {N, I});
      result[1] = maybe(ctx->needs_input_grad(1), {N, H});
      result[2] = maybe(ctx->needs_input_grad(2), {H, I});
      result[3] = maybe(ctx->needs_input_grad(3), {H, H});
      at::Tensor db = maybe(want_b_ih || want_b_hh, {H});
      AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastrnn_rnn_cell_backward", [&] {
        const auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
        const auto cptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
        cell_backward_raw<scalar_t>(N, I, H, g.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(), cptr(x), cptr(h),
                                    cptr(wi), cptr(wh), activation, ptr(result[0]), ptr(result[1]),
                                    ptr(result[2]), ptr(result[3]), ptr(db));
      });
      if (want_b_ih) result[4] = db;
      if (want_b_hh) result[5] = want_b_ih ? db.clone() : db;
      return result;
    }
    const at::Tensor dz = activation == kTanh
                              ? at::tanh_backward(grad, out)
                              : at::threshold_backward(grad, out, 0);  // [N, H]
    if (ctx->needs_input_grad(0)) result[0] = dz.mm(w_ih);
    if (ctx->needs_input_grad(1)) result[1] = dz.mm(w_hh);
    if (ctx->needs_input_grad(2)) result[2] = dz.t().mm(input);
    if (ctx->needs_input_grad(3)) result[3] = dz.t().mm(hx);
    if (want_b_ih || want_b_hh) {
      const at::Tensor db = dz.sum(0);
      if (want_b_ih) result[4] = db;
      if (want_b_hh) result[5] = want_b_ih ? db.clone() : db;
    }
    return result;
  }
};

}  // namespace

at::Tensor rnn_cell_autograd(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, int64_t activation) {
  // With nothing to record, skip Function::apply: it builds a graph node even when it will not keep it.
  bool record = at::GradMode::is_enabled();
  if (record) {
    record = input.requires_grad() || hx.requires_grad() || w_ih.requires_grad() || w_hh.requires_grad() ||
             (b_ih.has_value() && b_ih->defined() && b_ih->requires_grad()) ||
             (b_hh.has_value() && b_hh->defined() && b_hh->requires_grad());
  }
  if (!record) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, activation);
  }
  return RnnCellFunction::apply(input, hx, w_ih, w_hh, b_ih, b_hh, activation);
}

std::optional<at::Tensor> rnn_cell_if_plain(const at::Tensor& input, const at::Tensor& hx,
                                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                                            const std::optional<at::Tensor>& b_ih,
                                            const std::optional<at::Tensor>& b_hh, int64_t activation) {
  if (activation != kTanh && activation != kRelu) return std::nullopt;
  if (!input.defined() || !w_ih.defined() || !w_hh.defined() || w_ih.dim() != 2 || w_hh.dim() != 2)
    return std::nullopt;
  const bool batched = input.dim() == 2;
  if ((!batched && input.dim() != 1) || (hx.defined() && hx.dim() != input.dim())) return std::nullopt;
  const int64_t H = w_hh.size(0);
  const int64_t N = batched ? input.size(0) : 1;
  if (w_hh.size(1) != H || w_ih.size(0) != H || w_ih.size(1) != input.size(-1) ||
      (hx.defined() && (hx.size(-1) != H || (batched && hx.size(0) != N))))
    return std::nullopt;
  const at::Tensor& h_or_input = hx.defined() ? hx : input;
  if (!cpu_fast_path(input, h_or_input, w_ih, w_hh, b_ih, b_hh)) return std::nullopt;
  const at::Tensor x = batched ? input : input.unsqueeze(0);
  const at::Tensor h = !hx.defined() ? at::zeros({N, H}, input.options()) : batched ? hx : hx.unsqueeze(0);
  at::Tensor out = rnn_cell_autograd(x, h, w_ih, w_hh, b_ih, b_hh, activation);
  return batched ? out : out.squeeze(0);
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
