// Pointwise activations of the CPU ops, written branch-free so that loops over them vectorise inside the
// target_clones bodies (std::tanh is scalar and was most of a small step's time).
//
// float tanh: |y| <= 1 always, odd, within 1.33 ulp of the correctly rounded tanh over every float
// (checked exhaustively against double std::tanh), exactly +-1 from |x| >= 9.01084041595459 where torch's
// float tanh is exactly +-1, and NaN in gives NaN out. NaN stays NaN through relu too, as in torch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#define FASTRNN_INLINE __attribute__((always_inline)) inline
#else
#define FASTRNN_INLINE inline
#endif

// A function built once per vector width (AVX-512, AVX2 + FMA, baseline), picked when the library loads.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define FASTRNN_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define FASTRNN_CLONES
#endif

namespace fastrnn {

FASTRNN_INLINE float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// exp(v) for v in [-86, 19]: v = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes' degree-6 polynomial, 2^n
// assembled from its exponent bits (n in [-125, 28] keeps 2^n a normal float, so that is exact). n is rounded
// with the 1.5 * 2^23 trick so that the default (SSE2) clone needs no rounding instruction.
FASTRNN_INLINE float exp_bounded(float v) {
  const float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (v - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r) * r + r + 1.0f;
  return p * bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

// Both branches are computed and one is selected, so the loop stays branch-free. Below |x| = 0.625 an odd
// polynomial x + x^3 P(x^2) (least-squares fit of relative error, 0.01 ulp before rounding); above it
// 1 - 2 / (exp(2|x|) + 1), whose subtracted term is < 0.45 so its rounding costs under one ulp of y.
FASTRNN_INLINE float tanh_float(float v) {
  const float a = std::fabs(v);
  const float u = a * a;
  float q = 2.1780701354146004e-3f;
  q = q * u + -8.215019479393959e-3f;
  q = q * u + 2.1715570241212845e-2f;
  q = q * u + -5.3949400782585144e-2f;
  q = q * u + 1.333322674036026e-1f;
  q = q * u + -3.333333134651184e-1f;
  const float small = a + a * (u * q);
  // std::min keeps a NaN (it returns its first argument unless the second is smaller).
  const float e = exp_bounded(2.0f * std::min(a, 9.5f));
  const float large = 1.0f - 2.0f / (e + 1.0f);
  float y = a < 0.625f ? small : large;
  y = a >= 9.01084041595459f ? 1.0f : y;
  return std::copysign(y, v);
}

FASTRNN_INLINE float tanh_scalar(float v) { return tanh_float(v); }
FASTRNN_INLINE double tanh_scalar(double v) { return std::tanh(v); }

// max(x, 0) that keeps NaN (x > 0 ? x : 0 would turn it into 0).
template <typename T>
FASTRNN_INLINE T relu_scalar(T x) {
  return x < T(0) ? T(0) : x;
}

}  // namespace fastrnn
