// The fastrnn library (the Elman layer ops' schemas; the other files add theirs and every kernel) and the fast
// Python bindings. Importing the built module registers the ops; Python reaches them as torch.ops.fastrnn.*.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "rnn_cpu.h"
#include "whole_call.h"

namespace {

// A fast binding's arguments (METH_FASTCALL), read without the generic op call's boxing (a few microseconds,
// which is most of a small call). None reads as an undefined tensor.
struct Args {
  PyObject* const* args;

  // Whether args[i] is a tensor for every i in `tensors`, and a tensor or None for every i in `or_none`.
  bool are(std::initializer_list<int> tensors, std::initializer_list<int> or_none = {}) const {
    for (int i : tensors)
      if (!THPVariable_Check(args[i])) return false;
    for (int i : or_none)
      if (args[i] != Py_None && !THPVariable_Check(args[i])) return false;
    return true;
  }
  at::Tensor tensor(int i) const { return args[i] == Py_None ? at::Tensor() : THPVariable_Unpack(args[i]); }
  std::optional<at::Tensor> optional(int i) const {
    return args[i] == Py_None ? std::nullopt : std::optional<at::Tensor>(THPVariable_Unpack(args[i]));
  }
  int64_t integer(int i) const { return PyLong_AsLongLong(args[i]); }
  bool flag(int i) const { return PyObject_IsTrue(args[i]) == 1; }

  // A module's weights from a Python list (or, with `any_sequence`, any sequence) of tensors.
  bool weights(int i, std::vector<at::Tensor>& out, bool any_sequence = false) const {
    PyObject* seq = any_sequence ? PySequence_Fast(args[i], "weights must be a sequence of Tensors") : args[i];
    if (seq == nullptr || !(any_sequence || PyList_Check(seq))) return false;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    out.reserve(count);
    bool ok = true;
    for (Py_ssize_t k = 0; k < count && ok; ++k) {
      PyObject* w = PySequence_Fast_GET_ITEM(seq, k);  // borrowed
      ok = THPVariable_Check(w);
      if (ok) out.push_back(THPVariable_Unpack(w));
    }
    if (any_sequence) Py_DECREF(seq);
    return ok;
  }

  // A cell module's weight_ih, weight_hh (tensors), bias_ih, bias_hh (tensors or None) from its _parameters
  // dict; false when a name is missing (as under a parametrization) or holds something else.
  bool cell_parameters(int i, at::Tensor (&w)[2], std::optional<at::Tensor> (&b)[2]) const {
    if (!PyDict_Check(args[i])) return false;
    const char* names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    for (int k = 0; k < 4; ++k) {
      PyObject* found = PyDict_GetItemString(args[i], names[k]);  // borrowed
      if (found == nullptr || (found != Py_None && !THPVariable_Check(found)) || (k < 2 && found == Py_None))
        return false;
      if (k < 2) w[k] = THPVariable_Unpack(found);
      else if (found != Py_None) b[k - 2] = THPVariable_Unpack(found);
    }
    return true;
  }
};

// A tuple of new references to the tensors, None for an undefined one.
PyObject* wrap(std::initializer_list<at::Tensor> tensors) {
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(tensors.size()));
  if (tuple == nullptr) return nullptr;
  Py_ssize_t i = 0;
  for (const at::Tensor& t : tensors)  // PyTuple_SET_ITEM steals the new references
    PyTuple_SET_ITEM(tuple, i++, t.defined() ? THPVariable_Wrap(t) : Py_NewRef(Py_None));
  return tuple;
}

PyObject* type_error(const char* usage) {
  PyErr_SetString(PyExc_TypeError, usage);
  return nullptr;
}

// rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, activation): torch.ops.fastrnn.rnn_cell's direct binding.
// Eager RNNCell calls this; TorchScript and tracers see the op.
PyObject* rnn_cell_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a{args};
  if (nargs != 7 || !a.are({0, 1, 2, 3}, {4, 5}))
    return type_error("rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, activation): Tensors, biases Tensors or None");
  const int64_t activation = a.integer(6);
  if (PyErr_Occurred()) return nullptr;
  return THPVariable_Wrap(fastrnn::rnn_cell_autograd(a.tensor(0), a.tensor(1), a.tensor(2), a.tensor(3), a.optional(4),
                                                     a.optional(5), activation));
  END_HANDLE_TH_ERRORS
}

// stack_forward(kind, input, hx, cx, weights, batch_sizes, has_biases, num_layers, bidirectional, proj) ->
// (output, h_n, c_n or None): the stack of any cell without autograd (whole_call.h).
PyObject* stack_forward_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a{args};
  std::vector<at::Tensor> weights;
  if (nargs != 10 || !a.are({1, 2}, {3, 5}) || !a.weights(4, weights, true)) {
    if (PyErr_Occurred()) return nullptr;
    return type_error("stack_forward(kind, input, hx, cx, weights, batch_sizes, has_biases, num_layers, "
                      "bidirectional, proj)");
  }
  const int64_t kind = a.integer(0), num_layers = a.integer(7);
  if (PyErr_Occurred()) return nullptr;
  const auto out = fastrnn::stack_forward_no_grad(kind, a.tensor(1), a.tensor(2), a.tensor(3), weights, a.optional(5),
                                                  a.flag(6), num_layers, a.flag(8), a.flag(9));
  return wrap({out[0], out[1], out[2]});
  END_HANDLE_TH_ERRORS
}

// stack_if_plain(kind, input, hx, cx, weights, has_biases, num_layers, bidirectional, batch_first, input_size,
// hidden_size, proj_size) -> (output, h_n, c_n or None) or None (whole_call.h).
PyObject* stack_if_plain_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a{args};
  std::vector<at::Tensor> weights;
  if (nargs != 12 || !a.are({1}, {2, 3}) || !a.weights(4, weights)) Py_RETURN_NONE;
  const int64_t kind = a.integer(0), num_layers = a.integer(6), input_size = a.integer(9),
                hidden_size = a.integer(10), proj_size = a.integer(11);
  if (PyErr_Occurred()) return nullptr;
  const auto out = fastrnn::stack_if_plain(kind, a.tensor(1), a.tensor(2), a.tensor(3), weights, a.flag(5),
                                           num_layers, a.flag(7), a.flag(8), input_size, hidden_size, proj_size);
  if (!out.has_value()) Py_RETURN_NONE;
  return wrap({(*out)[0], (*out)[1], (*out)[2]});
  END_HANDLE_TH_ERRORS
}

// cell_if_plain(kind, input, hx, cx, parameters) -> h' or (h', c') (kind 4) or None, `parameters` being the
// module's _parameters dict (whole_call.h).
PyObject* cell_if_plain_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a{args};
  at::Tensor w[2];
  std::optional<at::Tensor> b[2];
  if (nargs != 5 || !a.are({1}, {2, 3}) || !a.cell_parameters(4, w, b)) Py_RETURN_NONE;
  const int64_t kind = a.integer(0);
  if (PyErr_Occurred()) return nullptr;
  const auto out = fastrnn::cell_if_plain(kind, a.tensor(1), a.tensor(2), a.tensor(3), w[0], w[1], b[0], b[1]);
  if (!out.has_value()) Py_RETURN_NONE;
  return kind == 4 ? wrap({(*out)[0], (*out)[1]}) : THPVariable_Wrap((*out)[0]);
  END_HANDLE_TH_ERRORS
}

template <PyObject* (*F)(PyObject*, PyObject* const*, Py_ssize_t)>
constexpr PyCFunction fastcall() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(F));
}

// Each binding's usage is in the comment above its function.
PyMethodDef methods[] = {
    {"stack_if_plain", fastcall<stack_if_plain_py>(), METH_FASTCALL, "RNN / GRU / LSTM call, or None"},
    {"cell_if_plain", fastcall<cell_if_plain_py>(), METH_FASTCALL, "RNN / GRU / LSTM cell step, or None"},
    {"stack_forward", fastcall<stack_forward_py>(), METH_FASTCALL, "RNN / GRU / LSTM stack without autograd"},
    {"rnn_cell", fastcall<rnn_cell_py>(), METH_FASTCALL, "fastrnn::rnn_cell without the op call's boxing"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
// Importing the module runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastrnn, m) {
  m.def(
      "rnn_fwd(Tensor xw, Tensor h0, Tensor w_hh, Tensor? batch_sizes, bool reverse, "
      "int activation) -> (Tensor, Tensor)");
  m.def(
      "rnn_bwd(Tensor dy, Tensor dh_n, Tensor y, Tensor w_hh, Tensor? batch_sizes, bool reverse, "
      "int activation, bool need_dh0=True) -> (Tensor, Tensor)");
}
