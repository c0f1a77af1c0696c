// CPU kernels of window_pack (frame-sorted rows -> sliding windows, packed or zero-padded) and of
// its backward (a deterministic scatter-add of the packed gradient rows onto the source rows).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/window.h"
#include "cpu/window_rows.h"

namespace fremure {
namespace {

using window_cpu::InverseIndex;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_pack_cpu(const at::Tensor& x,
                                                                           const at::Tensor& frame_offsets,
                                                                           int64_t window, int64_t stride,
                                                                           bool padded) {
  window_cpu::check_window_pack(x, frame_offsets, window, stride);
  const at::Tensor off_t = frame_offsets.contiguous();
  const int64_t* off = off_t.const_data_ptr<int64_t>();
  const int64_t frames = off_t.size(0) - 1;
  window_cpu::check_frame_offsets(off, frames, x.size(0));
  const int64_t dim = x.size(1);

  std::vector<int64_t> wo;
  const int64_t rows_max = window_cpu::window_row_offsets(off, frames, window, stride, wo);
  const int64_t n_win = static_cast<int64_t>(wo.size()) - 1;
  const at::TensorOptions long_opts = off_t.options();
  at::Tensor window_offsets = at::empty({n_win + 1}, long_opts);
  std::copy(wo.begin(), wo.end(), window_offsets.mutable_data_ptr<int64_t>());

  const int64_t slots = padded ? window * rows_max : 0;  // L, padded layout only
  const int64_t total = padded ? n_win * slots : wo[n_win];
  at::Tensor src_index = padded ? at::empty({n_win, slots}, long_opts) : at::empty({total}, long_opts);
  at::Tensor position = at::empty_like(src_index);
  int64_t* src = src_index.mutable_data_ptr<int64_t>();
  int64_t* pos = position.mutable_data_ptr<int64_t>();
  at::parallel_for(0, n_win, 1, [&](int64_t begin, int64_t end) {
    window_cpu::fill_window_slots(off, frames, window, stride, slots, wo.data(), begin, end, src, pos);
  });

  const at::Tensor xc = x.contiguous();
  at::Tensor out = padded ? at::empty({n_win, slots, dim}, x.options()) : at::empty({total, dim}, x.options());
  window_cpu::gather_rows_copy(xc, src, total, out);
  return {out, src_index, position, window_offsets};
}

// grad_x[r] = sum of grad_out[p] over the packed rows p with src_index[p] == r, in packed order.
at::Tensor window_pack_backward_cpu(const at::Tensor& grad_out, const at::Tensor& src_index, int64_t num_rows) {
  window_cpu::check_packed(grad_out, src_index, num_rows, "window_pack_backward", "grad_out");
  const at::Tensor sc = src_index.contiguous();
  const int64_t* src = sc.const_data_ptr<int64_t>();
  const int64_t count = sc.numel();
  window_cpu::check_src_values(src, count, num_rows, "window_pack_backward");
  const int64_t dim = grad_out.size(-1);
  const at::Tensor gc = grad_out.contiguous();
  const InverseIndex inv = window_cpu::build_inverse(src, count, num_rows);
  at::Tensor grad_x = at::empty({num_rows, dim}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "window_pack_backward_cpu", [&] {
    window_cpu::reduce_rows<scalar_t>(gc.const_data_ptr<scalar_t>(), inv, nullptr, nullptr, false, num_rows, dim,
                                      grad_x.mutable_data_ptr<scalar_t>());
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("window_pack", &window_pack_cpu);
  m.impl("window_pack_backward", &window_pack_backward_cpu);
}

}  // namespace fremure
