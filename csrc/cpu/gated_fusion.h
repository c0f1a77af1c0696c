// Per-element math of gated_fusion (docs/method.md 3.4), used by the CPU row loops (GPU: Triton):
//   s = sigmoid(z / T), gate = clamp(s, lo, hi), out = h + (1 - gate) * (t - h),
// with z the GEMM logits (bias and condition included) and h, t the LN0 rows of head and tail.
#pragma once
#include <cmath>
#include "common/layer_norm.h"

namespace fremure {

// torch.clamp semantics: NaN stays NaN.
template <typename Acc>
inline Acc gated_fusion_clamp(Acc s, Acc lo, Acc hi) {
  return s < lo ? lo : (s > hi ? hi : s);
}

// The blend moves t toward h by the gate: h receives blend_grad_to(dy, gate), t blend_grad_from.
template <typename Acc>
inline Acc gated_fusion_value(Acc h, Acc t, Acc gate) {
  return h + (Acc(1) - gate) * (t - h);
}

// dL/dz for one element: out depends on the gate through -(t - h); the clamp passes the gradient
// where lo <= s <= hi (torch.clamp's rule, bounds included); d sigmoid(z / T) / dz = s (1 - s) / T.
template <typename Acc>
inline Acc gated_fusion_dlogit(Acc dy, Acc h, Acc t, Acc s, Acc lo, Acc hi, Acc temperature) {
  const bool passes = s >= lo && s <= hi;
  return passes ? dy * (h - t) * (s * (Acc(1) - s) / temperature) : Acc(0);
}

}  // namespace fremure
