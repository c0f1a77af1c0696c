// CPU kernels of bayes_mc (Bayesian head Monte-Carlo mean, docs/method.md 4) and its backward.
//
// Chunks of whole rows are unpacked into float lanes; the S samples are visited one after the
// other with per-sample lane buffers, so S x B x C is never materialised. In seed mode the noise
// of a sample is drawn straight into its lane buffer (Philox, common/philox.h) and redrawn by
// the backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "common/checks.h"

// Branch-free selects only vectorise with trapping math off (see cpu/head_lanes.h).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu/bayes_mc.h"
#include "cpu/cpu_isa.h"
#include "cpu/head_lanes.h"

namespace fremure {
namespace {

constexpr int64_t kLanesPerChunk = 512;
constexpr int64_t kMinWorkPerTask = 16384;  // lane-samples per parallel task

struct BayesConfig {
  int64_t B, C, S;
  HeadActivation act;
  bool has_noise;
  bool has_seed;
  uint64_t seed;
  bool sample() const { return has_noise || has_seed; }
};

BayesConfig check_bayes(const char* op, const at::Tensor& mu, const at::Tensor& logvar,
                        const std::optional<at::Tensor>& noise, std::optional<int64_t> seed, int64_t samples,
                        std::string_view activation) {
  check_floating(mu, "mu");
  TORCH_CHECK_VALUE(mu.dim() == 2, "fremure.", op, ": mu must be [B, C] (2 dimensions), got shape ", mu.sizes());
  check_like(mu, logvar, "mu", "logvar");
  TORCH_CHECK_VALUE(logvar.sizes() == mu.sizes(), "fremure.", op, ": logvar must have the shape of mu ", mu.sizes(),
                    ", got ", logvar.sizes());
  TORCH_CHECK_VALUE(samples >= 1, "fremure.", op, ": samples must be >= 1, got ", samples);
  if (noise.has_value()) {
    check_like(mu, *noise, "mu", "noise");
    TORCH_CHECK_VALUE(noise->dim() == 3 && noise->size(0) == samples && noise->size(1) == mu.size(0) &&
                          noise->size(2) == mu.size(1),
                      "fremure.", op, ": noise must have shape [samples, B, C] = [", samples, ", ", mu.size(0), ", ",
                      mu.size(1), "], got ", noise->sizes());
    TORCH_CHECK_VALUE(!seed.has_value(), "fremure.", op, ": noise and seed are exclusive; pass one of them");
  }
  const HeadActivation act = lanes::parse_head_activation(activation, op);
  return {mu.size(0), mu.size(1), samples, act, noise.has_value(), seed.has_value(),
          static_cast<uint64_t>(seed.value_or(0))};
}

template <typename scalar_t>
struct BayesInputs {
  const scalar_t* mu;
  int64_t mu_sb, mu_sc;
  const scalar_t* logvar;
  int64_t lv_sb, lv_sc;
  const scalar_t* noise;
  int64_t n_ss, n_sb, n_sc;
};

// Per-task scratch: P (padded) lanes per quantity, and the Philox words / Box-Muller parts.
template <typename acc_t>
struct BayesScratch {
  std::vector<acc_t> store;
  std::vector<uint32_t> philox_words;
  std::vector<float> philox;
  acc_t *mu, *sd, *eps, *prob, *acc, *acc2, *tmp;  // [P] each

  explicit BayesScratch(int64_t P)
      : store(static_cast<size_t>(7 * P)),
        philox_words(static_cast<size_t>(2 * P)),
        philox(static_cast<size_t>(2 * P)) {
    acc_t* p = store.data();
    for (acc_t** slot : {&mu, &sd, &eps, &prob, &acc, &acc2, &tmp}) {
      *slot = p;
      p += P;
    }
  }
};

enum : uint8_t { kBadMu = 1, kBadLogvar = 2, kBadNoise = 4 };

// One copy of the kernels per ISA; the op runs the widest one the CPU supports.
#define FREMURE_ISA_KERNELS "cpu/bayes_mc_kernels.inc"
#include "cpu/isa_variants.inc"

template <typename scalar_t>
uint8_t run_forward(const BayesInputs<scalar_t>& in, const BayesConfig& cfg, scalar_t* out) {
  return FREMURE_ISA_CALL(forward_cpu<scalar_t>, in, cfg, out);
}

template <typename scalar_t>
void run_backward(const BayesInputs<scalar_t>& in, const BayesConfig& cfg, const scalar_t* grad_out, scalar_t* g_mu,
                  scalar_t* g_lv) {
  FREMURE_ISA_CALL(backward_cpu<scalar_t>, in, cfg, grad_out, g_mu, g_lv);
}

template <typename scalar_t>
BayesInputs<scalar_t> make_inputs(const at::Tensor& mu, const at::Tensor& logvar,
                                  const std::optional<at::Tensor>& noise) {
  BayesInputs<scalar_t> in{mu.const_data_ptr<scalar_t>(), mu.stride(0), mu.stride(1),
                           logvar.const_data_ptr<scalar_t>(), logvar.stride(0), logvar.stride(1),
                           nullptr, 0, 0, 0};
  if (noise.has_value()) {
    in.noise = noise->const_data_ptr<scalar_t>();
    in.n_ss = noise->stride(0);
    in.n_sb = noise->stride(1);
    in.n_sc = noise->stride(2);
  }
  return in;
}

at::Tensor bayes_mc_cpu(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& noise,
                        std::optional<int64_t> seed, int64_t samples, c10::string_view activation) {
  const BayesConfig cfg = check_bayes("bayes_mc", mu, logvar, noise, seed, samples,
                                      std::string_view(activation.data(), activation.size()));
  at::Tensor out = at::empty({cfg.B, cfg.C}, mu.options());
  if (out.numel() == 0) return out;
  uint8_t bad = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "bayes_mc_cpu", [&] {
    bad = run_forward<scalar_t>(make_inputs<scalar_t>(mu, logvar, noise), cfg, out.mutable_data_ptr<scalar_t>());
  });
  TORCH_CHECK_VALUE(!(bad & kBadMu), "fremure.bayes_mc: mu contains NaN or inf");
  TORCH_CHECK_VALUE(!(bad & kBadLogvar), "fremure.bayes_mc: logvar contains NaN or inf");
  TORCH_CHECK_VALUE(!(bad & kBadNoise), "fremure.bayes_mc: noise contains NaN or inf");
  return out;
}

std::tuple<at::Tensor, at::Tensor> bayes_mc_backward_cpu(const at::Tensor& grad_out, const at::Tensor& mu,
                                                         const at::Tensor& logvar,
                                                         const std::optional<at::Tensor>& noise,
                                                         std::optional<int64_t> seed, int64_t samples,
                                                         c10::string_view activation) {
  const char* op = "bayes_mc_backward";
  const BayesConfig cfg =
      check_bayes(op, mu, logvar, noise, seed, samples, std::string_view(activation.data(), activation.size()));
  check_like(mu, grad_out, "mu", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == mu.sizes(), "fremure.", op, ": grad_out must have the shape of mu ", mu.sizes(),
                    ", got ", grad_out.sizes());
  const at::Tensor go = grad_out.contiguous();
  at::Tensor g_mu = at::empty(mu.sizes(), mu.options());
  at::Tensor g_lv = at::empty(mu.sizes(), mu.options());
  if (mu.numel() == 0) return {g_mu, g_lv};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "bayes_mc_backward_cpu", [&] {
    run_backward<scalar_t>(make_inputs<scalar_t>(mu, logvar, noise), cfg, go.const_data_ptr<scalar_t>(),
                           g_mu.mutable_data_ptr<scalar_t>(), g_lv.mutable_data_ptr<scalar_t>());
  });
  return {g_mu, g_lv};
}

}  // namespace
}  // namespace fremure

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("bayes_mc", &fremure::bayes_mc_cpu);
  m.impl("bayes_mc_backward", &fremure::bayes_mc_backward_cpu);
}
