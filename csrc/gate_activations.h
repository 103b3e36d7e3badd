// Pointwise functions of the gated cells (GRU, LSTM), branch-free like activations.h so that the gate
// loops vectorise inside the target_clones bodies.
//
// float sigmoid: 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, with e = exp(-|x|), so it is accurate in
// relative terms on both sides (0.5 + 0.5 tanh(x / 2) loses all relative accuracy below x = -17 and returns
// exactly 0 below -18). Bounded in [0, 1]; NaN in gives NaN out. Exactly 0 below -88.7228 (where torch's
// 1 / (1 + exp(-x)) is 0 because exp overflows), so that 0 * inf makes NaN where it does in torch's cells.
#pragma once

#include "activations.h"

namespace fastrnn {

FASTRNN_INLINE float sigmoid_float(float x) {
  // std::min keeps a NaN; below -86 the true value is under 4e-38 and this returns about that.
  const float e = exp_bounded(-std::min(std::fabs(x), 86.0f));
  const float pos = 1.0f / (1.0f + e);
  const float y = x < 0.0f ? e * pos : pos;
  return x < -88.72283935546875f ? 0.0f : y;
}

FASTRNN_INLINE float sigmoid_scalar(float x) { return sigmoid_float(x); }
FASTRNN_INLINE double sigmoid_scalar(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace fastrnn
