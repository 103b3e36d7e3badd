// The whole-call entries over every cell, as fastrnn._C.stack_if_plain / cell_if_plain bind them. kind: 0 (RNN
// tanh), 1 (RNN relu), 3 (GRU), 4 (LSTM). Each takes the module's own arguments, does its preamble (unbatched
// input, batch_first, a missing state), and returns nullopt for anything not plainly well-formed: the caller
// then runs torch's checks and path.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <vector>

namespace fastrnn {

// The gates of a kind: 1 for the Elman's two, else the kind itself.
inline int64_t gates_of(int64_t kind) { return kind >= 3 ? kind : 1; }

// f(cell) for kind 0 / 1 (Elman with that activation), 3 (Gru) or 4 (Lstm): each file's own cell types.
template <class Elman, class Gru, class Lstm, class F>
decltype(auto) by_kind(int64_t kind, const F& f) {
  if (kind == 3) return f(Gru{});
  if (kind == 4) return f(Lstm{});
  return f(Elman{kind});
}

// torch.nn.RNN / GRU / LSTM.forward (stack.cpp): input [T, B, I], batch-first or unbatched [T, I]; hx (and cx)
// [L * D, B, H] or [L * D, H], or undefined for zeros; weights in _flat_weights_names order. Returns output,
// h_n and c_n (undefined but for the LSTM) as torch shapes them. A call autograd records runs as one C++ node
// for the whole stack (StackFunction), whatever the cell.
std::optional<std::array<at::Tensor, 3>> stack_if_plain(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                        const at::Tensor& cx, const std::vector<at::Tensor>& weights,
                                                        bool has_biases, int64_t num_layers, bool bidirectional,
                                                        bool batch_first, int64_t input_size, int64_t hidden_size,
                                                        int64_t proj_size);

// The stack's forward without autograd (stack.cpp), for the calls stack_if_plain does not take (packed input,
// dropout in eval mode's module path): input padded [T, B, I] or packed [N, I] by batch_sizes; hx [L * D, B, P],
// cx [L * D, B, H] (LSTM, else undefined); weights as above; proj: the LSTM's w_hr follows each direction's.
// Returns output, h_n and c_n (undefined but for the LSTM); TORCH_CHECKs what it does not take.
std::array<at::Tensor, 3> stack_forward_no_grad(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                const at::Tensor& cx, const std::vector<at::Tensor>& weights,
                                                const std::optional<at::Tensor>& batch_sizes, bool has_biases,
                                                int64_t num_layers, bool bidirectional, bool proj);

// torch.nn.RNNCell / GRUCell / LSTMCell.forward (cell.cpp): input [N, I] or [I]; hx (and cx) of the same rank
// or undefined for zeros. Returns h' and c' (undefined but for the LSTM) with one autograd node where autograd
// records the call. GRU / LSTM take contiguous tensors only.
std::optional<std::array<at::Tensor, 2>> cell_if_plain(int64_t kind, const at::Tensor& input, const at::Tensor& hx,
                                                       const at::Tensor& cx, const at::Tensor& w_ih,
                                                       const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                                       const std::optional<at::Tensor>& b_hh);

}  // namespace fastrnn
