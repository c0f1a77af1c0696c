// LayerNorm without affine (LN0, eps 1e-5 as torch.nn.functional.layer_norm), split into the
// pieces that CPU loops and CUDA warp reductions share: the reductions differ, the per-element
// formulas below do not. Also the gradient of the gated blends of both LN0 ops (freq_gate_blend,
// gated_fusion).
#pragma once
#include <cmath>
#include "common/macros.h"

namespace fremure {

constexpr double kLayerNormEps = 1e-5;

// rstd from the biased variance of a row (var = E[(x - mean)^2]).
template <typename Acc>
FREMURE_HOST_DEVICE Acc ln_rstd(Acc var, Acc eps) {
  return Acc(1) / std::sqrt(var + eps);
}

// xhat = (x - mean) * rstd
template <typename Acc>
FREMURE_HOST_DEVICE Acc ln_normalise(Acc x, Acc mean, Acc rstd) {
  return (x - mean) * rstd;
}

// Backward of LN0 for one element, given the row means of dxhat and dxhat * xhat:
// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
template <typename Acc>
FREMURE_HOST_DEVICE Acc ln_backward(Acc dxhat, Acc xhat, Acc rstd, Acc mean_dxhat, Acc mean_dxhat_xhat) {
  return rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
}

// out = a + w (b - a): the gradient reaching b (dy w) and a (dy (1 - w)) directly.
template <typename Acc>
FREMURE_HOST_DEVICE Acc blend_grad_to(Acc dy, Acc w) {
  return dy * w;
}

template <typename Acc>
FREMURE_HOST_DEVICE Acc blend_grad_from(Acc dy, Acc w) {
  return dy * (Acc(1) - w);
}

}  // namespace fremure
