// Large row-major GEMMs, C[M, N] = A[M, K] @ B[K, N] (+ bias[N]), on oneDNN's batch-reduce microkernel as
// torch's CPU build exports it (at::native::cpublas::brgemm, float32, where torch has it and the CPU has
// AVX-512), tiled and threaded here; elsewhere, and for float64, the BLAS (blas.h).
//
// Why: on this project's AVX-512 machine MKL's sgemm runs the layer GEMMs of a gated cell (dX, and the
// input projection it was first written for) at 120-190 GFLOP/s on two cores where the microkernel on
// 64 x 128 tiles with K in chunks of 256 reaches 200-220 (benchmarks/NOTES.md); torch's oneDNN LSTM gets
// its speed the same way.
// Tiles go in groups of S row blocks (row_blocks_a_panel), each group taking every panel in turn for its S
// blocks, so a thread's consecutive tiles share A's rows or B's panel; a tile's K chunks accumulate into C in
// place (add_C), a chunk of A (64 x 256) and of B (256 x 128) staying in L2.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "blas.h"
#include "step_mm.h"

#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(__x86_64__) && defined(__GNUC__)
#define FASTRNN_HAVE_BRGEMM 1
#endif

namespace fastrnn {

constexpr int64_t kBrgemmTileM = 64;
constexpr int64_t kBrgemmTileN = 128;
constexpr int64_t kBrgemmChunkK = 256;
// Below this many multiply-adds the tiling's fixed costs are not worth it: the BLAS call is as fast.
constexpr int64_t kBrgemmMinWork = int64_t{1} << 23;

inline bool brgemm_usable() {
#ifdef FASTRNN_HAVE_BRGEMM
  static const bool usable = __builtin_cpu_supports("avx512f");
  return usable;
#else
  return false;
#endif
}

// How many consecutive row blocks take each panel in turn (S): a panel is then read from memory once per S row
// blocks instead of once per block. Only a weight that does not stay in L2 needs it; S row blocks of A (at most
// 1 MB, half this machine's L2 a core) stay in L2 meanwhile. LSTM T=100 B=64 H=1024's projection, 16 MB of W_ih,
// 2 threads: 282-307 ms with S = 1 against 261-266 with S = 4 while the VM was in its slow state, level in its
// fast one; at 1600 x 256 x 1024 (1 MB) S = 4 cost 7%.
constexpr int64_t kPanelSharedWeightBytes = int64_t{4} << 20;
constexpr int64_t kPanelSharedRowBytes = int64_t{1} << 20;
constexpr int64_t kPanelSharedMostBlocks = 4;

inline int64_t row_blocks_a_panel(int64_t tiles_m, int64_t K, int64_t N) {
  const int64_t bytes = int64_t{sizeof(float)};
  if (K * N * bytes <= kPanelSharedWeightBytes) return 1;
  const int64_t fit = kPanelSharedRowBytes / (kBrgemmTileM * K * bytes);
  return std::clamp<int64_t>(fit, 1, std::min(tiles_m, kPanelSharedMostBlocks));
}

// C[M, N] = A[M, K] @ op(B) + bias (bias may be null: none; accumulate: C adds the product, without a bias). op(B)
// is B[K, N] (trans_b false) or B[N, K]^T.
// Row strides lda, ldb, ldc; unit column strides. Runs its own parallel loop: call it outside parallel
// regions.
template <typename T>
void gemm_nn_bias(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb,
                  bool trans_b, const T* bias, T* c, int64_t ldc, bool accumulate = false) {
  if (M == 0 || N == 0) return;
  const auto fill_bias = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    for (int64_t i = m0; i < m1; ++i) {
      T* row = c + i * ldc + n0;
      if (bias != nullptr) {
        std::memcpy(row, bias + n0, (n1 - n0) * sizeof(T));
      } else {
        std::fill(row, row + (n1 - n0), T(0));
      }
    }
  };
  if (K == 0) {
    if (!accumulate) fill_bias(0, M, 0, N);
    return;
  }
#ifdef FASTRNN_HAVE_BRGEMM
  if constexpr (std::is_same_v<T, float>) {
    if (brgemm_usable() && M * N * K >= kBrgemmMinWork) {
      constexpr int64_t PN = kBrgemmTileN;
      const int64_t tiles_m = (M + kBrgemmTileM - 1) / kBrgemmTileM;
      const int64_t tiles_n = (N + PN - 1) / PN;
      // op(B) in column panels ([K, 128] blocks, contiguous): a weight of 1024+ columns read in place puts
      // each k of a chunk on another page. K * N copies against M * K * N multiply-adds.
      std::unique_ptr<float[]> panels(new float[tiles_n * K * PN]);
      lay_out_panels(b, trans_b ? 1 : ldb, trans_b ? ldb : 1, K, N, PN, panels.get());
      // Group g holds blocks [g * S, g * S + depth) (the last one may be shallower) by every panel, panel-major.
      const int64_t S = row_blocks_a_panel(tiles_m, K, N);
      at::parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t first, int64_t last) {
        for (int64_t tile = first; tile < last; ++tile) {
          const int64_t g = tile / (S * tiles_n), in = tile % (S * tiles_n), depth = std::min(S, tiles_m - g * S);
          const int64_t p = in / depth, block = g * S + in % depth;
          const int64_t m0 = block * kBrgemmTileM, n0 = p * PN;
          const int64_t mm = std::min(kBrgemmTileM, M - m0), nn = std::min(PN, N - n0);
          const float* panel = panels.get() + p * K * PN;
          if (bias != nullptr) fill_bias(m0, m0 + mm, n0, n0 + nn);
          for (int64_t k0 = 0; k0 < K; k0 += kBrgemmChunkK) {
            const int64_t kk = std::min(kBrgemmChunkK, K - k0);
            at::native::cpublas::brgemm(mm, nn, kk, lda, PN, ldc, accumulate || bias != nullptr || k0 > 0, a + m0 * lda + k0,
                                        panel + k0 * PN, c + m0 * ldc + n0, false);
          }
        }
      });
      return;
    }
  }
#endif
  if (bias != nullptr) fill_bias(0, M, 0, N);
  gemm_rowmajor_ex<T>(false, M, N, K, a, lda, b, ldb, trans_b, bias != nullptr || accumulate ? T(1) : T(0), c, ldc);
}

}  // namespace fastrnn
