// fastrnn::mm_nn: a [M, K] @ b [K, N] (+ bias [N]) on the tiled microkernel GEMM of brgemm_gemm.h: the
// gated layers' dX in training, and their input projection where the forward op does not make it per step.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "brgemm_gemm.h"
#include "step_buffers.h"

namespace fastrnn {

at::Tensor mm_nn_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "fastrnn::mm_nn: a and b must be 2-D, got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.size(1) == b.size(0), "fastrnn::mm_nn: a is ", a.sizes(), " but b is ", b.sizes());
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "fastrnn::mm_nn supports float32 and float64, got ", a.scalar_type());
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), "fastrnn::mm_nn: a and b must share a dtype");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "fastrnn::mm_nn: CPU tensors only");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  at::Tensor bias_c;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->scalar_type() == a.scalar_type() &&
                    bias->device().is_cpu(),
                "fastrnn::mm_nn: bias must be a CPU [", N, "] tensor of a's dtype, got ", bias->sizes());
    bias_c = bias->contiguous();
  }
  // a: unit column stride, rows may be strided (a view of a wider tensor). b: that, or its transpose
  // (a weight's .t()), which the GEMM reads as op(B) = B^T.
  const at::Tensor ac = a.stride(1) == 1 && a.stride(0) >= K ? a : a.contiguous();
  const bool trans_b = !(b.stride(1) == 1 && b.stride(0) >= N) && b.stride(0) == 1 && b.stride(1) >= K;
  const at::Tensor bc = trans_b || (b.stride(1) == 1 && b.stride(0) >= N) ? b : b.contiguous();
  const int64_t ldb = std::max<int64_t>(trans_b ? bc.stride(1) : bc.stride(0), 1);
  at::Tensor out = step_buffer({M, N}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mm_nn", [&] {
    gemm_nn_bias<scalar_t>(M, N, K, ac.data_ptr<scalar_t>(), std::max<int64_t>(ac.stride(0), 1),
                           bc.data_ptr<scalar_t>(), ldb, trans_b,
                           bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
                           std::max<int64_t>(N, 1));
  });
  return out;
}

}  // namespace fastrnn

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("mm_nn(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("mm_nn", &fastrnn::mm_nn_cpu);
}
