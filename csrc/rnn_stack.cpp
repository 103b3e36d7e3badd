// A whole Elman RNN stack (layers x directions) forward in one C++ call, for calls that record no autograd
// (inference, sampling, serving): per layer and direction one input-projection GEMM and the recurrence op's
// CPU kernel, with no Python, no autograd.Function and no dispatcher per layer. Training calls go through
// the differentiable per-layer op in Python instead (fastrnn.functional.rnn); both give the same numbers.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <optional>
#include <tuple>
#include <vector>

#include "rnn_cpu.h"

namespace fastrnn {

std::tuple<at::Tensor, at::Tensor> rnn_stack_forward(const at::Tensor& input, const at::Tensor& hx,
                                                     const std::vector<at::Tensor>& weights,
                                                     const std::optional<at::Tensor>& batch_sizes,
                                                     bool has_biases, int64_t num_layers,
                                                     bool bidirectional, int64_t activation) {
  const int64_t directions = bidirectional ? 2 : 1;
  const int64_t per_direction = has_biases ? 4 : 2;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == num_layers * directions * per_direction,
              "fastrnn: expected ", num_layers * directions * per_direction, " weights, got ",
              weights.size());
  TORCH_CHECK(hx.dim() == 3 && hx.size(0) == num_layers * directions,
              "fastrnn: expected hx of shape [", num_layers * directions, ", B, H], got ", hx.sizes());
  c10::AutoGradMode no_grad(false);
  at::Tensor layer_input = input;  // [T, B, I] or packed [N, I]
  std::vector<at::Tensor> finals;
  finals.reserve(num_layers * directions);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> outputs;
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t k = layer * directions + direction;
      const at::Tensor* w = weights.data() + k * per_direction;
      const at::Tensor xw = has_biases ? at::linear(layer_input, w[0], w[2] + w[3])
                                       : at::linear(layer_input, w[0]);
      auto [y, h_n] = rnn_fwd_cpu(xw, hx[k], w[1], batch_sizes, direction == 1, activation);
      outputs.push_back(std::move(y));
      finals.push_back(std::move(h_n));
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, -1);
  }
  return {layer_input, at::stack(finals)};
}

}  // namespace fastrnn
