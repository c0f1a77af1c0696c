// Row reductions for CPU kernels. A single accumulator makes a sum latency-bound (one dependent
// add per element) and IEEE order forbids the compiler to reassociate it; sixteen independent
// lanes let -O3 turn each step into SIMD adds while keeping the result deterministic.
#pragma once
#include <cstdint>

namespace fremure {

constexpr int kLanes = 16;

// sum_j f(j) for j in [0, n), f returning acc_t.
template <typename acc_t, typename F>
inline acc_t lane_sum(int64_t n, F f) {
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; ++l) lanes[l] += f(j + l);
  }
  acc_t tail = 0;
  for (; j < n; ++j) tail += f(j);
  acc_t total = 0;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total + tail;
}

// Two sums at once over the same elements: (sum_j f(j).first, sum_j f(j).second).
template <typename acc_t, typename F>
inline void lane_sum2(int64_t n, F f, acc_t& out_a, acc_t& out_b) {
  acc_t a[kLanes] = {}, b[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; ++l) f(j + l, a[l], b[l]);
  }
  acc_t ta = 0, tb = 0;
  for (; j < n; ++j) f(j, ta, tb);
  out_a = ta;
  out_b = tb;
  for (int l = 0; l < kLanes; ++l) {
    out_a += a[l];
    out_b += b[l];
  }
}

}  // namespace fremure
