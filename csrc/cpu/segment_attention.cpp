// CPU kernels of segment_attention and its backward.
//
// q, k, v: [T, H, Dh] packed tokens; segment_offsets: [S + 1] CSR boundaries. Work is split over
// (segment, head) pairs: each pair owns the rows [start, end) x {h} of every output, so threads
// never share an accumulator. Scores are never stored beyond one tile of keys per query
// (forward, online softmax) or one group of keys at a time (backward, probabilities recomputed
// from the saved lse): any segment length works with bounded scratch (one tile of scores, and
// one row sum rowsum(dO * O) per query of the segment in backward).
//
// Attention dropout (dropout_p > 0): the keep-mask of every (query, head, key) is regenerated from
// (seed, Philox counter) wherever it is needed (common/segment_attention.h has the layout), one
// tile of keys at a time, and never stored. dropout_p == 0 runs the dropout-free instantiation.
//
// Inputs only need a unit stride in their last dimension (views such as the q/k/v slices of a
// fused projection are read in place). float and double compute in their own type; float16 and
// bfloat16 are converted to float32 first (at::opmath_type) and the results converted back. The
// kernels are compiled once per vector ISA (cpu/cpu_isa.h), which is where the dot products get
// their speed; the op, once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "cpu/segment_attention.h"
#include "cpu/cpu_isa.h"

#if defined(__GNUC__)
#define FREMURE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FREMURE_ALWAYS_INLINE inline
#endif

namespace fremure {
namespace segment_attention_detail {

constexpr int64_t kKeyTile = 64;      // forward: keys scored per online-softmax step (stack scratch)
constexpr int64_t kBwdKeyBlock = 16;  // backward: keys whose dK/dV rows stay cached while all queries pass
constexpr int64_t kMinTaskWork = 1 << 15;  // multiply-adds below which a chunk is not worth a thread

// Rows of one [T, H, Dh] tensor whose last dimension has unit stride.
template <typename T>
struct HeadRows {
  T* ptr;
  int64_t token_stride;
  int64_t head_stride;
  FREMURE_ALWAYS_INLINE T* row(int64_t t, int64_t h) const { return ptr + t * token_stride + h * head_stride; }
};

template <typename T>
HeadRows<const T> rows_of(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1)};
}

template <typename T>
HeadRows<T> mutable_rows_of(at::Tensor& t) {
  return {t.mutable_data_ptr<T>(), t.stride(0), t.stride(1)};
}

// Attention dropout parameters; p == 0 means none.
template <typename T>
struct Dropout {
  float p = 0.0f;      // drop a probability when its uniform is below p (float32, as tl.rand)
  T keep_scale = 1;    // 1 / (1 - p)
  uint64_t seed = 0;
  int64_t tokens = 0;  // T of the Philox counter layout
  bool on() const { return p > 0.0f; }
};

// What every (segment, head) pair reads besides its rows.
template <typename T>
struct PairShape {
  const int64_t* offsets;
  int64_t heads;
  int64_t dh;
  T scale;
  Dropout<T> drop;
};

template <typename T>
struct ForwardArgs : PairShape<T> {
  HeadRows<const T> q, k, v;
  HeadRows<T> out;
  T* lse;  // [T, H] contiguous
};

template <typename T>
struct BackwardArgs : PairShape<T> {
  HeadRows<const T> dout, q, k, v, out;
  const T* lse;
  HeadRows<T> dq, dk, dv;
};

// Per-ISA entries: a range [begin, end) of (segment, head) pairs, forward or backward.
template <typename T>
struct RangeKernels {
  void (*forward)(const ForwardArgs<T>&, int64_t, int64_t);
  void (*backward)(const BackwardArgs<T>&, int64_t, int64_t);
};
template <typename T>
inline DispatchStub<RangeKernels<T>> range_kernels;

}  // namespace segment_attention_detail
using namespace segment_attention_detail;

FREMURE_ISA_KERNELS_BEGIN

// f[j] = keep_scale or 0: the dropout factors of query token t, head h against the keys
// [u0, u0 + n). A plain counted loop of integer arithmetic, which the compiler may vectorise.
template <typename T>
FREMURE_ALWAYS_INLINE void dropout_factors(const Dropout<T>& drop, int64_t t, int64_t h, int64_t heads, int64_t u0,
                                           int64_t n, T* f) {
  const uint64_t base = attn_dropout_offset(t, h, u0, heads, drop.tokens);
  const uint32_t k0 = static_cast<uint32_t>(drop.seed), k1 = static_cast<uint32_t>(drop.seed >> 32);
  const float p = drop.p;
  const T keep = drop.keep_scale;
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t off = base + static_cast<uint64_t>(j);
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(off), static_cast<uint32_t>(off >> 32), k0, k1);
    f[j] = philox_uniform(w.w0) >= p ? keep : T(0);
  }
}

// ---- vector primitives over head rows of length n. `omp simd` lets the reductions reassociate;
// keys are taken in groups of N = 4, 2 or 1 so that one pass over a query row serves N keys and
// the N accumulator chains hide the FMA latency.

// a . b with two independent chains (the halves of the row).
template <typename T>
FREMURE_ALWAYS_INLINE T dot1(const T* a, const T* b, int64_t n) {
  const int64_t half = n / 2;
  const T* a1 = a + half;
  const T* b1 = b + half;
  T s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
  for (int64_t d = 0; d < half; ++d) {
    s0 += a[d] * b[d];
    s1 += a1[d] * b1[d];
  }
  if (n & 1) s0 += a[n - 1] * b[n - 1];
  return s0 + s1;
}

// s[c] = a . b[c] for c < N, one pass over a.
template <int N, typename T>
FREMURE_ALWAYS_INLINE void dot_group(const T* a, const T* const* b, int64_t n, T* s) {
  if constexpr (N == 1) {
    s[0] = dot1(a, b[0], n);
  } else {
    const T* b0 = b[0];
    const T* b1 = b[1];
    const T* b2 = b[N > 2 ? 2 : 0];
    const T* b3 = b[N > 3 ? 3 : 0];
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t d = 0; d < n; ++d) {
      const T x = a[d];
      s0 += x * b0[d];
      s1 += x * b1[d];
      if constexpr (N > 2) s2 += x * b2[d];
      if constexpr (N > 3) s3 += x * b3[d];
    }
    s[0] = s0;
    s[1] = s1;
    if constexpr (N > 2) s[2] = s2;
    if constexpr (N > 3) s[3] = s3;
  }
}

// y += sum_c c[c] b[c]
template <int N, typename T>
FREMURE_ALWAYS_INLINE void axpy_group(T* y, const T* c, const T* const* b, int64_t n) {
  const T* b0 = b[0];
  const T* b1 = b[N > 1 ? 1 : 0];
  const T* b2 = b[N > 2 ? 2 : 0];
  const T* b3 = b[N > 3 ? 3 : 0];
  const T c0 = c[0], c1 = c[N > 1 ? 1 : 0], c2 = c[N > 2 ? 2 : 0], c3 = c[N > 3 ? 3 : 0];
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) {
    T acc = y[d] + c0 * b0[d];
    if constexpr (N > 1) acc += c1 * b1[d];
    if constexpr (N > 2) acc += c2 * b2[d];
    if constexpr (N > 3) acc += c3 * b3[d];
    y[d] = acc;
  }
}

// Expands STMT (which uses the group size N and first key jj) over keys [0, count) in groups of
// 4, then 2, then 1. A macro rather than a generic lambda: a lambda is a function of its own that
// the compiler may keep out of line, a call per key group in the innermost loop.
#define FREMURE_FOR_KEY_GROUPS(count, STMT)      \
  do {                                           \
    int64_t jj = 0;                              \
    for (; jj + 4 <= (count); jj += 4) {         \
      constexpr int N = 4;                       \
      STMT;                                      \
    }                                            \
    if (jj + 2 <= (count)) {                     \
      constexpr int N = 2;                       \
      STMT;                                      \
      jj += 2;                                   \
    }                                            \
    if (jj < (count)) {                          \
      constexpr int N = 1;                       \
      STMT;                                      \
    }                                            \
  } while (0)

// ---- forward: one (segment, head) pair

// kDrop: the exponentials of dropped keys are zeroed after they entered the row sum l, and the
// kept ones are scaled by 1 / (1 - p) once at the end (together with 1 / l).
template <typename T, bool kDrop>
FREMURE_ALWAYS_INLINE void forward_pair(const ForwardArgs<T>& a, int64_t seg, int64_t h) {
  const int64_t start = a.offsets[seg];
  const int64_t len = a.offsets[seg + 1] - start;
  const int64_t n = a.dh;
  T s[kKeyTile];
  [[maybe_unused]] T f[kDrop ? kKeyTile : 1];
  const T* kr[kKeyTile];
  const T* vr[kKeyTile];
  for (int64_t i = 0; i < len; ++i) {
    const T* qi = a.q.row(start + i, h);
    T* oi = a.out.row(start + i, h);
    for (int64_t d = 0; d < n; ++d) oi[d] = T(0);
    T m = attn_neg_inf<T>();
    T l = T(0);
    for (int64_t j0 = 0; j0 < len; j0 += kKeyTile) {
      const int64_t nb = std::min(kKeyTile, len - j0);
      for (int64_t jj = 0; jj < nb; ++jj) {
        kr[jj] = a.k.row(start + j0 + jj, h);
        vr[jj] = a.v.row(start + j0 + jj, h);
      }
      FREMURE_FOR_KEY_GROUPS(nb, (dot_group<N>(qi, kr + jj, n, s + jj)));
      T tile_max = attn_neg_inf<T>();
      for (int64_t jj = 0; jj < nb; ++jj) {
        s[jj] *= a.scale;
        tile_max = std::max(tile_max, s[jj]);
      }
      const T m_new = std::max(m, tile_max);
      const T alpha = attn_rescale<T>(m, m_new);
      T tile_sum = T(0);
      for (int64_t jj = 0; jj < nb; ++jj) {
        s[jj] = std::exp(s[jj] - m_new);
        tile_sum += s[jj];
      }
      l = l * alpha + tile_sum;
      if constexpr (kDrop) {
        dropout_factors<T>(a.drop, start + i, h, a.heads, start + j0, nb, f);
        for (int64_t jj = 0; jj < nb; ++jj) s[jj] = f[jj] != T(0) ? s[jj] : T(0);
      }
      if (j0 > 0 && alpha != T(1)) {
        for (int64_t d = 0; d < n; ++d) oi[d] *= alpha;
      }
      FREMURE_FOR_KEY_GROUPS(nb, (axpy_group<N>(oi, s + jj, vr + jj, n)));
      m = m_new;
    }
    const T inv = (kDrop ? a.drop.keep_scale : T(1)) / l;
    for (int64_t d = 0; d < n; ++d) oi[d] *= inv;
    a.lse[(start + i) * a.heads + h] = attn_lse<T>(m, l);
  }
}

// ---- backward: one (segment, head) pair

// Query row i against keys b[0..N): recompute p, accumulate dQ_i, dK_j and dV_j. kDrop: f[c] is
// the dropout factor (0 or 1 / (1 - p)) of key c, applied to dP and to the p that reaches dV.
template <int N, bool kDrop, typename T>
FREMURE_ALWAYS_INLINE void backward_group(const T* qi, const T* doi, T* dqi, T lse_i, T delta_i, T scale,
                                          const T* const* kr, const T* const* vr, T* const* dkr, T* const* dvr,
                                          [[maybe_unused]] const T* f, int64_t n) {
  T s[4] = {0, 0, 0, 0};
  T g[4] = {0, 0, 0, 0};
  {
    const T* k0 = kr[0];
    const T* k1 = kr[N > 1 ? 1 : 0];
    const T* k2 = kr[N > 2 ? 2 : 0];
    const T* k3 = kr[N > 3 ? 3 : 0];
    const T* v0 = vr[0];
    const T* v1 = vr[N > 1 ? 1 : 0];
    const T* v2 = vr[N > 2 ? 2 : 0];
    const T* v3 = vr[N > 3 ? 3 : 0];
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0, g0 = 0, g1 = 0, g2 = 0, g3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, g0, g1, g2, g3)
    for (int64_t d = 0; d < n; ++d) {
      const T x = qi[d];
      const T y = doi[d];
      s0 += x * k0[d];
      g0 += y * v0[d];
      if constexpr (N > 1) {
        s1 += x * k1[d];
        g1 += y * v1[d];
      }
      if constexpr (N > 2) {
        s2 += x * k2[d];
        g2 += y * v2[d];
      }
      if constexpr (N > 3) {
        s3 += x * k3[d];
        g3 += y * v3[d];
      }
    }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
    g[0] = g0, g[1] = g1, g[2] = g2, g[3] = g3;
  }
  T p[4], ds[4];
  for (int c = 0; c < N; ++c) {
    p[c] = attn_prob<T>(scale * s[c], lse_i);
    if constexpr (kDrop) {
      ds[c] = attn_dscore<T>(p[c], g[c] * f[c], delta_i, scale);
      p[c] *= f[c];
    } else {
      ds[c] = attn_dscore<T>(p[c], g[c], delta_i, scale);
    }
  }
  axpy_group<N>(dqi, ds, kr, n);
  T* dk0 = dkr[0];
  T* dk1 = dkr[N > 1 ? 1 : 0];
  T* dk2 = dkr[N > 2 ? 2 : 0];
  T* dk3 = dkr[N > 3 ? 3 : 0];
  T* dv0 = dvr[0];
  T* dv1 = dvr[N > 1 ? 1 : 0];
  T* dv2 = dvr[N > 2 ? 2 : 0];
  T* dv3 = dvr[N > 3 ? 3 : 0];
  const T c0 = ds[0], c1 = ds[N > 1 ? 1 : 0], c2 = ds[N > 2 ? 2 : 0], c3 = ds[N > 3 ? 3 : 0];
  const T p0 = p[0], p1 = p[N > 1 ? 1 : 0], p2 = p[N > 2 ? 2 : 0], p3 = p[N > 3 ? 3 : 0];
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) {
    const T x = qi[d];
    const T y = doi[d];
    dk0[d] += c0 * x;
    dv0[d] += p0 * y;
    if constexpr (N > 1) {
      dk1[d] += c1 * x;
      dv1[d] += p1 * y;
    }
    if constexpr (N > 2) {
      dk2[d] += c2 * x;
      dv2[d] += p2 * y;
    }
    if constexpr (N > 3) {
      dk3[d] += c3 * x;
      dv3[d] += p3 * y;
    }
  }
}

// delta is scratch for `len` row sums rowsum(dO * O).
template <typename T, bool kDrop>
FREMURE_ALWAYS_INLINE void backward_pair(const BackwardArgs<T>& a, int64_t seg, int64_t h, T* delta) {
  const int64_t start = a.offsets[seg];
  const int64_t len = a.offsets[seg + 1] - start;
  const int64_t n = a.dh;
  for (int64_t i = 0; i < len; ++i) {
    const int64_t t = start + i;
    T* dq = a.dq.row(t, h);
    T* dk = a.dk.row(t, h);
    T* dv = a.dv.row(t, h);
    for (int64_t d = 0; d < n; ++d) {
      dq[d] = T(0);
      dk[d] = T(0);
      dv[d] = T(0);
    }
    delta[i] = dot1(a.dout.row(t, h), a.out.row(t, h), n);
  }
  const T* kr[kBwdKeyBlock];
  const T* vr[kBwdKeyBlock];
  T* dkr[kBwdKeyBlock];
  T* dvr[kBwdKeyBlock];
  [[maybe_unused]] T f[kDrop ? kBwdKeyBlock : 1];
  for (int64_t j0 = 0; j0 < len; j0 += kBwdKeyBlock) {
    const int64_t nb = std::min(kBwdKeyBlock, len - j0);
    for (int64_t jj = 0; jj < nb; ++jj) {
      const int64_t t = start + j0 + jj;
      kr[jj] = a.k.row(t, h);
      vr[jj] = a.v.row(t, h);
      dkr[jj] = a.dk.row(t, h);
      dvr[jj] = a.dv.row(t, h);
    }
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = start + i;
      const T* qi = a.q.row(t, h);
      const T* doi = a.dout.row(t, h);
      T* dqi = a.dq.row(t, h);
      const T lse_i = a.lse[t * a.heads + h];
      const T delta_i = delta[i];
      if constexpr (kDrop) dropout_factors<T>(a.drop, t, h, a.heads, start + j0, nb, f);
      FREMURE_FOR_KEY_GROUPS(nb, (backward_group<N, kDrop>(qi, doi, dqi, lse_i, delta_i, a.scale, kr + jj, vr + jj,
                                                           dkr + jj, dvr + jj, f + (kDrop ? jj : 0), n)));
    }
  }
}

// ---- ranges of (segment, head) pairs: the entries of the stub. The dropout or the plain
// instantiation is picked once per range.

template <typename T, bool kDrop>
FREMURE_ALWAYS_INLINE void forward_range_impl(const ForwardArgs<T>& a, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) forward_pair<T, kDrop>(a, p / a.heads, p % a.heads);
}

template <typename T, bool kDrop>
FREMURE_ALWAYS_INLINE void backward_range_impl(const BackwardArgs<T>& a, int64_t begin, int64_t end) {
  std::vector<T> delta;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t seg = p / a.heads;
    const int64_t len = a.offsets[seg + 1] - a.offsets[seg];
    if (static_cast<int64_t>(delta.size()) < len) delta.resize(static_cast<size_t>(len));
    backward_pair<T, kDrop>(a, seg, p % a.heads, delta.data());
  }
}

template <typename T>
void forward_range(const ForwardArgs<T>& a, int64_t begin, int64_t end) {
  a.drop.on() ? forward_range_impl<T, true>(a, begin, end) : forward_range_impl<T, false>(a, begin, end);
}

template <typename T>
void backward_range(const BackwardArgs<T>& a, int64_t begin, int64_t end) {
  a.drop.on() ? backward_range_impl<T, true>(a, begin, end) : backward_range_impl<T, false>(a, begin, end);
}

template <typename T>
constexpr RangeKernels<T> kRangeKernels{&forward_range<T>, &backward_range<T>};
FREMURE_REGISTER_KERNELS(range_kernels<float>, kRangeKernels<float>);
FREMURE_REGISTER_KERNELS(range_kernels<double>, kRangeKernels<double>);

#undef FREMURE_FOR_KEY_GROUPS
FREMURE_ISA_KERNELS_END

#if FREMURE_CPU_BASELINE
namespace {

// ---- checks and host functions

struct Problem {
  int64_t tokens;
  int64_t heads;
  int64_t dh;
  int64_t segments;
  int64_t work;  // sum over segments of len^2, times heads * dh (multiply-adds of one score pass)
};

void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_floating(q, "q");
  TORCH_CHECK_VALUE(q.dim() == 3, "fremure.", op, ": q must be [T, H, Dh] (3 dimensions), got shape ", q.sizes());
  TORCH_CHECK_VALUE(q.size(1) >= 1 && q.size(2) >= 1, "fremure.", op,
                    ": q must have at least one head and a head dimension >= 1, got shape ", q.sizes());
  check_like(q, k, "q", "k");
  check_like(q, v, "q", "v");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "fremure.", op, ": k must have the shape of q ", q.sizes(), ", got ",
                    k.sizes());
  TORCH_CHECK_VALUE(v.sizes() == q.sizes(), "fremure.", op, ": v must have the shape of q ", q.sizes(), ", got ",
                    v.sizes());
}

// Validates segment_offsets (device, dtype, shape and values) and returns it as contiguous int64.
at::Tensor checked_offsets(const char* op, const at::Tensor& q, const at::Tensor& offsets, Problem& p) {
  check_same_device(q, offsets, "q", "segment_offsets");
  check_index(offsets, "segment_offsets");
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) >= 1, "fremure.", op,
                    ": segment_offsets must be a 1-D tensor [S + 1] with at least one element, got shape ",
                    offsets.sizes());
  at::Tensor off = offsets.to(at::kLong).contiguous();
  const int64_t* o = off.const_data_ptr<int64_t>();
  const int64_t segments = off.size(0) - 1;
  TORCH_CHECK_VALUE(o[0] == 0, "fremure.", op, ": segment_offsets must start at 0, got ", o[0]);
  int64_t sq = 0;
  for (int64_t s = 0; s < segments; ++s) {
    TORCH_CHECK_VALUE(o[s + 1] >= o[s], "fremure.", op, ": segment_offsets must be nondecreasing, got ", o[s], " then ",
                      o[s + 1], " at index ", s);
    const int64_t len = o[s + 1] - o[s];
    sq += len * len;
  }
  TORCH_CHECK_VALUE(o[segments] == p.tokens, "fremure.", op, ": segment_offsets must end at the number of tokens T = ",
                    p.tokens, " (the size of q's first dimension), got ", o[segments]);
  p.segments = segments;
  p.work = sq * p.heads * p.dh;
  return off;
}

Problem check_problem(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  check_qkv(op, q, k, v);
  TORCH_CHECK_VALUE(std::isfinite(scale), "fremure.", op, ": scale must be finite, got ", scale);
  return {q.size(0), q.size(1), q.size(2), 0, 0};
}

template <typename T>
Dropout<T> check_dropout(const char* op, double dropout_p, const std::optional<int64_t>& seed, int64_t tokens) {
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "fremure.", op, ": dropout_p must be in [0, 1), got ",
                    dropout_p);
  Dropout<T> drop;
  if (dropout_p == 0.0) return drop;
  TORCH_CHECK_VALUE(seed.has_value(), "fremure.", op, ": seed must be given when dropout_p > 0 (got None)");
  drop.p = static_cast<float>(dropout_p);
  drop.keep_scale = static_cast<T>(1.0 / (1.0 - dropout_p));
  drop.seed = static_cast<uint64_t>(*seed);
  drop.tokens = tokens;
  return drop;
}

template <typename T>
PairShape<T> pair_shape(const at::Tensor& off, const Problem& p, double scale, const char* op, double dropout_p,
                        const std::optional<int64_t>& seed) {
  return {off.const_data_ptr<int64_t>(), p.heads, p.dh, static_cast<T>(scale),
          check_dropout<T>(op, dropout_p, seed, p.tokens)};
}

// Pairs per task so that one task carries at least kMinTaskWork multiply-adds on average.
int64_t grain_of(const Problem& p) {
  const int64_t pairs = p.segments * p.heads;
  if (pairs == 0 || p.work == 0) return 1;
  const int64_t per_pair = std::max<int64_t>(1, p.work / pairs);
  return std::max<int64_t>(1, kMinTaskWork / per_pair);
}

// A view the kernels can read in place: unit stride in the head dimension, else a copy.
at::Tensor unit_inner(const at::Tensor& t) {
  return t.stride(2) == 1 ? t : t.contiguous();
}

template <typename acc_t>
at::Tensor as_compute(const at::Tensor& t) {
  if (t.scalar_type() == c10::CppTypeToScalarType<acc_t>::value) return unit_inner(t);
  return t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
}

std::tuple<at::Tensor, at::Tensor> segment_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& segment_offsets,
                                                         double scale, double dropout_p,
                                                         std::optional<int64_t> seed) {
  Problem p = check_problem("segment_attention", q, k, v, scale);
  check_dropout<double>("segment_attention", dropout_p, seed, p.tokens);
  const at::Tensor off = checked_offsets("segment_attention", q, segment_offsets, p);
  at::Tensor out, lse;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "segment_attention_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor qc = as_compute<acc_t>(q), kc = as_compute<acc_t>(k), vc = as_compute<acc_t>(v);
    at::Tensor out_acc = at::empty(q.sizes(), qc.options().memory_format(at::MemoryFormat::Contiguous));
    lse = at::empty({p.tokens, p.heads}, qc.options().memory_format(at::MemoryFormat::Contiguous));
    const ForwardArgs<acc_t> args{{pair_shape<acc_t>(off, p, scale, "segment_attention", dropout_p, seed)},
                                  rows_of<acc_t>(qc),
                                  rows_of<acc_t>(kc),
                                  rows_of<acc_t>(vc),
                                  mutable_rows_of<acc_t>(out_acc),
                                  lse.mutable_data_ptr<acc_t>()};
    const RangeKernels<acc_t>& kernels = range_kernels<acc_t>();
    at::parallel_for(0, p.segments * p.heads, grain_of(p),
                     [&](int64_t begin, int64_t end) { kernels.forward(args, begin, end); });
    out = std::is_same_v<scalar_t, acc_t> ? out_acc : out_acc.to(q.scalar_type());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& segment_offsets, double scale, double dropout_p,
    std::optional<int64_t> seed) {
  const char* op = "segment_attention_backward";
  Problem p = check_problem(op, q, k, v, scale);
  check_dropout<double>(op, dropout_p, seed, p.tokens);
  check_like(q, grad_out, "q", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes(), "fremure.", op, ": grad_out must have the shape of q ", q.sizes(),
                    ", got ", grad_out.sizes());
  check_like(q, out, "q", "out");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "fremure.", op, ": out must have the shape of q ", q.sizes(), ", got ",
                    out.sizes());
  check_same_device(q, lse, "q", "lse");
  const at::ScalarType lse_dtype = at::toOpMathType(q.scalar_type());
  TORCH_CHECK_TYPE(lse.scalar_type() == lse_dtype, "fremure.", op, ": lse must have dtype ", lse_dtype, " for ",
                   q.scalar_type(), " inputs, got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == p.tokens && lse.size(1) == p.heads, "fremure.", op,
                    ": lse must have shape [", p.tokens, ", ", p.heads, "] (q without its last dimension), got ",
                    lse.sizes());
  const at::Tensor off = checked_offsets(op, q, segment_offsets, p);
  at::Tensor dq, dk, dv;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "segment_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor gc = as_compute<acc_t>(grad_out), qc = as_compute<acc_t>(q), kc = as_compute<acc_t>(k),
                     vc = as_compute<acc_t>(v), oc = as_compute<acc_t>(out);
    const at::Tensor lc = lse.contiguous();
    const auto opts = qc.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor dq_acc = at::empty(q.sizes(), opts), dk_acc = at::empty(q.sizes(), opts),
               dv_acc = at::empty(q.sizes(), opts);
    const BackwardArgs<acc_t> args{{pair_shape<acc_t>(off, p, scale, op, dropout_p, seed)},
                                   rows_of<acc_t>(gc),
                                   rows_of<acc_t>(qc),
                                   rows_of<acc_t>(kc),
                                   rows_of<acc_t>(vc),
                                   rows_of<acc_t>(oc),
                                   lc.const_data_ptr<acc_t>(),
                                   mutable_rows_of<acc_t>(dq_acc),
                                   mutable_rows_of<acc_t>(dk_acc),
                                   mutable_rows_of<acc_t>(dv_acc)};
    // Backward does about 2.5x the multiply-adds of one score pass per pair.
    const RangeKernels<acc_t>& kernels = range_kernels<acc_t>();
    at::parallel_for(0, p.segments * p.heads, std::max<int64_t>(1, grain_of(p) / 2),
                     [&](int64_t begin, int64_t end) { kernels.backward(args, begin, end); });
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      dq = dq_acc;
      dk = dk_acc;
      dv = dv_acc;
    } else {
      dq = dq_acc.to(q.scalar_type());
      dk = dk_acc.to(q.scalar_type());
      dv = dv_acc.to(q.scalar_type());
    }
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("segment_attention", &segment_attention_cpu);
  m.impl("segment_attention_backward", &segment_attention_backward_cpu);
}
#endif  // FREMURE_CPU_BASELINE
}  // namespace fremure
