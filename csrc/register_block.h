// The register-blocked block of the portable per-step matmul (cell_rows.cpp), inlined into each target_clones
// body so that every clone compiles it for its own vector width.
#pragma once

#include <cstdint>

#include "activations.h"

namespace fastrnn {

// out[r, j0:j0+J] (+)= a[r, :K] @ b[K, j0:j0+J] for R rows: a and out with row strides lda / ldo, b
// contiguous [K, N]. The R x J accumulators stay in registers across the k loop; b streams from L1.
template <typename T, int64_t R, int64_t J>
FASTRNN_INLINE void mm_block(const T* __restrict a, int64_t lda, const T* __restrict b, int64_t K,
                             int64_t N, int64_t j0, T* __restrict out, int64_t ldo, bool accumulate) {
  T acc[R][J];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < J; ++j) acc[r][j] = accumulate ? out[r * ldo + j0 + j] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict bk = b + k * N + j0;
    for (int64_t r = 0; r < R; ++r) {
      const T s = a[r * lda + k];
      for (int64_t j = 0; j < J; ++j) acc[r][j] += s * bk[j];
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < J; ++j) out[r * ldo + j0 + j] = acc[r][j];
}

}  // namespace fastrnn
