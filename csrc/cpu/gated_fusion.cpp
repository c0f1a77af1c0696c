// CPU kernels of gated_fusion and its backward (METHOD.md 3.4).
//
// The gate Linear(2D + Dc -> D) is split by the column blocks of its weight, [W_h | W_t | W_q], so
// the [N, 2D + Dc] concatenation of the reference never exists:
//   z = [h | t] W_{h,t}^T  (one GEMM: h and t are written side by side into an [N, 2D] workspace)
//     + q W_q^T            (a GEMM for a per-row condition [N, Dc]; for one shared condition [Dc]
//                           a matrix-vector product folded into the bias once)
//     + bias.
// Everything else (LN0 of the three inputs, sigmoid / T, clamp, blend) runs in row loops around
// the GEMMs. The forward also returns the pre-clamp sigmoid, which the backward needs and would
// otherwise recompute with another GEMM; LN statistics are recomputed, not saved.
// Backward: dz (gradient of the logits) in one row pass, then
//   d[h|t] = dz [W_h | W_t],   dW = dz^T [h | t | q] written into column slices of one tensor,
//   dbias = sum_rows dz,        dq = dz W_q (per row) or (sum_rows dz) W_q (shared condition),
// and LN0 backward rows. float16/bfloat16 inputs run in float32 and are rounded at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/gated_fusion.h"

namespace fremure {
namespace {

constexpr int64_t kRowGrain = 4;  // rows of ~2k elements: a few per task is plenty

struct FusionShape {
  int64_t rows;
  int64_t dim;       // D
  int64_t cond_dim;  // Dc
  bool per_row_cond;
};

FusionShape check_gated_fusion(const char* op, const at::Tensor& head, const at::Tensor& tail, const at::Tensor& cond,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias, double temperature,
                               double lo, double hi) {
  check_floating(head, "head");
  TORCH_CHECK(head.dim() == 2, op, ": head must have shape [N, D], got ", head.sizes());
  check_same_device(head, tail, "head", "tail");
  check_same_device(head, cond, "head", "cond");
  check_same_device(head, weight, "head", "weight");
  check_same_dtype(head, tail, "head", "tail");
  check_same_dtype(head, cond, "head", "cond");
  check_same_dtype(head, weight, "head", "weight");
  const int64_t rows = head.size(0);
  const int64_t dim = head.size(1);
  TORCH_CHECK(dim >= 1, op, ": head must have at least one column (D >= 1), got ", head.sizes());
  TORCH_CHECK(tail.sizes() == head.sizes(), op, ": tail must have the shape of head ", head.sizes(), ", got ",
              tail.sizes());
  TORCH_CHECK(cond.dim() == 1 || cond.dim() == 2, op, ": cond must have shape [Dc] or [N, Dc], got ", cond.sizes());
  const bool per_row = cond.dim() == 2;
  TORCH_CHECK(!per_row || cond.size(0) == rows, op, ": cond must have ", rows, " rows like head, got ",
              cond.sizes());
  const int64_t cond_dim = cond.size(-1);
  TORCH_CHECK(cond_dim >= 1, op, ": cond must have at least one column (Dc >= 1), got ", cond.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == dim && weight.size(1) == 2 * dim + cond_dim, op,
              ": weight must have shape [D, 2D + Dc] = [", dim, ", ", 2 * dim + cond_dim, "], got ",
              weight.sizes());
  if (bias.has_value()) {
    check_same_device(head, *bias, "head", "bias");
    check_same_dtype(head, *bias, "head", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == dim, op, ": bias must have shape [D] = [", dim, "], got ",
                bias->sizes());
  }
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo >= 0 && lo <= hi && hi <= 1, op,
              ": lo and hi must satisfy 0 <= lo <= hi <= 1, got lo=", lo, ", hi=", hi);
  return {rows, dim, cond_dim, per_row};
}

bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor to_float(const at::Tensor& t) {
  return t.to(at::kFloat);
}

std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
}

// Mean and rstd of one row (two passes: the centred second moment is exact enough for float32).
template <typename scalar_t>
void row_moments(const scalar_t* x, int64_t n, scalar_t& mean, scalar_t& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += acc_t(x[j]);
  const acc_t m = sum / acc_t(n);
  acc_t sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t c = acc_t(x[j]) - m;
    sq += c * c;
  }
  mean = scalar_t(m);
  rstd = scalar_t(ln_rstd<acc_t>(sq / acc_t(n), acc_t(kLayerNormEps)));
}

// xhat = LN0(x) for one row; returns rstd.
template <typename scalar_t>
scalar_t normalise_row(const scalar_t* x, scalar_t* xhat, int64_t n) {
  scalar_t mean, rstd;
  row_moments(x, n, mean, rstd);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) xhat[j] = ln_normalise<scalar_t>(x[j], mean, rstd);
  return rstd;
}

// In-place LN0 backward of one row: g holds dL/dxhat on entry and dL/dx on exit.
template <typename scalar_t>
void ln_backward_row(scalar_t* g, const scalar_t* xhat, scalar_t rstd, int64_t n) {
  scalar_t s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    s1 += g[j];
    s2 += g[j] * xhat[j];
  }
  const scalar_t m1 = s1 / scalar_t(n), m2 = s2 / scalar_t(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) g[j] = ln_backward<scalar_t>(g[j], xhat[j], rstd, m1, m2);
}

// LN0 of every row of x [rows, n] into out (row stride out_stride); rstd per row if wanted.
template <typename scalar_t>
void normalise_rows(const scalar_t* x, scalar_t* out, int64_t rows, int64_t n, int64_t out_stride,
                    scalar_t* rstd = nullptr) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t rs = normalise_row(x + r * n, out + r * out_stride, n);
      if (rstd != nullptr) rstd[r] = rs;
    }
  });
}

// LN0 of head and tail rows side by side into the [N, 2D] workspace, in one parallel region.
template <typename scalar_t>
void normalise_pair_rows(const scalar_t* head, const scalar_t* tail, scalar_t* ht, int64_t rows, int64_t n,
                         scalar_t* rstd_head = nullptr, scalar_t* rstd_tail = nullptr) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t rh = normalise_row(head + r * n, ht + r * 2 * n, n);
      const scalar_t rt = normalise_row(tail + r * n, ht + r * 2 * n + n, n);
      if (rstd_head != nullptr) rstd_head[r] = rh;
      if (rstd_tail != nullptr) rstd_tail[r] = rt;
    }
  });
}

// Logits z [N, D] (without the bias/condition vector, which the row loops add) from the
// normalised [h | t] workspace and the normalised condition. Returns the per-column vector
// (bias and/or shared-condition term) or an undefined tensor when there is none.
at::Tensor gate_logits(const at::Tensor& ht, const at::Tensor& qn, const at::Tensor& w,
                       const std::optional<at::Tensor>& bias, const FusionShape& S, at::Tensor& z) {
  const at::Tensor w_ht = w.narrow(1, 0, 2 * S.dim);
  const at::Tensor w_q = w.narrow(1, 2 * S.dim, S.cond_dim);
  at::mm_out(z, ht, w_ht.t());
  at::Tensor column_term;
  if (S.per_row_cond) {
    z.addmm_(qn, w_q.t());
    if (bias.has_value()) column_term = bias->contiguous();
  } else {
    column_term = at::mv(w_q, qn);
    if (bias.has_value()) column_term.add_(*bias);
  }
  return column_term;
}

// s = sigmoid((z + c) / T) row by row; out (may alias z) = h + (1 - clamp(s)) (t - h) if wanted.
template <typename scalar_t>
void gate_rows(const scalar_t* z, const scalar_t* column_term, const scalar_t* ht, scalar_t* s_out, scalar_t* out,
               const FusionShape& S, double temperature, double lo, double hi) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = S.dim;
  const acc_t T = acc_t(temperature), l = acc_t(lo), u = acc_t(hi);
  at::parallel_for(0, S.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* zr = z + r * D;
      const scalar_t* h = ht + r * 2 * D;
      const scalar_t* t = h + D;
      scalar_t* sr = s_out + r * D;
      scalar_t* yr = out == nullptr ? nullptr : out + r * D;
      for (int64_t j = 0; j < D; ++j) {
        const acc_t logit = acc_t(zr[j]) + (column_term != nullptr ? acc_t(column_term[j]) : acc_t(0));
        const acc_t s = gated_fusion_sigmoid<acc_t>(logit, T);
        sr[j] = scalar_t(s);
        if (yr != nullptr) {
          const acc_t g = gated_fusion_clamp<acc_t>(s, l, u);
          yr[j] = scalar_t(gated_fusion_value<acc_t>(acc_t(h[j]), acc_t(t[j]), g));
        }
      }
    }
  });
}

// Normalised condition: [N, Dc] rows or one [Dc] vector; rstd per row (or one) if wanted.
template <typename scalar_t>
at::Tensor normalise_cond(const at::Tensor& cond, const FusionShape& S, scalar_t* rstd) {
  at::Tensor qn = at::empty_like(cond);
  const int64_t rows = S.per_row_cond ? S.rows : 1;
  normalise_rows<scalar_t>(cond.const_data_ptr<scalar_t>(), qn.mutable_data_ptr<scalar_t>(), rows, S.cond_dim,
                           S.cond_dim, rstd);
  return qn;
}

std::tuple<at::Tensor, at::Tensor> gated_fusion_cpu(const at::Tensor& head, const at::Tensor& tail,
                                                    const at::Tensor& cond, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, double temperature,
                                                    double lo, double hi) {
  const FusionShape S =
      check_gated_fusion("fremure.gated_fusion", head, tail, cond, weight, bias, temperature, lo, hi);
  if (is_half(head)) {
    auto [out, s] = gated_fusion_cpu(to_float(head), to_float(tail), to_float(cond), to_float(weight),
                                     to_float(bias), temperature, lo, hi);
    return {out.to(head.scalar_type()), s.to(head.scalar_type())};
  }
  const at::Tensor hc = head.contiguous(), tc = tail.contiguous(), cc = cond.contiguous(), wc = weight.contiguous();
  const int64_t N = S.rows, D = S.dim;
  at::Tensor ht = at::empty({N, 2 * D}, head.options());
  at::Tensor out = at::empty({N, D}, head.options());
  at::Tensor s = at::empty({N, D}, head.options());
  AT_DISPATCH_FLOATING_TYPES(head.scalar_type(), "gated_fusion_cpu", [&] {
    scalar_t* ht_p = ht.mutable_data_ptr<scalar_t>();
    normalise_pair_rows<scalar_t>(hc.const_data_ptr<scalar_t>(), tc.const_data_ptr<scalar_t>(), ht_p, N, D);
    const at::Tensor qn = normalise_cond<scalar_t>(cc, S, nullptr);
    const at::Tensor column_term = gate_logits(ht, qn, wc, bias, S, out);
    // The logits live in `out` and are replaced element by element by the blend.
    gate_rows<scalar_t>(out.const_data_ptr<scalar_t>(),
                        column_term.defined() ? column_term.const_data_ptr<scalar_t>() : nullptr, ht_p,
                        s.mutable_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), S, temperature, lo, hi);
  });
  return {out, s};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_fusion_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& head, const at::Tensor& tail, const at::Tensor& cond,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gate_sigmoid,
    double temperature, double lo, double hi) {
  const char* op = "fremure.gated_fusion_backward";
  const FusionShape S = check_gated_fusion(op, head, tail, cond, weight, bias, temperature, lo, hi);
  check_same_device(head, grad_out, "head", "grad_out");
  check_same_dtype(head, grad_out, "head", "grad_out");
  TORCH_CHECK(grad_out.sizes() == head.sizes(), op, ": grad_out must have the shape of head ", head.sizes(),
              ", got ", grad_out.sizes());
  if (gate_sigmoid.has_value()) {
    check_same_device(head, *gate_sigmoid, "head", "gate_sigmoid");
    check_same_dtype(head, *gate_sigmoid, "head", "gate_sigmoid");
    TORCH_CHECK(gate_sigmoid->sizes() == head.sizes(), op, ": gate_sigmoid must have the shape of head ",
                head.sizes(), ", got ", gate_sigmoid->sizes());
  }
  if (is_half(head)) {
    auto grads = gated_fusion_backward_cpu(to_float(grad_out), to_float(head), to_float(tail), to_float(cond),
                                           to_float(weight), to_float(bias), to_float(gate_sigmoid), temperature,
                                           lo, hi);
    const auto dt = head.scalar_type();
    return {std::get<0>(grads).to(dt), std::get<1>(grads).to(dt), std::get<2>(grads).to(dt),
            std::get<3>(grads).to(dt), std::get<4>(grads).to(dt)};
  }
  const at::Tensor dyc = grad_out.contiguous(), hc = head.contiguous(), tc = tail.contiguous(),
                   cc = cond.contiguous(), wc = weight.contiguous();
  const int64_t N = S.rows, D = S.dim, Dc = S.cond_dim;
  const auto opts = head.options();
  at::Tensor ht = at::empty({N, 2 * D}, opts);
  at::Tensor dz = at::empty({N, D}, opts);
  at::Tensor rstd_ht = at::empty({2, N}, opts);
  at::Tensor rstd_q = at::empty({S.per_row_cond ? N : 1}, opts);
  at::Tensor grad_head = at::empty({N, D}, opts);
  at::Tensor grad_tail = at::empty({N, D}, opts);
  at::Tensor grad_weight = at::empty({D, 2 * D + Dc}, opts);
  at::Tensor grad_cond;
  at::Tensor grad_bias;
  const at::Tensor w_q = wc.narrow(1, 2 * D, Dc);

  AT_DISPATCH_FLOATING_TYPES(head.scalar_type(), "gated_fusion_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t T = acc_t(temperature), l = acc_t(lo), u = acc_t(hi);
    const scalar_t* dy = dyc.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* tp = tc.const_data_ptr<scalar_t>();
    scalar_t* ht_p = ht.mutable_data_ptr<scalar_t>();
    scalar_t* dz_p = dz.mutable_data_ptr<scalar_t>();
    scalar_t* rstd_h = rstd_ht.mutable_data_ptr<scalar_t>();
    scalar_t* rstd_t = rstd_h + N;
    const at::Tensor qn = normalise_cond<scalar_t>(cc, S, rstd_q.mutable_data_ptr<scalar_t>());

    at::Tensor s_tensor;
    if (gate_sigmoid.has_value()) {
      s_tensor = gate_sigmoid->contiguous();
    } else {
      // No saved gate: normalise first, then repeat the forward GEMM.
      normalise_pair_rows<scalar_t>(hp, tp, ht_p, N, D, rstd_h, rstd_t);
      s_tensor = at::empty({N, D}, opts);
      const at::Tensor column_term = gate_logits(ht, qn, wc, bias, S, dz);  // dz as scratch for z
      gate_rows<scalar_t>(dz_p, column_term.defined() ? column_term.const_data_ptr<scalar_t>() : nullptr, ht_p,
                          s_tensor.mutable_data_ptr<scalar_t>(), nullptr, S, temperature, lo, hi);
    }
    const scalar_t* sp = s_tensor.const_data_ptr<scalar_t>();
    const bool normalised = !gate_sigmoid.has_value();

    // dz per row (normalising head and tail on the way when that was not done above), and its
    // column sums (dbias, and the shared condition's gradient) from per-task partial rows.
    const int64_t blocks = (N + kRowGrain - 1) / kRowGrain;
    std::vector<acc_t> partial(static_cast<size_t>(blocks * D), acc_t(0));
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      acc_t* col = partial.data() + (begin / kRowGrain) * D;
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* h = ht_p + r * 2 * D;
        scalar_t* t = h + D;
        if (!normalised) {
          rstd_h[r] = normalise_row(hp + r * D, h, D);
          rstd_t[r] = normalise_row(tp + r * D, t, D);
        }
        const scalar_t* dyr = dy + r * D;
        const scalar_t* sr = sp + r * D;
        scalar_t* dzr = dz_p + r * D;
        for (int64_t j = 0; j < D; ++j) {
          const acc_t v = gated_fusion_dlogit<acc_t>(acc_t(dyr[j]), acc_t(h[j]), acc_t(t[j]), acc_t(sr[j]), l, u, T);
          dzr[j] = scalar_t(v);
          col[j] += v;
        }
      }
    });
    at::Tensor dz_sum = at::empty({D}, opts);
    scalar_t* dz_sum_p = dz_sum.mutable_data_ptr<scalar_t>();
    for (int64_t j = 0; j < D; ++j) {
      acc_t total = 0;
      for (int64_t b = 0; b < blocks; ++b) total += partial[b * D + j];
      dz_sum_p[j] = scalar_t(total);
    }

    // GEMMs: weight gradient into column slices of one tensor, input gradients of h and t.
    at::Tensor grad_w_ht = grad_weight.narrow(1, 0, 2 * D);
    at::Tensor grad_w_q = grad_weight.narrow(1, 2 * D, Dc);
    at::mm_out(grad_w_ht, dz.t(), ht);
    at::Tensor dq;
    if (S.per_row_cond) {
      at::mm_out(grad_w_q, dz.t(), qn);
      dq = at::mm(dz, w_q);
    } else {
      grad_w_q.copy_(at::outer(dz_sum, qn));
      dq = at::mv(w_q.t(), dz_sum);
    }
    grad_bias = bias.has_value() ? dz_sum : at::empty({0}, opts);
    // One GEMM for both branches: dz [N, D] x [W_h | W_t] [D, 2D] -> d[h | t] [N, 2D].
    const at::Tensor dht = at::mm(dz, wc.narrow(1, 0, 2 * D));

    // Add the direct blend terms, then LN0 backward, row by row into grad_head / grad_tail.
    const scalar_t* dht_p = dht.const_data_ptr<scalar_t>();
    scalar_t* gh = grad_head.mutable_data_ptr<scalar_t>();
    scalar_t* gt = grad_tail.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* dyr = dy + r * D;
        const scalar_t* sr = sp + r * D;
        const scalar_t* dhr = dht_p + r * 2 * D;
        const scalar_t* dtr = dhr + D;
        scalar_t* ghr = gh + r * D;
        scalar_t* gtr = gt + r * D;
        for (int64_t j = 0; j < D; ++j) {
          const acc_t d = acc_t(dyr[j]);
          const acc_t g = gated_fusion_clamp<acc_t>(acc_t(sr[j]), l, u);
          ghr[j] = scalar_t(acc_t(dhr[j]) + gated_fusion_dh_direct<acc_t>(d, g));
          gtr[j] = scalar_t(acc_t(dtr[j]) + gated_fusion_dt_direct<acc_t>(d, g));
        }
        ln_backward_row(ghr, ht_p + r * 2 * D, rstd_h[r], D);
        ln_backward_row(gtr, ht_p + r * 2 * D + D, rstd_t[r], D);
      }
    });

    // Condition: LN0 backward of dq (rows, or the one shared vector).
    grad_cond = dq.contiguous();
    const int64_t q_rows = S.per_row_cond ? N : 1;
    scalar_t* gq = grad_cond.mutable_data_ptr<scalar_t>();
    const scalar_t* qp = qn.const_data_ptr<scalar_t>();
    const scalar_t* rq = rstd_q.const_data_ptr<scalar_t>();
    at::parallel_for(0, q_rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) ln_backward_row(gq + r * Dc, qp + r * Dc, rq[r], Dc);
    });
  });
  return {grad_head, grad_tail, grad_cond, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("gated_fusion", &gated_fusion_cpu);
  m.impl("gated_fusion_backward", &gated_fusion_backward_cpu);
}

}  // namespace fremure
