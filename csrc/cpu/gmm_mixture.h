// Per-element math of gmm_mixture (GMM-Plus head, docs/method.md 4), used by the CPU kernels (the GPU
// kernel is Triton). For one pair b, class c and component k:
//   var_k    = clamp(softplus(var_raw_k) + var_eps, var_floor, var_ceiling)
//   logit_k  = mu_k + eps_k * sqrt(var_k)            (training; mu_k in evaluation)
//   p_k      = act(logit_k / max(tau, 1e-3))          (sigmoid, or softmax over the classes)
//   pi       = softmax over k of pi_logit
//   pred     = sum_k pi_k p_k
//   aleatoric = sum_k pi_k / (1 + var_k) - sum_k pi_k ln(max(pi_k, 1e-9))
// The gradient helpers follow torch's autograd formulas for the same expressions (softplus with
// threshold 20, clamp passing gradient on the closed interval, clamp_min at 1e-9 in the log).
#pragma once
#include "common/fast_math.h"
#include "cpu/head_math.h"

namespace fremure {

constexpr double kGmmTauMin = 1e-3;        // tau.clamp_min(1e-3) of the published head
constexpr double kGmmLogEps = 1e-9;        // pi.clamp_min(1e-9) before the entropy's log
constexpr double kSoftplusThreshold = 20;  // F.softplus default (beta 1): linear above it

// softplus and its derivative given x and e = exp(x), so that a kernel computing both pays for
// one exponential. Above the threshold softplus is the identity (and e may be inf: not used).
template <typename T>
FREMURE_HD_INLINE T softplus_from_exp(T x, T e) {
  const T soft = fm::log1p(e);
  return x > T(kSoftplusThreshold) ? x : soft;
}

template <typename T>
FREMURE_HD_INLINE T softplus_grad_from_exp(T x, T e) {
  const T sig = e / (e + T(1));
  return x > T(kSoftplusThreshold) ? T(1) : sig;
}

template <typename T>
FREMURE_HD_INLINE T softplus_value(T x) {
  return softplus_from_exp(x, fm::exp(x));
}

template <typename T>
FREMURE_HD_INLINE T softplus_grad(T x) {
  return softplus_grad_from_exp(x, fm::exp(x));
}

// softplus(raw) + eps, before the clamp (the clamp's gradient mask needs this value).
template <typename T>
FREMURE_HD_INLINE T gmm_var_unclamped(T raw, T eps) {
  return softplus_value(raw) + eps;
}

template <typename T>
FREMURE_HD_INLINE T clamp_value(T v, T lo, T hi) {
  const T a = v < lo ? lo : v;
  return a > hi ? hi : a;
}

// 1 where clamp(v, lo, hi) passes gradient (lo <= v <= hi), else 0.
template <typename T>
FREMURE_HD_INLINE T clamp_pass(T v, T lo, T hi) {
  return (v >= lo && v <= hi) ? T(1) : T(0);
}

template <typename T>
FREMURE_HD_INLINE T gmm_tau_clamped(T tau) {
  return tau < T(kGmmTauMin) ? T(kGmmTauMin) : tau;
}

// One component's share of the two aleatoric sums.
template <typename T>
FREMURE_HD_INLINE T gmm_kappa_term(T pi, T var) {
  return pi / (T(1) + var);
}

template <typename T>
FREMURE_HD_INLINE T gmm_entropy_term(T pi) {
  const T clamped = pi < T(kGmmLogEps) ? T(kGmmLogEps) : pi;
  return -(pi * fm::log(clamped));
}

// d aleatoric / d pi_k: 1 / (1 + var) - ln(max(pi, 1e-9)) - [pi >= 1e-9].
template <typename T>
FREMURE_HD_INLINE T gmm_aleatoric_dpi(T pi, T var) {
  const bool pass = pi >= T(kGmmLogEps);
  const T clamped = pass ? pi : T(kGmmLogEps);
  return T(1) / (T(1) + var) - fm::log(clamped) - (pass ? T(1) : T(0));
}

// d aleatoric / d var_k: -pi / (1 + var)^2.
template <typename T>
FREMURE_HD_INLINE T gmm_aleatoric_dvar(T pi, T var) {
  const T d = T(1) + var;
  return -pi / (d * d);
}

}  // namespace fremure
