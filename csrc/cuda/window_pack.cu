// CUDA kernels of window_pack and window_pack_backward. The window geometry comes from
// csrc/common/window.h (the functions the CPU kernel uses). window_pack's output shape depends on
// the frame sizes, so it reads frame_offsets ([b + 1] integers) to the host once, as any op with a
// data-dependent output shape must; the row gather and the backward run entirely on the device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/window.h"
#include "common/window_host.h"
#include "cuda/window_index.cuh"

namespace fremure {
namespace {

constexpr int kThreads = 256;

// out[k, :] = x[src[k], :] (0 for padding), one block per packed row.
template <typename scalar_t>
__global__ void gather_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ src,
                              scalar_t* __restrict__ out, int64_t dim) {
  const int64_t k = blockIdx.x;
  const int64_t r = src[k];
  scalar_t* o = out + k * dim;
  if (r < 0) {
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) o[j] = scalar_t(0);
    return;
  }
  const scalar_t* xr = x + r * dim;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) o[j] = xr[j];
}

// grad_x[r, :] = sum of grad[p, :] over row r's copies in packed order (deterministic).
template <typename scalar_t>
__global__ void scatter_sum_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ ptr,
                                   const int64_t* __restrict__ pos, scalar_t* __restrict__ grad_x, int64_t dim) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = blockIdx.x;
  const int64_t begin = ptr[r], end = ptr[r + 1];
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    acc_t total = 0;
    for (int64_t c = begin; c < end; ++c) total += acc_t(grad[pos[c] * dim + j]);
    grad_x[r * dim + j] = scalar_t(total);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_pack_cuda(const at::Tensor& x,
                                                                            const at::Tensor& frame_offsets,
                                                                            int64_t window, int64_t stride,
                                                                            bool padded) {
  window_host::check_window_pack(x, frame_offsets, window, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor off_host = frame_offsets.to(at::kCPU).contiguous();
  const int64_t* off = off_host.const_data_ptr<int64_t>();
  const int64_t frames = off_host.size(0) - 1;
  window_host::check_frame_offsets(off, frames, x.size(0));

  std::vector<int64_t> wo;
  const int64_t rows_max = window_host::window_row_offsets(off, frames, window, stride, wo);
  const int64_t n_win = static_cast<int64_t>(wo.size()) - 1;
  const int64_t slots = padded ? window * rows_max : 0;
  const int64_t total = padded ? n_win * slots : wo[n_win];
  std::vector<int64_t> src(total), pos(total);
  window_host::fill_window_slots(off, frames, window, stride, slots, wo.data(), 0, n_win, src.data(), pos.data());
  const auto long_cpu = at::TensorOptions().dtype(at::kLong);
  const auto shape = padded ? std::vector<int64_t>{n_win, slots} : std::vector<int64_t>{total};
  at::Tensor src_index = at::from_blob(src.data(), shape, long_cpu).to(x.device());
  at::Tensor position = at::from_blob(pos.data(), shape, long_cpu).to(x.device());
  at::Tensor window_offsets = at::from_blob(wo.data(), {n_win + 1}, long_cpu).to(x.device());

  const int64_t dim = x.size(1);
  at::Tensor out = padded ? at::empty({n_win, slots, dim}, x.options()) : at::empty({total, dim}, x.options());
  if (total > 0 && dim > 0) {
    const at::Tensor xc = x.contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "window_pack_cuda", [&] {
      gather_kernel<scalar_t><<<total, kThreads, 0, stream>>>(xc.const_data_ptr<scalar_t>(),
                                                                src_index.const_data_ptr<int64_t>(),
                                                                out.mutable_data_ptr<scalar_t>(), dim);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, src_index, position, window_offsets};
}

at::Tensor window_pack_backward_cuda(const at::Tensor& grad_out, const at::Tensor& src_index, int64_t num_rows) {
  window_host::check_packed(grad_out, src_index, num_rows, "window_pack_backward", "grad_out");
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t dim = grad_out.size(-1);
  at::Tensor grad_x = at::zeros({num_rows, dim}, grad_out.options());
  if (num_rows == 0 || dim == 0 || src_index.numel() == 0) return grad_x;
  const at::Tensor src_flat = src_index.reshape({-1}).contiguous();
  const window_cuda::DeviceInverse inv = window_cuda::build_inverse(src_flat, num_rows);
  const at::Tensor gc = grad_out.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "window_pack_backward_cuda", [&] {
    scatter_sum_kernel<scalar_t><<<num_rows, kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), inv.ptr.const_data_ptr<int64_t>(), inv.pos.const_data_ptr<int64_t>(),
        grad_x.mutable_data_ptr<scalar_t>(), dim);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CUDA, m) {
  m.impl("window_pack", &window_pack_cuda);
  m.impl("window_pack_backward", &window_pack_backward_cuda);
}

}  // namespace fremure
