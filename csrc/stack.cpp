// torch.nn.RNN / GRU / LSTM.forward's plain eager call as one C++ call: the module's preamble (batch_first,
// unbatched input, a missing state), the argument checks, the layer x direction loop and the final states,
// written once over a cell (Elman, Gru, Lstm: how one layer and direction runs). No Python, no
// autograd.Function and no dispatcher per layer: a tiny call (T = 5, B = 1, H = 8) is a few allocations and
// loops, where it spent ~50 us in Python around a few microseconds of arithmetic.
//
// Without autograd every cell runs its layer inference (Elman: the input projection written straight into
// the output buffer, then the recurrence in place there; Gru / Lstm: gru_infer / lstm_infer, the projection
// made per step). A recording Elman call runs the same forward in RnnStackFunction, whose backward is C++
// too; a recording GRU / LSTM call is declined (the caller runs its layer path).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "brgemm_gemm.h"
#include "rnn_cpu.h"
#include "saved_inputs.h"
#include "step_buffers.h"
#include "whole_call.h"

namespace fastrnn {
namespace {

// Below this many multiply-adds the Elman projection is one vectorised dot per output; above, one GEMM (mm_nn's).
constexpr int64_t kSmallProjection = 64 * 64 * 8;

// A checked stack call: L layers, D directions, `per_direction` weights each (w_ih, w_hh[, b_ih, b_hh][, w_hr]),
// G = gates * H rows in w_ih / w_hh, states h [L * D, B, P] (P: the projection's width, else H) and c [.., H].
struct StackShape {
  int64_t layers = 0, directions = 1, per_direction = 2, batch = 0, H = 0, P = 0;
  bool has_biases = false, proj = false;
};

// The layer x direction walk: y = layer(input, k, reverse) for k = layer * D + d; the directions' outputs
// are concatenated into the next layer's input. Returns the last layer's.
template <class Layer>
at::Tensor over_layers(at::Tensor input, int64_t layers, int64_t directions, const Layer& layer) {
  for (int64_t l = 0; l < layers; ++l) {
    if (directions == 1) {
      input = layer(input, l, false);
    } else {
      const at::Tensor forward = layer(input, 2 * l, false);
      input = at::cat({forward, layer(input, 2 * l + 1, true)}, -1);
    }
  }
  return input;
}

bool any_requires_grad(const at::Tensor& input, const at::Tensor (&states)[2], const std::vector<at::Tensor>& weights) {
  if (input.requires_grad()) return true;
  for (const at::Tensor& s : states)
    if (s.defined() && s.requires_grad()) return true;
  for (const auto& w : weights)
    if (w.requires_grad()) return true;
  return false;
}

// Why the stack does not take these arguments, or "" when it does (and *shape then holds the call's shape).
// x: padded [T, B, I] or packed [N, I]; states[i]: [L * D, B, P] (h) and [L * D, B, H] (c) or undefined.
// Only cheap shape, dtype and device facts: every value is read later by the kernels, and a refused call is
// the caller's to send down another path.
std::string refusal(const at::Tensor& x, const at::Tensor (&states)[2], const std::vector<at::Tensor>& weights,
                    const std::optional<at::Tensor>& batch_sizes, bool has_biases, int64_t gates, bool proj,
                    int64_t num_layers, int64_t directions, StackShape* shape) {
  if (!x.defined() || !x.device().is_cpu()) return "input must be a CPU tensor";
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return "input must be float32 or float64";
  const int64_t per_direction = (has_biases ? 4 : 2) + (proj ? 1 : 0);
  if (num_layers < 1 || static_cast<int64_t>(weights.size()) != num_layers * directions * per_direction)
    return "wrong number of weights";
  const at::Tensor& w_hh = weights[1];
  if (!w_hh.defined() || w_hh.dim() != 2 || w_hh.size(0) % gates != 0) return "weight shapes do not match";
  const int64_t H = w_hh.size(0) / gates, G = gates * H, P = w_hh.size(1);
  if (!proj && P != H) return "weight shapes do not match";
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
  for (int64_t k = 0; k < num_layers * directions; ++k) {
    const int64_t in = k < directions ? x.size(-1) : directions * P;
    const at::Tensor* w = weights.data() + k * per_direction;
    for (int64_t i = 0; i < per_direction; ++i) {
      if (!w[i].defined() || !w[i].device().is_cpu() || w[i].scalar_type() != dtype)
        return "weights must be CPU tensors of the input's dtype";
    }
    if (!w[0].sizes().equals({G, in}) || !w[1].sizes().equals({G, P})) return "weight shapes do not match";
    if (has_biases && (!w[2].sizes().equals({G}) || !w[3].sizes().equals({G}))) return "bias shapes do not match";
    if (proj && !w[per_direction - 1].sizes().equals({P, H})) return "weight shapes do not match";
  }
  for (int64_t i = 0; i < 2; ++i) {
    const at::Tensor& s = states[i];
    if (s.defined() && (!s.device().is_cpu() || s.scalar_type() != dtype ||
                        !s.sizes().equals({num_layers * directions, batch, i == 0 ? P : H})))
      return "hx must be [L * D, B, H] on the CPU in the input's dtype";
  }
  *shape = {num_layers, directions, per_direction, batch, H, P, has_biases, proj};
  return "";
}

// Row k of a given state [L * D, B, width], or zeros [B, width] where none was given.
at::Tensor initial_state(const at::Tensor& given, int64_t k, int64_t batch, int64_t width,
                         const at::TensorOptions& options) {
  return given.defined() ? given.select(0, k) : at::zeros({batch, width}, options);
}

// final[k] = state: a layer's [B, width] final state into the stack's [L * D, B, width].
void put_final(at::Tensor& final, int64_t k, const at::Tensor& state) {
  const at::Tensor s = state.contiguous();
  std::memcpy(static_cast<char*>(final.data_ptr()) + k * s.nbytes(), s.const_data_ptr(), s.nbytes());
}

// A new [G] bias: b_ih + b_hh over its first `summed` entries, b_ih alone after them.
at::Tensor folded_bias(const at::Tensor& b_ih, const at::Tensor& b_hh, int64_t summed) {
  const at::Tensor bi = b_ih.contiguous(), bh = b_hh.contiguous();
  at::Tensor out = at::empty_like(bi);
  AT_DISPATCH_FLOATING_TYPES(bi.scalar_type(), "fastrnn_folded_bias", [&] {
    const scalar_t *a = bi.const_data_ptr<scalar_t>(), *b = bh.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t j = 0; j < bi.numel(); ++j) o[j] = j < summed ? a[j] + b[j] : a[j];
  });
  return out;
}

// out[rows, H] = x[rows, I] W_ih^T + b_ih + b_hh (either bias may be nullptr).
template <typename T>
void project(const T* x, int64_t rows, int64_t I, const T* w_ih, const T* b_ih, const T* b_hh, int64_t H,
             T* out) {
  std::vector<T> bias;
  if (b_ih != nullptr || b_hh != nullptr) {
    bias.assign(H, T(0));
    for (int64_t j = 0; j < H; ++j) bias[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
  }
  const T* b = bias.empty() ? nullptr : bias.data();
  if (rows * I * H > kSmallProjection) return gemm_nn_bias<T>(rows, H, I, x, I, w_ih, I, true, b, out, H);
  rows_times_wt(x, rows, I, w_ih, H, out, false);
  if (b != nullptr) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < H; ++j) out[r * H + j] += bias[j];
  }
}

// One layer and direction k of a stack call: x, the layer input, contiguous [T, B, in] or packed [N, in];
// w, its weights; states, the call's given states (or undefined); finals, where row k of each final state goes.
struct LayerCall {
  const StackShape& s;
  const at::Tensor& x;
  const at::Tensor* w;
  const at::Tensor (&states)[2];
  at::Tensor (&finals)[2];
  int64_t k;
  bool reverse;
  const std::optional<at::Tensor>& batch_sizes;
};

// The cells: how a LayerCall runs without autograd. Returns y [T, B, P] or [N, P].
struct Elman {
  static constexpr int64_t kGates = 1, kStates = 1;
  int64_t activation;

  at::Tensor operator()(const LayerCall& c) const {
    const bool packed = c.batch_sizes.has_value();
    const int64_t steps = packed ? c.batch_sizes->numel() : c.x.size(0), B = c.s.batch, H = c.s.H;
    const int64_t rows = packed ? c.x.size(0) : c.x.size(0) * c.x.size(1);
    std::vector<int64_t> shape(c.x.sizes().begin(), c.x.sizes().end());
    shape.back() = H;
    at::Tensor y = step_buffer(shape, c.x.options());
    std::vector<at::Tensor> w(c.s.per_direction);
    for (int64_t i = 0; i < c.s.per_direction; ++i) w[i] = c.w[i].contiguous();
    AT_DISPATCH_FLOATING_TYPES(c.x.scalar_type(), "fastrnn_rnn_stack", [&] {
      using T = scalar_t;
      T* yp = y.data_ptr<T>();
      const bool b = c.s.has_biases;
      project<T>(c.x.data_ptr<T>(), rows, c.x.size(-1), w[0].data_ptr<T>(), b ? w[2].data_ptr<T>() : nullptr,
                 b ? w[3].data_ptr<T>() : nullptr, H, yp);
      const at::Tensor& given = c.states[0];
      std::vector<T> zeros(given.defined() ? 0 : B * H, T(0));
      const T* h0 = given.defined() ? given.data_ptr<T>() + c.k * B * H : zeros.data();
      recurrence_forward_raw<T>(packed ? c.batch_sizes->data_ptr<int64_t>() : nullptr, steps, B, yp, h0,
                                w[1].data_ptr<T>(), H, c.reverse, activation, yp,
                                c.finals[0].data_ptr<T>() + c.k * B * H);
    });
    return y;
  }
};

// Gru (3 gates) and Lstm (4): one gru_infer / lstm_infer. The GRU folds b_hh into r and z only: b_hn stays
// inside the reset product, as torch computes it.
template <int64_t Gates>
struct Gated {
  static constexpr int64_t kGates = Gates, kStates = Gates == 4 ? 2 : 1;

  at::Tensor operator()(const LayerCall& c) const {
    const StackShape& s = c.s;
    const at::Tensor h0 = initial_state(c.states[0], c.k, s.batch, s.P, c.x.options());
    std::optional<at::Tensor> bias, extra;  // extra: the GRU's b_hn, the LSTM's w_hr
    if (s.has_biases) bias = folded_bias(c.w[2], c.w[3], (Gates == 3 ? 2 : 4) * s.H);
    at::Tensor y, finals[2];
    if constexpr (Gates == 3) {
      if (s.has_biases) extra = c.w[3].narrow(0, 2 * s.H, s.H);
      std::tie(y, finals[0]) = gru_infer_cpu(c.x, c.w[0], bias, h0, c.w[1], extra, c.batch_sizes, c.reverse);
    } else {
      if (s.proj) extra = c.w[s.per_direction - 1];
      const at::Tensor c0 = initial_state(c.states[1], c.k, s.batch, s.H, c.x.options());
      std::tie(y, finals[0], finals[1]) =
          lstm_infer_cpu(c.x, c.w[0], bias, h0, c0, c.w[1], extra, c.batch_sizes, c.reverse);
    }
    for (int64_t i = 0; i < kStates; ++i) put_final(c.finals[i], c.k, finals[i]);
    return y;
  }
};
using Gru = Gated<3>;
using Lstm = Gated<4>;

// The whole stack without autograd: (output, h_n, c_n or undefined). keep: each layer's input, then its
// y per direction (what RnnStackFunction's backward reads).
template <class Cell>
std::array<at::Tensor, 3> stack_forward(const Cell& cell, const StackShape& s, const at::Tensor& x,
                                        const at::Tensor (&given)[2], const std::vector<at::Tensor>& weights,
                                        const std::optional<at::Tensor>& batch_sizes,
                                        std::vector<at::Tensor>* keep = nullptr) {
  c10::AutoGradMode no_grad(false);
  const at::Tensor states[2] = {given[0].defined() ? given[0].contiguous() : given[0],
                                given[1].defined() ? given[1].contiguous() : given[1]};
  at::Tensor finals[2];
  for (int64_t i = 0; i < Cell::kStates; ++i)
    finals[i] = at::empty({s.layers * s.directions, s.batch, i == 0 ? s.P : s.H}, x.options());
  const auto layer = [&](const at::Tensor& input, int64_t k, bool reverse) {
    if (keep != nullptr && k % s.directions == 0) keep->push_back(input);
    const at::Tensor* w = weights.data() + k * s.per_direction;
    at::Tensor y = cell(LayerCall{s, input, w, states, finals, k, reverse, batch_sizes});
    if (keep != nullptr) keep->push_back(y);
    return y;
  };
  const at::Tensor output = over_layers(x.contiguous(), s.layers, s.directions, layer);
  return {output, finals[0], finals[1]};
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

// The Elman stack's gradients on raw pointers, layer by layer from the top. saved: per layer its input
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

// The Elman plain training call: stack_forward, keeping each layer's input and outputs, and stack_backward.
class RnnStackFunction : public torch::autograd::Function<RnnStackFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& hx, at::TensorList weight_list,
                                                const StackShape& s, int64_t activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const std::vector<at::Tensor> weights = weight_list.vec();
    std::vector<at::Tensor> keep;
    auto [output, h_n, unused] = stack_forward(Elman{activation}, s, x, {hx, {}}, weights, std::nullopt, &keep);
    // What torch's stack saves (saved_inputs.h): W_ih where the layer's input needs a gradient, the input where
    // a W_ih does, W_hh where anything in its chain (layer input, hx, that direction's weights) does, hx where
    // a W_hh does; biases never. The layers' outputs (each step's activation output) always.
    const int64_t per_direction = s.per_direction, num_layers = s.layers, directions = s.directions;
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
    ctx->saved_data["shape"] = std::vector<int64_t>{s.has_biases, num_layers, directions, activation, x.size(-1)};
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
    torch::autograd::variable_list result(2 + count + 2);
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
      // torch's own stack, recomputed: gradients of any order are torch's.
      const bool bi = directions == 2;
      const int64_t L = num_layers;
      auto [output, h_n] = activation == kTanh ? at::rnn_tanh(x, hx, weights, has_biases, L, 0.0, false, bi, false)
                                               : at::rnn_relu(x, hx, weights, has_biases, L, 0.0, false, bi, false);
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

// The module's preamble, checks and stack for `cell`: (output, h_n, c_n or undefined) shaped as torch's
// module returns them, or nullopt for anything not plainly well-formed (the caller then runs torch's checks).
// A recording call runs RnnStackFunction (Elman) or is declined (Gru, Lstm).
template <class Cell>
std::optional<std::array<at::Tensor, 3>> whole_stack(const Cell& cell, const at::Tensor& input, const at::Tensor& hx,
                                                     const at::Tensor& cx, const std::vector<at::Tensor>& weights,
                                                     bool has_biases, int64_t num_layers, bool bidirectional,
                                                     bool batch_first, int64_t input_size, int64_t hidden_size,
                                                     int64_t proj_size) {
  if (!input.defined() || (Cell::kStates == 1 && (cx.defined() || proj_size != 0)) ||
      (Cell::kStates == 2 && hx.defined() != cx.defined()))
    return std::nullopt;
  const bool batched = input.dim() == 3;
  if ((!batched && input.dim() != 2) || input.size(-1) != input_size) return std::nullopt;
  if ((hx.defined() && hx.dim() != input.dim()) || (cx.defined() && cx.dim() != input.dim())) return std::nullopt;
  // Unbatched [T, I] is [T, 1, I] (and a state [L * D, H] is [L * D, 1, H]) whatever batch_first says.
  const at::Tensor x = batched ? (batch_first ? input.transpose(0, 1) : input) : input.unsqueeze(1);
  at::Tensor states[2] = {hx, cx};
  for (at::Tensor& s : states)
    if (s.defined() && !batched) s = s.unsqueeze(1);
  StackShape s;
  if (!refusal(x, states, weights, std::nullopt, has_biases, Cell::kGates, proj_size > 0, num_layers,
               bidirectional ? 2 : 1, &s)
           .empty() ||
      s.H != hidden_size || (proj_size > 0 && s.P != proj_size))
    return std::nullopt;
  std::array<at::Tensor, 3> out;
  if (at::GradMode::is_enabled() && any_requires_grad(input, states, weights)) {
    if constexpr (std::is_same_v<Cell, Elman>) {
      // A missing hx is zeros that need no gradient; the view ops around the Function are recorded as usual.
      const at::Tensor h0 =
          states[0].defined() ? states[0] : at::zeros({s.layers * s.directions, s.batch, s.H}, x.options());
      auto outputs = RnnStackFunction::apply(x, h0, at::TensorList(weights), s, cell.activation);
      out = {outputs[0], outputs[1], at::Tensor()};
    } else {
      return std::nullopt;
    }
  } else {
    out = stack_forward(cell, s, x, states, weights, std::nullopt);
  }
  if (!batched) {
    for (at::Tensor& t : out)
      if (t.defined()) t = t.squeeze(1);
  } else if (batch_first) {
    out[0] = out[0].transpose(0, 1);
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rnn_stack_forward(const at::Tensor& input, const at::Tensor& hx,
                                                     const std::vector<at::Tensor>& weights,
                                                     const std::optional<at::Tensor>& batch_sizes,
                                                     bool has_biases, int64_t num_layers,
                                                     bool bidirectional, int64_t activation) {
  TORCH_CHECK(activation == kTanh || activation == kRelu,
              "fastrnn: activation must be 0 (tanh) or 1 (relu), got ", activation);
  TORCH_CHECK(hx.defined(), "fastrnn: rnn_stack_forward needs hx");
  StackShape s;
  const std::string why = refusal(input, {hx, {}}, weights, batch_sizes, has_biases, 1, false, num_layers,
                                  bidirectional ? 2 : 1, &s);
  TORCH_CHECK(why.empty(), "fastrnn: rnn_stack_forward: ", why);
  if (batch_sizes.has_value()) check_batch_sizes(*batch_sizes, input.size(0), "input");
  TORCH_CHECK(!(at::GradMode::is_enabled() && any_requires_grad(input, {hx, {}}, weights)),
              "fastrnn: rnn_stack_forward records no autograd; call it without gradients");
  auto [output, h_n, unused] = stack_forward(Elman{activation}, s, input, {hx, {}}, weights, batch_sizes);
  return {output, h_n};
}

std::optional<std::array<at::Tensor, 3>> stack_if_plain(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                        const at::Tensor& cx, const std::vector<at::Tensor>& weights,
                                                        bool has_biases, int64_t num_layers, bool bidirectional,
                                                        bool batch_first, int64_t input_size, int64_t hidden_size,
                                                        int64_t proj_size) {
  const auto run = [&](const auto& cell) {
    return whole_stack(cell, input, hx, cx, weights, has_biases, num_layers, bidirectional, batch_first, input_size,
                       hidden_size, proj_size);
  };
  if (kind == kTanh || kind == kRelu) return run(Elman{kind});
  if (kind == 3) return run(Gru{});
  if (kind == 4) return run(Lstm{});
  return std::nullopt;
}

}  // namespace fastrnn
