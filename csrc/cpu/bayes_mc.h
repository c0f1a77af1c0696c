// Per-element math of bayes_mc (Bayesian head, docs/method.md 4), used by the CPU kernels:
//   sd    = sqrt(exp(logvar))
//   out   = mean over s of act(mu + eps_s * sd)      (training, S samples)
//         = act(mu)                                   (evaluation)
// with act the sigmoid or the softmax over the classes (cpu/head_math.h).
#pragma once
#include <cmath>

#include "common/fast_math.h"
#include "cpu/head_math.h"

namespace fremure {

// Standard deviation from the log-variance, rounded as the reference's sqrt(exp(logvar)).
template <typename T>
FREMURE_HD_INLINE T bayes_sd(T logvar) {
  return fm::sqrt(fm::exp(logvar));
}

template <typename T>
FREMURE_HD_INLINE T bayes_sample_logit(T mu, T eps, T sd) {
  return mu + eps * sd;
}

// dL/dlogvar from dL/dsd: sd = exp(logvar / 2), so d sd / d logvar = sd / 2. (torch's chain
// sqrt -> exp gives the same value, but NaN once exp(logvar) underflows to 0; this stays finite.)
template <typename T>
FREMURE_HD_INLINE T bayes_dlogvar(T dsd, T sd) {
  return T(0.5) * dsd * sd;
}

}  // namespace fremure
