// Row-major GEMM on raw pointers, straight into the BLAS that torch's CPU build carries.
//
// Calling the Fortran symbol skips the dispatcher and tensor construction, which cost more than the
// multiply itself for one recurrence step at small sizes. The symbols are weak: a torch build that does not
// export them (another BLAS, another platform) falls back to at::mm through from_blob views.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fastrnn {

inline void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b,
                         const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                         const double* alpha, const double* a, const int* lda, const double* b,
                         const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
inline bool have_fortran_gemm() {
  if constexpr (std::is_same_v<T, float>) {
    return sgemm_ != nullptr;
  } else {
    return dgemm_ != nullptr;
  }
}

// C[m, n] = op(A) @ op(B) + beta * C, all row-major with leading dimensions lda, ldb, ldc. op(A) is
// A[m, k] (trans_a false) or A[k, m]^T (trans_a true); op(B) is B[k, n] (trans_b false) or B[n, k]^T
// (trans_b true). beta is 0 or 1.
template <typename T>
void gemm_rowmajor_ex(bool trans_a, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                      int64_t ldb, bool trans_b, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) {
    return;
  }
  if (have_fortran_gemm<T>()) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix read
    // column-major is its transpose: the flags pass through unchanged, operands swap.
    const char tb = trans_b ? 'T' : 'N';
    const char ta = trans_a ? 'T' : 'N';
    const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
    const int ilda = static_cast<int>(ldb), ildb = static_cast<int>(lda), ildc = static_cast<int>(ldc);
    const T one = 1;
    fortran_gemm(&tb, &ta, &im, &in, &ik, &one, b, &ilda, a, &ildb, &beta, c, &ildc);
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto ta = trans_a ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opts).t()
                    : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  auto tb = trans_b ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts).t()
                    : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  auto tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(tc, ta, tb);
  } else {
    tc.addmm_(ta, tb);
  }
}

// C[m, n] = A[m, k] @ op(B) + beta * C (see gemm_rowmajor_ex).
template <typename T>
void gemm_rowmajor(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                   int64_t ldb, bool trans_b, T beta, T* c, int64_t ldc) {
  gemm_rowmajor_ex<T>(false, m, n, k, a, lda, b, ldb, trans_b, beta, c, ldc);
}

}  // namespace fastrnn
