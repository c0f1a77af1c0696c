// CPU building blocks shared by window_pack.cpp and window_unpack.cpp (the argument checks and
// window geometry they share with CUDA are common/window_host.h): the inverse index (which packed rows copy each source row), and the row gathers / reductions.
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
#include "common/window_host.h"

namespace fremure {
namespace window_cpu {

using namespace window_host;  // argument checks and window geometry, shared with CUDA

// Rows per parallel task: about 16 KiB of float32 work, at least one row.
inline int64_t row_grain(int64_t dim) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1));
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
