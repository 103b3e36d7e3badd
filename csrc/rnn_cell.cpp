// One RNNCell step as one dispatcher call with its autograd in C++:
//
//   forward:  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)                 saves x, h, W_ih, W_hh and h'
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

#include <optional>

#include "activations.h"
#include "blas.h"
#include "rnn_cpu.h"

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

// For a few rows and below this many multiply-adds a BLAS call costs more than the arithmetic; with more
// rows the dot loop's one reduction per output loses to the BLAS (0.87x torch at B = 32, H = 32).
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

class RnnCellFunction : public torch::autograd::Function<RnnCellFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh, int64_t activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, activation);
    ctx->save_for_backward({input, hx, w_ih, w_hh, out});
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
    const at::Tensor dz = ctx->saved_data["activation"].toInt() == kTanh
                              ? at::tanh_backward(grad, out)
                              : at::threshold_backward(grad, out, 0);  // [N, H]
    if (ctx->needs_input_grad(0)) result[0] = dz.mm(w_ih);
    if (ctx->needs_input_grad(1)) result[1] = dz.mm(w_hh);
    if (ctx->needs_input_grad(2)) result[2] = dz.t().mm(input);
    if (ctx->needs_input_grad(3)) result[3] = dz.t().mm(hx);
    const bool want_b_ih = ctx->saved_data["has_b_ih"].toBool() && ctx->needs_input_grad(4);
    const bool want_b_hh = ctx->saved_data["has_b_hh"].toBool() && ctx->needs_input_grad(5);
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
