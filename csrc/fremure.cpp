// Every schema of torch.ops.fremure, in one place. Kernels live in csrc/cpu and csrc/cuda;
// fake kernels and autograd formulas are registered from Python (fremure_ext/ops/).
#include <torch/library.h>

TORCH_LIBRARY(fremure, m) {
  // Frequency gate blend (docs/method.md 3.3): out = x * (1 - g) + g * LN0(x) on valid rows.
  m.def("freq_gate_blend(Tensor x, Tensor gate, Tensor? valid) -> Tensor");
  m.def("freq_gate_blend_backward(Tensor grad_out, Tensor x, Tensor gate, Tensor? valid) -> (Tensor, Tensor)");

  // Gated dual-branch fusion (docs/method.md 3.4), GEMM over [LN0(head) | LN0(tail) | LN0(cond)].
  // gate_sigmoid = sigmoid(logits / temperature) before clamping, kept for the backward so that it
  // does not repeat the forward GEMM; passing None to the backward recomputes it instead.
  m.def("gated_fusion(Tensor head, Tensor tail, Tensor cond, Tensor weight, Tensor? bias, "
        "float temperature, float lo, float hi) -> (Tensor out, Tensor gate_sigmoid)");
  m.def("gated_fusion_backward(Tensor grad_out, Tensor head, Tensor tail, Tensor cond, Tensor weight, "
        "Tensor? bias, Tensor? gate_sigmoid, float temperature, float lo, float hi) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Sliding-window packing of frame-sorted rows (docs/method.md 3.1, 3.5), padded or packed layout.
  m.def("window_pack(Tensor x, Tensor frame_offsets, int window, int stride, bool padded) "
        "-> (Tensor out, Tensor src_index, Tensor position, Tensor window_offsets)");
  m.def("window_pack_backward(Tensor grad_out, Tensor src_index, int num_rows) -> Tensor");
  m.def("window_unpack(Tensor y, Tensor src_index, Tensor? weights, int num_rows, str mode) -> Tensor");
  m.def("window_unpack_backward(Tensor grad_out, Tensor y, Tensor src_index, Tensor? weights, str mode) "
        "-> (Tensor, Tensor)");

  // Multi-head attention restricted to contiguous segments of a packed token array, with optional
  // dropout on the attention probabilities (Philox keep-mask from seed, regenerated in backward).
  m.def("segment_attention(Tensor q, Tensor k, Tensor v, Tensor segment_offsets, float scale, "
        "float dropout_p=0.0, SymInt? seed=None) -> (Tensor out, Tensor lse)");
  m.def("segment_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor segment_offsets, float scale, float dropout_p=0.0, SymInt? seed=None) "
        "-> (Tensor, Tensor, Tensor)");

  // GMM-Plus mixture (docs/method.md 4).
  m.def("gmm_mixture(Tensor mu, Tensor var_raw, Tensor pi_logit, Tensor tau, Tensor? noise, SymInt? seed, "
        "float var_eps, float var_floor, float var_ceiling, str activation, bool uncertainty) "
        "-> (Tensor pred, Tensor aleatoric)");
  m.def("gmm_mixture_backward(Tensor grad_pred, Tensor? grad_aleatoric, Tensor mu, Tensor var_raw, "
        "Tensor pi_logit, Tensor tau, Tensor? noise, SymInt? seed, float var_eps, float var_floor, "
        "float var_ceiling, str activation) -> (Tensor, Tensor, Tensor, Tensor)");

  // Bayesian head Monte-Carlo mean (docs/method.md 4).
  m.def("bayes_mc(Tensor mu, Tensor logvar, Tensor? noise, SymInt? seed, int samples, str activation) -> Tensor");
  m.def("bayes_mc_backward(Tensor grad_out, Tensor mu, Tensor logvar, Tensor? noise, SymInt? seed, int samples, "
        "str activation) -> (Tensor, Tensor)");
}
