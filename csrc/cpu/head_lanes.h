// Lane helpers shared by the CPU kernels of the relation heads (gmm_mixture, bayes_mc).
//
// Those kernels work on a chunk of whole rows (pairs) at a time, unpacked into flat float
// "lanes" (row-major [rows, C]) so that every per-element step is a simple loop over lanes that
// the compiler vectorises. Include this after the torch headers, inside the
// `#pragma GCC optimize("no-trapping-math")` region of the including file: without it GCC keeps
// the branch-free selects of fast_math.h as branches and nothing vectorises. The helpers are
// always inlined so that each ISA copy of a kernel (cpu/cpu_isa.h) vectorises them for its ISA.
#pragma once
#include <c10/util/Exception.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/fast_math.h"
#include "cpu/head_math.h"
#include "common/philox.h"

namespace fremure {
namespace lanes {

inline HeadActivation parse_head_activation(std::string_view name, const char* op) {
  if (name == "sigmoid") return HeadActivation::kSigmoid;
  if (name == "softmax") return HeadActivation::kSoftmax;
  TORCH_CHECK_VALUE(false, "fremure.", op, ": activation must be 'sigmoid' or 'softmax', got '", std::string(name),
                    "'");
}

// True when no lane is NaN or inf (an integer OR over exponent bits for float, so it vectorises).
template <typename acc_t>
FREMURE_HD_INLINE bool all_finite(const acc_t* x, int64_t n) {
  if constexpr (std::is_same_v<acc_t, float>) {
    uint32_t bad = 0;
    for (int64_t j = 0; j < n; ++j) bad |= (fm::float_to_bits(x[j]) & 0x7f800000u) == 0x7f800000u;
    return bad == 0;
  } else {
    bool ok = true;
    for (int64_t j = 0; j < n; ++j) ok &= static_cast<bool>(__builtin_isfinite(x[j]));
    return ok;
  }
}

// Rows per chunk so that one chunk holds about `target` lanes (at least one row).
inline int64_t rows_per_chunk(int64_t C, int64_t target) {
  return C <= 0 ? 1 : (target / C > 0 ? target / C : 1);
}

// Lane buffers are padded to whole 64-byte vectors: element-wise loops then run over the padding
// (finite filler, never written back) instead of ending in a scalar remainder, which for the
// exp/log/cos loops would cost as much as the vector body.
constexpr int64_t kLanePad = 16;

inline int64_t padded(int64_t lanes) {
  return (lanes + kLanePad - 1) / kLanePad * kLanePad;
}

// out[r * C + c] = base[(b0 + r) * sb + c * sc] for r < rows, converted to the accumulation type;
// out[rows * C .. padded_count) = 0.
template <typename scalar_t, typename acc_t>
FREMURE_HD_INLINE void gather_rows(const scalar_t* base, int64_t sb, int64_t sc, int64_t b0, int64_t rows, int64_t C,
                                   acc_t* out, int64_t padded_count) {
  const scalar_t* src = base + b0 * sb;
  const int64_t n = rows * C;
  if (sc == 1 && (sb == C || rows == 1)) {
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<acc_t>(src[j]);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* row = src + r * sb;
      acc_t* dst = out + r * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(row[c * sc]);
    }
  }
  for (int64_t j = n; j < padded_count; ++j) out[j] = acc_t(0);
}

// In-place softmax over each row of C lanes; the exponentials run over `padded_count` lanes.
// `tmp` holds padded_count values.
template <typename acc_t>
FREMURE_HD_INLINE void softmax_rows(acc_t* z, int64_t rows, int64_t C, int64_t padded_count, acc_t* tmp) {
  const int64_t n = rows * C;
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* zr = z + r * C;
    acc_t m = zr[0];
    for (int64_t c = 1; c < C; ++c) m = zr[c] > m ? zr[c] : m;
    for (int64_t c = 0; c < C; ++c) tmp[r * C + c] = m;
  }
  for (int64_t j = n; j < padded_count; ++j) tmp[j] = z[j];
  for (int64_t j = 0; j < padded_count; ++j) z[j] = fm::exp(z[j] - tmp[j]);
  for (int64_t r = 0; r < rows; ++r) {
    acc_t* zr = z + r * C;
    acc_t s = 0;
    for (int64_t c = 0; c < C; ++c) s += zr[c];
    const acc_t inv = acc_t(1) / s;
    for (int64_t c = 0; c < C; ++c) zr[c] = zr[c] * inv;
  }
}

// Softmax backward over each row: dz = y * (dy - sum_c dy * y), written over dy.
template <typename acc_t>
FREMURE_HD_INLINE void softmax_rows_backward(const acc_t* y, acc_t* dy, int64_t rows, int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* yr = y + r * C;
    acc_t* dr = dy + r * C;
    acc_t s = 0;
    for (int64_t c = 0; c < C; ++c) s += dr[c] * yr[c];
    for (int64_t c = 0; c < C; ++c) dr[c] = yr[c] * (dr[c] - s);
  }
}

}  // namespace lanes
}  // namespace fremure
