// Schemas of the fastrnn ops and their CPU kernels. Importing the built module registers them; Python
// reaches them as torch.ops.fastrnn.rnn_fwd / torch.ops.fastrnn.rnn_bwd.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <optional>

#include "rnn_cpu.h"

namespace {

// (output, h_n) as a Python tuple of two new tensors.
PyObject* wrap_pair(at::Tensor first, at::Tensor second) {
  PyObject* tuple = PyTuple_New(2);
  if (tuple == nullptr) return nullptr;
  PyTuple_SET_ITEM(tuple, 0, THPVariable_Wrap(std::move(first)));  // steals the new references
  PyTuple_SET_ITEM(tuple, 1, THPVariable_Wrap(std::move(second)));
  return tuple;
}

// fastrnn._C.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, activation): the same as
// torch.ops.fastrnn.rnn_cell, minus the generic op call's argument boxing (a few microseconds, which is
// most of a small cell step). Eager RNNCell calls this; TorchScript and tracers see the op.
PyObject* rnn_cell_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7) {
    PyErr_SetString(PyExc_TypeError, "rnn_cell() takes 7 arguments");
    return nullptr;
  }
  for (int i = 0; i < 4; ++i) {
    if (!THPVariable_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "rnn_cell(): argument %d must be a Tensor", i);
      return nullptr;
    }
  }
  std::optional<at::Tensor> biases[2];
  for (int i = 0; i < 2; ++i) {
    PyObject* b = args[4 + i];
    if (b != Py_None) {
      if (!THPVariable_Check(b)) {
        PyErr_SetString(PyExc_TypeError, "rnn_cell(): biases must be Tensors or None");
        return nullptr;
      }
      biases[i] = THPVariable_Unpack(b);
    }
  }
  const long activation = PyLong_AsLong(args[6]);
  if (activation == -1 && PyErr_Occurred()) return nullptr;
  return THPVariable_Wrap(fastrnn::rnn_cell_autograd(
      THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]),
      THPVariable_Unpack(args[3]), biases[0], biases[1], activation));
  END_HANDLE_TH_ERRORS
}

// fastrnn._C.rnn_stack_forward(input, hx, weights, batch_sizes, has_biases, num_layers, bidirectional,
// activation) -> (output, h_n): the no-autograd stack of rnn_stack.cpp.
PyObject* rnn_stack_forward_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || !THPVariable_Check(args[0]) || !THPVariable_Check(args[1]) ||
      !PySequence_Check(args[2]) || (args[3] != Py_None && !THPVariable_Check(args[3]))) {
    PyErr_SetString(PyExc_TypeError,
                    "rnn_stack_forward(input, hx, weights, batch_sizes, has_biases, num_layers, "
                    "bidirectional, activation)");
    return nullptr;
  }
  PyObject* seq = PySequence_Fast(args[2], "weights must be a sequence of Tensors");
  if (seq == nullptr) return nullptr;
  std::vector<at::Tensor> weights;
  const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
  weights.reserve(count);
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* w = PySequence_Fast_GET_ITEM(seq, i);
    if (!THPVariable_Check(w)) {
      Py_DECREF(seq);
      PyErr_SetString(PyExc_TypeError, "weights must be a sequence of Tensors");
      return nullptr;
    }
    weights.push_back(THPVariable_Unpack(w));
  }
  Py_DECREF(seq);
  std::optional<at::Tensor> batch_sizes;
  if (args[3] != Py_None) batch_sizes = THPVariable_Unpack(args[3]);
  const long num_layers = PyLong_AsLong(args[5]);
  const long activation = PyLong_AsLong(args[7]);
  if (PyErr_Occurred()) return nullptr;
  auto [output, h_n] = fastrnn::rnn_stack_forward(
      THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), weights, batch_sizes,
      PyObject_IsTrue(args[4]) == 1, num_layers, PyObject_IsTrue(args[6]) == 1, activation);
  return wrap_pair(std::move(output), std::move(h_n));
  END_HANDLE_TH_ERRORS
}

// A module's weights from a Python list of tensors; false when it is not one.
bool read_weight_list(PyObject* list, std::vector<at::Tensor>& weights) {
  if (!PyList_Check(list)) return false;
  const Py_ssize_t count = PyList_GET_SIZE(list);
  weights.reserve(count);
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* w = PyList_GET_ITEM(list, i);  // borrowed
    if (!THPVariable_Check(w)) return false;
    weights.push_back(THPVariable_Unpack(w));
  }
  return true;
}

// fastrnn._C.rnn_forward_if_plain(input, hx, weights, has_biases, num_layers, bidirectional, activation,
// batch_first, input_size, hidden_size) -> (output, h_n) or None: see rnn_cpu.h.
PyObject* rnn_forward_if_plain_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  std::vector<at::Tensor> weights;
  if (nargs != 10 || !THPVariable_Check(args[0]) || (args[1] != Py_None && !THPVariable_Check(args[1])) ||
      !read_weight_list(args[2], weights)) {
    Py_RETURN_NONE;
  }
  const long num_layers = PyLong_AsLong(args[4]);
  const long activation = PyLong_AsLong(args[6]);
  const long input_size = PyLong_AsLong(args[8]);
  const long hidden_size = PyLong_AsLong(args[9]);
  if (PyErr_Occurred()) return nullptr;
  const at::Tensor hx = args[1] == Py_None ? at::Tensor() : THPVariable_Unpack(args[1]);
  auto result = fastrnn::rnn_forward_if_plain(THPVariable_Unpack(args[0]), hx, weights,
                                              PyObject_IsTrue(args[3]) == 1, num_layers,
                                              PyObject_IsTrue(args[5]) == 1, activation,
                                              PyObject_IsTrue(args[7]) == 1, input_size, hidden_size);
  if (!result.has_value()) Py_RETURN_NONE;
  return wrap_pair(std::move(std::get<0>(*result)), std::move(std::get<1>(*result)));
  END_HANDLE_TH_ERRORS
}

// fastrnn._C.gated_forward_if_plain(gates, input, hx, cx, weights, has_biases, num_layers, bidirectional,
// batch_first, input_size, hidden_size, proj_size) -> (output, h_n, c_n or None) or None: see rnn_cpu.h.
PyObject* gated_forward_if_plain_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const auto tensor_or_none = [](PyObject* o) { return o == Py_None || THPVariable_Check(o); };
  std::vector<at::Tensor> weights;
  if (nargs != 12 || !THPVariable_Check(args[1]) || !tensor_or_none(args[2]) || !tensor_or_none(args[3]) ||
      !read_weight_list(args[4], weights)) {
    Py_RETURN_NONE;
  }
  const long gates = PyLong_AsLong(args[0]), num_layers = PyLong_AsLong(args[6]);
  const long input_size = PyLong_AsLong(args[9]), hidden_size = PyLong_AsLong(args[10]);
  const long proj_size = PyLong_AsLong(args[11]);
  if (PyErr_Occurred()) return nullptr;
  const auto unpack = [](PyObject* o) { return o == Py_None ? at::Tensor() : THPVariable_Unpack(o); };
  auto result = fastrnn::gated_forward_if_plain(
      gates, THPVariable_Unpack(args[1]), unpack(args[2]), unpack(args[3]), weights, PyObject_IsTrue(args[5]) == 1,
      num_layers, PyObject_IsTrue(args[7]) == 1, PyObject_IsTrue(args[8]) == 1, input_size, hidden_size, proj_size);
  if (!result.has_value()) Py_RETURN_NONE;
  auto& [output, h_n, c_n] = *result;
  PyObject* tuple = PyTuple_New(3);
  if (tuple == nullptr) return nullptr;
  PyTuple_SET_ITEM(tuple, 0, THPVariable_Wrap(std::move(output)));
  PyTuple_SET_ITEM(tuple, 1, THPVariable_Wrap(std::move(h_n)));
  if (c_n.defined()) {
    PyTuple_SET_ITEM(tuple, 2, THPVariable_Wrap(std::move(c_n)));
  } else {
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(tuple, 2, Py_None);
  }
  return tuple;
  END_HANDLE_TH_ERRORS
}

// A cell module's weights from its _parameters dict: weight_ih, weight_hh (tensors) and bias_ih, bias_hh
// (tensors or None). False when a name is missing (as under a parametrization) or holds something else.
struct CellParameters {
  at::Tensor w_ih, w_hh;
  std::optional<at::Tensor> b_ih, b_hh;
};

bool read_cell_parameters(PyObject* dict, CellParameters& out) {
  PyObject* found[4];
  const char* names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  for (int i = 0; i < 4; ++i) {
    found[i] = PyDict_GetItemString(dict, names[i]);  // borrowed
    if (found[i] == nullptr || (found[i] != Py_None && !THPVariable_Check(found[i])) ||
        (i < 2 && found[i] == Py_None)) {
      return false;
    }
  }
  out.w_ih = THPVariable_Unpack(found[0]);
  out.w_hh = THPVariable_Unpack(found[1]);
  if (found[2] != Py_None) out.b_ih = THPVariable_Unpack(found[2]);
  if (found[3] != Py_None) out.b_hh = THPVariable_Unpack(found[3]);
  return true;
}

// fastrnn._C.rnn_cell_if_plain(input, hx, parameters, activation) -> h' or None, `parameters` being the
// module's _parameters dict (a name missing from it, as under a parametrization, declines the call).
PyObject* rnn_cell_if_plain_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  CellParameters p;
  if (nargs != 4 || !THPVariable_Check(args[0]) || (args[1] != Py_None && !THPVariable_Check(args[1])) ||
      !PyDict_Check(args[2]) || !read_cell_parameters(args[2], p)) {
    Py_RETURN_NONE;
  }
  const long activation = PyLong_AsLong(args[3]);
  if (PyErr_Occurred()) return nullptr;
  auto result = fastrnn::rnn_cell_if_plain(THPVariable_Unpack(args[0]),
                                           args[1] == Py_None ? at::Tensor() : THPVariable_Unpack(args[1]),
                                           p.w_ih, p.w_hh, p.b_ih, p.b_hh, activation);
  if (!result.has_value()) Py_RETURN_NONE;
  return THPVariable_Wrap(std::move(*result));
  END_HANDLE_TH_ERRORS
}

// fastrnn._C.gated_cell_if_plain(gates, input, h, c, parameters) -> h' (GRUCell, gates 3, c None) or
// (h', c') (LSTMCell, gates 4), or None: the call then runs torch's cell (see rnn_cpu.h).
PyObject* gated_cell_if_plain_py(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  CellParameters p;
  if (nargs != 5 || !THPVariable_Check(args[1]) || !THPVariable_Check(args[2]) ||
      (args[3] != Py_None && !THPVariable_Check(args[3])) || !PyDict_Check(args[4]) ||
      !read_cell_parameters(args[4], p)) {
    Py_RETURN_NONE;
  }
  const long gates = PyLong_AsLong(args[0]);
  if (PyErr_Occurred()) return nullptr;
  auto result = fastrnn::gated_cell_if_plain(gates, THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]),
                                             args[3] == Py_None ? at::Tensor() : THPVariable_Unpack(args[3]),
                                             p.w_ih, p.w_hh, p.b_ih, p.b_hh);
  if (!result.has_value()) Py_RETURN_NONE;
  if (gates == 3) return THPVariable_Wrap(std::move(std::get<0>(*result)));
  return wrap_pair(std::move(std::get<0>(*result)), std::move(std::get<1>(*result)));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"rnn_cell_if_plain", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_cell_if_plain_py)),
     METH_FASTCALL, "torch.nn.RNNCell's plain eager call in one C++ call, or None (see rnn_cpu.h)."},
    {"gated_cell_if_plain",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gated_cell_if_plain_py)), METH_FASTCALL,
     "torch.nn.GRUCell / LSTMCell's plain eager step in one C++ call with one autograd node, or None (see "
     "rnn_cpu.h)."},
    {"rnn_forward_if_plain",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_forward_if_plain_py)),
     METH_FASTCALL, "torch.nn.RNN's plain eager inference call in one C++ call, or None (see rnn_cpu.h)."},
    {"gated_forward_if_plain",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gated_forward_if_plain_py)), METH_FASTCALL,
     "torch.nn.GRU / LSTM's plain eager inference call in one C++ call, or None (see rnn_cpu.h)."},
    {"rnn_stack_forward",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_stack_forward_py)),
     METH_FASTCALL, "The whole RNN stack forward without autograd (see csrc/rnn_stack.cpp)."},
    {"rnn_cell", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_cell_py)),
     METH_FASTCALL, "One fused RNNCell step (see csrc/rnn_cell.cpp)."},
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

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("rnn_fwd", &fastrnn::rnn_fwd_cpu);
  m.impl("rnn_bwd", &fastrnn::rnn_bwd_cpu);
}
