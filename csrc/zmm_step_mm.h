// The gated ops' per-step matmul on AVX-512: out[rows, N] = init[rows, N] (or 0) + a[rows, K] @ b[K, N],
// a / init / out with row strides. b (the weight) is laid out once per call in panels of 64 bytes' worth of
// columns times 4 (64 floats, 32 doubles): panel p = columns [p * PW, (p + 1) * PW) as a contiguous [K, PW]
// block, the last one zero-padded (step_mm.h's lay_out_step_weight). A column block then streams one or two
// contiguous panels; read straight from [K, N] rows, each k of a 4H = 4096-wide weight touched another page
// (62 GFLOP/s at 64 x 1024 x 4096 against 88-108 at narrower N).
//
// A block of R rows by V vectors of out (R * V accumulators, up to 24 of the 32 zmm registers) stays in
// registers across the whole k loop: each k loads V vectors of b's row k once and uses them for all R rows
// (one broadcast of a[r, k] each). Columns go in blocks of V vectors, rows in blocks of up to 6 inside each
// column block, so a column block of b ([K, 64] floats: 16 KiB at K = 64) stays in L1 while every row
// block streams past it. The last column block is masked, so N need not be a multiple of 16 (8 doubles).
//
// Compiled for avx512f only (a pragma below) and called only where the CPU has it (`have_avx512f`); other
// CPUs keep the portable loop of cell_rows.cpp. Rows of 1-2 get 8-vector blocks (8 or 16 FMA chains), rows
// of 3-6 get 4-vector blocks (12 to 24): at least 8 independent chains to cover the FMA latency.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTRNN_HAVE_ZMM_KERNEL 1

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace fastrnn {

inline bool have_avx512f() {
  static const bool have = __builtin_cpu_supports("avx512f");
  return have;
}

#pragma GCC push_options
#pragma GCC target("avx512f")

template <typename T>
struct Zmm;

template <>
struct Zmm<float> {
  using V = __m512;
  static constexpr int64_t L = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, V v, uint32_t m) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), v); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};

template <>
struct Zmm<double> {
  using V = __m512d;
  static constexpr int64_t L = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V load(const double* p, uint32_t m) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void store(double* p, V v, uint32_t m) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>(m), v); }
  static V bcast(const double* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};

// One R x V block at column j0. MASKED: the block has `ncols` < V * L columns (the last block of a row).
template <typename T, int64_t R, int64_t V, bool MASKED>
__attribute__((always_inline)) inline void zmm_block(const T* __restrict a, int64_t lda,
                                                     const T* __restrict b, int64_t K,
                                                     int64_t j0, int64_t ncols, const T* init, int64_t ldi,
                                                     T* out, int64_t ldo) {
  using Z = Zmm<T>;
  constexpr int64_t L = Z::L;
  uint32_t mask[V];
  for (int64_t v = 0; v < V; ++v) {
    const int64_t left = std::clamp<int64_t>(ncols - v * L, 0, L);
    mask[v] = left == L ? (1u << L) - 1 : (1u << left) - 1;
  }
  typename Z::V acc[R][V];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t v = 0; v < V; ++v) {
      if (init == nullptr) {
        acc[r][v] = Z::zero();
      } else {
        const T* p = init + r * ldi + j0 + v * L;
        acc[r][v] = MASKED ? Z::load(p, mask[v]) : Z::load(p);
      }
    }
  // Vector v of the block: panel j0 / PW + v / 4, columns (v % 4) * L of it; rows PW apart.
  constexpr int64_t PW = 4 * L;
  const T* bp[V];
  for (int64_t v = 0; v < V; ++v) bp[v] = b + (j0 / PW + v / 4) * K * PW + (v % 4) * L;
  for (int64_t k = 0; k < K; ++k) {
    typename Z::V w[V];
    for (int64_t v = 0; v < V; ++v) w[v] = Z::load(bp[v] + k * PW);  // padded: no mask needed
    for (int64_t r = 0; r < R; ++r) {
      const typename Z::V s = Z::bcast(a + r * lda + k);
      for (int64_t v = 0; v < V; ++v) acc[r][v] = Z::fma(s, w[v], acc[r][v]);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t v = 0; v < V; ++v) {
      T* p = out + r * ldo + j0 + v * L;
      if (MASKED) {
        Z::store(p, acc[r][v], mask[v]);
      } else {
        Z::store(p, acc[r][v]);
      }
    }
}

// One column block of R rows (R <= 6). The last, partial block runs with just enough vectors.
template <typename T, int64_t R>
inline void zmm_rows(const T* a, int64_t lda, const T* b, int64_t K, int64_t N, int64_t j0, const T* init,
                     int64_t ldi, T* out, int64_t ldo) {
  constexpr int64_t L = Zmm<T>::L;
  constexpr int64_t VB = R <= 2 ? 8 : 4;
  const int64_t ncols = std::min(VB * L, N - j0);
  if (ncols == VB * L) {
    zmm_block<T, R, VB, false>(a, lda, b, K, j0, ncols, init, ldi, out, ldo);
    return;
  }
  switch ((ncols + L - 1) / L) {
#define FASTRNN_ZMM_TAIL(v)                                                          \
  case v:                                                                            \
    if constexpr (v <= VB) zmm_block<T, R, v, true>(a, lda, b, K, j0, ncols, init, ldi, out, ldo); \
    break;
    FASTRNN_ZMM_TAIL(1)
    FASTRNN_ZMM_TAIL(2)
    FASTRNN_ZMM_TAIL(3)
    FASTRNN_ZMM_TAIL(4)
    FASTRNN_ZMM_TAIL(5)
    FASTRNN_ZMM_TAIL(6)
    FASTRNN_ZMM_TAIL(7)
    FASTRNN_ZMM_TAIL(8)
#undef FASTRNN_ZMM_TAIL
    default:
      break;
  }
}

// out = init + a @ b over `rows` rows; init may be out itself (accumulate) or nullptr (overwrite). Column
// blocks outside, row blocks inside, so each block of b is reused from L1/L2 by every row block. Rows go in
// blocks of 6 (24 accumulators: each b vector loaded feeds 6 FMAs) and one or two of 3-5 for the rest, e.g.
// 32 = 6 + 6 + 6 + 6 + 4 + 4: one core at 32 x 1024 x 4096, 112 GFLOP/s against 106 in blocks of 4 (95% and 90%
// of its 117.5 peak). The blocking does not change an output's chain of FMAs, so neither do the bits.
template <typename T>
void zmm_step_mm(const T* a, int64_t lda, int64_t rows, const T* b, int64_t K, int64_t N, const T* init,
                 int64_t ldi, T* out, int64_t ldo) {
  constexpr int64_t L = Zmm<T>::L;
  int64_t sixes = rows / 6, rest = rows % 6;
  if (sixes > 0 && rest > 0 && rest < 3) --sixes, rest += 6;  // 7 = 4 + 3, 8 = 4 + 4
  const int64_t tail[2] = {rest > 5 ? 4 : rest, rest > 5 ? rest - 4 : 0};  // the rows past the 6s: 1-2 blocks
  const auto block = [&](int64_t r, int64_t count, int64_t j0) {
    const T* ar = a + r * lda;
    const T* ir = init == nullptr ? nullptr : init + r * ldi;
    T* outr = out + r * ldo;
    switch (count) {
#define FASTRNN_ZMM_ROWS(n)                                     \
  case n:                                                       \
    zmm_rows<T, n>(ar, lda, b, K, N, j0, ir, ldi, outr, ldo); \
    break;
      FASTRNN_ZMM_ROWS(1)
      FASTRNN_ZMM_ROWS(2)
      FASTRNN_ZMM_ROWS(3)
      FASTRNN_ZMM_ROWS(4)
      FASTRNN_ZMM_ROWS(5)
      FASTRNN_ZMM_ROWS(6)
#undef FASTRNN_ZMM_ROWS
      default:
        break;
    }
  };
  for (int64_t j0 = 0; j0 < N; j0 += rows >= 3 ? 4 * L : 8 * L) {  // blocks of 1-2 rows take 8 vectors
    int64_t r = 0;
    for (int64_t i = 0; i < sixes; ++i, r += 6) block(r, 6, j0);
    block(r, tail[0], j0);
    block(r + tail[0], tail[1], j0);
  }
}

// dst[j * ldd + i] = src[i * lds + j] for i, j < 16, in registers (lay_out_panels' transposed weights: 16 MB of
// an LSTM's W_hh^T at H = 1024 took 4.2 ms on two threads a float at a time, against 0.7 for a copy).
inline void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks within each 128-bit lane
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 16; h += 8) {  // then the lanes themselves
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * ldd, r[j]);
}

#pragma GCC pop_options

}  // namespace fastrnn

#endif
