// Per-score math of segment_attention (softmax attention restricted to one segment of a packed
// token array), written once for the CPU loops and a later GPU kernel. The dot products and row
// updates around these scalars differ between devices; the softmax bookkeeping does not.
//
// Forward, per query row, over tiles of keys (online softmax):
//   m' = max(m, max_j s_j),  l' = l * exp(m - m') + sum_j exp(s_j - m'),  o' = o * exp(m - m') + sum_j p_j v_j
//   out = o / l,  lse = m + log(l)
// Backward, recomputing p from the saved lse (no [L, L] matrix is kept):
//   p = exp(s - lse),  delta = rowsum(dO * O),  ds = scale * p * (dp - delta),  dp = dO . v
#pragma once
#include <cmath>
#include <limits>

#include "common/macros.h"

namespace fremure {

template <typename Acc>
FREMURE_HOST_DEVICE Acc attn_neg_inf() {
  return -std::numeric_limits<Acc>::infinity();
}

// Factor that rescales the running sum and output when the running max moves from m_old to
// m_new; zero before the first tile (m_old = -inf), so stale accumulators never leak in.
template <typename Acc>
FREMURE_HOST_DEVICE Acc attn_rescale(Acc m_old, Acc m_new) {
  return m_old == attn_neg_inf<Acc>() ? Acc(0) : std::exp(m_old - m_new);
}

// log-sum-exp of a finished row from its running max and running sum.
template <typename Acc>
FREMURE_HOST_DEVICE Acc attn_lse(Acc m, Acc l) {
  return m + std::log(l);
}

// Probability of one (query, key) pair recomputed from the scaled score and the row's lse.
template <typename Acc>
FREMURE_HOST_DEVICE Acc attn_prob(Acc scaled_score, Acc lse) {
  return std::exp(scaled_score - lse);
}

// Gradient of the unscaled dot product q . k (the softmax Jacobian times dp, times scale).
template <typename Acc>
FREMURE_HOST_DEVICE Acc attn_dscore(Acc p, Acc dp, Acc delta, Acc scale) {
  return scale * p * (dp - delta);
}

}  // namespace fremure
