// CPU building blocks shared by window_pack.cpp and window_unpack.cpp: argument checks, the
// inverse index (which packed rows copy each source row), and the row gathers / reductions.
// Everything is deterministic: reductions run per output row over its copies in packed order.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/window.h"

namespace fremure {
namespace window_cpu {

// Rows per parallel task: about 16 KiB of float32 work, at least one row.
inline int64_t row_grain(int64_t dim) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1));
}

inline UnpackMode parse_mode(c10::string_view mode, const char* op) {
  if (mode == "latter") return UnpackMode::kLatter;
  if (mode == "mean") return UnpackMode::kMean;
  if (mode == "weighted") return UnpackMode::kWeighted;
  if (mode == "sum") return UnpackMode::kSum;
  TORCH_CHECK(false, "fremure.", op, ": mode must be one of 'latter', 'mean', 'weighted', 'sum', got '",
              std::string(mode), "'");
}

// y is [M, D] or [n_win, L, D]; src_index is y's shape without D, int64, values in [-1, num_rows).
inline void check_packed(const at::Tensor& y, const at::Tensor& src_index, int64_t num_rows, const char* op,
                         const char* y_name) {
  check_floating(y, y_name);
  TORCH_CHECK(y.dim() == 2 || y.dim() == 3, "fremure.", op, ": ", y_name,
              " must be [M, D] or [n_win, L, D] (2 or 3 dimensions), got shape ", y.sizes());
  check_same_device(y, src_index, y_name, "src_index");
  TORCH_CHECK(src_index.scalar_type() == at::kLong, "fremure.", op, ": src_index must be an int64 tensor, got ",
              src_index.scalar_type());
  TORCH_CHECK(src_index.sizes() == y.sizes().slice(0, y.dim() - 1), "fremure.", op, ": src_index must have shape ",
              y.sizes().slice(0, y.dim() - 1), " (", y_name, " without its last dimension), got ", src_index.sizes());
  TORCH_CHECK(num_rows >= 0, "fremure.", op, ": num_rows must be >= 0, got ", num_rows);
}

inline void check_src_values(const int64_t* src, int64_t count, int64_t num_rows, const char* op) {
  for (int64_t p = 0; p < count; ++p) {
    TORCH_CHECK(src[p] >= -1 && src[p] < num_rows, "fremure.", op, ": src_index values must be in [-1, num_rows = ",
                num_rows, "), got ", src[p], " at flat position ", p);
  }
}

// weights: y's dtype and device, src_index's shape, finite and >= 0.
inline void check_weights(const at::Tensor& y, const at::Tensor& src_index, const std::optional<at::Tensor>& weights,
                          const char* op) {
  TORCH_CHECK(weights.has_value(), "fremure.", op, ": weights must be given in mode 'weighted'");
  check_same_device(y, *weights, "y", "weights");
  check_same_dtype(y, *weights, "y", "weights");
  TORCH_CHECK(weights->sizes() == src_index.sizes(), "fremure.", op, ": weights must have the shape of src_index ",
              src_index.sizes(), ", got ", weights->sizes());
  if (weights->numel() > 0) {
    TORCH_CHECK(at::isfinite(*weights).all().item<bool>(), "fremure.", op, ": weights contains NaN or inf");
    TORCH_CHECK((*weights >= 0).all().item<bool>(), "fremure.", op, ": weights must be >= 0");
  }
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

// For every source row r, the packed positions p with src[p] == r in increasing p (a stable
// counting sort): ptr[r]..ptr[r+1] index into pos.
struct InverseIndex {
  std::vector<int64_t> ptr;
  std::vector<int64_t> pos;
};

inline InverseIndex build_inverse(const int64_t* src, int64_t count, int64_t num_rows) {
  InverseIndex inv;
  inv.ptr.assign(static_cast<size_t>(num_rows + 1), 0);
  for (int64_t p = 0; p < count; ++p) {
    if (src[p] >= 0) ++inv.ptr[src[p] + 1];
  }
  for (int64_t r = 0; r < num_rows; ++r) inv.ptr[r + 1] += inv.ptr[r];
  inv.pos.resize(static_cast<size_t>(inv.ptr[num_rows]));
  std::vector<int64_t> fill(inv.ptr.begin(), inv.ptr.end() - 1);
  for (int64_t p = 0; p < count; ++p) {
    if (src[p] >= 0) inv.pos[fill[src[p]]++] = p;
  }
  return inv;
}

// out[p] = in[src[p]] (a zero row where src[p] < 0), copied bytewise: any dtype.
inline void gather_rows_copy(const at::Tensor& in, const int64_t* src, int64_t count, at::Tensor& out) {
  const int64_t dim = out.size(-1);
  const size_t row_bytes = static_cast<size_t>(dim) * out.element_size();
  const char* in_ptr = static_cast<const char*>(in.const_data_ptr());
  char* out_ptr = static_cast<char*>(out.mutable_data_ptr());
  if (row_bytes == 0) return;
  at::parallel_for(0, count, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      char* o = out_ptr + p * row_bytes;
      if (src[p] < 0) {
        std::memset(o, 0, row_bytes);
      } else {
        std::memcpy(o, in_ptr + src[p] * row_bytes, row_bytes);
      }
    }
  });
}

// out[p] = scale[p] * in[src[p]] (a zero row where src[p] < 0 or scale[p] == 0); scale == nullptr
// means 1 everywhere.
template <typename scalar_t>
void gather_rows_scaled(const scalar_t* in, const int64_t* src, const at::opmath_type<scalar_t>* scale, int64_t count,
                        int64_t dim, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, count, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* o = out + p * dim;
      const acc_t c = scale == nullptr ? acc_t(1) : scale[p];
      if (src[p] < 0 || c == acc_t(0)) {
        std::fill(o, o + dim, scalar_t(0));
        continue;
      }
      const scalar_t* row = in + src[p] * dim;
      if (c == acc_t(1)) {
        std::copy(row, row + dim, o);
      } else {
        for (int64_t j = 0; j < dim; ++j) o[j] = scalar_t(c * acc_t(row[j]));
      }
    }
  });
}

// out[r] = row_scale[r] * sum over the copies p of r (inverse index order) of coef[p] * y[p]; only
// the first copy when first_only; a zero row when r has no copy. coef / row_scale == nullptr mean 1.
template <typename scalar_t>
void reduce_rows(const scalar_t* y, const InverseIndex& inv, const at::opmath_type<scalar_t>* coef,
                 const at::opmath_type<scalar_t>* row_scale, bool first_only, int64_t num_rows, int64_t dim,
                 scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool in_place = std::is_same_v<acc_t, scalar_t>;
  at::parallel_for(0, num_rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(in_place ? 0 : dim);
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* o = out + r * dim;
      const int64_t lo = inv.ptr[r];
      const int64_t hi = first_only ? std::min(lo + 1, inv.ptr[r + 1]) : inv.ptr[r + 1];
      const acc_t s = row_scale == nullptr ? acc_t(1) : row_scale[r];
      if (lo == hi || s == acc_t(0)) {
        std::fill(o, o + dim, scalar_t(0));
        continue;
      }
      if (hi - lo == 1 && coef == nullptr && s == acc_t(1)) {
        const scalar_t* row = y + inv.pos[lo] * dim;
        std::copy(row, row + dim, o);
        continue;
      }
      acc_t* acc;
      if constexpr (in_place) {
        acc = o;
      } else {
        acc = buffer.data();
      }
      for (int64_t k = lo; k < hi; ++k) {
        const int64_t p = inv.pos[k];
        const scalar_t* row = y + p * dim;
        const acc_t c = coef == nullptr ? acc_t(1) : coef[p];
        if (k == lo) {
          for (int64_t j = 0; j < dim; ++j) acc[j] = c * acc_t(row[j]);
        } else {
          for (int64_t j = 0; j < dim; ++j) acc[j] += c * acc_t(row[j]);
        }
      }
      if (!in_place || s != acc_t(1)) {
        for (int64_t j = 0; j < dim; ++j) o[j] = scalar_t(acc[j] * s);
      }
    }
  });
}

}  // namespace window_cpu
}  // namespace fremure
