// Lane helpers shared by the CPU kernels of the relation heads (gmm_mixture, bayes_mc).
//
// Those kernels work on a chunk of whole rows (pairs) at a time, unpacked into flat float
// "lanes" (row-major [rows, C]) so that every per-element step is a simple loop over lanes that
// the compiler vectorises. The including file is compiled with -fno-trapping-math (its
// FREMURE_COMPILE_OPTIONS line): without it GCC keeps the branch-free selects of fast_math.h as
// branches and nothing vectorises. The helpers are
// always inlined so that each ISA copy of a kernel (cpu/cpu_isa.h) vectorises them for its ISA;
// the helpers written with intrinsics are compiled for the including file's ISA level (below).
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
#include "cpu/cpu_isa.h"

namespace fremure {
namespace lanes {

inline HeadActivation parse_head_activation(std::string_view name, const char* op) {
  if (name == "sigmoid") return HeadActivation::kSigmoid;
  if (name == "softmax") return HeadActivation::kSoftmax;
  TORCH_CHECK_VALUE(false, "fremure.", op, ": activation must be 'sigmoid' or 'softmax', got '", std::string(name),
                    "'");
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

// Chunk `ch` of a [B, C] problem cut into chunks of R rows: rows [b0, b0 + rows), L = rows * C
// lanes, P = L padded.
struct Chunk {
  int64_t b0, rows, L, P;
};

inline Chunk chunk_at(int64_t ch, int64_t R, int64_t B, int64_t C) {
  const int64_t b0 = ch * R;
  const int64_t rows = R < B - b0 ? R : B - b0;
  return {b0, rows, rows * C, padded(rows * C)};
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
FREMURE_ISA_KERNELS_BEGIN

// x[j] = sqrt(x[j]) for j < n, with the ISA's vector square root (correctly rounded, like
// std::sqrt; the plain loop does not vectorise because glibc's sqrtf may set errno).
template <typename acc_t>
inline void sqrt_lanes(acc_t* x, int64_t n) {
  int64_t j = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
#if FREMURE_CPU_CAPABILITY == 2
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(x + j, _mm512_sqrt_ps(_mm512_loadu_ps(x + j)));
#elif FREMURE_CPU_CAPABILITY == 1
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_sqrt_ps(_mm256_loadu_ps(x + j)));
#elif defined(__SSE2__)
    for (; j + 4 <= n; j += 4) _mm_storeu_ps(x + j, _mm_sqrt_ps(_mm_loadu_ps(x + j)));
#endif
  }
  for (; j < n; ++j) x[j] = fm::sqrt(x[j]);
}

// Philox4x32-10 rounds on vectors of counters (c0 = offsets, c1 = their shared high word,
// c2 = c3 = 0), keeping the two output words tl.randn uses. Each counter word lives in the low
// half of a 64-bit lane, so one pmuludq gives both halves of a 32 x 32 -> 64-bit product; the
// high halves of the lanes carry junk that pmuludq ignores and the final pack drops.
#if FREMURE_CPU_CAPABILITY == 2
using PhiloxVec = __m512i;
constexpr int64_t kPhiloxLanes = 8;
inline PhiloxVec pv_set1(uint32_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
inline PhiloxVec pv_counters(uint32_t first) {
  return _mm512_add_epi64(pv_set1(first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
}
inline PhiloxVec pv_mul(PhiloxVec a, PhiloxVec k) { return _mm512_mul_epu32(a, k); }
inline PhiloxVec pv_high(PhiloxVec p) { return _mm512_srli_epi64(p, 32); }
inline PhiloxVec pv_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
inline void pv_store_low_words(uint32_t* p, PhiloxVec v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi64_epi32(v));
}
#elif FREMURE_CPU_CAPABILITY == 1
using PhiloxVec = __m256i;
constexpr int64_t kPhiloxLanes = 4;
inline PhiloxVec pv_set1(uint32_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
inline PhiloxVec pv_counters(uint32_t first) {
  return _mm256_add_epi64(pv_set1(first), _mm256_set_epi64x(3, 2, 1, 0));
}
inline PhiloxVec pv_mul(PhiloxVec a, PhiloxVec k) { return _mm256_mul_epu32(a, k); }
inline PhiloxVec pv_high(PhiloxVec p) { return _mm256_srli_epi64(p, 32); }
inline PhiloxVec pv_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) {
  return _mm256_xor_si256(_mm256_xor_si256(a, b), c);
}
inline void pv_store_low_words(uint32_t* p, PhiloxVec v) {
  const __m256i packed = _mm256_permutevar8x32_epi32(v, _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
#elif defined(__SSE2__)
using PhiloxVec = __m128i;
constexpr int64_t kPhiloxLanes = 2;
inline PhiloxVec pv_set1(uint32_t v) { return _mm_set1_epi64x(static_cast<long long>(v)); }
inline PhiloxVec pv_counters(uint32_t first) { return _mm_add_epi64(pv_set1(first), _mm_set_epi64x(1, 0)); }
inline PhiloxVec pv_mul(PhiloxVec a, PhiloxVec k) { return _mm_mul_epu32(a, k); }
inline PhiloxVec pv_high(PhiloxVec p) { return _mm_srli_epi64(p, 32); }
inline PhiloxVec pv_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) { return _mm_xor_si128(_mm_xor_si128(a, b), c); }
inline void pv_store_low_words(uint32_t* p, PhiloxVec v) {
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_shuffle_epi32(v, _MM_SHUFFLE(3, 1, 2, 0)));
}
#else
constexpr int64_t kPhiloxLanes = 0;
#endif

// w0[j], w1[j]: the first two Philox4x32-10 words for offset offset0 + j under `seed`.
inline void philox_words(uint64_t seed, uint64_t offset0, int64_t n, uint32_t* w0, uint32_t* w1) {
  int64_t j = 0;
#if FREMURE_CPU_CAPABILITY != 0 || defined(__SSE2__)
  // The vector path shares the counter's high word across the call (offsets rarely cross 2^32);
  // two vectors per step keep both multipliers busy.
  const uint64_t last = offset0 + static_cast<uint64_t>(n > 0 ? n - 1 : 0);
  constexpr int64_t kStep = 2 * kPhiloxLanes;
  if ((offset0 >> 32) == (last >> 32)) {
    const PhiloxVec hi_word = pv_set1(static_cast<uint32_t>(offset0 >> 32));
    const PhiloxVec mul_a = pv_set1(kPhiloxRoundA), mul_b = pv_set1(kPhiloxRoundB);
    PhiloxVec key0[10], key1[10];
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      key0[round] = pv_set1(k0);
      key1[round] = pv_set1(k1);
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
    for (; j + kStep <= n; j += kStep) {
      const uint32_t first = static_cast<uint32_t>(offset0) + static_cast<uint32_t>(j);
      PhiloxVec a0 = pv_counters(first), a1 = hi_word, a2 = pv_set1(0), a3 = pv_set1(0);
      PhiloxVec b0 = pv_counters(first + static_cast<uint32_t>(kPhiloxLanes)), b1 = hi_word, b2 = a2, b3 = a3;
      for (int round = 0; round < 10; ++round) {
        const PhiloxVec pa_b = pv_mul(a2, mul_b), pa_a = pv_mul(a0, mul_a);
        const PhiloxVec pb_b = pv_mul(b2, mul_b), pb_a = pv_mul(b0, mul_a);
        a0 = pv_xor3(pv_high(pa_b), a1, key0[round]);
        a2 = pv_xor3(pv_high(pa_a), a3, key1[round]);
        a1 = pa_b;
        a3 = pa_a;
        b0 = pv_xor3(pv_high(pb_b), b1, key0[round]);
        b2 = pv_xor3(pv_high(pb_a), b3, key1[round]);
        b1 = pb_b;
        b3 = pb_a;
      }
      pv_store_low_words(w0 + j, a0);
      pv_store_low_words(w0 + j + kPhiloxLanes, b0);
      pv_store_low_words(w1 + j, a1);
      pv_store_low_words(w1 + j + kPhiloxLanes, b1);
    }
  }
#endif
  for (; j < n; ++j) {
    const uint64_t offset = offset0 + static_cast<uint64_t>(j);
    const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                        static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    w0[j] = w.w0;
    w1[j] = w.w1;
  }
}

// out[j] = tl.randn(seed, offset0 + j) for j < n, rounded through scalar_t (so a seeded kernel
// sees exactly the noise that philox_normal(seed, shape, dtype) hands the explicit-noise path).
// `words` and `scratch` hold 2 * n values each.
template <typename scalar_t, typename acc_t>
inline void philox_normals(uint64_t seed, uint64_t offset0, int64_t n, acc_t* out, uint32_t* words,
                           float* scratch) {
  uint32_t* w0 = words;
  uint32_t* w1 = words + n;
  philox_words(seed, offset0, n, w0, w1);
  float* m2l = scratch;
  float* cs = scratch + n;
  for (int64_t j = 0; j < n; ++j) {
    const BoxMullerParts p = box_muller_parts(philox_uniform(w0[j]), philox_uniform(w1[j]));
    m2l[j] = p.minus_two_log;
    cs[j] = p.cos_theta;
  }
  sqrt_lanes(m2l, n);
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<acc_t>(static_cast<scalar_t>(m2l[j] * cs[j]));
}

FREMURE_ISA_KERNELS_END
}  // namespace fremure
