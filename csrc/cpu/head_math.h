// Activations shared by the relation-head kernels (gmm_mixture, bayes_mc): sigmoid per element or
// softmax over the classes of a pair, with torch's backward formulas.
#pragma once
#include "common/fast_math.h"

namespace fremure {

enum class HeadActivation { kSigmoid, kSoftmax };

template <typename T>
FREMURE_HD_INLINE T head_sigmoid(T z) {
  return T(1) / (T(1) + fm::exp(-z));
}

// sigmoid'(z) from its value y, as torch's sigmoid_backward: (1 - y) * y.
template <typename T>
FREMURE_HD_INLINE T head_sigmoid_grad(T y) {
  return (T(1) - y) * y;
}

}  // namespace fremure
