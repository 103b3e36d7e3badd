// torch.nn.RNN / GRU / LSTM.forward's plain eager call as one C++ call: the module's preamble (batch_first,
// unbatched input, a missing state), the argument checks, the layer x direction loop and the final states,
// written once over a cell (Elman, Gru, Lstm: how one layer and direction runs). No Python, no
// autograd.Function and no dispatcher per layer: a tiny call (T = 5, B = 1, H = 8) is a few allocations and
// loops, where it spent ~50 us in Python around a few microseconds of arithmetic.
//
// Every cell runs layer_forward (recurrence.cpp), which projects per step or in one GEMM first (the Elman's
// recurrence then runs in place on its projection). A recording call runs the same forward in StackFunction, one
// node for the whole stack whatever the cell, which keeps the gated layers' workspaces and whose backward runs
// each layer's layer_backward.
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

// A checked stack call: L layers, D directions, `per_direction` weights each (w_ih, w_hh[, b_ih, b_hh][, w_hr]),
// G = gates * H rows in w_ih / w_hh, states h [L * D, B, P] (P: the projection's width, else H) and c [.., H].
struct StackShape {
  int64_t layers = 0, directions = 1, per_direction = 2, batch = 0, H = 0, P = 0;
  bool has_biases = false, proj = false;
};

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

// Row k of a given state i (0: h, 1: c) [L * D, B, width], or zeros [B, width] where none was given: the layers
// only read them, so a thread keeps the last zeros of each state and dtype (a new tensor costs ~0.25 us, 3% of a
// tiny call).
at::Tensor initial_state(const at::Tensor& given, int i, int64_t k, int64_t batch, int64_t width,
                         const at::TensorOptions& options) {
  if (given.defined()) return given.select(0, k);
  thread_local at::Tensor zeros[2][2];
  at::Tensor& z = zeros[i][options.dtype() == at::kDouble];
  if (!z.defined() || !z.sizes().equals({batch, width})) z = zero_buffer({batch, width}, options);
  return z;
}

// final[k] = state: a layer's [B, width] final state into the stack's [L * D, B, width].
void put_final(at::Tensor& final, int64_t k, const at::Tensor& state) {
  const at::Tensor s = state.contiguous();
  std::memcpy(static_cast<char*>(final.data_ptr()) + k * s.nbytes(), s.const_data_ptr(), s.nbytes());
}

// One layer and direction k of a stack call: x, the layer input, contiguous [T, B, in] or packed [N, in];
// w, its weights; states, the call's given states (or undefined); finals, where row k of each final state goes;
// ws, where a recording call keeps a gated layer's workspace for its backward (nullptr: inference).
struct LayerCall {
  const StackShape& s;
  const at::Tensor& x;
  const at::Tensor* w;
  const at::Tensor (&states)[2];
  at::Tensor (&finals)[2];
  int64_t k;
  bool reverse;
  const std::optional<at::Tensor>& batch_sizes;
  at::Tensor* ws;
};

// The cells: how a LayerCall runs, one layer_forward given the layer input, W_ih and torch's two biases. Returns y
// [T, B, P] or [N, P]. kind: stack_if_plain's.
template <int64_t Gates>
struct LayerCell {
  static constexpr int64_t kGates = Gates, kStates = Gates == 4 ? 2 : 1;
  int64_t activation = 0;  // the Elman's (kTanh, kRelu)
  int64_t kind() const { return Gates == 1 ? activation : Gates; }

  at::Tensor operator()(const LayerCall& c) const {
    const StackShape& s = c.s;
    const at::Tensor h0 = initial_state(c.states[0], 0, c.k, s.batch, s.P, c.x.options());
    const at::Tensor c0 = Gates == 4 ? initial_state(c.states[1], 1, c.k, s.batch, s.H, c.x.options()) : at::Tensor();
    std::optional<at::Tensor> b_ih, b_hh, w_hr;
    if (s.has_biases) b_ih = c.w[2], b_hh = c.w[3];
    if (s.proj) w_hr = c.w[s.per_direction - 1];
    const char* op = Gates == 1 ? "rnn_stack" : Gates == 3 ? "gru_stack" : "lstm_stack";
    auto [y, h_n, c_n, ws] = layer_forward(op, Gates, activation, c.x, h0, c0, c.w[1], w_hr, std::nullopt,
                                           c.batch_sizes, c.reverse, c.ws != nullptr, c.w[0], b_ih, b_hh);
    if (c.ws != nullptr) *c.ws = ws;
    put_final(c.finals[0], c.k, h_n);
    if (Gates == 4) put_final(c.finals[1], c.k, c_n);
    return y;
  }
};
using Elman = LayerCell<1>;
using Gru = LayerCell<3>;
using Lstm = LayerCell<4>;

// The whole stack: (output, h_n, c_n or undefined). keep (a recording call): each layer's input, then per
// direction its y (and a gated cell's ws): what StackFunction's backward reads.
template <class Cell>
std::array<at::Tensor, 3> stack_forward(const Cell& cell, const StackShape& s, const at::Tensor& x,
                                        const at::Tensor (&given)[2], const std::vector<at::Tensor>& weights,
                                        const std::optional<at::Tensor>& batch_sizes,
                                        std::vector<at::Tensor>* keep = nullptr) {
  c10::AutoGradMode no_grad(false);
  const at::Tensor states[2] = {dense(given[0]), dense(given[1])};
  at::Tensor finals[2];
  for (int64_t i = 0; i < Cell::kStates; ++i)
    finals[i] = step_buffer({s.layers * s.directions, s.batch, i == 0 ? s.P : s.H}, x.options());
  const auto layer = [&](const at::Tensor& input, int64_t k, bool reverse) {
    if (keep != nullptr && k % s.directions == 0) keep->push_back(input);
    const at::Tensor* w = weights.data() + k * s.per_direction;
    at::Tensor ws;
    at::Tensor y = cell(LayerCall{s, input, w, states, finals, k, reverse, batch_sizes,
                                  keep != nullptr && Cell::kGates > 1 ? &ws : nullptr});
    if (keep != nullptr) keep->push_back(y);
    if (ws.defined()) keep->push_back(ws);
    return y;
  };
  // Layer by layer, y = layer(input, k, reverse) for k = layer * D + d; the directions' outputs make the next
  // layer's input.
  at::Tensor input = x.contiguous();
  for (int64_t l = 0; l < s.layers; ++l) {
    input = s.directions == 1 ? layer(input, l, false)
                              : at::cat({layer(input, 2 * l, false), layer(input, 2 * l + 1, true)}, -1);
  }
  return {input, finals[0], finals[1]};
}

// out [G, P] = sum over steps of dg_t^T h_{t-1} (h_{-1} = h0; reversed: h_{t+1}, h_T = h0). Two GEMMs, no copy.
template <typename T>
void recurrent_weight_grad(int64_t steps, int64_t batch, int64_t G, int64_t P, const T* dg, const T* y, const T* h0,
                           bool reverse, T* out) {
  const T* dg_first = dg + (reverse ? (steps - 1) * batch * G : 0);
  gemm_rowmajor_ex<T>(true, G, P, batch, dg_first, G, h0, P, false, T(0), out, P);
  if (steps > 1) {
    const T* later = reverse ? dg : dg + batch * G;
    const T* prev = reverse ? y + batch * P : y;
    gemm_rowmajor_ex<T>(true, G, P, (steps - 1) * batch, later, G, prev, P, false, T(1), out, P);
  }
}

// out [width] = the sum of m[:, from : from + width] over the `rows` rows of m [rows, cols]: a bias gradient.
template <typename T>
at::Tensor column_sums(const at::Tensor& m, int64_t rows, int64_t cols, int64_t from, int64_t width) {
  if (rows * width > (1 << 16)) return m.view({rows, cols}).narrow(1, from, width).sum(0);  // threaded
  at::Tensor out = step_buffer({width}, m.options());
  sum_rows(m.const_data_ptr<T>() + from, rows, width, out.data_ptr<T>(), cols);
  return out;
}

// The stack's gradients on raw pointers, layer by layer from the top. saved: stack_forward's `keep`; states: h0
// [L * D, B, P] (undefined where no W_hh needs a gradient, but for the GRU, whose backward reads it) and the
// LSTM's c0; weights: undefined where not saved. grads: x, the states, then each weight (undefined where not
// wanted). Per layer and direction, the cell's backward gives dgates (the gradient of x W_ih^T + b_ih) and dgh
// (of h W_hh^T; Elman, LSTM: dgates); the rest is GEMMs and sums written once.
template <typename T>
void stack_backward(int64_t kind, const StackShape& s, const torch::autograd::variable_list& out_grads,
                    const at::Tensor (&states)[2], const std::vector<at::Tensor>& weights,
                    const std::vector<at::Tensor>& saved, int64_t input_size, const std::vector<bool>& wanted,
                    std::vector<at::Tensor>& grads) {
  const int64_t gates = gates_of(kind), n_states = gates == 4 ? 2 : 1, D = s.directions;
  const int64_t per_direction = s.per_direction, H = s.H, P = s.P, G = gates * H;
  const int64_t per_layer = 1 + D * (gates > 1 ? 2 : 1);  // saved: the layer's input, then y (and ws) a direction
  const at::Tensor& y0 = saved[1];
  const int64_t steps = y0.size(0), batch = y0.size(1), rows = steps * batch;
  const auto options = y0.options();
  // dY: the gradient of the current layer's output [T, B, D * P]; zeros where the caller sent none.
  at::Tensor dY = out_grads[0].defined() ? step_contiguous(out_grads[0]) : zero_buffer({steps, batch, D * P}, options);
  // The final states' gradients (given, else zeros), the initial states'.
  at::Tensor d_final[2], d_state[2];
  for (int64_t i = 0; i < n_states; ++i) {
    const std::array<int64_t, 3> sizes{s.layers * D, batch, i == 0 ? P : H};
    const at::Tensor& given = out_grads[1 + i];
    d_final[i] = given.defined() ? given.contiguous() : zero_buffer(sizes, options);
    if (wanted[1 + i]) d_state[i] = step_buffer(sizes, options);
  }
  at::Tensor dy_buffer = D > 1 ? step_buffer({steps, batch, P}, options) : at::Tensor();
  for (int64_t layer = s.layers - 1; layer >= 0; --layer) {
    const at::Tensor& x_l = saved[layer * per_layer];  // undefined: layer 0 with no W_ih needing a grad
    const int64_t in = layer == 0 ? input_size : x_l.size(-1);
    // W_ih was saved where the layer's input needs a gradient (at layer 0: where the input does).
    const bool want_dx = weights[layer * D * per_direction].defined() && (layer > 0 || wanted[0]);
    at::Tensor dx = want_dx ? step_buffer({steps, batch, in}, options) : at::Tensor();
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = layer * D + d;
      if (!weights[k * per_direction + 1].defined()) continue;  // nothing in this direction needs a gradient
      const at::Tensor& y = saved[layer * per_layer + 1 + d * (gates > 1 ? 2 : 1)];
      const at::Tensor* w = weights.data() + k * per_direction;
      at::Tensor dy = dY;
      if (D > 1) {  // this direction's half of every row
        const T* all = dY.data_ptr<T>();
        T* half = dy_buffer.data_ptr<T>();
        for (int64_t r = 0; r < rows; ++r) std::copy(all + (r * D + d) * P, all + (r * D + d + 1) * P, half + r * P);
        dy = dy_buffer;
      }
      const bool reverse = d == 1;
      // The cell's backward: dgates, the gradient of x W_ih^T + b_ih, and dgh, of h W_hh^T (+ b_hn): the same
      // tensor but for the GRU.
      const at::Tensor ws = gates > 1 ? saved[layer * per_layer + 2 + 2 * d] : at::Tensor();
      const at::Tensor state0 = gates > 1 ? states[gates == 3 ? 0 : 1].select(0, k) : at::Tensor();
      const std::optional<at::Tensor> w_hr = s.proj ? std::optional(w[per_direction - 1]) : std::nullopt;
      const char* op = gates == 1 ? "rnn_stack_backward" : gates == 3 ? "gru_stack_backward" : "lstm_stack_backward";
      auto [dgates, second, dh0, dc0] =
          layer_backward(op, gates, gates == 1 ? kind : 0, dy, d_final[0].select(0, k),
                         gates == 4 ? d_final[1].select(0, k) : at::Tensor(), y, ws, state0, w[1], w_hr, std::nullopt,
                         reverse, wanted[1]);
      if (wanted[1]) put_final(d_state[0], k, dh0);
      if (gates == 4 && wanted[2]) put_final(d_state[1], k, dc0);
      const int64_t hr = k * per_direction + per_direction - 1;  // w_hr: dW_hr = dh_all^T (ws[..., 5H:])
      if (s.proj && wanted[1 + n_states + hr]) {
        grads[1 + n_states + hr] = step_buffer({P, H}, options);
        gemm_rowmajor_ex<T>(true, P, H, rows, second.data_ptr<T>(), P, ws.data_ptr<T>() + 5 * H, 6 * H, false, T(0),
                            grads[1 + n_states + hr].data_ptr<T>(), H);
      }
      const at::Tensor& dgh = gates == 3 ? second : dgates;
      const T* dg = dgates.data_ptr<T>();
      const int64_t g = 1 + n_states + k * per_direction;  // this direction's w_ih in grads
      if (wanted[g]) {
        grads[g] = step_buffer({G, in}, options);
        gemm_rowmajor_ex<T>(true, G, in, rows, dg, G, x_l.data_ptr<T>(), in, false, T(0), grads[g].data_ptr<T>(), in);
      }
      if (wanted[g + 1]) {
        grads[g + 1] = step_buffer({G, P}, options);
        recurrent_weight_grad<T>(steps, batch, G, P, dgh.data_ptr<T>(), y.data_ptr<T>(),
                                 states[0].data_ptr<T>() + k * batch * P, reverse, grads[g + 1].data_ptr<T>());
      }
      if (s.has_biases && (wanted[g + 2] || wanted[g + 3])) {
        const at::Tensor db = column_sums<T>(dgates, rows, G, 0, G);
        if (wanted[g + 2]) grads[g + 2] = db;
        if (wanted[g + 3]) grads[g + 3] = wanted[g + 2] ? db.clone() : db;
        // GRU: b_hn is inside the reset product, so its gradient is dg's, not dxw's.
        if (gates == 3 && wanted[g + 3]) grads[g + 3].narrow(0, 2 * H, H).copy_(column_sums<T>(dgh, rows, G, 2 * H, H));
      }
      if (want_dx && gates == 1) {
        gemm_rowmajor_ex<T>(false, rows, in, G, dg, G, w[0].data_ptr<T>(), in, false, d == 0 ? T(0) : T(1),
                            dx.data_ptr<T>(), in);
      } else if (want_dx) {  // the gated dX on the microkernel where it is large enough (mm_nn's GEMM)
        gemm_nn_bias<T>(rows, in, G, dg, G, w[0].data_ptr<T>(), in, false, nullptr, dx.data_ptr<T>(), in, d > 0);
      }
    }
    if (layer > 0) dY = dx;
    else if (wanted[0]) grads[0] = dx;
  }
  for (int64_t i = 0; i < n_states; ++i) grads[1 + i] = d_state[i];
}

// A recording stack call of any cell as one node: stack_forward keeping each layer's input and outputs, and
// stack_backward. Inputs: x, the states (h0; the LSTM's c0 too), the weights.
class StackFunction : public torch::autograd::Function<StackFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                at::TensorList state_list, at::TensorList weight_list,
                                                const StackShape& s, int64_t kind) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const std::vector<at::Tensor> weights = weight_list.vec();
    const int64_t n_states = state_list.size(), per_direction = s.per_direction;
    const at::Tensor given[2] = {state_list[0], n_states > 1 ? state_list[1] : at::Tensor()};
    std::vector<at::Tensor> keep;
    std::array<at::Tensor, 3> out;
    by_kind<Elman, Gru, Lstm>(
        kind, [&](const auto& cell) { out = stack_forward(cell, s, x, given, weights, std::nullopt, &keep); });
    // What torch's stack saves (saved_inputs.h): W_ih where the layer's input needs a gradient, the input where
    // a W_ih does, W_hh (and W_hr) where anything in its chain (layer input, states, that direction's weights)
    // does, h0 where a W_hh does (the GRU's backward reads h0 always: else a copy, as torch keeps h0 - n), the
    // LSTM's c0; biases never. The layers' outputs and workspaces always.
    std::vector<at::Tensor> saved_weights(weights.size());
    const bool states_rg = any_requires_grad({state_list});
    bool input_rg = x.requires_grad(), any_w_hh_rg = false, any_w_ih0_rg = false;
    for (int64_t layer = 0; layer < s.layers; ++layer) {
      bool output_rg = false;
      for (int64_t d = 0; d < s.directions; ++d) {
        const int64_t k = (layer * s.directions + d) * per_direction;
        bool chain_rg = input_rg || states_rg;
        for (int64_t i = 0; i < per_direction; ++i) chain_rg = chain_rg || weights[k + i].requires_grad();
        saved_weights[k] = if_saved(input_rg, weights[k]);
        saved_weights[k + 1] = if_saved(chain_rg, weights[k + 1]);
        if (s.proj) saved_weights[k + per_direction - 1] = if_saved(chain_rg, weights[k + per_direction - 1]);
        any_w_hh_rg = any_w_hh_rg || weights[k + 1].requires_grad();
        if (layer == 0) any_w_ih0_rg = any_w_ih0_rg || weights[k].requires_grad();
        output_rg = output_rg || chain_rg;
      }
      input_rg = output_rg;
    }
    // keep[0] is the input made contiguous: x itself unless x is a view of another layout (batch_first).
    const bool x_saved = any_w_ih0_rg && keep[0].is_same(x);
    keep[0] = if_saved(any_w_ih0_rg, keep[0]);
    std::vector<at::Tensor> to_save{kind == 3 && !any_w_hh_rg ? given[0].clone() : if_saved(any_w_hh_rg, given[0])};
    if (n_states > 1) to_save.push_back(given[1]);
    to_save.insert(to_save.end(), saved_weights.begin(), saved_weights.end());
    to_save.insert(to_save.end(), keep.begin(), keep.end());
    ctx->save_for_backward(to_save);
    std::vector<at::Tensor> inputs{x, given[0]};
    std::vector<bool> saved{x_saved, any_w_hh_rg};
    if (n_states > 1) inputs.push_back(given[1]), saved.push_back(true);
    inputs.insert(inputs.end(), weights.begin(), weights.end());
    for (const at::Tensor& w : saved_weights) saved.push_back(w.defined());
    keep_for_recompute(ctx, inputs, saved);
    ctx->saved_data["shape"] = std::vector<int64_t>{s.layers, s.directions, s.per_direction, s.batch,      s.H,
                                                    s.P,      s.has_biases, s.proj,           kind, x.size(-1)};
    // The caller may edit the output in place before backward, as torch's: the saved top y stays apart.
    if (s.directions == 1) out[0] = step_buffer(out[0].sizes(), out[0].options()).copy_(out[0]);
    return n_states > 1 ? torch::autograd::variable_list{out[0], out[1], out[2]}
                        : torch::autograd::variable_list{out[0], out[1]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();  // once: non-reentrant checkpointing unpacks once
    const auto v = ctx->saved_data["shape"].toIntVector();
    const StackShape s{v[0], v[1], v[2], v[3], v[4], v[5], v[6] != 0, v[7] != 0};
    const int64_t kind = v[8], input_size = v[9], n_states = kind == 4 ? 2 : 1;
    const int64_t count = s.layers * s.directions * s.per_direction, inputs_n = 1 + n_states + count;
    std::vector<bool> wanted(inputs_n);
    for (int64_t i = 0; i < inputs_n; ++i) wanted[i] = ctx->needs_input_grad(i);
    torch::autograd::variable_list result(inputs_n + 2);
    if (at::GradMode::is_enabled() || !plain_grads(grads)) {
      // create_graph, or batched gradients: differentiate a recorded recomputation.
      const bool create_graph = at::GradMode::is_enabled();
      at::AutoGradMode recording(true);
      std::vector<at::Tensor> unpacked{saved[n_states + count]};  // x (contiguous), the states, the weights
      unpacked.insert(unpacked.end(), saved.begin(), saved.begin() + n_states + count);
      const std::vector<at::Tensor> all = recompute_inputs(ctx, unpacked);
      const at::Tensor& x = all[0];
      const std::vector<at::Tensor> weights(all.begin() + 1 + n_states, all.end());
      // torch's own stack, recomputed: gradients of any order are torch's.
      const bool b = s.has_biases, bi = s.directions == 2;
      const int64_t L = s.layers;
      std::vector<at::Tensor> outputs;
      if (kind == 4) {
        auto [o, h, c] = at::lstm(x, {all[1], all[2]}, weights, b, L, 0.0, false, bi, false);
        outputs = {o, h, c};
      } else {
        auto [o, h] = kind == 3      ? at::gru(x, all[1], weights, b, L, 0.0, false, bi, false)
                      : kind == kTanh ? at::rnn_tanh(x, all[1], weights, b, L, 0.0, false, bi, false)
                                      : at::rnn_relu(x, all[1], weights, b, L, 0.0, false, bi, false);
        outputs = {o, h};
      }
      differentiate(outputs, grads, all, wanted, create_graph, result);
      return result;
    }
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing below is recorded: views skip autograd's view tracking
    const at::Tensor states[2] = {dense(saved[0]), n_states > 1 ? dense(saved[1]) : at::Tensor()};
    const std::vector<at::Tensor> layers(saved.begin() + n_states + count, saved.end());  // contiguous already
    std::vector<at::Tensor> weights(count);
    for (int64_t i = 0; i < count; ++i) weights[i] = dense(saved[n_states + i]);
    AT_DISPATCH_FLOATING_TYPES(layers[1].scalar_type(), "fastrnn_stack_backward", [&] {
      stack_backward<scalar_t>(kind, s, grads, states, weights, layers, input_size, wanted, result);
    });
    return result;
  }
};

// The module's preamble, checks and stack for `cell`: (output, h_n, c_n or undefined) shaped as torch's
// module returns them, or nullopt for anything not plainly well-formed (the caller then runs torch's checks).
// A recording call runs StackFunction.
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
  if (at::GradMode::is_enabled() && any_requires_grad({input, states, weights})) {
    // A missing state is zeros that need no gradient; the view ops around the Function are recorded as usual.
    std::vector<at::Tensor> given(Cell::kStates);
    for (int64_t i = 0; i < Cell::kStates; ++i) {
      given[i] = states[i].defined() ? states[i]
                                     : at::zeros({s.layers * s.directions, s.batch, i == 0 ? s.P : s.H}, x.options());
    }
    auto outputs = StackFunction::apply(x, at::TensorList(given), at::TensorList(weights), s, cell.kind());
    out = {outputs[0], outputs[1], Cell::kStates == 2 ? outputs[2] : at::Tensor()};
  } else {
    // Nothing here is recorded: the layers' tensors and views skip the autograd and view-tracking kernels
    // (~0.5 us of a tiny GRU call).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
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

std::array<at::Tensor, 3> stack_forward_no_grad(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                const at::Tensor& cx, const std::vector<at::Tensor>& weights,
                                                const std::optional<at::Tensor>& batch_sizes, bool has_biases,
                                                int64_t num_layers, bool bidirectional, bool proj) {
  TORCH_CHECK(kind == kTanh || kind == kRelu || kind == 3 || kind == 4,
              "fastrnn: stack_forward: kind must be 0 or 1 (RNN tanh, relu), 3 (GRU) or 4 (LSTM), got ", kind);
  TORCH_CHECK(hx.defined() && cx.defined() == (kind == 4), "fastrnn: stack_forward needs hx (and the LSTM's cx)");
  StackShape s;
  const std::string why = refusal(input, {hx, cx}, weights, batch_sizes, has_biases, gates_of(kind), proj,
                                  num_layers, bidirectional ? 2 : 1, &s);
  TORCH_CHECK(why.empty(), "fastrnn: stack_forward: ", why);
  if (batch_sizes.has_value()) check_batch_sizes(*batch_sizes, input.size(0), "input");
  TORCH_CHECK(!(at::GradMode::is_enabled() && any_requires_grad({input, hx, cx, weights})),
              "fastrnn: stack_forward records no autograd; call it without gradients");
  std::array<at::Tensor, 3> out;
  by_kind<Elman, Gru, Lstm>(kind, [&](const auto& cell) {
    out = stack_forward(cell, s, input, {hx, cx}, weights, batch_sizes);
  });
  return out;
}

std::optional<std::array<at::Tensor, 3>> stack_if_plain(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                        const at::Tensor& cx, const std::vector<at::Tensor>& weights,
                                                        bool has_biases, int64_t num_layers, bool bidirectional,
                                                        bool batch_first, int64_t input_size, int64_t hidden_size,
                                                        int64_t proj_size) {
  if (kind != kTanh && kind != kRelu && kind != 3 && kind != 4) return std::nullopt;
  std::optional<std::array<at::Tensor, 3>> out;
  by_kind<Elman, Gru, Lstm>(kind, [&](const auto& cell) {
    out = whole_stack(cell, input, hx, cx, weights, has_biases, num_layers, bidirectional, batch_first, input_size,
                      hidden_size, proj_size);
  });
  return out;
}

}  // namespace fastrnn
