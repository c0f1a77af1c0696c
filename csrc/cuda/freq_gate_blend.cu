// CUDA kernels of freq_gate_blend: one block per row; per-element math from
// csrc/common/freq_gate_blend.h (the same functions the CPU kernel runs, so CPU tests prove it).
// The [D] gate gradient is a column reduction done by a second, deterministic kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/freq_gate_blend.h"
#include "cuda/block_reduce.cuh"

namespace fremure {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__device__ void row_moments(const scalar_t* xr, int64_t D, acc_t* shared, acc_t& mean, acc_t& rstd) {
  acc_t sum = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) sum += acc_t(xr[j]);
  mean = block_sum(sum, shared) / acc_t(D);
  acc_t sq = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const acc_t c = acc_t(xr[j]) - mean;
    sq += c * c;
  }
  rstd = ln_rstd<acc_t>(block_sum(sq, shared) / acc_t(D), acc_t(kLayerNormEps));
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gate,
                               const bool* __restrict__ valid, scalar_t* __restrict__ out, int64_t D,
                               bool per_row_gate) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[32];
  const int64_t r = blockIdx.x;
  const scalar_t* xr = x + r * D;
  scalar_t* yr = out + r * D;
  if (valid != nullptr && !valid[r]) {
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = xr[j];
    return;
  }
  const scalar_t* gr = per_row_gate ? gate + r * D : gate;
  acc_t mean, rstd;
  row_moments<scalar_t, acc_t>(xr, D, shared, mean, rstd);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const acc_t xv = acc_t(xr[j]);
    yr[j] = scalar_t(freq_gate_blend_value<acc_t>(xv, acc_t(gr[j]), ln_normalise<acc_t>(xv, mean, rstd)));
  }
}

// dx per row; stores mean/rstd so the gate reduction need not recompute them.
template <typename scalar_t>
__global__ void backward_rows_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ gate, const bool* __restrict__ valid,
                                     scalar_t* __restrict__ dx, scalar_t* __restrict__ dgate_rows,
                                     at::opmath_type<scalar_t>* __restrict__ stats, int64_t D, bool per_row_gate) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[32];
  const int64_t r = blockIdx.x;
  const scalar_t* xr = x + r * D;
  const scalar_t* dyr = dy + r * D;
  scalar_t* dxr = dx + r * D;
  if (valid != nullptr && !valid[r]) {
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      dxr[j] = dyr[j];
      if (per_row_gate) dgate_rows[r * D + j] = scalar_t(0);
    }
    return;
  }
  const scalar_t* gr = per_row_gate ? gate + r * D : gate;
  acc_t mean, rstd;
  row_moments<scalar_t, acc_t>(xr, D, shared, mean, rstd);
  acc_t s1 = 0, s2 = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const acc_t xh = ln_normalise<acc_t>(acc_t(xr[j]), mean, rstd);
    const acc_t dxh = blend_grad_to<acc_t>(acc_t(dyr[j]), acc_t(gr[j]));
    s1 += dxh;
    s2 += dxh * xh;
  }
  const acc_t m1 = block_sum(s1, shared) / acc_t(D);
  const acc_t m2 = block_sum(s2, shared) / acc_t(D);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const acc_t d = acc_t(dyr[j]);
    const acc_t g = acc_t(gr[j]);
    const acc_t xh = ln_normalise<acc_t>(acc_t(xr[j]), mean, rstd);
    dxr[j] = scalar_t(blend_grad_from<acc_t>(d, g) +
                      ln_backward<acc_t>(blend_grad_to<acc_t>(d, g), xh, rstd, m1, m2));
    if (per_row_gate) dgate_rows[r * D + j] = scalar_t(freq_gate_blend_dgate<acc_t>(d, acc_t(xr[j]), xh));
  }
  if (threadIdx.x == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

// dgate[j] = sum_r dy[r, j] * (xhat[r, j] - x[r, j]) over valid rows; one thread per column.
template <typename scalar_t>
__global__ void gate_grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                 const bool* __restrict__ valid, const at::opmath_type<scalar_t>* __restrict__ stats,
                                 scalar_t* __restrict__ dgate, int64_t rows, int64_t D) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= D) return;
  acc_t total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (valid != nullptr && !valid[r]) continue;
    const acc_t xv = acc_t(x[r * D + j]);
    total += freq_gate_blend_dgate<acc_t>(acc_t(dy[r * D + j]), xv, ln_normalise<acc_t>(xv, stats[2 * r], stats[2 * r + 1]));
  }
  dgate[j] = scalar_t(total);
}

at::Tensor freq_gate_blend_cuda(const at::Tensor& x, const at::Tensor& gate, const std::optional<at::Tensor>& valid) {
  check_freq_gate_blend(x, gate, valid);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = gate.contiguous();
  const at::Tensor vc = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(xc);
  const int64_t D = x.size(-1);
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  if (rows == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "freq_gate_blend_cuda", [&] {
    forward_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
        xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), vc.defined() ? vc.const_data_ptr<bool>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), D, gate.dim() > 1);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> freq_gate_blend_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const at::Tensor& gate,
                                                                 const std::optional<at::Tensor>& valid) {
  check_freq_gate_blend(x, gate, valid);
  check_freq_gate_blend_grad(grad_out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dyc = grad_out.contiguous(), xc = x.contiguous(), gc = gate.contiguous();
  const at::Tensor vc = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dgate = at::zeros_like(gc);
  const int64_t D = x.size(-1);
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  if (rows == 0) return {dx, dgate};
  const bool per_row = gate.dim() > 1;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "freq_gate_blend_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor stats = at::empty({rows, 2}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const bool* vptr = vc.defined() ? vc.const_data_ptr<bool>() : nullptr;
    backward_rows_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
        dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), vptr,
        dx.mutable_data_ptr<scalar_t>(), per_row ? dgate.mutable_data_ptr<scalar_t>() : nullptr,
        stats.mutable_data_ptr<acc_t>(), D, per_row);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!per_row) {
      const int blocks = static_cast<int>((D + kThreads - 1) / kThreads);
      gate_grad_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), vptr, stats.const_data_ptr<acc_t>(),
          dgate.mutable_data_ptr<scalar_t>(), rows, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, dgate};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CUDA, m) {
  m.impl("freq_gate_blend", &freq_gate_blend_cuda);
  m.impl("freq_gate_blend_backward", &freq_gate_blend_backward_cuda);
}

}  // namespace fremure
