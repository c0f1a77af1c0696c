// Device-side inverse index of src_index for the window CUDA kernels: for each source row r, the
// packed positions p with src_index[p] == r, in increasing p (a stable sort), as CSR (ptr, pos).
// Built with ATen ops on the current stream: no host synchronisation, and every later reduction
// walks a row's copies in packed order, so results are deterministic.
#pragma once
#include <ATen/ATen.h>

namespace fremure {
namespace window_cuda {

struct DeviceInverse {
  at::Tensor ptr;  // [num_rows + 1] int64: row r's copies are pos[ptr[r] : ptr[r + 1]]
  at::Tensor pos;  // [count] int64 packed positions sorted by source row; padding ones come first
};

inline DeviceInverse build_inverse(const at::Tensor& src_flat, int64_t num_rows) {
  // Stable sort keeps packed order among the copies of one row; padding (-1) sorts first.
  const auto sorted = at::sort(src_flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& order = std::get<1>(sorted);
  // counts[r + 1] = number of copies of row r; counts[0] = padding slots.
  at::Tensor counts = at::zeros({num_rows + 1}, src_flat.options());
  counts.index_add_(0, src_flat + 1, at::ones_like(src_flat));
  // cumsum[r] = padding slots + copies of rows < r = where row r starts in the sorted order.
  return {at::cumsum(counts, 0), order};
}

}  // namespace window_cuda
}  // namespace fremure
