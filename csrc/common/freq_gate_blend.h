// Per-element math of freq_gate_blend: y = x * (1 - g) + g * xhat, xhat = LN0(x), and the host-side
// argument checks of its CPU and CUDA kernels.
#pragma once
#include <optional>

#include "common/checks.h"
#include "common/layer_norm.h"

namespace fremure {

struct GateLayout {
  int64_t rows;
  int64_t dim;
  bool per_row_gate;  // gate is [..., D] like x rather than one [D] vector
};

// x [..., D] floating; gate [D] or x's shape, x's dtype/device; valid: bool, x's shape without D.
inline GateLayout check_freq_gate_blend(const at::Tensor& x, const at::Tensor& gate,
                                        const std::optional<at::Tensor>& valid) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "fremure.freq_gate_blend: x must have at least 1 dimension, got a scalar");
  check_like(x, gate, "x", "gate");
  const int64_t dim = x.size(-1);
  TORCH_CHECK_VALUE(gate.sizes() == x.sizes() || (gate.dim() == 1 && gate.size(0) == dim),
                    "fremure.freq_gate_blend: gate must have shape [", dim, "] or the shape of x ", x.sizes(),
                    ", got ", gate.sizes());
  if (valid.has_value()) {
    check_same_device(x, *valid, "x", "valid");
    TORCH_CHECK_TYPE(valid->scalar_type() == at::kBool, "fremure.freq_gate_blend: valid must be a bool tensor, got ",
                     valid->scalar_type());
    TORCH_CHECK_VALUE(valid->sizes() == x.sizes().slice(0, x.dim() - 1),
                      "fremure.freq_gate_blend: valid must have shape ", x.sizes().slice(0, x.dim() - 1),
                      " (x without its last dimension), got ", valid->sizes());
  }
  return {dim == 0 ? 0 : x.numel() / dim, dim, gate.dim() > 1};
}

// grad_out of the backward: x's shape, dtype and device.
inline void check_freq_gate_blend_grad(const at::Tensor& grad_out, const at::Tensor& x) {
  check_like(x, grad_out, "x", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "fremure.freq_gate_blend_backward: grad_out must have the shape ",
                    "of x ", x.sizes(), ", got ", grad_out.sizes());
}

template <typename Acc>
FREMURE_HOST_DEVICE Acc freq_gate_blend_value(Acc x, Acc g, Acc xhat) {
  return x + g * (xhat - x);
}

// Contribution of one element to dL/dg.
template <typename Acc>
FREMURE_HOST_DEVICE Acc freq_gate_blend_dgate(Acc dy, Acc x, Acc xhat) {
  return dy * (xhat - x);
}

}  // namespace fremure
