// The per-step matmul of every CPU recurrence (recurrence.cpp), out[rows, N] (+)= a[rows, K] @ op(W), behind one
// interface (StepWeight). Small steps run an in-register kernel on op(W) laid out once per call: on AVX-512
// CPUs the one in zmm_step_mm.h (its panels), elsewhere a portable loop compiled per vector width (contiguous
// [K, N]). Both add the K products of an output in order onto its initial value, so they give the same bits
// where the portable loop's clone contracts to FMA (the AVX-512 and FMA clones). Larger steps call the BLAS
// on W itself (raw pointers, no tensors).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "blas.h"
#include "zmm_step_mm.h"

namespace fastrnn {

// The portable register-blocked loop (recurrence.cpp): out[rows, N] (+)= a[rows, K] @ b[K, N], b contiguous.
void small_mm(const float* a, int64_t lda, int64_t rows, const float* b, int64_t K, int64_t N, float* out,
              int64_t ldo, bool accumulate);
void small_mm(const double* a, int64_t lda, int64_t rows, const double* b, int64_t K, int64_t N, double* out,
              int64_t ldo, bool accumulate);

// Whether small steps take the AVX-512 kernel: where the CPU has it, unless `fastrnn::_gated_zmm_kernel(False)`
// turned it off (tests and timings compare both kernels in one process).
inline std::atomic<bool> g_zmm_allowed{true};

inline bool zmm_kernel_on() {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
  return have_avx512f() && g_zmm_allowed.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// Up to this many multiply-adds a thread's step runs the register kernel rather than the BLAS: the AVX-512
// kernel beat MKL's sgemm at every size measured (up to 64 x 1024 x 4096 forward, 64 x 4096 x 1024 backward;
// 32 x 1024 x 1024, an Elman step, 114 GFLOP/s on one core against 77, and as fast as oneDNN's brgemm), the
// portable loop up to 64^3.
constexpr int64_t kSmallStep = 64 * 64 * 64;
constexpr int64_t kZmmSmallStep = int64_t{1} << 30;

// op(W) [K, N] with strides (sk, sn) copied into column panels of PW columns: panel p, columns [p * PW, (p + 1) *
// PW), is a contiguous [K, PW] block in dst, the last one zero-padded. A transposed W (sn != 1) goes in tiles of
// 16 k so that both sides stay in L1 (column by column, W_hh^T of an LSTM at H = 1024 took 11 ms, 4% of a T=100
// B=64 inference call); large weights a panel a thread (call it outside parallel regions or in one thread).
template <typename T>
void lay_out_panels(const T* w, int64_t sk, int64_t sn, int64_t K, int64_t N, int64_t PW, T* dst) {
  const auto body = [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) {
      const int64_t n0 = p * PW, nn = std::min(N, n0 + PW) - n0;
      T* panel = dst + p * K * PW;
      for (int64_t k0 = 0; k0 < K; k0 += 16) {
        const int64_t k1 = std::min(K, k0 + 16);
        for (int64_t k = k0; k < k1; ++k) {
          std::fill(panel + k * PW + nn, panel + (k + 1) * PW, T(0));
          if (sn == 1) std::memcpy(panel + k * PW, w + k * sk + n0, sizeof(T) * nn);
        }
        if (sn == 1) continue;
        int64_t n = 0;
#ifdef FASTRNN_HAVE_ZMM_KERNEL
        if constexpr (std::is_same_v<T, float>) {
          if (sk == 1 && k1 - k0 == 16 && have_avx512f())
            for (; n + 16 <= nn; n += 16) transpose16(w + (n0 + n) * sn + k0, sn, panel + k0 * PW + n, PW);
        }
#endif
        for (; n < nn; ++n)
          for (int64_t k = k0; k < k1; ++k) panel[k * PW + n] = w[k * sk + (n0 + n) * sn];
      }
    }
  };
  const int64_t panels = (N + PW - 1) / PW;
  if (K * N >= int64_t{1} << 18) {
    at::parallel_for(0, panels, 1, body);
  } else {
    body(0, panels);
  }
}

// op(W) laid out in `out` as the register kernel reads it (see the top of the file); returns where it starts:
// 64-byte aligned, since the AVX-512 kernel's loads of a panel row then stay in one cache line (with malloc's
// 16-byte alignment the kernel ran ~20% slower at H = 32).
// `zmm`: for the AVX-512 kernel's panels, else the portable loop's one [K, N] panel.
template <typename T>
const T* lay_out_step_weight(const T* w, int64_t sk, int64_t sn, int64_t K, int64_t N, std::unique_ptr<T[]>& out,
                             bool zmm = zmm_kernel_on()) {
  int64_t PW = std::max<int64_t>(N, 1);
#ifdef FASTRNN_HAVE_ZMM_KERNEL
  if (zmm) PW = 4 * Zmm<T>::L;
#endif
  constexpr int64_t kAlign = 64 / sizeof(T);
  out.reset(new T[(N + PW - 1) / PW * K * PW + kAlign]);
  T* base = out.get() + (kAlign - reinterpret_cast<uintptr_t>(out.get()) / sizeof(T) % kAlign) % kAlign;
  lay_out_panels(w, sk, sn, K, N, PW, base);
  return base;
}

// One weight as a recurrence steps with it: op(W) = W^T (W [N, K], `trans`) or W ([K, N]), W contiguous; `rows`:
// a thread's rows a step.
template <typename T>
class StepWeight {
 public:
  StepWeight() = default;
  StepWeight(StepWeight&&) = default;  // a copy would point into the other's storage_
  // The kernel is chosen once, here: a switch of `_gated_zmm_kernel` during the call does not reach it.
  StepWeight(const T* w, bool trans, int64_t K, int64_t N, int64_t rows)
      : w_(w), trans_(trans), K_(K), N_(N), zmm_(zmm_kernel_on()) {
    small_ = rows * K * N <= (zmm_ ? kZmmSmallStep : kSmallStep) || !have_fortran_gemm<T>();
    if (small_) kn_ = lay_out_step_weight(w, trans ? 1 : N, trans ? K : 1, K, N, storage_, zmm_);
  }

  // out[rows, N] = (accumulate ? out : 0) + a[rows, K] @ op(W); a and out with row strides lda, ldo.
  void apply(const T* a, int64_t lda, int64_t rows, T* out, int64_t ldo, bool accumulate) const {
    if (rows <= 0) return;
    if (!small_) {
      gemm_rowmajor<T>(rows, N_, K_, a, lda, w_, trans_ ? K_ : N_, trans_, accumulate ? T(1) : T(0), out, ldo);
      return;
    }
#ifdef FASTRNN_HAVE_ZMM_KERNEL
    if (zmm_) {
      zmm_step_mm(a, lda, rows, kn_, K_, N_, accumulate ? out : nullptr, ldo, out, ldo);
      return;
    }
#endif
    small_mm(a, lda, rows, kn_, K_, N_, out, ldo, accumulate);
  }

  // out[rows, N] = bias (nullptr: 0) + a @ op(W), small weights only (the fused input projection).
  void apply_from(const T* bias, const T* a, int64_t lda, int64_t rows, T* out, int64_t ldo) const {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
    zmm_step_mm(a, lda, rows, kn_, K_, N_, bias, 0, out, ldo);
#endif
  }

  // Columns [n0, n1) of apply's out alone, on the AVX-512 kernel's panels (`panel_width` > 0; n0 a multiple of it).
  void apply_cols(const T* a, int64_t lda, int64_t rows, T* out, int64_t ldo, bool accumulate, int64_t n0,
                  int64_t n1) const {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
    if (rows <= 0) return;
    const T* panels = kn_ + n0 / (4 * Zmm<T>::L) * K_ * (4 * Zmm<T>::L);
    zmm_step_mm(a, lda, rows, panels, K_, n1 - n0, accumulate ? out + n0 : nullptr, ldo, out + n0, ldo);
#endif
  }

  // The width of the column panels op(W) is laid out in for the AVX-512 kernel; 0 where it is not.
  int64_t panel_width() const {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
    if (small_ && zmm_) return 4 * Zmm<T>::L;
#endif
    return 0;
  }

  bool small() const { return small_; }

 private:
  const T* w_ = nullptr;
  bool trans_ = false;
  int64_t K_ = 0, N_ = 0;
  bool zmm_ = false;
  bool small_ = true;
  const T* kn_ = nullptr;  // op(W) laid out for the register kernel (small steps only), in storage_
  std::unique_ptr<T[]> storage_;
};

}  // namespace fastrnn
