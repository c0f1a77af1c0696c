// CPU kernels of gmm_mixture (GMM-Plus mixture, docs/method.md 4) and its backward.
//
// Work is split into chunks of whole rows (pairs). A chunk's K x rows x C inputs are unpacked
// into float lanes (any input strides, e.g. views of one packed projection GEMM), then every step
// (variance, sampling, activation, mixture softmax over k, mixture, uncertainty) is one loop over
// lanes that vectorises. The backward recomputes the forward of its chunk (nothing is saved but
// the inputs) and, in seed mode, regenerates the noise from the seed.
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

// The lane loops below rely on branch-free selects; GCC only if-converts floating-point selects
// when trapping math is off (see head_lanes.h). Limited to this file's own functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu/gmm_mixture.h"
#include "cpu/cpu_isa.h"
#include "cpu/head_lanes.h"

namespace fremure {
namespace {

constexpr const char* kOp = "gmm_mixture";
constexpr int64_t kLanesPerChunk = 128;
constexpr int64_t kMinWorkPerTask = 16384;  // lane-components per parallel task

struct GmmConfig {
  int64_t K, B, C;
  HeadActivation act;
  bool has_noise;
  bool has_seed;
  uint64_t seed;
  double var_eps, var_floor, var_ceiling;
};

GmmConfig check_gmm(const char* op, const at::Tensor& mu, const at::Tensor& var_raw, const at::Tensor& pi_logit,
                    const at::Tensor& tau, const std::optional<at::Tensor>& noise, std::optional<int64_t> seed,
                    double var_eps, double var_floor, double var_ceiling, std::string_view activation) {
  check_floating(mu, "mu");
  TORCH_CHECK_VALUE(mu.dim() == 3, "fremure.", op, ": mu must be [K, B, C] (3 dimensions), got shape ", mu.sizes());
  TORCH_CHECK_VALUE(mu.size(0) >= 1, "fremure.", op, ": mu must have at least one component (K >= 1), got shape ",
                    mu.sizes());
  const std::pair<const at::Tensor*, const char*> same[] = {{&var_raw, "var_raw"}, {&pi_logit, "pi_logit"}};
  for (const auto& [t, name] : same) {
    check_like(mu, *t, "mu", name);
    TORCH_CHECK_VALUE(t->sizes() == mu.sizes(), "fremure.", op, ": ", name, " must have the shape of mu ", mu.sizes(),
                      ", got ", t->sizes());
  }
  check_floating(tau, "tau");
  check_same_device(mu, tau, "mu", "tau");
  TORCH_CHECK_VALUE(tau.numel() == 1 && tau.dim() <= 1, "fremure.", op,
                    ": tau must be a scalar tensor (0-dim or [1]), got shape ", tau.sizes());
  if (noise.has_value()) {
    check_like(mu, *noise, "mu", "noise");
    TORCH_CHECK_VALUE(noise->sizes() == mu.sizes(), "fremure.", op, ": noise must have the shape of mu ", mu.sizes(),
                      " ([K, B, C]), got ", noise->sizes());
    TORCH_CHECK_VALUE(!seed.has_value(), "fremure.", op, ": noise and seed are exclusive; pass one of them");
  }
  TORCH_CHECK_VALUE(std::isfinite(var_eps) && var_eps >= 0, "fremure.", op, ": var_eps must be finite and >= 0, got ",
                    var_eps);
  TORCH_CHECK_VALUE(std::isfinite(var_floor) && std::isfinite(var_ceiling) && var_floor > 0 && var_floor <= var_ceiling,
                    "fremure.", op, ": var_floor and var_ceiling must satisfy 0 < var_floor <= var_ceiling, got ",
                    var_floor, " and ", var_ceiling);
  const HeadActivation act = lanes::parse_head_activation(activation, op);
  return {mu.size(0),        mu.size(1),   mu.size(2), act, noise.has_value(), seed.has_value(),
          static_cast<uint64_t>(seed.value_or(0)), var_eps, var_floor, var_ceiling};
}

double read_tau(const at::Tensor& tau, const char* op) {
  const double v = tau.item().toDouble();
  TORCH_CHECK_VALUE(std::isfinite(v), "fremure.", op, ": tau must be finite, got ", v);
  return v;
}

template <typename scalar_t>
struct View3 {
  const scalar_t* data = nullptr;
  int64_t sk = 0, sb = 0, sc = 0;
};

template <typename scalar_t>
View3<scalar_t> view3(const at::Tensor& t) {
  return {t.const_data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename scalar_t>
struct GmmInputs {
  View3<scalar_t> mu, var_raw, pi_logit, noise;
};

// Per-task scratch: K slices of P (padded) lanes for each per-component quantity, P lanes for
// per-pair ones, and the Philox words / Box-Muller parts of one slice.
template <typename acc_t>
struct GmmScratch {
  std::vector<acc_t> store;
  std::vector<uint32_t> philox_words;
  std::vector<float> philox;
  acc_t *logit, *raw, *exp_raw, *vpre, *var, *sd, *eps, *pi, *prob, *dpi;  // [K, P] each
  acc_t *tmp, *tmp2;                                                       // [P] each

  GmmScratch(int64_t K, int64_t P)
      : store(static_cast<size_t>((10 * K + 2) * P)),
        philox_words(static_cast<size_t>(2 * P)),
        philox(static_cast<size_t>(2 * P)) {
    acc_t* p = store.data();
    for (acc_t** slot : {&logit, &raw, &exp_raw, &vpre, &var, &sd, &eps, &pi, &prob, &dpi}) {
      *slot = p;
      p += K * P;
    }
    tmp = p;
    tmp2 = p + P;
  }
};

enum : uint8_t { kBadMu = 1, kBadVarRaw = 2, kBadPiLogit = 4, kBadNoise = 8 };

// One copy of the kernels per ISA; the op runs the widest one the CPU supports.
#define FREMURE_ISA_KERNELS "cpu/gmm_mixture_kernels.inc"
#include "cpu/isa_variants.inc"

template <typename scalar_t>
uint8_t run_forward(const GmmInputs<scalar_t>& in, const GmmConfig& cfg, double tau, bool uncertainty,
                    scalar_t* pred, scalar_t* aleatoric) {
  return FREMURE_ISA_CALL(forward_cpu<scalar_t>, in, cfg, tau, uncertainty, pred, aleatoric);
}

template <typename scalar_t>
double run_backward(const GmmInputs<scalar_t>& in, const GmmConfig& cfg, double tau, const scalar_t* grad_pred,
                    const scalar_t* grad_al, scalar_t* g_mu, scalar_t* g_raw, scalar_t* g_pi) {
  return FREMURE_ISA_CALL(backward_cpu<scalar_t>, in, cfg, tau, grad_pred, grad_al, g_mu, g_raw, g_pi);
}

std::tuple<at::Tensor, at::Tensor> gmm_mixture_cpu(const at::Tensor& mu, const at::Tensor& var_raw,
                                                   const at::Tensor& pi_logit, const at::Tensor& tau,
                                                   const std::optional<at::Tensor>& noise, std::optional<int64_t> seed,
                                                   double var_eps, double var_floor, double var_ceiling,
                                                   c10::string_view activation, bool uncertainty) {
  const GmmConfig cfg = check_gmm(kOp, mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling,
                                  std::string_view(activation.data(), activation.size()));
  const double tau_v = read_tau(tau, kOp);
  at::Tensor pred = at::empty({cfg.B, cfg.C}, mu.options());
  at::Tensor aleatoric = uncertainty ? at::empty({cfg.B, cfg.C}, mu.options()) : at::empty({0}, mu.options());
  if (pred.numel() == 0) return {pred, aleatoric};
  uint8_t bad = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "gmm_mixture_cpu", [&] {
    GmmInputs<scalar_t> in{view3<scalar_t>(mu), view3<scalar_t>(var_raw), view3<scalar_t>(pi_logit),
                           noise.has_value() ? view3<scalar_t>(*noise) : View3<scalar_t>{}};
    bad = run_forward<scalar_t>(in, cfg, tau_v, uncertainty, pred.mutable_data_ptr<scalar_t>(),
                                uncertainty ? aleatoric.mutable_data_ptr<scalar_t>() : nullptr);
  });
  TORCH_CHECK_VALUE(!(bad & kBadMu), "fremure.gmm_mixture: mu contains NaN or inf");
  TORCH_CHECK_VALUE(!(bad & kBadVarRaw), "fremure.gmm_mixture: var_raw contains NaN or inf");
  TORCH_CHECK_VALUE(!(bad & kBadPiLogit), "fremure.gmm_mixture: pi_logit contains NaN or inf");
  TORCH_CHECK_VALUE(!(bad & kBadNoise), "fremure.gmm_mixture: noise contains NaN or inf");
  return {pred, aleatoric};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_mixture_backward_cpu(
    const at::Tensor& grad_pred, const std::optional<at::Tensor>& grad_aleatoric, const at::Tensor& mu,
    const at::Tensor& var_raw, const at::Tensor& pi_logit, const at::Tensor& tau,
    const std::optional<at::Tensor>& noise, std::optional<int64_t> seed, double var_eps, double var_floor,
    double var_ceiling, c10::string_view activation) {
  const char* op = "gmm_mixture_backward";
  const GmmConfig cfg = check_gmm(op, mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling,
                                  std::string_view(activation.data(), activation.size()));
  check_like(mu, grad_pred, "mu", "grad_pred");
  TORCH_CHECK_VALUE(grad_pred.dim() == 2 && grad_pred.size(0) == cfg.B && grad_pred.size(1) == cfg.C, "fremure.", op,
                    ": grad_pred must have shape [B, C] = [", cfg.B, ", ", cfg.C, "], got ", grad_pred.sizes());
  const bool has_ga = grad_aleatoric.has_value() && grad_aleatoric->numel() > 0;
  if (grad_aleatoric.has_value()) {
    check_like(mu, *grad_aleatoric, "mu", "grad_aleatoric");
    TORCH_CHECK_VALUE(grad_aleatoric->sizes() == grad_pred.sizes() || grad_aleatoric->numel() == 0, "fremure.", op,
                      ": grad_aleatoric must have shape [B, C] = [", cfg.B, ", ", cfg.C, "] (or be empty), got ",
                      grad_aleatoric->sizes());
  }
  const double tau_v = read_tau(tau, op);
  const at::Tensor gp = grad_pred.contiguous();
  const at::Tensor ga = has_ga ? grad_aleatoric->contiguous() : at::Tensor();
  at::Tensor g_mu = at::empty(mu.sizes(), mu.options());
  at::Tensor g_raw = at::empty(mu.sizes(), mu.options());
  at::Tensor g_pi = at::empty(mu.sizes(), mu.options());
  double tau_sum = 0;
  if (mu.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "gmm_mixture_backward_cpu", [&] {
      GmmInputs<scalar_t> in{view3<scalar_t>(mu), view3<scalar_t>(var_raw), view3<scalar_t>(pi_logit),
                             noise.has_value() ? view3<scalar_t>(*noise) : View3<scalar_t>{}};
      tau_sum = run_backward<scalar_t>(in, cfg, tau_v, gp.const_data_ptr<scalar_t>(),
                                       has_ga ? ga.const_data_ptr<scalar_t>() : nullptr,
                                       g_mu.mutable_data_ptr<scalar_t>(), g_raw.mutable_data_ptr<scalar_t>(),
                                       g_pi.mutable_data_ptr<scalar_t>());
    });
  }
  // tau enters as z = logit / max(tau, 1e-3): dtau = -sum(dz * logit) / tau_c^2 where the clamp passes.
  const double tau_c = tau_v < kGmmTauMin ? kGmmTauMin : tau_v;
  const double g_tau_v = tau_v >= kGmmTauMin ? -tau_sum / (tau_c * tau_c) : 0.0;
  at::Tensor g_tau = at::full(tau.sizes(), g_tau_v, tau.options());
  return {g_mu, g_raw, g_pi, g_tau};
}

}  // namespace
}  // namespace fremure

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("gmm_mixture", &fremure::gmm_mixture_cpu);
  m.impl("gmm_mixture_backward", &fremure::gmm_mixture_backward_cpu);
}
