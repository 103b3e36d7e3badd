// The recurrence op on the CPU: declarations shared by the kernels and the registration.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fastrnn {

constexpr int64_t kTanh = 0;
constexpr int64_t kRelu = 1;

// xw [T, B, H] (batch_sizes empty) or [N, H] (packed); h0 [B, H]; w_hh [H, H].
// Returns y (shape of xw) and h_n [B, H].
std::tuple<at::Tensor, at::Tensor> rnn_fwd_cpu(const at::Tensor& xw, const at::Tensor& h0,
                                               const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               bool reverse, int64_t activation);

// dy and y: shape of xw; dh_n [B, H]. Returns dz (shape of y) and dh0 [B, H]; without need_dh0 the
// last step's dz W_hh is skipped and dh0 holds no meaningful values.
std::tuple<at::Tensor, at::Tensor> rnn_bwd_cpu(const at::Tensor& dy, const at::Tensor& dh_n,
                                               const at::Tensor& y, const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               bool reverse, int64_t activation, bool need_dh0);

// The whole stack forward without autograd (rnn_stack.cpp). weights: per layer and direction
// w_ih, w_hh[, b_ih, b_hh] in torch.nn.RNN order; hx [L * D, B, H]. Returns output and h_n [L * D, B, H].
std::tuple<at::Tensor, at::Tensor> rnn_stack_forward(const at::Tensor& input, const at::Tensor& hx,
                                                     const std::vector<at::Tensor>& weights,
                                                     const std::optional<at::Tensor>& batch_sizes,
                                                     bool has_biases, int64_t num_layers,
                                                     bool bidirectional, int64_t activation);

// One RNNCell step with its autograd (rnn_cell.cpp): h' = act(input W_ih^T + b_ih + hx W_hh^T + b_hh).
at::Tensor rnn_cell_autograd(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, int64_t activation);

}  // namespace fastrnn
