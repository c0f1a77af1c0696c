// Per-score math of segment_attention (softmax attention restricted to one segment of a packed
// token array), used by the CPU loops (GPU: Triton). The dot products and row
// updates around these scalars differ between devices; the softmax bookkeeping does not.
//
// Forward, per query row, over tiles of keys (online softmax):
//   m' = max(m, max_j s_j),  l' = l * exp(m - m') + sum_j exp(s_j - m'),  o' = o * exp(m - m') + sum_j p_j v_j
//   out = o / l,  lse = m + log(l)
// Backward, recomputing p from the saved lse (no [L, L] matrix is kept):
//   p = exp(s - lse),  delta = rowsum(dO * O),  ds = scale * p * (dp - delta),  dp = dO . v
//
// Attention dropout (training; dropout_p = p in [0, 1), as nn.MultiheadAttention's dropout on the
// attention probabilities): out = (P * M / (1 - p)) V with the keep-mask
//   M[t, h, u] = (tl.rand(seed, (t * H + h) * T + u) >= float32(p))
// for query token t, head h and key token u, both indexed in the packed array [0, T), H heads
// (attn_dropout_offset below; Philox in common/philox.h). The mask is a function of
// (seed, t, h, u) only, so backward regenerates it instead of storing it. lse stays the log-sum-exp
// of the undropped scores. With Pd = P * M / (1 - p):
//   dV = Pd^T dO,  dP = (dO . v) * M / (1 - p),  ds = scale * P * (dP - delta)
// where delta = rowsum(P * dP) = rowsum(Pd * (dO V^T)) = rowsum(dO * O), O being the dropped
// output: the same delta as without dropout.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/philox.h"

namespace fremure {

template <typename Acc>
inline Acc attn_neg_inf() {
  return -std::numeric_limits<Acc>::infinity();
}

// Factor that rescales the running sum and output when the running max moves from m_old to
// m_new; zero before the first tile (m_old = -inf), so stale accumulators never leak in.
template <typename Acc>
inline Acc attn_rescale(Acc m_old, Acc m_new) {
  return m_old == attn_neg_inf<Acc>() ? Acc(0) : std::exp(m_old - m_new);
}

// log-sum-exp of a finished row from its running max and running sum.
template <typename Acc>
inline Acc attn_lse(Acc m, Acc l) {
  return m + std::log(l);
}

// Probability of one (query, key) pair recomputed from the scaled score and the row's lse.
template <typename Acc>
inline Acc attn_prob(Acc scaled_score, Acc lse) {
  return std::exp(scaled_score - lse);
}

// Gradient of the unscaled dot product q . k (the softmax Jacobian times dp, times scale).
template <typename Acc>
inline Acc attn_dscore(Acc p, Acc dp, Acc delta, Acc scale) {
  return scale * p * (dp - delta);
}

// Philox counter of the dropout draw of (query token t, head h, key token u) in a problem of
// `tokens` packed tokens and `heads` heads.
inline uint64_t attn_dropout_offset(int64_t t, int64_t h, int64_t u, int64_t heads, int64_t tokens) {
  return static_cast<uint64_t>((t * heads + h) * tokens + u);
}

// Whether the probability at counter `offset` is kept (tl.rand(seed, offset) >= p in float32).
inline bool attn_keep(uint64_t seed, uint64_t offset, float p) {
  return philox_rand(seed, offset) >= p;
}

}  // namespace fremure
