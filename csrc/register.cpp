// Schemas of the fastrnn ops and their CPU kernels. Importing the built module registers them; Python
// reaches them as torch.ops.fastrnn.rnn_fwd / torch.ops.fastrnn.rnn_bwd.
#include <Python.h>
#include <torch/library.h>

#include "rnn_cpu.h"

extern "C" {
// An empty module: importing it runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
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
