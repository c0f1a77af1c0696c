// CUDA kernels of window_unpack and window_unpack_backward: copies of each source row are combined
// per output row over the device-side inverse index (csrc/cuda/window_index.cuh), in packed order,
// with the per-row factors of csrc/common/window.h (the functions the CPU kernel uses). No host
// synchronisation: the weights' value checks ("finite, >= 0") are done on CPU only.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/window.h"
#include "common/window_host.h"
#include "cuda/block_reduce.cuh"
#include "cuda/window_index.cuh"

namespace fremure {
namespace {

constexpr int kThreads = 256;

// Per output row r: out[r] = scale_r * sum_c coef_c * y[pos_c] over r's copies c, where coef is 1
// (or w for "weighted") and "latter" takes the first copy alone. Also stores 1/W_r (weighted).
template <typename scalar_t>
__global__ void unpack_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ weights,
                              const int64_t* __restrict__ ptr, const int64_t* __restrict__ pos,
                              scalar_t* __restrict__ out, int64_t dim, UnpackMode mode) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = blockIdx.x;
  int64_t begin = ptr[r], end = ptr[r + 1];
  if (mode == UnpackMode::kLatter && end > begin) end = begin + 1;
  acc_t total_w = 0;
  if (mode == UnpackMode::kWeighted) {
    for (int64_t c = begin; c < end; ++c) total_w += acc_t(weights[pos[c]]);
  }
  const acc_t scale = unpack_row_scale<acc_t>(mode, end - begin, total_w);
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    acc_t acc = 0;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t p = pos[c];
      const acc_t coef = mode == UnpackMode::kWeighted ? acc_t(weights[p]) : acc_t(1);
      acc += coef * acc_t(y[p * dim + j]);
    }
    out[r * dim + j] = scalar_t(acc * scale);
  }
}

// Per output row r: the factor every copy's gradient gets, written per packed position, and for
// "weighted" 1/W_r. "latter" gives 1 to the first copy and 0 to the others.
template <typename acc_t, typename scalar_t>
__global__ void copy_scale_kernel(const scalar_t* __restrict__ weights, const int64_t* __restrict__ ptr,
                                  const int64_t* __restrict__ pos, acc_t* __restrict__ scale,
                                  acc_t* __restrict__ inv_total, int64_t num_rows, UnpackMode mode) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= num_rows) return;
  const int64_t begin = ptr[r], end = ptr[r + 1];
  acc_t total_w = 0;
  if (mode == UnpackMode::kWeighted) {
    for (int64_t c = begin; c < end; ++c) total_w += acc_t(weights[pos[c]]);
  }
  const acc_t row_scale = unpack_row_scale<acc_t>(mode, end - begin, total_w);
  if (mode == UnpackMode::kWeighted) inv_total[r] = row_scale;
  for (int64_t c = begin; c < end; ++c) {
    const int64_t p = pos[c];
    acc_t s = row_scale;
    if (mode == UnpackMode::kWeighted) s = acc_t(weights[p]) * row_scale;
    if (mode == UnpackMode::kLatter) s = c == begin ? acc_t(1) : acc_t(0);
    scale[p] = s;
  }
}

// grad_y[p] = scale[p] * grad_out[src[p]] (0 for padding); "weighted" also dots[p] = g . y[p].
template <typename scalar_t>
__global__ void grad_rows_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                                 const int64_t* __restrict__ src, const at::opmath_type<scalar_t>* __restrict__ scale,
                                 scalar_t* __restrict__ grad_y, at::opmath_type<scalar_t>* __restrict__ dots,
                                 int64_t dim) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[32];
  const int64_t p = blockIdx.x;
  const int64_t r = src[p];
  scalar_t* gy = grad_y + p * dim;
  if (r < 0) {
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) gy[j] = scalar_t(0);
    if (dots != nullptr && threadIdx.x == 0) dots[p] = acc_t(0);
    return;
  }
  const scalar_t* g = grad_out + r * dim;
  const acc_t s = scale[p];
  acc_t dot = 0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    gy[j] = scalar_t(s * acc_t(g[j]));
    if (dots != nullptr) dot += acc_t(g[j]) * acc_t(y[p * dim + j]);
  }
  if (dots != nullptr) {
    dot = block_sum(dot, shared);
    if (threadIdx.x == 0) dots[p] = dot;
  }
}

// "weighted": grad_w[p] = (g . y[p] - g . out_r) / W_r, g . out_r = sum over r's copies of scale * dots.
template <typename acc_t, typename scalar_t>
__global__ void weight_grad_kernel(const acc_t* __restrict__ dots, const acc_t* __restrict__ scale,
                                   const acc_t* __restrict__ inv_total, const int64_t* __restrict__ ptr,
                                   const int64_t* __restrict__ pos, scalar_t* __restrict__ grad_w, int64_t num_rows) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= num_rows) return;
  const int64_t begin = ptr[r], end = ptr[r + 1];
  acc_t dot_out = 0;
  for (int64_t c = begin; c < end; ++c) dot_out += scale[pos[c]] * dots[pos[c]];
  for (int64_t c = begin; c < end; ++c) {
    grad_w[pos[c]] = scalar_t(unpack_weight_grad<acc_t>(dots[pos[c]], dot_out, inv_total[r]));
  }
}

at::Tensor window_unpack_cuda(const at::Tensor& y, const at::Tensor& src_index, const std::optional<at::Tensor>& weights,
                              int64_t num_rows, c10::string_view mode_name) {
  const UnpackMode mode = window_host::parse_mode(mode_name, "window_unpack");
  window_host::check_packed(y, src_index, num_rows, "window_unpack", "y");
  const bool weighted = mode == UnpackMode::kWeighted;
  if (weighted) window_host::check_weights(y, src_index, weights, "window_unpack");
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t dim = y.size(-1);
  at::Tensor out = at::zeros({num_rows, dim}, y.options());
  if (num_rows == 0 || dim == 0 || src_index.numel() == 0) return out;
  const window_cuda::DeviceInverse inv = window_cuda::build_inverse(src_index.reshape({-1}).contiguous(), num_rows);
  const at::Tensor yc = y.contiguous();
  const at::Tensor wc = weighted ? weights->contiguous() : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "window_unpack_cuda", [&] {
    unpack_kernel<scalar_t><<<num_rows, kThreads, 0, stream>>>(
        yc.const_data_ptr<scalar_t>(), weighted ? wc.const_data_ptr<scalar_t>() : nullptr,
        inv.ptr.const_data_ptr<int64_t>(), inv.pos.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), dim,
        mode);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> window_unpack_backward_cuda(const at::Tensor& grad_out, const at::Tensor& y,
                                                               const at::Tensor& src_index,
                                                               const std::optional<at::Tensor>& weights,
                                                               c10::string_view mode_name) {
  const UnpackMode mode = window_host::check_unpack_backward(grad_out, y, src_index, weights, mode_name);
  const int64_t num_rows = grad_out.size(0);
  const bool weighted = mode == UnpackMode::kWeighted;
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t dim = y.size(-1);
  const int64_t count = src_index.numel();
  at::Tensor grad_y = at::empty(y.sizes(), grad_out.options());
  at::Tensor grad_w = weighted ? at::zeros(weights->sizes(), grad_out.options()) : at::empty({0}, grad_out.options());
  if (count == 0) return {grad_y, grad_w};
  const at::Tensor src_flat = src_index.reshape({-1}).contiguous();
  const window_cuda::DeviceInverse inv = window_cuda::build_inverse(src_flat, num_rows);
  const at::Tensor gc = grad_out.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "window_unpack_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = grad_out.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor scale = at::zeros({count}, acc_opts);
    at::Tensor inv_total = weighted ? at::empty({num_rows}, acc_opts) : at::Tensor();
    at::Tensor dots = weighted ? at::empty({count}, acc_opts) : at::Tensor();
    const at::Tensor wc = weighted ? weights->contiguous() : at::Tensor();
    const at::Tensor yc = weighted ? y.contiguous() : at::Tensor();
    const int row_blocks = static_cast<int>((num_rows + kThreads - 1) / kThreads);
    if (num_rows > 0) {
      copy_scale_kernel<acc_t, scalar_t><<<row_blocks, kThreads, 0, stream>>>(
          weighted ? wc.const_data_ptr<scalar_t>() : nullptr, inv.ptr.const_data_ptr<int64_t>(),
          inv.pos.const_data_ptr<int64_t>(), scale.mutable_data_ptr<acc_t>(),
          weighted ? inv_total.mutable_data_ptr<acc_t>() : nullptr, num_rows, mode);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_rows_kernel<scalar_t><<<count, kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), weighted ? yc.const_data_ptr<scalar_t>() : nullptr,
        src_flat.const_data_ptr<int64_t>(), scale.const_data_ptr<acc_t>(), grad_y.mutable_data_ptr<scalar_t>(),
        weighted ? dots.mutable_data_ptr<acc_t>() : nullptr, dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (weighted && num_rows > 0) {
      weight_grad_kernel<acc_t, scalar_t><<<row_blocks, kThreads, 0, stream>>>(
          dots.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(), inv_total.const_data_ptr<acc_t>(),
          inv.ptr.const_data_ptr<int64_t>(), inv.pos.const_data_ptr<int64_t>(), grad_w.mutable_data_ptr<scalar_t>(),
          num_rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_y, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CUDA, m) {
  m.impl("window_unpack", &window_unpack_cuda);
  m.impl("window_unpack_backward", &window_unpack_backward_cuda);
}

}  // namespace fremure
