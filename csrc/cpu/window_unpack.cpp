// CPU kernels of window_unpack (packed window rows -> source rows, combining the copies of a row by
// "latter" / "mean" / "weighted" / "sum") and of its backward (gradients of y and of the weights).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/window.h"
#include "cpu/window_rows.h"

namespace fremure {
namespace {

using window_cpu::InverseIndex;

at::Tensor window_unpack_cpu(const at::Tensor& y, const at::Tensor& src_index, const std::optional<at::Tensor>& weights,
                             int64_t num_rows, c10::string_view mode_name) {
  const UnpackMode mode = window_cpu::parse_mode(mode_name, "window_unpack");
  window_cpu::check_packed(y, src_index, num_rows, "window_unpack", "y");
  const bool weighted = mode == UnpackMode::kWeighted;
  if (weighted) {
    window_cpu::check_weights(y, src_index, weights, "window_unpack");
    window_cpu::check_weight_values(*weights, "window_unpack");
  }
  const at::Tensor sc = src_index.contiguous();
  const int64_t* src = sc.const_data_ptr<int64_t>();
  const int64_t count = sc.numel();
  window_cpu::check_src_values(src, count, num_rows, "window_unpack");
  const int64_t dim = y.size(-1);
  const at::Tensor yc = y.contiguous();
  const at::Tensor wc = weighted ? weights->contiguous() : at::Tensor();
  const InverseIndex inv = window_cpu::build_inverse(src, count, num_rows);
  at::Tensor out = at::empty({num_rows, dim}, y.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "window_unpack_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> coef;       // per packed row (weighted)
    std::vector<acc_t> row_scale;  // per source row (mean, weighted)
    if (mode == UnpackMode::kMean || weighted) {
      row_scale.resize(num_rows);
      if (weighted) coef.assign(count, acc_t(0));
      const scalar_t* w = weighted ? wc.const_data_ptr<scalar_t>() : nullptr;
      for (int64_t r = 0; r < num_rows; ++r) {
        acc_t total = 0;
        if (weighted) {
          for (int64_t k = inv.ptr[r]; k < inv.ptr[r + 1]; ++k) {
            const int64_t p = inv.pos[k];
            coef[p] = acc_t(w[p]);
            total += coef[p];
          }
        }
        row_scale[r] = unpack_row_scale<acc_t>(mode, inv.ptr[r + 1] - inv.ptr[r], total);
      }
    }
    window_cpu::reduce_rows<scalar_t>(yc.const_data_ptr<scalar_t>(), inv, weighted ? coef.data() : nullptr,
                                      row_scale.empty() ? nullptr : row_scale.data(), mode == UnpackMode::kLatter,
                                      num_rows, dim, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// grad_y[p] = scale[p] * grad_out[src[p]], with scale = 1 for the first copy and 0 for the others
// ("latter"), 1/count ("mean"), 1 ("sum"), w[p]/W[src[p]] ("weighted"). In mode "weighted",
// grad_weights[p] = (g . y[p] - g . out) / W with g = grad_out[src[p]] and out the forward row.
// y's values are read only in mode "weighted" (the other modes need its shape alone).
std::tuple<at::Tensor, at::Tensor> window_unpack_backward_cpu(const at::Tensor& grad_out, const at::Tensor& y,
                                                              const at::Tensor& src_index,
                                                              const std::optional<at::Tensor>& weights,
                                                              c10::string_view mode_name) {
  const UnpackMode mode = window_cpu::check_unpack_backward(grad_out, y, src_index, weights, mode_name);
  const int64_t num_rows = grad_out.size(0);
  const int64_t dim = y.size(-1);
  const bool weighted = mode == UnpackMode::kWeighted;
  if (weighted) window_cpu::check_weight_values(*weights, "window_unpack_backward");
  const at::Tensor sc = src_index.contiguous();
  const int64_t* src = sc.const_data_ptr<int64_t>();
  const int64_t count = sc.numel();
  window_cpu::check_src_values(src, count, num_rows, "window_unpack_backward");
  const at::Tensor gc = grad_out.contiguous();
  at::Tensor grad_y = at::empty(y.sizes(), grad_out.options());
  at::Tensor grad_w = weighted ? at::empty(weights->sizes(), grad_out.options()) : at::empty({0}, grad_out.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "window_unpack_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    std::vector<acc_t> scale;
    if (mode == UnpackMode::kLatter) {
      scale.assign(count, acc_t(0));
      std::vector<char> seen(num_rows, 0);
      for (int64_t p = 0; p < count; ++p) {
        if (src[p] >= 0 && !seen[src[p]]) {
          seen[src[p]] = 1;
          scale[p] = acc_t(1);
        }
      }
    } else if (mode == UnpackMode::kMean) {
      std::vector<int64_t> copies(num_rows, 0);
      for (int64_t p = 0; p < count; ++p) {
        if (src[p] >= 0) ++copies[src[p]];
      }
      scale.assign(count, acc_t(0));
      for (int64_t p = 0; p < count; ++p) {
        if (src[p] >= 0) scale[p] = unpack_row_scale<acc_t>(mode, copies[src[p]], acc_t(0));
      }
    } else if (weighted) {
      const at::Tensor wc = weights->contiguous();
      const at::Tensor yc = y.contiguous();
      const scalar_t* w = wc.const_data_ptr<scalar_t>();
      const scalar_t* yp = yc.const_data_ptr<scalar_t>();
      std::vector<acc_t> inv_total(num_rows, acc_t(0));
      {
        std::vector<acc_t> total(num_rows, acc_t(0));
        for (int64_t p = 0; p < count; ++p) {
          if (src[p] >= 0) total[src[p]] += acc_t(w[p]);
        }
        for (int64_t r = 0; r < num_rows; ++r) inv_total[r] = unpack_row_scale<acc_t>(mode, 0, total[r]);
      }
      scale.assign(count, acc_t(0));
      std::vector<acc_t> dots(count, acc_t(0));  // g[src[p]] . y[p]
      at::parallel_for(0, count, window_cpu::row_grain(dim), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          if (src[p] < 0) continue;
          scale[p] = acc_t(w[p]) * inv_total[src[p]];
          const scalar_t* gr = g + src[p] * dim;
          const scalar_t* yr = yp + p * dim;
          acc_t d = 0;
          for (int64_t j = 0; j < dim; ++j) d += acc_t(gr[j]) * acc_t(yr[j]);
          dots[p] = d;
        }
      });
      // g . out_r = sum over the copies of (w[p] / W) * (g . y[p]), in packed order.
      std::vector<acc_t> dot_out(num_rows, acc_t(0));
      for (int64_t p = 0; p < count; ++p) {
        if (src[p] >= 0) dot_out[src[p]] += scale[p] * dots[p];
      }
      scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();
      for (int64_t p = 0; p < count; ++p) {
        gw[p] = src[p] < 0 ? scalar_t(0)
                           : scalar_t(unpack_weight_grad<acc_t>(dots[p], dot_out[src[p]], inv_total[src[p]]));
      }
    }
    window_cpu::gather_rows_scaled<scalar_t>(g, src, scale.empty() ? nullptr : scale.data(), count, dim,
                                             grad_y.mutable_data_ptr<scalar_t>());
  });
  return {grad_y, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("window_unpack", &window_unpack_cpu);
  m.impl("window_unpack_backward", &window_unpack_backward_cpu);
}

}  // namespace fremure
