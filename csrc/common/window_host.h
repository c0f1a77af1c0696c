// Host-side code of window_pack / window_unpack shared by the CPU and CUDA kernels: argument
// checks and the window geometry (window offsets, slot filling) computed on the host.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/window.h"

namespace fremure {
namespace window_host {

inline UnpackMode parse_mode(c10::string_view mode, const char* op) {
  if (mode == "latter") return UnpackMode::kLatter;
  if (mode == "mean") return UnpackMode::kMean;
  if (mode == "weighted") return UnpackMode::kWeighted;
  if (mode == "sum") return UnpackMode::kSum;
  TORCH_CHECK_VALUE(false, "fremure.", op, ": mode must be one of 'latter', 'mean', 'weighted', 'sum', got '",
                    std::string(mode), "'");
}

// x [N, D] floating, frame_offsets int64 [b + 1] on x's device, 1 <= window < 2**31, stride >= 1
// (padded windows have window * (rows of the largest frame) slots: a larger window only overflows).
inline void check_window_pack(const at::Tensor& x, const at::Tensor& frame_offsets, int64_t window, int64_t stride) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "fremure.window_pack: x must be [N, D] (2 dimensions), got shape ", x.sizes());
  TORCH_CHECK_VALUE(window >= 1, "fremure.window_pack: window must be >= 1, got ", window);
  TORCH_CHECK_VALUE(window <= INT32_MAX, "fremure.window_pack: window must be <= 2147483647 (2**31 - 1), got ", window);
  TORCH_CHECK_VALUE(stride >= 1, "fremure.window_pack: stride must be >= 1, got ", stride);
  check_same_device(x, frame_offsets, "x", "frame_offsets");
  TORCH_CHECK_TYPE(frame_offsets.scalar_type() == at::kLong,
                   "fremure.window_pack: frame_offsets must be an int64 tensor, got ", frame_offsets.scalar_type());
  TORCH_CHECK_VALUE(frame_offsets.dim() == 1 && frame_offsets.size(0) >= 1,
                    "fremure.window_pack: frame_offsets must be a 1-D tensor [num_frames + 1], got shape ",
                    frame_offsets.sizes());
}

// The values of frame_offsets (host copy, frames + 1 of them): a CSR over the `rows` rows of x.
inline void check_frame_offsets(const int64_t* o, int64_t frames, int64_t rows) {
  TORCH_CHECK_VALUE(o[0] == 0, "fremure.window_pack: frame_offsets[0] must be 0, got ", o[0]);
  for (int64_t f = 0; f < frames; ++f) {
    TORCH_CHECK_VALUE(o[f + 1] >= o[f], "fremure.window_pack: frame_offsets must be nondecreasing, got frame_offsets[",
                      f + 1, "] = ", o[f + 1], " < frame_offsets[", f, "] = ", o[f]);
  }
  TORCH_CHECK_VALUE(o[frames] == rows, "fremure.window_pack: frame_offsets[-1] must equal the number of rows of x (",
                    rows, "), got ", o[frames]);
}

// y is [M, D] or [n_win, L, D]; src_index is y's shape without D, int64, values in [-1, num_rows).
inline void check_packed(const at::Tensor& y, const at::Tensor& src_index, int64_t num_rows, const char* op,
                         const char* y_name) {
  check_floating(y, y_name);
  TORCH_CHECK_VALUE(y.dim() == 2 || y.dim() == 3, "fremure.", op, ": ", y_name,
                    " must be [M, D] or [n_win, L, D] (2 or 3 dimensions), got shape ", y.sizes());
  check_same_device(y, src_index, y_name, "src_index");
  TORCH_CHECK_TYPE(src_index.scalar_type() == at::kLong, "fremure.", op, ": src_index must be an int64 tensor, got ",
                   src_index.scalar_type());
  TORCH_CHECK_VALUE(src_index.sizes() == y.sizes().slice(0, y.dim() - 1), "fremure.", op,
                    ": src_index must have shape ", y.sizes().slice(0, y.dim() - 1), " (", y_name,
                    " without its last dimension), got ", src_index.sizes());
  TORCH_CHECK_VALUE(num_rows >= 0, "fremure.", op, ": num_rows must be >= 0, got ", num_rows);
}

inline void check_src_values(const int64_t* src, int64_t count, int64_t num_rows, const char* op) {
  for (int64_t p = 0; p < count; ++p) {
    TORCH_CHECK_VALUE(src[p] >= -1 && src[p] < num_rows, "fremure.", op,
                      ": src_index values must be in [-1, num_rows = ", num_rows, "), got ", src[p],
                      " at flat position ", p);
  }
}

// weights of mode "weighted": y's dtype and device, src_index's shape.
inline void check_weights(const at::Tensor& y, const at::Tensor& src_index, const std::optional<at::Tensor>& weights,
                          const char* op) {
  TORCH_CHECK_VALUE(weights.has_value(), "fremure.", op, ": weights must be given in mode 'weighted'");
  check_like(y, *weights, "y", "weights");
  TORCH_CHECK_VALUE(weights->sizes() == src_index.sizes(), "fremure.", op,
                    ": weights must have the shape of src_index ", src_index.sizes(), ", got ", weights->sizes());
}

// window_unpack_backward: grad_out [num_rows, D] with y's D, dtype and device; returns the mode.
inline UnpackMode check_unpack_backward(const at::Tensor& grad_out, const at::Tensor& y, const at::Tensor& src_index,
                                        const std::optional<at::Tensor>& weights, c10::string_view mode_name) {
  const char* op = "window_unpack_backward";
  const UnpackMode mode = parse_mode(mode_name, op);
  TORCH_CHECK_VALUE(grad_out.dim() == 2, "fremure.", op, ": grad_out must be [num_rows, D] (2 dimensions), got shape ",
                    grad_out.sizes());
  check_packed(y, src_index, grad_out.size(0), op, "y");
  check_like(y, grad_out, "y", "grad_out");
  TORCH_CHECK_VALUE(grad_out.size(1) == y.size(-1), "fremure.", op, ": grad_out must have ", y.size(-1),
                    " columns (the last dimension of y), got shape ", grad_out.sizes());
  if (mode == UnpackMode::kWeighted) check_weights(y, src_index, weights, op);
  return mode;
}

// None negative (CPU only: on CUDA reading them would synchronise). NaN/inf propagate, as for
// every tensor input of every op (docs/ops.md, non-finite inputs).
inline void check_weight_values(const at::Tensor& weights, const char* op) {
  TORCH_CHECK_VALUE(weights.numel() == 0 || !(weights < 0).any().item<bool>(), "fremure.", op,
                    ": weights must be >= 0");
}

// Window geometry of window_pack on the host (shared by the CPU and CUDA kernels): offsets
// [frames + 1] -> window_offsets [n_win + 1] (real rows per window, CSR) and the most rows in one frame.
inline int64_t window_row_offsets(const int64_t* off, int64_t frames, int64_t window, int64_t stride,
                                  std::vector<int64_t>& window_offsets) {
  int64_t rows_max = 0;  // the reference's l
  for (int64_t f = 0; f < frames; ++f) rows_max = std::max(rows_max, off[f + 1] - off[f]);
  const int64_t n_win = window_count(frames, window, stride);
  window_offsets.assign(static_cast<size_t>(n_win + 1), 0);
  for (int64_t w = 0; w < n_win; ++w) {
    const int64_t first = window_first_frame(w, frames, window, stride);
    window_offsets[w + 1] = window_offsets[w] + off[first + window] - off[first];
  }
  return rows_max;
}

// src / pos of the packed slots of windows [w_begin, w_end): each window's rows in frame (=
// original) order, then -1 padding up to `slots` per window in the padded layout (slots > 0).
inline void fill_window_slots(const int64_t* off, int64_t frames, int64_t window, int64_t stride, int64_t slots,
                              const int64_t* window_offsets, int64_t w_begin, int64_t w_end, int64_t* src,
                              int64_t* pos) {
  for (int64_t w = w_begin; w < w_end; ++w) {
    const int64_t first = window_first_frame(w, frames, window, stride);
    int64_t k = slots > 0 ? w * slots : window_offsets[w];
    const int64_t k_end = slots > 0 ? (w + 1) * slots : window_offsets[w + 1];
    for (int64_t f = 0; f < window; ++f) {
      for (int64_t r = off[first + f]; r < off[first + f + 1]; ++r, ++k) {
        src[k] = r;
        pos[k] = f;
      }
    }
    for (; k < k_end; ++k) src[k] = pos[k] = -1;
  }
}

}  // namespace window_host
}  // namespace fremure
