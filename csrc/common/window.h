// Window geometry and per-row aggregation math of window_pack / window_unpack (docs/method.md 3.1, 3.5),
// shared by the CPU and CUDA kernels.
//
// Windows over b frames: window w covers frames [w * stride, w * stride + window) while that range
// fits in [0, b); when the last of those ends before b, one more window [b - window, b) is added
// so that every frame is covered. A video with fewer than `window` frames has no window.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace fremure {

FREMURE_HOST_DEVICE int64_t window_count(int64_t num_frames, int64_t window, int64_t stride) {
  if (num_frames < window) return 0;
  const int64_t regular = (num_frames - window) / stride + 1;
  const int64_t covered = (regular - 1) * stride + window;
  return covered < num_frames ? regular + 1 : regular;
}

// First frame of window w (0 <= w < window_count(...)).
FREMURE_HOST_DEVICE int64_t window_first_frame(int64_t w, int64_t num_frames, int64_t window, int64_t stride) {
  const int64_t start = w * stride;
  return start + window <= num_frames ? start : num_frames - window;
}

// How the copies of one source row are combined by window_unpack.
enum class UnpackMode : int { kLatter = 0, kMean = 1, kWeighted = 2, kSum = 3 };

// Factor applied to the sum of a row's (weighted) copies: 1/count for "mean", 1/sum(w) for
// "weighted" (0 when the weights sum to 0, so such a row is 0), 1 otherwise.
template <typename Acc>
FREMURE_HOST_DEVICE Acc unpack_row_scale(UnpackMode mode, int64_t count, Acc weight_total) {
  switch (mode) {
    case UnpackMode::kMean:
      return count > 0 ? Acc(1) / Acc(count) : Acc(0);
    case UnpackMode::kWeighted:
      return weight_total > Acc(0) ? Acc(1) / weight_total : Acc(0);
    default:
      return Acc(1);
  }
}

// d out_r / d w_p for out_r = sum_p w_p y_p / W_r, contracted with the output gradient g_r:
// (g_r . y_p - g_r . out_r) / W_r, given both dot products and inv_total = 1 / W_r (0 if W_r == 0).
template <typename Acc>
FREMURE_HOST_DEVICE Acc unpack_weight_grad(Acc dot_grad_copy, Acc dot_grad_out, Acc inv_total) {
  return (dot_grad_copy - dot_grad_out) * inv_total;
}

}  // namespace fremure
