// CPU kernels of freq_gate_blend and its backward: one row per task, two passes per row
// (moments, then the blend), accumulation in float32 for half types and in the input type else.
#include <algorithm>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/freq_gate_blend.h"
#include "cpu/row_reduce.h"

namespace fremure {
namespace {

// Mean and 1/std (biased variance, LN0's eps) of one row, two passes for accuracy.
template <typename scalar_t, typename acc_t>
inline void row_moments(const scalar_t* xr, int64_t D, acc_t& mean, acc_t& rstd) {
  mean = lane_sum<acc_t>(D, [&](int64_t j) { return acc_t(xr[j]); }) / acc_t(D);
  const acc_t m = mean;
  const acc_t var = lane_sum<acc_t>(D, [&](int64_t j) {
    const acc_t c = acc_t(xr[j]) - m;
    return c * c;
  }) / acc_t(D);
  rstd = ln_rstd<acc_t>(var, acc_t(kLayerNormEps));
}

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* gate, const bool* valid, scalar_t* out, const GateLayout& L) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = L.dim;
  at::parallel_for(0, L.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * D;
      scalar_t* yr = out + r * D;
      if (valid != nullptr && !valid[r]) {
        for (int64_t j = 0; j < D; ++j) yr[j] = xr[j];
        continue;
      }
      const scalar_t* gr = L.per_row_gate ? gate + r * D : gate;
      acc_t mean, rstd;
      row_moments<scalar_t, acc_t>(xr, D, mean, rstd);
      for (int64_t j = 0; j < D; ++j) {
        const acc_t xv = acc_t(xr[j]);
        yr[j] = scalar_t(freq_gate_blend_value<acc_t>(xv, acc_t(gr[j]), ln_normalise<acc_t>(xv, mean, rstd)));
      }
    }
  });
}

// Backward over rows. grad_gate is either per row (written in place) or one [D] vector, summed
// from per-chunk partials so threads never share an accumulator.
template <typename scalar_t, bool kPerRowGate>
void backward_rows(const scalar_t* dy, const scalar_t* x, const scalar_t* gate, const bool* valid, scalar_t* dx,
                   scalar_t* dgate, const GateLayout& L) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = L.dim;
  const int64_t grain = 16;
  const int64_t chunks = L.per_row_gate ? 0 : (L.rows + grain - 1) / grain;
  std::vector<acc_t> partial(static_cast<size_t>(chunks * D), acc_t(0));
  // Parallel over fixed chunks of `grain` rows (not over rows): each chunk owns one partial row
  // whatever split at::parallel_for picks, so grad_gate is bitwise reproducible for any thread count.
  const int64_t tasks = (L.rows + grain - 1) / grain;
  at::parallel_for(0, tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<acc_t> xhat(D);
    for (int64_t r = task_begin * grain; r < std::min(task_end * grain, L.rows); ++r) {
      const scalar_t* xr = x + r * D;
      const scalar_t* dyr = dy + r * D;
      scalar_t* dxr = dx + r * D;
      if (valid != nullptr && !valid[r]) {
        for (int64_t j = 0; j < D; ++j) dxr[j] = dyr[j];
        if (L.per_row_gate) {
          for (int64_t j = 0; j < D; ++j) dgate[r * D + j] = scalar_t(0);
        }
        continue;
      }
      const scalar_t* gr = L.per_row_gate ? gate + r * D : gate;
      acc_t mean, rstd;
      row_moments<scalar_t, acc_t>(xr, D, mean, rstd);
      for (int64_t j = 0; j < D; ++j) xhat[j] = ln_normalise<acc_t>(acc_t(xr[j]), mean, rstd);
      acc_t sum_dxhat, sum_dxhat_xhat;
      lane_sum2<acc_t>(D, [&](int64_t j, acc_t& a, acc_t& b) {
        const acc_t dxh = blend_grad_to<acc_t>(acc_t(dyr[j]), acc_t(gr[j]));
        a += dxh;
        b += dxh * xhat[j];
      }, sum_dxhat, sum_dxhat_xhat);
      const acc_t m1 = sum_dxhat / acc_t(D);
      const acc_t m2 = sum_dxhat_xhat / acc_t(D);
      acc_t* part = L.per_row_gate ? nullptr : partial.data() + (r / grain) * D;
      for (int64_t j = 0; j < D; ++j) {
        const acc_t d = acc_t(dyr[j]);
        const acc_t g = acc_t(gr[j]);
        const acc_t dxh = blend_grad_to<acc_t>(d, g);
        dxr[j] = scalar_t(blend_grad_from<acc_t>(d, g) + ln_backward<acc_t>(dxh, xhat[j], rstd, m1, m2));
        const acc_t dg = freq_gate_blend_dgate<acc_t>(d, acc_t(xr[j]), xhat[j]);
        if constexpr (kPerRowGate) {
          dgate[r * D + j] = scalar_t(dg);
        } else {
          part[j] += dg;
        }
      }
    }
  });
  if (!L.per_row_gate) {
    for (int64_t j = 0; j < D; ++j) {
      acc_t total = 0;
      for (int64_t c = 0; c < chunks; ++c) total += partial[c * D + j];
      dgate[j] = scalar_t(total);
    }
  }
}

at::Tensor freq_gate_blend_cpu(const at::Tensor& x, const at::Tensor& gate, const std::optional<at::Tensor>& valid) {
  const GateLayout L = check_freq_gate_blend(x, gate, valid);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = gate.contiguous();
  const at::Tensor vc = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "freq_gate_blend_cpu", [&] {
    forward_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(),
                           vc.defined() ? vc.const_data_ptr<bool>() : nullptr, out.mutable_data_ptr<scalar_t>(), L);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> freq_gate_blend_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                const at::Tensor& gate,
                                                                const std::optional<at::Tensor>& valid) {
  const GateLayout L = check_freq_gate_blend(x, gate, valid);
  check_freq_gate_blend_grad(grad_out, x);
  const at::Tensor dyc = grad_out.contiguous();
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = gate.contiguous();
  const at::Tensor vc = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dgate = at::empty_like(gc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "freq_gate_blend_backward_cpu", [&] {
    const auto run = L.per_row_gate ? &backward_rows<scalar_t, true> : &backward_rows<scalar_t, false>;
    run(dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(),
        vc.defined() ? vc.const_data_ptr<bool>() : nullptr, dx.mutable_data_ptr<scalar_t>(),
        dgate.mutable_data_ptr<scalar_t>(), L);
  });
  return {dx, dgate};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("freq_gate_blend", &freq_gate_blend_cpu);
  m.impl("freq_gate_blend_backward", &freq_gate_blend_backward_cpu);
}

}  // namespace fremure
