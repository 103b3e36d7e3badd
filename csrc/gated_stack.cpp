// torch.nn.GRU / LSTM.forward's plain eager inference call in one C++ call, as rnn_forward_if_plain is for
// the RNN (rnn_stack.cpp): the module's preamble (batch_first, unbatched input, a missing state), the layer
// x direction loop and its concatenations, each layer one gru_infer / lstm_infer (input projection made per
// step, no workspace). A tiny call spent ~50 us in Python around a few microseconds of arithmetic.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <optional>
#include <tuple>
#include <vector>

#include "rnn_cpu.h"

namespace fastrnn {
namespace {

bool has_shape(const at::Tensor& t, std::initializer_list<int64_t> shape) {
  return t.sizes().equals(shape);
}

// The state given for an [T, B, ...] or unbatched call as [L * D, B, width], or nullopt if it does not fit.
std::optional<at::Tensor> state_or_zeros(const at::Tensor& given, bool batched, int64_t layers, int64_t batch,
                                         int64_t width, const at::TensorOptions& options) {
  if (!given.defined()) return at::zeros({layers, batch, width}, options);
  const at::Tensor s = batched ? given : given.unsqueeze(1);
  if (!has_shape(s, {layers, batch, width})) return std::nullopt;
  return s;
}

}  // namespace

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> gated_forward_if_plain(
    int64_t gates, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
    const std::vector<at::Tensor>& weights, bool has_biases, int64_t num_layers, bool bidirectional,
    bool batch_first, int64_t input_size, int64_t hidden_size, int64_t proj_size) {
  const bool lstm = gates == 4;
  if ((gates != 3 && !lstm) || !input.defined() || (!lstm && (proj_size != 0 || cx.defined())) ||
      (lstm && hx.defined() != cx.defined()))
    return std::nullopt;
  const auto dtype = input.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return std::nullopt;
  const bool batched = input.dim() == 3;
  if ((!batched && input.dim() != 2) || input.size(-1) != input_size) return std::nullopt;
  if ((hx.defined() && hx.dim() != input.dim()) || (cx.defined() && cx.dim() != input.dim())) return std::nullopt;
  const int64_t directions = bidirectional ? 2 : 1, layers = num_layers * directions, H = hidden_size;
  const int64_t P = proj_size > 0 ? proj_size : H, G = gates * H;
  const int64_t per_direction = (has_biases ? 4 : 2) + (proj_size > 0 ? 1 : 0);
  if (static_cast<int64_t>(weights.size()) != layers * per_direction) return std::nullopt;
  // Unbatched [T, I] is [T, 1, I] whatever batch_first says.
  const at::Tensor x = batched ? (batch_first ? input.transpose(0, 1) : input) : input.unsqueeze(1);
  const int64_t batch = x.size(1);
  if (x.size(0) == 0 || batch == 0) return std::nullopt;
  const bool grad = at::GradMode::is_enabled();
  for (const at::Tensor* t : {&input, &hx, &cx}) {
    if (t->defined() && (!t->device().is_cpu() || t->scalar_type() != dtype || (grad && t->requires_grad())))
      return std::nullopt;
  }
  for (int64_t k = 0; k < layers; ++k) {
    const at::Tensor* w = weights.data() + k * per_direction;
    const int64_t in = k < directions ? input_size : directions * P;
    for (int64_t i = 0; i < per_direction; ++i) {
      if (!w[i].defined() || !w[i].device().is_cpu() || w[i].scalar_type() != dtype || (grad && w[i].requires_grad()))
        return std::nullopt;
    }
    if (!has_shape(w[0], {G, in}) || !has_shape(w[1], {G, P})) return std::nullopt;
    if (has_biases && (!has_shape(w[2], {G}) || !has_shape(w[3], {G}))) return std::nullopt;
    if (proj_size > 0 && !has_shape(w[per_direction - 1], {P, H})) return std::nullopt;
  }
  const std::optional<at::Tensor> h0 = state_or_zeros(hx, batched, layers, batch, P, x.options());
  std::optional<at::Tensor> c0;
  if (lstm) c0 = state_or_zeros(cx, batched, layers, batch, H, x.options());
  if (!h0.has_value() || (lstm && !c0.has_value())) return std::nullopt;

  std::vector<at::Tensor> h_finals, c_finals;
  at::Tensor layer_input = x;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> outputs;
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t k = layer * directions + d;
      const at::Tensor* w = weights.data() + k * per_direction;
      std::optional<at::Tensor> bias, b_hn, w_hr;
      if (lstm) {
        if (has_biases) bias = w[2] + w[3];
        if (proj_size > 0) w_hr = w[per_direction - 1];
        auto [y, h_n, c_n] = lstm_infer_cpu(layer_input, w[0], bias, (*h0)[k], (*c0)[k], w[1], w_hr, std::nullopt,
                                            d == 1);
        outputs.push_back(y);
        h_finals.push_back(h_n);
        c_finals.push_back(c_n);
      } else {
        if (has_biases) {  // b_hh folds into r and z; b_hn stays inside the reset product, as torch computes it
          at::Tensor folded = w[2].clone(at::MemoryFormat::Contiguous);
          folded.narrow(0, 0, 2 * H).add_(w[3].narrow(0, 0, 2 * H));
          bias = folded;
          b_hn = w[3].narrow(0, 2 * H, H);
        }
        auto [y, h_n] = gru_infer_cpu(layer_input, w[0], bias, (*h0)[k], w[1], b_hn, std::nullopt, d == 1);
        outputs.push_back(y);
        h_finals.push_back(h_n);
      }
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, -1);
  }
  at::Tensor output = layer_input, h_n = at::stack(h_finals), c_n = lstm ? at::stack(c_finals) : at::Tensor();
  if (!batched) {
    output = output.squeeze(1);
    h_n = h_n.squeeze(1);
    if (lstm) c_n = c_n.squeeze(1);
  } else if (batch_first) {
    output = output.transpose(0, 1);
  }
  return std::make_tuple(output, h_n, c_n);
}

}  // namespace fastrnn
