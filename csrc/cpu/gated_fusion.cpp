// CPU kernels of gated_fusion and its backward (docs/method.md 3.4).
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
// Backward: dz (gradient of the logits) and its column sums in one row pass, then
//   d[h|t] = dz [W_h | W_t],   dW = dz^T [h | t | q] written into column slices of one tensor,
//   dbias = sum_rows dz,        dq = dz W_q (per row) or (sum_rows dz) W_q (shared condition),
// and LN0 backward rows. float16/bfloat16 inputs run in float32 and are rounded at the end.
//
// The row loops are written to auto-vectorise (no calls, no branches in the inner loops; float
// exp is fast_math's polynomial), and are compiled once per vector ISA (cpu/cpu_isa.h); the op, once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/fast_math.h"
#include "cpu/cpu_isa.h"
#include "cpu/gated_fusion.h"

#if defined(__GNUC__)
#define GF_INLINE inline __attribute__((always_inline))
#else
#define GF_INLINE inline
#endif

namespace fremure {
namespace gated_fusion_detail {

struct FusionShape {
  int64_t rows;
  int64_t dim;       // D
  int64_t cond_dim;  // Dc
  bool per_row_cond;
};

template <typename T>
struct NormArgs {
  const T* x;      // [rows, n] (or [rows, n] head and tail when pair)
  const T* x2;     // tail, or nullptr
  T* out;          // [rows, out_stride]
  T* rstd;         // [rows] or nullptr
  T* rstd2;        // [rows] or nullptr (tail)
  int64_t n;
  int64_t out_stride;
};

template <typename T>
struct GateArgs {
  T* z;             // [N, D] logits without the column term; the blend replaces them if write_out
  const T* column;  // [D] bias + shared-condition term (zeros if none)
  const T* ht;      // [N, 2D] normalised head | tail
  T* s;             // [N, D] pre-clamp sigmoid (out)
  int64_t dim;
  T temperature, lo, hi;
  bool write_out;
};

template <typename T>
struct DlogitArgs {
  const T *dy, *s;       // [N, D] each: grad_out, pre-clamp sigmoid
  const T *head, *tail;  // raw rows, normalised here when normalise
  T* ht;                 // [N, 2D] normalised head | tail (in, or out when normalise)
  T *rstd_h, *rstd_t;    // [N] each (out when normalise)
  T* dz;                 // [N, D] out
  T* column_sums;   // [chunks, D] per-chunk partial sums of dz
  int64_t dim;
  int64_t chunks;   // rows are split into this many contiguous chunks, one partial row each
  int64_t rows;
  T temperature, lo, hi;
  bool normalise;
};

template <typename T>
struct LnGradArgs {
  const T* dy;      // [N, D]
  const T* s;       // [N, D]
  const T* dht;     // [N, 2D] dz [W_h | W_t]
  const T* ht;      // [N, 2D]
  const T* rstd_h;  // [N]
  const T* rstd_t;
  T* grad_head;     // [N, D] out
  T* grad_tail;
  int64_t dim;
  T lo, hi;
};

template <typename T>
struct RowKernels {
  void (*normalise)(const NormArgs<T>&, int64_t, int64_t);
  void (*gate)(const GateArgs<T>&, int64_t, int64_t);
  void (*dlogit)(const DlogitArgs<T>&, int64_t, int64_t);
  void (*ln_grad)(const LnGradArgs<T>&, int64_t, int64_t);
};
template <typename T>
inline DispatchStub<RowKernels<T>> row_kernels;

}  // namespace gated_fusion_detail
using namespace gated_fusion_detail;

FREMURE_ISA_KERNELS_BEGIN

// ---------------------------------------------------------------------------------------------
// Per-element helpers the vectoriser can see through.

template <typename T>
GF_INLINE T sigmoid_poly(T z, T temperature) {
  return T(1) / (T(1) + fm::exp(-(z / temperature)));
}

// ---------------------------------------------------------------------------------------------
// Row kernels over [begin, end): the entries of the stub.

// xhat = LN0(x) for one row; returns rstd. Two passes: the centred second moment.
template <typename T>
GF_INLINE T normalise_row(const T* __restrict x, T* __restrict xhat, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += x[j];
  const T mean = sum / T(n);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const T c = x[j] - mean;
    sq += c * c;
  }
  const T rstd = ln_rstd<T>(sq / T(n), T(kLayerNormEps));
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) xhat[j] = ln_normalise<T>(x[j], mean, rstd);
  return rstd;
}

template <typename T>
void normalise_impl(const NormArgs<T>& a, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T rs = normalise_row(a.x + r * a.n, a.out + r * a.out_stride, a.n);
    if (a.rstd != nullptr) a.rstd[r] = rs;
    if (a.x2 != nullptr) {
      const T rs2 = normalise_row(a.x2 + r * a.n, a.out + r * a.out_stride + a.n, a.n);
      if (a.rstd2 != nullptr) a.rstd2[r] = rs2;
    }
  }
}

// s = sigmoid((z + c) / T); z is replaced by the blend h + (1 - clamp(s)) (t - h) if kWriteOut.
template <typename T, bool kWriteOut>
GF_INLINE void gate_row(T* __restrict z, const T* __restrict c, const T* __restrict h, const T* __restrict t,
                        T* __restrict s, int64_t n, T temperature, T lo, T hi) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T sj = sigmoid_poly<T>(z[j] + c[j], temperature);
    s[j] = sj;
    if constexpr (kWriteOut) z[j] = gated_fusion_value<T>(h[j], t[j], gated_fusion_clamp<T>(sj, lo, hi));
  }
}

template <typename T>
void gate_impl(const GateArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t D = a.dim;
  for (int64_t r = begin; r < end; ++r) {
    const T* h = a.ht + r * 2 * D;
    if (a.write_out) {
      gate_row<T, true>(a.z + r * D, a.column, h, h + D, a.s + r * D, D, a.temperature, a.lo, a.hi);
    } else {
      gate_row<T, false>(a.z + r * D, a.column, h, h + D, a.s + r * D, D, a.temperature, a.lo, a.hi);
    }
  }
}

template <typename T>
GF_INLINE void dlogit_row(const T* __restrict dy, const T* __restrict h, const T* __restrict t,
                          const T* __restrict s, T* __restrict dz, T* __restrict col, int64_t n, T lo, T hi,
                          T temperature) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T v = gated_fusion_dlogit<T>(dy[j], h[j], t[j], s[j], lo, hi, temperature);
    dz[j] = v;
    col[j] += v;
  }
}

template <typename T>
GF_INLINE void dlogit_chunk(const DlogitArgs<T>& a, int64_t begin, int64_t end, T* col) {
  const int64_t D = a.dim;
  for (int64_t r = begin; r < end; ++r) {
    T* h = a.ht + r * 2 * D;
    if (a.normalise) {
      a.rstd_h[r] = normalise_row(a.head + r * D, h, D);
      a.rstd_t[r] = normalise_row(a.tail + r * D, h + D, D);
    }
    dlogit_row<T>(a.dy + r * D, h, h + D, a.s + r * D, a.dz + r * D, col, D, a.lo, a.hi, a.temperature);
  }
}

// Runs over chunks [chunk_begin, chunk_end) of rows, each with its own partial column sums.
template <typename T>
void dlogit_impl(const DlogitArgs<T>& a, int64_t chunk_begin, int64_t chunk_end) {
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t rows = a.rows;
    dlogit_chunk(a, c * rows / a.chunks, (c + 1) * rows / a.chunks, a.column_sums + c * a.dim);
  }
}

// In-place LN0 backward of one row: g holds dL/dxhat on entry and dL/dx on exit.
template <typename T>
GF_INLINE void ln_backward_row(T* __restrict g, const T* __restrict xhat, T rstd, int64_t n) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    s1 += g[j];
    s2 += g[j] * xhat[j];
  }
  const T m1 = s1 / T(n), m2 = s2 / T(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) g[j] = ln_backward<T>(g[j], xhat[j], rstd, m1, m2);
}

// dL/dh and dL/dt (before LN0 backward): the GEMM part plus the direct blend terms.
template <typename T>
GF_INLINE void blend_grad_row(const T* __restrict dy, const T* __restrict s, const T* __restrict dh,
                              const T* __restrict dt, T* __restrict gh, T* __restrict gt, int64_t n, T lo, T hi) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T g = gated_fusion_clamp<T>(s[j], lo, hi);
    gh[j] = dh[j] + blend_grad_to<T>(dy[j], g);
    gt[j] = dt[j] + blend_grad_from<T>(dy[j], g);
  }
}

template <typename T>
void ln_grad_impl(const LnGradArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t D = a.dim;
  for (int64_t r = begin; r < end; ++r) {
    T* gh = a.grad_head + r * D;
    T* gt = a.grad_tail + r * D;
    const T* dh = a.dht + r * 2 * D;
    blend_grad_row<T>(a.dy + r * D, a.s + r * D, dh, dh + D, gh, gt, D, a.lo, a.hi);
    ln_backward_row(gh, a.ht + r * 2 * D, a.rstd_h[r], D);
    ln_backward_row(gt, a.ht + r * 2 * D + D, a.rstd_t[r], D);
  }
}

template <typename T>
constexpr RowKernels<T> kRowKernels{&normalise_impl<T>, &gate_impl<T>, &dlogit_impl<T>, &ln_grad_impl<T>};
FREMURE_REGISTER_KERNELS(row_kernels<float>, kRowKernels<float>);
FREMURE_REGISTER_KERNELS(row_kernels<double>, kRowKernels<double>);
FREMURE_ISA_KERNELS_END

#if FREMURE_CPU_BASELINE
namespace {

// Rows per parallel task: at least ATen's elementwise grain (32k elements) of work, so that small
// batches do not pay for a parallel region that saves less than it costs.
int64_t row_grain(int64_t row_elements) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, row_elements));
}

FusionShape check_gated_fusion(const char* op, const at::Tensor& head, const at::Tensor& tail, const at::Tensor& cond,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias, double temperature,
                               double lo, double hi) {
  check_floating(head, "head");
  TORCH_CHECK_VALUE(head.dim() == 2, op, ": head must have shape [N, D], got ", head.sizes());
  check_like(head, tail, "head", "tail");
  check_like(head, cond, "head", "cond");
  check_like(head, weight, "head", "weight");
  const int64_t rows = head.size(0);
  const int64_t dim = head.size(1);
  TORCH_CHECK_VALUE(dim >= 1, op, ": head must have at least one column (D >= 1), got ", head.sizes());
  TORCH_CHECK_VALUE(tail.sizes() == head.sizes(), op, ": tail must have the shape of head ", head.sizes(), ", got ",
                    tail.sizes());
  TORCH_CHECK_VALUE(cond.dim() == 1 || cond.dim() == 2, op, ": cond must have shape [Dc] or [N, Dc], got ",
                    cond.sizes());
  const bool per_row = cond.dim() == 2;
  TORCH_CHECK_VALUE(!per_row || cond.size(0) == rows, op, ": cond must have ", rows, " rows like head, got ",
                    cond.sizes());
  const int64_t cond_dim = cond.size(-1);
  TORCH_CHECK_VALUE(cond_dim >= 1, op, ": cond must have at least one column (Dc >= 1), got ", cond.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == dim && weight.size(1) == 2 * dim + cond_dim, op,
                    ": weight must have shape [D, 2D + Dc] = [", dim, ", ", 2 * dim + cond_dim, "], got ",
                    weight.sizes());
  if (bias.has_value()) {
    check_like(head, *bias, "head", "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == dim, op, ": bias must have shape [D] = [", dim, "], got ",
                      bias->sizes());
  }
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
                    temperature);
  TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi) && lo >= 0 && lo <= hi && hi <= 1, op,
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

template <typename Args>
void parallel_rows(void (*kernel)(const Args&, int64_t, int64_t), const Args& args, int64_t rows,
                   int64_t row_elements) {
  at::parallel_for(0, rows, row_grain(row_elements),
                   [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

// ---------------------------------------------------------------------------------------------
// Tensor-level steps shared by forward and backward.

// LN0 of head and tail into the [N, 2D] workspace (one parallel region); rstd per row if wanted.
template <typename T>
void normalise_head_tail(const at::Tensor& head, const at::Tensor& tail, at::Tensor& ht, T* rstd_h, T* rstd_t) {
  const int64_t N = head.size(0), D = head.size(1);
  const NormArgs<T> args{head.const_data_ptr<T>(), tail.const_data_ptr<T>(), ht.mutable_data_ptr<T>(),
                         rstd_h, rstd_t, D, 2 * D};
  parallel_rows(row_kernels<T>().normalise, args, N, 2 * D);
}

// Normalised condition: [N, Dc] rows or one [Dc] vector; rstd per row (or the one) if wanted.
template <typename T>
at::Tensor normalise_cond(const at::Tensor& cond, const FusionShape& S, T* rstd) {
  at::Tensor qn = at::empty_like(cond);
  const NormArgs<T> args{cond.const_data_ptr<T>(), nullptr, qn.mutable_data_ptr<T>(), rstd, nullptr,
                         S.cond_dim, S.cond_dim};
  parallel_rows(row_kernels<T>().normalise, args, S.per_row_cond ? S.rows : 1, S.cond_dim);
  return qn;
}

// Logits z [N, D] without the per-column term, which is returned ([D]: bias plus the shared
// condition's W_q q, zeros when there is neither) for the row loops to add.
at::Tensor gate_logits(const at::Tensor& ht, const at::Tensor& qn, const at::Tensor& w,
                       const std::optional<at::Tensor>& bias, const FusionShape& S, at::Tensor& z) {
  const at::Tensor w_q = w.narrow(1, 2 * S.dim, S.cond_dim);
  at::mm_out(z, ht, w.narrow(1, 0, 2 * S.dim).t());
  if (S.per_row_cond) {
    z.addmm_(qn, w_q.t());
    return bias.has_value() ? bias->contiguous() : at::zeros({S.dim}, ht.options());
  }
  at::Tensor column = at::mv(w_q, qn);
  if (bias.has_value()) column.add_(*bias);
  return column;
}

template <typename T>
void gate(at::Tensor& z, const at::Tensor& column, const at::Tensor& ht, at::Tensor& s, double temperature,
          double lo, double hi, bool write_out) {
  const GateArgs<T> args{z.mutable_data_ptr<T>(), column.const_data_ptr<T>(), ht.const_data_ptr<T>(),
                         s.mutable_data_ptr<T>(), z.size(1), T(temperature), T(lo), T(hi), write_out};
  parallel_rows(row_kernels<T>().gate, args, z.size(0), z.size(1));
}

// ---------------------------------------------------------------------------------------------

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
    normalise_head_tail<scalar_t>(hc, tc, ht, nullptr, nullptr);
    const at::Tensor qn = normalise_cond<scalar_t>(cc, S, nullptr);
    const at::Tensor column = gate_logits(ht, qn, wc, bias, S, out);
    gate<scalar_t>(out, column, ht, s, temperature, lo, hi, /*write_out=*/true);  // logits -> blend in place
  });
  return {out, s};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_fusion_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& head, const at::Tensor& tail, const at::Tensor& cond,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gate_sigmoid,
    double temperature, double lo, double hi) {
  const char* op = "fremure.gated_fusion_backward";
  const FusionShape S = check_gated_fusion(op, head, tail, cond, weight, bias, temperature, lo, hi);
  check_like(head, grad_out, "head", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == head.sizes(), op, ": grad_out must have the shape of head ", head.sizes(),
                    ", got ", grad_out.sizes());
  if (gate_sigmoid.has_value()) {
    check_like(head, *gate_sigmoid, "head", "gate_sigmoid");
    TORCH_CHECK_VALUE(gate_sigmoid->sizes() == head.sizes(), op, ": gate_sigmoid must have the shape of head ",
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

  AT_DISPATCH_FLOATING_TYPES(head.scalar_type(), "gated_fusion_backward_cpu", [&] {
    using T = scalar_t;
    const RowKernels<T>& kernels = row_kernels<T>();
    T* rstd_h = rstd_ht.mutable_data_ptr<T>();
    T* rstd_t = rstd_h + N;
    const at::Tensor qn = normalise_cond<T>(cc, S, rstd_q.mutable_data_ptr<T>());

    at::Tensor s;
    const bool recompute = !gate_sigmoid.has_value();
    if (recompute) {
      // No saved gate: normalise first, then repeat the forward GEMM (dz serves as scratch for z).
      normalise_head_tail<T>(hc, tc, ht, rstd_h, rstd_t);
      s = at::empty({N, D}, opts);
      const at::Tensor column = gate_logits(ht, qn, wc, bias, S, dz);
      gate<T>(dz, column, ht, s, temperature, lo, hi, /*write_out=*/false);
    } else {
      s = gate_sigmoid->contiguous();
    }

    // dz per row (normalising head and tail on the way when not done above), and its column
    // sums (dbias, and the shared condition's gradient) from per-chunk partial rows. The chunk
    // count depends on the sizes only, never on the thread count, so the sums are bitwise the
    // same on any machine and under any scheduling (64 chunks keep up to 64 threads busy).
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(64, N / row_grain(D)));
    std::vector<T> partial(static_cast<size_t>(blocks * D), T(0));
    const DlogitArgs<T> dargs{dyc.const_data_ptr<T>(), s.const_data_ptr<T>(), hc.const_data_ptr<T>(),
                              tc.const_data_ptr<T>(), ht.mutable_data_ptr<T>(), rstd_h, rstd_t,
                              dz.mutable_data_ptr<T>(), partial.data(), D, blocks, N, T(temperature), T(lo),
                              T(hi), !recompute};
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) { kernels.dlogit(dargs, begin, end); });
    at::Tensor dz_sum = at::empty({D}, opts);
    T* dz_sum_p = dz_sum.mutable_data_ptr<T>();
    for (int64_t j = 0; j < D; ++j) {
      T total = 0;
      for (int64_t b = 0; b < blocks; ++b) total += partial[b * D + j];
      dz_sum_p[j] = total;
    }

    // GEMMs: weight gradient into column slices of one tensor, then the condition's and the
    // branches' input gradients.
    at::Tensor grad_w_ht = grad_weight.narrow(1, 0, 2 * D);
    at::Tensor grad_w_q = grad_weight.narrow(1, 2 * D, Dc);
    const at::Tensor w_q = wc.narrow(1, 2 * D, Dc);
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
    const at::Tensor dht = at::mm(dz, wc.narrow(1, 0, 2 * D));  // [N, 2D], both branches at once

    // Direct blend terms plus LN0 backward, row by row into grad_head / grad_tail.
    const LnGradArgs<T> largs{dyc.const_data_ptr<T>(), s.const_data_ptr<T>(), dht.const_data_ptr<T>(),
                              ht.const_data_ptr<T>(), rstd_h, rstd_t, grad_head.mutable_data_ptr<T>(),
                              grad_tail.mutable_data_ptr<T>(), D, T(lo), T(hi)};
    parallel_rows(kernels.ln_grad, largs, N, 2 * D);

    // Condition: LN0 backward of dq (rows, or the one shared vector); small, done serially.
    grad_cond = dq.contiguous();
    T* gq = grad_cond.mutable_data_ptr<T>();
    const T* qp = qn.const_data_ptr<T>();
    const T* rq = rstd_q.const_data_ptr<T>();
    const int64_t q_rows = S.per_row_cond ? N : 1;
    for (int64_t r = 0; r < q_rows; ++r) ln_backward_row(gq + r * Dc, qp + r * Dc, rq[r], Dc);
  });
  return {grad_head, grad_tail, grad_cond, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("gated_fusion", &gated_fusion_cpu);
  m.impl("gated_fusion_backward", &gated_fusion_backward_cpu);
}
#endif  // FREMURE_CPU_BASELINE
}  // namespace fremure
