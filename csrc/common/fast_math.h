// Elementary functions for the elementwise CPU kernels (gmm_mixture, bayes_mc, gated_fusion, the Philox
// normal generator), written so that CPU loops over lanes auto-vectorise.
//
// float: branch-free Cephes-style polynomials (range reduction by bit manipulation, selects
// instead of branches), within about 2 ulp of the correctly rounded result, which is far inside
// the tolerances of the reference comparisons (1e-5 abs / 1e-4 rel). Glibc's scalar expf/logf/
// cosf cannot be vectorised without -ffast-math, and these loops are dominated by them.
// double: the standard library (these ops only run in double for gradient checks).
// CUDA device code: the CUDA math library.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>


// FREMURE_HOST_DEVICE that also forces inlining on the host: the lane loops of the CPU kernels
// only vectorise when every per-element helper is inlined into them, and GCC's heuristics leave
// some calls out of large kernel functions ("call is cold").
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FREMURE_HD_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FREMURE_HD_INLINE inline __attribute__((always_inline))
#else
#define FREMURE_HD_INLINE inline
#endif

namespace fremure {
namespace fm {

FREMURE_HD_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

FREMURE_HD_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// min(max(x, lo), hi) as one MIN/MAX pair the vectoriser recognises (no branches to thread).
FREMURE_HD_INLINE float clamp_f32(float x, float lo, float hi) {
  const float a = x < lo ? lo : x;
  return a > hi ? hi : a;
}

// e^x. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-7 polynomial for e^r, then the
// scale 2^n applied as two exact power-of-two factors so that results down to the subnormal
// range and overflow to inf come out as the multiplication rounds them.
FREMURE_HD_INLINE float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  x = clamp_f32(x, -104.0f, 89.0f);
  // Round x / ln2 to the nearest integer with the 1.5 * 2^23 trick (default rounding mode).
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const int32_t ni = static_cast<int32_t>(float_to_bits(t) - float_to_bits(shifter));
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t h = ni >> 1;
  const float s1 = bits_to_float(static_cast<uint32_t>(h + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(ni - h + 127) << 23);
  return p * s1 * s2;
#endif
}

// ln x for positive normal x (the callers' arguments: uniforms >= 1e-7, probabilities clamped
// at 1e-9, 1 + e^x). Mantissa in [sqrt(1/2), sqrt(2)), polynomial for ln(1 + f).
FREMURE_HD_INLINE float log_f32(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  const uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu) - 126;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  const float f = (low ? m + m : m) - 1.0f;
  const float ef = static_cast<float>(e);
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (f + y) + ef * 0.693359375f;
#endif
}

// ln(1 + x) for x >= 0 (softplus: x = e^v), accurate for tiny x through the classic correction
// log(u) * x / (u - 1) with u = 1 + x.
FREMURE_HD_INLINE float log1p_f32(float x) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(x);
#else
  const float u = 1.0f + x;
  const float d = u - 1.0f;
  const float l = log_f32(u);
  return d == 0.0f ? x : l * (x / d);
#endif
}

// cos(x) for x in [0, 2 pi] (the Box-Muller angle). Octant reduction with a three-part pi/4,
// then the sine or cosine polynomial of the reduced argument, chosen without branches.
FREMURE_HD_INLINE float cos_f32(float x) {
#if defined(__CUDA_ARCH__)
  return ::cosf(x);
#else
  int32_t j = static_cast<int32_t>(x * 1.27323954473516f);  // x * 4 / pi, x >= 0
  j = (j + 1) & ~1;
  const float y = static_cast<float>(j);
  const float r = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  j &= 7;
  const bool neg = (j == 2) || (j == 4);
  const bool use_sin = (j == 2) || (j == 6);
  const float z = r * r;
  const float c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                  0.5f * z + 1.0f;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float v = use_sin ? s : c;
  return neg ? -v : v;
#endif
}

// Generic front ends: float goes through the versions above, double through the standard library.
template <typename T>
FREMURE_HD_INLINE T exp(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_f32(x);
  else return std::exp(x);
}

template <typename T>
FREMURE_HD_INLINE T log(T x) {
  if constexpr (std::is_same_v<T, float>) return log_f32(x);
  else return std::log(x);
}

template <typename T>
FREMURE_HD_INLINE T sqrt(T x) {
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return __builtin_sqrtf(x);
  else return __builtin_sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename T>
FREMURE_HD_INLINE T log1p(T x) {
  if constexpr (std::is_same_v<T, float>) return log1p_f32(x);
  else return std::log1p(x);
}

}  // namespace fm
}  // namespace fremure
