// Per-element math of freq_gate_blend: y = x * (1 - g) + g * xhat, xhat = LN0(x).
#pragma once
#include "common/layer_norm.h"

namespace fremure {

template <typename Acc>
FREMURE_HOST_DEVICE Acc freq_gate_blend_value(Acc x, Acc g, Acc xhat) {
  return x + g * (xhat - x);
}

// Gradient reaching xhat through the LN0 branch (dy * g) and the direct path (dy * (1 - g)).
template <typename Acc>
FREMURE_HOST_DEVICE Acc freq_gate_blend_dxhat(Acc dy, Acc g) {
  return dy * g;
}

template <typename Acc>
FREMURE_HOST_DEVICE Acc freq_gate_blend_dx_direct(Acc dy, Acc g) {
  return dy * (Acc(1) - g);
}

// Contribution of one element to dL/dg.
template <typename Acc>
FREMURE_HOST_DEVICE Acc freq_gate_blend_dgate(Acc dy, Acc x, Acc xhat) {
  return dy * (xhat - x);
}

}  // namespace fremure
