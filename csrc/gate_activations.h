// Pointwise functions of the gated cells (GRU, LSTM), branch-free like activations.h so that the gate
// loops vectorise inside the target_clones bodies.
//
// float sigmoid: 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, with e = exp(-|x|), so it is accurate in
// relative terms on both sides (0.5 + 0.5 tanh(x / 2) loses all relative accuracy below x = -17 and returns
// exactly 0 below -18). Bounded in [0, 1]; NaN in gives NaN out.
#pragma once

#include "activations.h"

namespace fastrnn {

// exp(v) for v in [-86, 0]: the same reduction and polynomial as exp_0_19; 2^n with n in [-125, 0] stays a
// normal float, so the exponent-bit assembly is exact there.
FASTRNN_INLINE float exp_neg_86_0(float v) {
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

FASTRNN_INLINE float sigmoid_float(float x) {
  // std::min keeps a NaN; below -86 the true value is under 4e-38 and this returns about that.
  const float e = exp_neg_86_0(-std::min(std::fabs(x), 86.0f));
  const float pos = 1.0f / (1.0f + e);
  return x < 0.0f ? e * pos : pos;
}

FASTRNN_INLINE float sigmoid_scalar(float x) { return sigmoid_float(x); }
FASTRNN_INLINE double sigmoid_scalar(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace fastrnn
