// What the C++ autograd nodes keep for backward, shared by stack.cpp and cell.cpp.
//
// torch saves a tensor for backward only where its own first-order backward reads it (x W^T keeps W only if x
// needs a gradient, x only if W does; biases never), so a user may edit the others in place between forward
// and backward. The nodes save the same set. A create_graph backward here recomputes the forward from all
// inputs (any order of gradient then follows), so the node also keeps every input with its version, and such
// a backward raises torch's in-place error if one was edited, instead of differentiating the edited values.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <vector>

namespace fastrnn {

// Keeps the `inputs` (undefined ones allowed) that save_for_backward does not hold (`saved[i]` false), with
// their versions, for recompute_inputs: only what torch's backward would not keep, so that a node under
// non-reentrant checkpointing holds no activation beyond its saved tensors (those it does not keep are
// parameters, states and the like, or an input whose saved copy is not the input itself).
inline void keep_for_recompute(torch::autograd::AutogradContext* ctx, const std::vector<at::Tensor>& inputs,
                               const std::vector<bool>& saved) {
  std::vector<int64_t> versions;
  c10::List<std::optional<at::Tensor>> kept;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool keep = !saved[i] && inputs[i].defined();
    versions.push_back(keep ? inputs[i]._version() : 0);
    kept.push_back(keep ? std::optional<at::Tensor>(inputs[i]) : std::nullopt);
  }
  ctx->saved_data["recompute_inputs"] = kept;
  ctx->saved_data["recompute_versions"] = versions;
}

// Every input for a recomputation: those keep_for_recompute kept, after checking that none was edited in
// place since, and `unpacked[i]` (the saved tensor, unpacked) for the others.
inline std::vector<at::Tensor> recompute_inputs(torch::autograd::AutogradContext* ctx,
                                                const std::vector<at::Tensor>& unpacked) {
  const auto kept = ctx->saved_data["recompute_inputs"].toOptionalTensorList();
  const auto versions = ctx->saved_data["recompute_versions"].toIntVector();
  std::vector<at::Tensor> inputs;
  for (size_t i = 0; i < kept.size(); ++i) {
    const std::optional<at::Tensor> t = kept[i];
    if (!t.has_value()) {
      inputs.push_back(unpacked[i]);
      continue;
    }
    TORCH_CHECK(t->_version() == versions[i],
                "one of the variables needed for gradient computation has been modified by an inplace operation: [",
                t->toString(), " ", t->sizes(), "] is at version ", t->_version(), "; expected version ", versions[i],
                " instead. (fastrnn: a create_graph backward recomputes the forward from its inputs)");
    inputs.push_back(*t);
  }
  return inputs;
}

// Whether every defined gradient has storage: a batched gradient (is_grads_batched, vmap) has none, and
// takes the nodes' ATen-op branch instead of their raw-pointer one.
inline bool plain_grads(const torch::autograd::variable_list& grads) {
  for (const at::Tensor& g : grads)
    if (g.defined() && !g.has_storage()) return false;
  return true;
}

// Whether a defined tensor among the groups needs a gradient.
inline bool any_requires_grad(std::initializer_list<at::TensorList> groups) {
  for (at::TensorList group : groups)
    for (const at::Tensor& t : group)
      if (t.defined() && t.requires_grad()) return true;
  return false;
}

// A recomputing backward's last step: the gradients of `outputs` (given `grads`; an undefined one: none) with
// respect to inputs[i] where wanted[i], into result[i]; recorded where create_graph.
inline void differentiate(const std::vector<at::Tensor>& outputs, const torch::autograd::variable_list& grads,
                          const std::vector<at::Tensor>& inputs, const std::vector<bool>& wanted, bool create_graph,
                          torch::autograd::variable_list& result) {
  std::vector<at::Tensor> outs, grad_outs, wrt;
  std::vector<size_t> where;
  for (size_t i = 0; i < outputs.size(); ++i)
    if (grads[i].defined()) outs.push_back(outputs[i]), grad_outs.push_back(grads[i]);
  for (size_t i = 0; i < inputs.size(); ++i)
    if (wanted[i] && inputs[i].defined() && inputs[i].requires_grad()) wrt.push_back(inputs[i]), where.push_back(i);
  if (outs.empty() || wrt.empty()) return;
  const auto found = torch::autograd::grad(outs, wrt, grad_outs, /*retain_graph=*/true, create_graph,
                                           /*allow_unused=*/true);
  for (size_t j = 0; j < where.size(); ++j) result[where[j]] = found[j];
}

// `t` if `saved`, else undefined: what save_for_backward gets for a tensor torch's backward would not read.
inline at::Tensor if_saved(bool saved, const at::Tensor& t) { return saved ? t : at::Tensor(); }

}  // namespace fastrnn
