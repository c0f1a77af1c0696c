// Philox4x32-10 counter-based generator, the uniform of Triton's tl.rand(seed, offset) and the
// Box-Muller normal of tl.randn(seed, offset), so that CPU, CUDA and Triton kernels draw the same
// numbers.
//
//   key     = (seed & 0xffffffff, seed >> 32)            (the 64-bit seed as two words)
//   counter = (offset & 0xffffffff, offset >> 32, 0, 0)
//   ten rounds of Philox4x32 (multipliers 0xD2511F53 / 0xCD9E8D57, Weyl key increments
//   0x9E3779B9 / 0xBB67AE85); output words 0 and 1 become uniforms u1, u2 in [0, 1) (the word as
//   int32, negatives folded with ~, times 4.6566127342e-10 in float32); the normal is
//   sqrt(-2 ln max(u1, 1e-7)) * cos(2 pi u2), evaluated in float32. tl.rand is the uniform of
//   output word 0 alone.
//
// The random ops number their noise elements row-major, e.g. element (k, b, c) of a [K, B, C]
// noise tensor has offset (k * B + b) * C + c; fremure_ext.reference.philox.philox_normal is the
// pure-PyTorch twin used by the references and tests.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/fast_math.h"
#include "common/macros.h"

namespace fremure {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

FREMURE_HD_INLINE uint32_t philox_mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Ten Philox4x32 rounds of counter (c0, c1, 0, 0) under key (k0, k1).
FREMURE_HD_INLINE PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = philox_mulhi(kPhiloxRoundB, a2) ^ c1 ^ k0;
    c2 = philox_mulhi(kPhiloxRoundA, a0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * a2;
    c3 = kPhiloxRoundA * a0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return {c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float for 32-bit words: [0, 1) in float32.
FREMURE_HD_INLINE float philox_uniform(uint32_t word) {
  int32_t v = static_cast<int32_t>(word);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * 4.6566127342e-10f;
}

// tl.rand(seed, offset) for one element: output word 0 of the counter as a uniform in [0, 1).
FREMURE_HD_INLINE float philox_rand(uint64_t seed, uint64_t offset) {
  const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return philox_uniform(w.w0);
}

// Box-Muller pieces of tl.randn: the normal is sqrt(minus_two_log) * cos_theta. Kept apart so
// that CPU loops can vectorise everything but the square root (which glibc guards with errno).
struct BoxMullerParts {
  float minus_two_log;
  float cos_theta;
};

FREMURE_HD_INLINE BoxMullerParts box_muller_parts(float u1, float u2) {
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  return {-2.0f * fm::log_f32(u1), fm::cos_f32(6.283185307179586f * u2)};
}

FREMURE_HD_INLINE BoxMullerParts philox_box_muller_parts(uint64_t seed, uint64_t offset) {
  const PhiloxWords w = philox4x32_10(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return box_muller_parts(philox_uniform(w.w0), philox_uniform(w.w1));
}

// tl.randn(seed, offset) for one element.
FREMURE_HD_INLINE float philox_normal(uint64_t seed, uint64_t offset) {
  const BoxMullerParts p = philox_box_muller_parts(seed, offset);
  return fm::sqrt(p.minus_two_log) * p.cos_theta;
}

}  // namespace fremure
