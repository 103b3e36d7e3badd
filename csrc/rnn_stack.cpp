// A whole Elman RNN stack (layers x directions) forward in one C++ call, for calls that record no autograd
// (inference, sampling, serving): per layer and direction the input projection is written straight into
// the output buffer (biases folded in, no separate xw tensor, no ATen op for a small one) and the recurrence
// then runs in place there; every h_n lands in one preallocated [L * D, B, H] tensor. No Python, no
// autograd.Function and no dispatcher per layer: a tiny call (T = 5, B = 1, H = 8) is a few allocations and
// loops. Training calls go through the differentiable per-layer op in Python instead
// (fastrnn.functional.rnn); both give the same numbers.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "blas.h"
#include "rnn_cpu.h"
#include "saved_inputs.h"
#include "step_buffers.h"

namespace fastrnn {
namespace {

// Below this many multiply-adds the projection is one vectorised dot per output; above, one BLAS GEMM.
constexpr int64_t kSmallProjection = 64 * 64 * 8;

// out[rows, H] = x[rows, I] W_ih^T + b_ih + b_hh (either bias may be nullptr).
template <typename T>
void project(const T* x, int64_t rows, int64_t I, const T* w_ih, const T* b_ih, const T* b_hh, int64_t H,
             T* out) {
  std::vector<T> bias;
  if (b_ih != nullptr || b_hh != nullptr) {
    bias.assign(H, T(0));
    for (int64_t j = 0; j < H; ++j) bias[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
  }
  const bool small = rows * I * H <= kSmallProjection;
  if (!small && !bias.empty()) {
    for (int64_t r = 0; r < rows; ++r) std::copy(bias.begin(), bias.end(), out + r * H);
  }
  if (small) {
    rows_times_wt(x, rows, I, w_ih, H, out, false);
    if (!bias.empty()) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < H; ++j) out[r * H + j] += bias[j];
    }
  } else {
    gemm_rowmajor<T>(rows, H, I, x, I, w_ih, I, true, bias.empty() ? T(0) : T(1), out, H);
  }
}

bool any_requires_grad(const at::Tensor& input, const at::Tensor& hx, const std::vector<at::Tensor>& weights) {
  if (input.requires_grad() || (hx.defined() && hx.requires_grad())) return true;
  for (const auto& w : weights)
    if (w.requires_grad()) return true;
  return false;
}

// Why the stack does not take these arguments, or "" when it does. x: padded [T, B, I] or packed [N, I];
// hx: [L * D, B, H] or undefined (zeros). Only cheap shape, dtype and device facts: every value is read
// later by the kernels, and a refused call is the caller's to send down torch's path.
std::string refusal(const at::Tensor& x, const at::Tensor& hx, const std::vector<at::Tensor>& weights,
                    const std::optional<at::Tensor>& batch_sizes, bool has_biases, int64_t num_layers,
                    int64_t directions, int64_t* batch_out, int64_t* hidden_out) {
  if (!x.defined() || !x.device().is_cpu()) return "input must be a CPU tensor";
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return "input must be float32 or float64";
  const int64_t per_direction = has_biases ? 4 : 2;
  if (num_layers < 1 || static_cast<int64_t>(weights.size()) != num_layers * directions * per_direction)
    return "wrong number of weights";
  const int64_t H = weights[1].defined() ? weights[1].size(0) : -1;
  int64_t batch = 0;
  if (batch_sizes.has_value()) {
    const auto& bs = *batch_sizes;
    if (!bs.defined() || bs.dim() != 1 || bs.scalar_type() != at::kLong || !bs.device().is_cpu() ||
        !bs.is_contiguous() || bs.numel() == 0 || x.dim() != 2)
      return "batch_sizes must be a non-empty 1-D int64 CPU tensor with packed [N, I] input";
    batch = bs.data_ptr<int64_t>()[0];  // their values: check_batch_sizes, by the caller that takes packed input
  } else {
    if (x.dim() != 3 || x.size(0) == 0 || x.size(1) == 0) return "input must be a non-empty [T, B, I]";
    batch = x.size(1);
  }
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t in = layer == 0 ? x.size(-1) : directions * H;
    for (int64_t d = 0; d < directions; ++d) {
      const at::Tensor* w = weights.data() + (layer * directions + d) * per_direction;
      for (int64_t i = 0; i < per_direction; ++i) {
        if (!w[i].defined() || !w[i].device().is_cpu() || w[i].scalar_type() != dtype)
          return "weights must be CPU tensors of the input's dtype";
      }
      if (w[0].dim() != 2 || w[0].size(0) != H || w[0].size(1) != in || w[1].dim() != 2 ||
          w[1].size(0) != H || w[1].size(1) != H)
        return "weight shapes do not match";
      if (has_biases && (w[2].dim() != 1 || w[2].size(0) != H || w[3].dim() != 1 || w[3].size(0) != H))
        return "bias shapes do not match";
    }
  }
  if (hx.defined() && (!hx.device().is_cpu() || hx.scalar_type() != dtype || hx.dim() != 3 ||
                       hx.size(0) != num_layers * directions || hx.size(1) != batch || hx.size(2) != H))
    return "hx must be [L * D, B, H] on the CPU in the input's dtype";
  *batch_out = batch;
  *hidden_out = H;
  return "";
}

// x: contiguous time-major [T, B, I] or packed [N, I]; hx contiguous [L * D, B, H] or undefined.
template <typename T>
std::tuple<at::Tensor, at::Tensor> stack_forward(const at::Tensor& x, const at::Tensor& hx,
                                                 const std::vector<at::Tensor>& weights,
                                                 const std::optional<at::Tensor>& batch_sizes,
                                                 bool has_biases, int64_t num_layers, int64_t directions,
                                                 int64_t activation, int64_t batch, int64_t H,
                                                 std::vector<at::Tensor>* keep) {
  const int64_t per_direction = has_biases ? 4 : 2;
  const bool packed = batch_sizes.has_value();
  const int64_t steps = packed ? batch_sizes->numel() : x.size(0);
  const int64_t rows = packed ? x.size(0) : x.size(0) * x.size(1);
  const int64_t* sizes = packed ? batch_sizes->data_ptr<int64_t>() : nullptr;
  std::vector<T> zeros;
  if (!hx.defined()) zeros.assign(batch * H, T(0));
  at::Tensor h_n = at::empty({num_layers * directions, batch, H}, x.options());
  at::Tensor layer_input = x;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> outputs;
    const int64_t in = layer_input.size(-1);
    if (keep != nullptr) keep->push_back(layer_input);
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t k = layer * directions + d;
      std::vector<at::Tensor> w(per_direction);
      for (int64_t i = 0; i < per_direction; ++i) w[i] = weights[k * per_direction + i].contiguous();
      std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
      shape.back() = H;
      at::Tensor y = step_buffer(shape, x.options());
      T* yp = y.data_ptr<T>();
      project<T>(layer_input.data_ptr<T>(), rows, in, w[0].data_ptr<T>(),
                 has_biases ? w[2].data_ptr<T>() : nullptr, has_biases ? w[3].data_ptr<T>() : nullptr, H, yp);
      const T* h0 = hx.defined() ? hx.data_ptr<T>() + k * batch * H : zeros.data();
      recurrence_forward_raw<T>(sizes, steps, batch, yp, h0, w[1].data_ptr<T>(), H, d == 1, activation, yp,
                                h_n.data_ptr<T>() + k * batch * H);
      if (keep != nullptr) keep->push_back(y);
      outputs.push_back(std::move(y));
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, -1);
  }
  return {layer_input, h_n};
}

std::tuple<at::Tensor, at::Tensor> dispatch_stack(const at::Tensor& x, const at::Tensor& hx,
                                                  const std::vector<at::Tensor>& weights,
                                                  const std::optional<at::Tensor>& batch_sizes,
                                                  bool has_biases, int64_t num_layers, int64_t directions,
                                                  int64_t activation, int64_t batch, int64_t H,
                                                  std::vector<at::Tensor>* keep = nullptr) {
  c10::AutoGradMode no_grad(false);
  const at::Tensor xc = x.contiguous();
  const at::Tensor hc = hx.defined() ? hx.contiguous() : hx;
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_rnn_stack", [&] {
    result = stack_forward<scalar_t>(xc, hc, weights, batch_sizes, has_biases, num_layers, directions,
                                     activation, batch, H, keep);
  });
  return result;
}

// out [H, H] = sum over steps of dz_t^T h_{t-1} (h_{-1} = h0; reversed: h_{t+1}, h_T = h0). Two GEMMs, no copy.
template <typename T>
void recurrent_weight_grad(int64_t steps, int64_t batch, int64_t H, const T* dz, const T* y, const T* h0,
                           bool reverse, T* out) {
  const int64_t step = batch * H;
  const T* dz_first = dz + (reverse ? (steps - 1) * step : 0);
  gemm_rowmajor_ex<T>(true, H, H, batch, dz_first, H, h0, H, false, T(0), out, H);
  if (steps > 1) {
    const T* later = reverse ? dz : dz + step;
    const T* prev = reverse ? y + step : y;
    gemm_rowmajor_ex<T>(true, H, H, (steps - 1) * batch, later, H, prev, H, false, T(1), out, H);
  }
}

// The stack's gradients on raw pointers, layer by layer from the top. saved: per layer its input
// [T, B, in] then y [T, B, H] per direction (stack_forward's `keep`). grads: x, hx, then each weight
// (undefined where not wanted).
template <typename T>
void stack_backward(const at::Tensor& grad_output, const at::Tensor& grad_hn, const at::Tensor& hx,
                    const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& saved,
                    bool has_biases, int64_t num_layers, int64_t directions, int64_t activation,
                    int64_t input_size, const std::vector<bool>& wanted, std::vector<at::Tensor>& grads) {
  const int64_t per_direction = has_biases ? 4 : 2;
  const at::Tensor& y0 = saved[1];
  const int64_t steps = y0.size(0), batch = y0.size(1), H = y0.size(2), rows = steps * batch;
  const auto options = y0.options();
  // dY: the gradient of the current layer's output [T, B, D * H]; zeros where the caller sent none.
  at::Tensor dY = grad_output.defined() ? step_contiguous(grad_output)
                                        : at::zeros({steps, batch, directions * H}, options);
  const at::Tensor dhn = grad_hn.defined() ? grad_hn.contiguous() : at::Tensor();
  const T* h0_all = hx.defined() ? hx.data_ptr<T>() : nullptr;  // saved where a W_hh needs a gradient
  at::Tensor dhx = wanted[1] ? at::empty({num_layers * directions, batch, H}, options) : at::Tensor();
  // Uninitialised buffers (a std::vector would zero a [T, B, H] dz first: ~50 ms at T=100, B=64, H=1024).
  at::Tensor dz_buffer = step_buffer({rows, H}, options);
  at::Tensor dy_buffer = directions > 1 ? step_buffer({rows, H}, options) : at::Tensor();
  T* dz = dz_buffer.data_ptr<T>();
  std::vector<T> dh(batch * H);
  for (int64_t layer = num_layers - 1; layer >= 0; --layer) {
    const at::Tensor& x_l = saved[layer * (1 + directions)];  // undefined: layer 0 with no W_ih needing a grad
    const int64_t in = layer == 0 ? input_size : x_l.size(-1);
    // W_ih was saved where the layer's input needs a gradient (at layer 0: where the input does).
    const bool want_dx = weights[layer * directions * per_direction].defined() && (layer > 0 || wanted[0]);
    at::Tensor dx = want_dx ? step_buffer({steps, batch, in}, options) : at::Tensor();
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t k = layer * directions + d;
      if (!weights[k * per_direction + 1].defined()) continue;  // nothing in this direction needs a gradient
      const T* y = saved[layer * (1 + directions) + 1 + d].data_ptr<T>();
      const at::Tensor* w = weights.data() + k * per_direction;
      const T* dy = dY.data_ptr<T>();
      if (directions > 1) {  // this direction's half of every row
        T* half = dy_buffer.data_ptr<T>();
        for (int64_t r = 0; r < rows; ++r)
          std::copy(dy + r * directions * H + d * H, dy + r * directions * H + (d + 1) * H, half + r * H);
        dy = half;
      }
      if (dhn.defined()) {
        std::copy(dhn.data_ptr<T>() + k * batch * H, dhn.data_ptr<T>() + (k + 1) * batch * H, dh.begin());
      } else {
        std::fill(dh.begin(), dh.end(), T(0));
      }
      const bool reverse = d == 1;
      const T* h0 = h0_all + k * batch * H;
      recurrence_backward_raw<T>(steps, batch, dy, y, w[1].data_ptr<T>(), H, reverse, activation, wanted[1],
                                 dz, dh.data());
      if (wanted[1]) std::copy(dh.begin(), dh.end(), dhx.data_ptr<T>() + k * batch * H);
      const int64_t g = 2 + k * per_direction;  // this direction's w_ih in grads
      if (wanted[g]) {
        grads[g] = at::empty({H, in}, options);
        gemm_rowmajor_ex<T>(true, H, in, rows, dz, H, x_l.data_ptr<T>(), in, false, T(0),
                            grads[g].data_ptr<T>(), in);
      }
      if (wanted[g + 1]) {
        grads[g + 1] = at::empty({H, H}, options);
        recurrent_weight_grad<T>(steps, batch, H, dz, y, h0, reverse, grads[g + 1].data_ptr<T>());
      }
      if (has_biases && (wanted[g + 2] || wanted[g + 3])) {
        at::Tensor db;
        if (rows * H > (1 << 16)) {
          db = dz_buffer.sum(0);  // threaded
        } else {
          db = at::zeros({H}, options);
          T* b = db.data_ptr<T>();
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < H; ++j) b[j] += dz[r * H + j];
        }
        if (wanted[g + 2]) grads[g + 2] = db;
        if (wanted[g + 3]) grads[g + 3] = wanted[g + 2] ? db.clone() : db;
      }
      if (want_dx) {
        gemm_rowmajor_ex<T>(false, rows, in, H, dz, H, w[0].data_ptr<T>(), in, false, d == 0 ? T(0) : T(1),
                            dx.data_ptr<T>(), in);
      }
    }
    if (layer > 0) dY = dx;
    else if (wanted[0]) grads[0] = dx;
  }
  if (wanted[1]) grads[1] = dhx;
}

// The same stack with every step recorded by autograd: at::linear and the fastrnn::recurrence op (whose
// autograd is registered from Python). A create_graph backward differentiates through this recomputation,
// so gradients of any order follow the per-layer path's.
std::tuple<at::Tensor, at::Tensor> differentiable_stack(const at::Tensor& x, const at::Tensor& hx,
                                                        const std::vector<at::Tensor>& weights, bool has_biases,
                                                        int64_t num_layers, int64_t directions,
                                                        int64_t activation) {
  static const auto recurrence =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastrnn::recurrence", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&, bool, int64_t)>();
  const int64_t per_direction = has_biases ? 4 : 2;
  at::Tensor layer_input = x;
  std::vector<at::Tensor> finals;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> outputs;
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t k = layer * directions + d;
      const at::Tensor* w = weights.data() + k * per_direction;
      const at::Tensor xw = has_biases ? at::linear(layer_input, w[0], w[2] + w[3]) : at::linear(layer_input, w[0]);
      auto [y, h_n] = recurrence.call(xw, hx[k], w[1], std::nullopt, d == 1, activation);
      outputs.push_back(y);
      finals.push_back(h_n);
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, -1);
  }
  return {layer_input, at::stack(finals)};
}

// The plain training call: stack_forward, keeping each layer's input and outputs, and stack_backward.
class RnnStackFunction : public torch::autograd::Function<RnnStackFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& hx, at::TensorList weight_list,
                                                bool has_biases, int64_t num_layers, int64_t directions,
                                                int64_t activation, int64_t batch, int64_t H) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const std::vector<at::Tensor> weights = weight_list.vec();
    std::vector<at::Tensor> keep;
    auto [output, h_n] =
        dispatch_stack(x, hx, weights, std::nullopt, has_biases, num_layers, directions, activation, batch, H, &keep);
    // What torch's stack saves (saved_inputs.h): W_ih where the layer's input needs a gradient, the input where
    // a W_ih does, W_hh where anything in its chain (layer input, hx, that direction's weights) does, hx where
    // a W_hh does; biases never. The layers' outputs (each step's activation output) always.
    const int64_t per_direction = has_biases ? 4 : 2;
    std::vector<at::Tensor> saved_weights(weights.size());
    bool input_rg = x.requires_grad(), any_w_hh_rg = false, any_w_ih0_rg = false;
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      bool output_rg = false;
      for (int64_t d = 0; d < directions; ++d) {
        const int64_t k = (layer * directions + d) * per_direction;
        bool chain_rg = input_rg || hx.requires_grad();
        for (int64_t i = 0; i < per_direction; ++i) chain_rg = chain_rg || weights[k + i].requires_grad();
        saved_weights[k] = if_saved(input_rg, weights[k]);
        saved_weights[k + 1] = if_saved(chain_rg, weights[k + 1]);
        any_w_hh_rg = any_w_hh_rg || weights[k + 1].requires_grad();
        if (layer == 0) any_w_ih0_rg = any_w_ih0_rg || weights[k].requires_grad();
        output_rg = output_rg || chain_rg;
      }
      input_rg = output_rg;
    }
    // keep[0] is the input made contiguous: x itself unless x is a view of another layout (batch_first).
    const bool x_saved = any_w_ih0_rg && keep[0].is_same(x);
    keep[0] = if_saved(any_w_ih0_rg, keep[0]);
    std::vector<at::Tensor> to_save{if_saved(any_w_hh_rg, hx)};
    to_save.insert(to_save.end(), saved_weights.begin(), saved_weights.end());
    to_save.insert(to_save.end(), keep.begin(), keep.end());
    ctx->save_for_backward(to_save);
    std::vector<at::Tensor> inputs{x, hx};
    std::vector<bool> saved{x_saved, any_w_hh_rg};
    inputs.insert(inputs.end(), weights.begin(), weights.end());
    for (const at::Tensor& w : saved_weights) saved.push_back(w.defined());
    keep_for_recompute(ctx, inputs, saved);
    ctx->saved_data["shape"] = std::vector<int64_t>{has_biases, num_layers, directions, activation, x.size(-1)};
    // The caller may edit the output in place before backward, as torch's: the saved top y stays apart.
    if (directions == 1) output = step_buffer(output.sizes(), output.options()).copy_(output);
    return {output, h_n};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();  // once: non-reentrant checkpointing unpacks once
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const bool has_biases = shape[0] != 0;
    const int64_t num_layers = shape[1], directions = shape[2], activation = shape[3], input_size = shape[4];
    const int64_t count = num_layers * directions * (has_biases ? 4 : 2);
    std::vector<bool> wanted(2 + count);
    for (int64_t i = 0; i < 2 + count; ++i) wanted[i] = ctx->needs_input_grad(i);
    torch::autograd::variable_list result(2 + count + 7);
    if (at::GradMode::is_enabled() || !plain_grads(grads)) {
      // create_graph, or batched gradients: differentiate a recorded recomputation.
      const bool create_graph = at::GradMode::is_enabled();
      at::AutoGradMode recording(true);
      std::vector<at::Tensor> unpacked{saved[1 + count], saved[0]};  // x (contiguous), hx, the weights
      unpacked.insert(unpacked.end(), saved.begin() + 1, saved.begin() + 1 + count);
      const std::vector<at::Tensor> all = recompute_inputs(ctx, unpacked);
      const at::Tensor &x = all[0], &hx = all[1];
      const std::vector<at::Tensor> weights(all.begin() + 2, all.end());
      std::vector<at::Tensor> inputs, outputs, grad_outputs;
      std::vector<int64_t> where;
      for (int64_t i = 0; i < 2 + count; ++i) {
        if (wanted[i]) {
          inputs.push_back(i == 0 ? x : i == 1 ? hx : weights[i - 2]);
          where.push_back(i);
        }
      }
      auto [output, h_n] = differentiable_stack(x, hx, weights, has_biases, num_layers, directions, activation);
      for (auto [out, grad] : {std::pair{output, grads[0]}, std::pair{h_n, grads[1]}}) {
        if (grad.defined()) {
          outputs.push_back(out);
          grad_outputs.push_back(grad);
        }
      }
      if (outputs.empty() || inputs.empty()) return result;
      auto found = torch::autograd::grad(outputs, inputs, grad_outputs, /*retain_graph=*/true, create_graph,
                                         /*allow_unused=*/true);
      for (size_t j = 0; j < where.size(); ++j) result[where[j]] = found[j];
      return result;
    }
    const at::Tensor& hx = saved[0];
    const std::vector<at::Tensor> layers(saved.begin() + 1 + count, saved.end());  // contiguous already
    std::vector<at::Tensor> dense(count);
    for (int64_t i = 0; i < count; ++i) dense[i] = saved[1 + i].defined() ? saved[1 + i].contiguous() : saved[1 + i];
    AT_DISPATCH_FLOATING_TYPES(layers[1].scalar_type(), "fastrnn_rnn_stack_backward", [&] {
      stack_backward<scalar_t>(grads[0], grads[1], hx.defined() ? hx.contiguous() : hx, dense, layers, has_biases,
                               num_layers, directions, activation, input_size, wanted, result);
    });
    return result;
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> rnn_stack_forward(const at::Tensor& input, const at::Tensor& hx,
                                                     const std::vector<at::Tensor>& weights,
                                                     const std::optional<at::Tensor>& batch_sizes,
                                                     bool has_biases, int64_t num_layers,
                                                     bool bidirectional, int64_t activation) {
  TORCH_CHECK(activation == kTanh || activation == kRelu,
              "fastrnn: activation must be 0 (tanh) or 1 (relu), got ", activation);
  TORCH_CHECK(hx.defined(), "fastrnn: rnn_stack_forward needs hx");
  const int64_t directions = bidirectional ? 2 : 1;
  int64_t batch = 0, H = 0;
  const std::string why =
      refusal(input, hx, weights, batch_sizes, has_biases, num_layers, directions, &batch, &H);
  TORCH_CHECK(why.empty(), "fastrnn: rnn_stack_forward: ", why);
  if (batch_sizes.has_value()) check_batch_sizes(*batch_sizes, input.size(0), "input");
  TORCH_CHECK(!(at::GradMode::is_enabled() && any_requires_grad(input, hx, weights)),
              "fastrnn: rnn_stack_forward records no autograd; call it without gradients");
  return dispatch_stack(input, hx, weights, batch_sizes, has_biases, num_layers, directions, activation,
                        batch, H);
}

std::optional<std::tuple<at::Tensor, at::Tensor>> rnn_forward_if_plain(
    const at::Tensor& input, const at::Tensor& hx, const std::vector<at::Tensor>& weights, bool has_biases,
    int64_t num_layers, bool bidirectional, int64_t activation, bool batch_first, int64_t input_size,
    int64_t hidden_size) {
  if ((activation != kTanh && activation != kRelu) || !input.defined()) return std::nullopt;
  const bool record = at::GradMode::is_enabled() && any_requires_grad(input, hx, weights);
  const bool batched = input.dim() == 3;
  if (!batched && input.dim() != 2) return std::nullopt;
  if (input.size(-1) != input_size || (hx.defined() && hx.dim() != input.dim())) return std::nullopt;
  // Unbatched [T, I] is [T, 1, I] (and h [L * D, H] is [L * D, 1, H]) whatever batch_first says.
  at::Tensor x = batched ? (batch_first ? input.transpose(0, 1) : input) : input.unsqueeze(1);
  const at::Tensor h = hx.defined() && !batched ? hx.unsqueeze(1) : hx;
  const int64_t directions = bidirectional ? 2 : 1;
  int64_t batch = 0, H = 0;
  if (!refusal(x, h, weights, std::nullopt, has_biases, num_layers, directions, &batch, &H).empty() ||
      H != hidden_size)
    return std::nullopt;
  at::Tensor output, h_n;
  if (record) {
    // A missing hx is zeros that need no gradient; the view ops around the Function are recorded as usual.
    const at::Tensor h0 = h.defined() ? h : at::zeros({num_layers * directions, batch, H}, x.options());
    auto outputs = RnnStackFunction::apply(x, h0, at::TensorList(weights), has_biases, num_layers, directions, activation, batch, H);
    output = outputs[0];
    h_n = outputs[1];
  } else {
    std::tie(output, h_n) =
        dispatch_stack(x, h, weights, std::nullopt, has_biases, num_layers, directions, activation, batch, H);
  }
  if (!batched) return std::make_tuple(output.squeeze(1), h_n.squeeze(1));
  if (batch_first) output = output.transpose(0, 1);
  return std::make_tuple(output, h_n);
}

}  // namespace fastrnn
