// CPU kernels of gmm_mixture (GMM-Plus mixture, docs/method.md 4) and its backward.
//
// Work is split into chunks of whole rows (pairs). A chunk's K x rows x C inputs are unpacked
// into float lanes (any input strides, e.g. views of one packed projection GEMM), then every step
// (variance, sampling, activation, mixture softmax over k, mixture, uncertainty) is one loop over
// lanes that vectorises. The backward recomputes the forward of its chunk (nothing is saved but
// the inputs) and, in seed mode, regenerates the noise from the seed. The kernels are compiled
// once per vector ISA (cpu/cpu_isa.h); the op, once. GCC only if-converts (so vectorises) the
// lane loops' branch-free selects with this flag (CMake reads it):
// FREMURE_COMPILE_OPTIONS: -fno-trapping-math
#define FREMURE_ISA_WIDE_VECTORS  // 512-bit lanes at the AVX-512 level (cpu/cpu_isa.h)
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
#include "cpu/gmm_mixture.h"
#include "cpu/cpu_isa.h"
#include "cpu/head_lanes.h"

namespace fremure {
namespace gmm_mixture_detail {

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

template <typename scalar_t>
struct View3 {
  const scalar_t* data = nullptr;
  int64_t sk = 0, sb = 0, sc = 0;
};

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

struct Kernels {
  // pred (and aleatoric when `uncertainty`) [B, C].
  void (*forward)(const at::Tensor& mu, const at::Tensor& var_raw, const at::Tensor& pi_logit,
                  const std::optional<at::Tensor>& noise, const GmmConfig& cfg, double tau, bool uncertainty,
                  at::Tensor& pred, at::Tensor& aleatoric);
  // Writes the input gradients; returns sum(dz * logit), from which the op forms dtau.
  double (*backward)(const at::Tensor& mu, const at::Tensor& var_raw, const at::Tensor& pi_logit,
                     const std::optional<at::Tensor>& noise, const GmmConfig& cfg, double tau,
                     const at::Tensor& grad_pred, const at::Tensor& grad_aleatoric, at::Tensor& g_mu,
                     at::Tensor& g_raw, at::Tensor& g_pi);
};
inline DispatchStub<Kernels> kernels;

}  // namespace gmm_mixture_detail
using namespace gmm_mixture_detail;

FREMURE_ISA_KERNELS_BEGIN

template <typename scalar_t>
View3<scalar_t> view3(const at::Tensor& t) {
  return {t.const_data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename scalar_t>
GmmInputs<scalar_t> make_inputs(const at::Tensor& mu, const at::Tensor& var_raw, const at::Tensor& pi_logit,
                                const std::optional<at::Tensor>& noise) {
  return {view3<scalar_t>(mu), view3<scalar_t>(var_raw), view3<scalar_t>(pi_logit),
          noise.has_value() ? view3<scalar_t>(*noise) : View3<scalar_t>{}};
}

// Forward of one chunk of `rows` pairs starting at b0, leaving in scratch: logit (the sampled
// logit), exp_raw / vpre / var (when need_var), sd / eps (when sampling), pi, prob. Component k
// occupies lanes [k * P, k * P + L) with L = rows * C and P = L padded to a whole number of
// vectors: element-wise loops run over the padding too (finite filler) so that no loop ends in
// a scalar remainder.
template <typename scalar_t, typename acc_t>
void chunk_forward(const GmmInputs<scalar_t>& in, const GmmConfig& cfg, acc_t tau_c, int64_t b0, int64_t rows,
                   bool need_var, GmmScratch<acc_t>& s) {
  const int64_t K = cfg.K, C = cfg.C, P = lanes::padded(rows * C);
  const int64_t KP = K * P;
  const bool sample = cfg.has_noise || cfg.has_seed;
  for (int64_t k = 0; k < K; ++k) {
    acc_t* mu_k = s.logit + k * P;
    acc_t* pi_k = s.pi + k * P;
    lanes::gather_rows(in.mu.data + k * in.mu.sk, in.mu.sb, in.mu.sc, b0, rows, C, mu_k, P);
    lanes::gather_rows(in.pi_logit.data + k * in.pi_logit.sk, in.pi_logit.sb, in.pi_logit.sc, b0, rows, C, pi_k, P);
    if (need_var) {
      acc_t* raw_k = s.raw + k * P;
      lanes::gather_rows(in.var_raw.data + k * in.var_raw.sk, in.var_raw.sb, in.var_raw.sc, b0, rows, C, raw_k, P);
    }
    if (cfg.has_noise) {
      acc_t* eps_k = s.eps + k * P;
      lanes::gather_rows(in.noise.data + k * in.noise.sk, in.noise.sb, in.noise.sc, b0, rows, C, eps_k, P);
    } else if (cfg.has_seed) {
      const uint64_t offset0 = static_cast<uint64_t>((k * cfg.B + b0) * C);
      philox_normals<scalar_t>(cfg.seed, offset0, P, s.eps + k * P, s.philox_words.data(), s.philox.data());
    }
  }

  if (need_var) {
    const acc_t eps = acc_t(cfg.var_eps), lo = acc_t(cfg.var_floor), hi = acc_t(cfg.var_ceiling);
    for (int64_t j = 0; j < KP; ++j) {
      const acc_t e = fm::exp(s.raw[j]);
      const acc_t v = softplus_from_exp<acc_t>(s.raw[j], e) + eps;
      s.exp_raw[j] = e;
      s.vpre[j] = v;
      s.var[j] = clamp_value<acc_t>(v, lo, hi);
    }
  }
  if (sample) {
    for (int64_t j = 0; j < KP; ++j) s.sd[j] = s.var[j];
    sqrt_lanes(s.sd, KP);
    for (int64_t j = 0; j < KP; ++j) s.logit[j] = s.logit[j] + s.eps[j] * s.sd[j];
  }
  // z = logit / tau as a product with the reciprocal (vector division is slow; within an ulp).
  const acc_t inv_tau = acc_t(1) / tau_c;
  for (int64_t j = 0; j < KP; ++j) s.prob[j] = s.logit[j] * inv_tau;
  if (cfg.act == HeadActivation::kSigmoid) {
    for (int64_t j = 0; j < KP; ++j) s.prob[j] = head_sigmoid<acc_t>(s.prob[j]);
  } else {
    for (int64_t k = 0; k < K; ++k) lanes::softmax_rows(s.prob + k * P, rows, C, P, s.tmp);
  }

  // Mixture weights: softmax over k of the class-wise logits, per lane.
  for (int64_t j = 0; j < P; ++j) s.tmp[j] = s.pi[j];
  for (int64_t k = 1; k < K; ++k) {
    const acc_t* pk = s.pi + k * P;
    for (int64_t j = 0; j < P; ++j) s.tmp[j] = pk[j] > s.tmp[j] ? pk[j] : s.tmp[j];
  }
  for (int64_t j = 0; j < P; ++j) s.tmp2[j] = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    acc_t* pk = s.pi + k * P;
    for (int64_t j = 0; j < P; ++j) {
      pk[j] = fm::exp(pk[j] - s.tmp[j]);
      s.tmp2[j] += pk[j];
    }
  }
  for (int64_t j = 0; j < P; ++j) s.tmp2[j] = acc_t(1) / s.tmp2[j];
  for (int64_t k = 0; k < K; ++k) {
    acc_t* pk = s.pi + k * P;
    for (int64_t j = 0; j < P; ++j) pk[j] = pk[j] * s.tmp2[j];
  }
}

int64_t task_grain(const GmmConfig& cfg, int64_t chunk_lanes) {
  const int64_t work = cfg.K * chunk_lanes;
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(work, 1));
}

template <typename scalar_t>
void forward_cpu(const GmmInputs<scalar_t>& in, const GmmConfig& cfg, double tau, bool uncertainty,
                 scalar_t* pred, scalar_t* aleatoric) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = cfg.K, B = cfg.B, C = cfg.C;
  const int64_t R = lanes::rows_per_chunk(C, kLanesPerChunk);
  const int64_t chunks = (B + R - 1) / R;
  const acc_t tau_c = gmm_tau_clamped<acc_t>(acc_t(tau));
  const bool need_var = cfg.has_noise || cfg.has_seed || uncertainty;
  at::parallel_for(0, chunks, task_grain(cfg, R * C), [&](int64_t begin, int64_t end) {
    GmmScratch<acc_t> s(K, lanes::padded(R * C));
    for (int64_t ch = begin; ch < end; ++ch) {
      const auto [b0, rows, L, P] = lanes::chunk_at(ch, R, B, C);
      chunk_forward<scalar_t, acc_t>(in, cfg, tau_c, b0, rows, need_var, s);
      for (int64_t j = 0; j < P; ++j) s.tmp[j] = acc_t(0);
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* pk = s.pi + k * P;
        const acc_t* qk = s.prob + k * P;
        for (int64_t j = 0; j < P; ++j) s.tmp[j] += pk[j] * qk[j];
      }
      scalar_t* out = pred + b0 * C;
      for (int64_t j = 0; j < L; ++j) out[j] = scalar_t(s.tmp[j]);
      if (uncertainty) {
        for (int64_t j = 0; j < P; ++j) {
          s.tmp[j] = acc_t(0);
          s.tmp2[j] = acc_t(0);
        }
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* pk = s.pi + k * P;
          const acc_t* vk = s.var + k * P;
          for (int64_t j = 0; j < P; ++j) {
            s.tmp[j] += gmm_kappa_term<acc_t>(pk[j], vk[j]);
            s.tmp2[j] += gmm_entropy_term<acc_t>(pk[j]);
          }
        }
        scalar_t* al = aleatoric + b0 * C;
        for (int64_t j = 0; j < L; ++j) al[j] = scalar_t(s.tmp[j] + s.tmp2[j]);
      }
    }
  });
}

// Backward over chunks: grads of mu, var_raw, pi_logit ([K, B, C], contiguous) and the sum that
// becomes tau's gradient (sum of dL/dz * logit, z = logit / tau).
template <typename scalar_t>
double backward_cpu(const GmmInputs<scalar_t>& in, const GmmConfig& cfg, double tau, const scalar_t* grad_pred,
                    const scalar_t* grad_al, scalar_t* g_mu, scalar_t* g_raw, scalar_t* g_pi) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = cfg.K, B = cfg.B, C = cfg.C;
  const int64_t BC = B * C;
  const int64_t R = lanes::rows_per_chunk(C, kLanesPerChunk);
  const int64_t chunks = (B + R - 1) / R;
  const acc_t tau_c = gmm_tau_clamped<acc_t>(acc_t(tau));
  const bool sample = cfg.has_noise || cfg.has_seed;
  const bool need_var = sample || grad_al != nullptr;
  std::vector<double> tau_part(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, task_grain(cfg, R * C), [&](int64_t begin, int64_t end) {
    const int64_t Pmax = lanes::padded(R * C);
    GmmScratch<acc_t> s(K, Pmax);
    std::vector<acc_t> gbuf(static_cast<size_t>(2 * Pmax), acc_t(0));
    acc_t* g = gbuf.data();
    acc_t* ga = g + Pmax;
    for (int64_t ch = begin; ch < end; ++ch) {
      const auto [b0, rows, L, P] = lanes::chunk_at(ch, R, B, C);
      chunk_forward<scalar_t, acc_t>(in, cfg, tau_c, b0, rows, need_var, s);
      lanes::gather_rows(grad_pred, C, 1, b0, rows, C, g, P);
      if (grad_al != nullptr) lanes::gather_rows(grad_al, C, 1, b0, rows, C, ga, P);

      // Mixture weights: dL/dpi_k, then the softmax over k backward into pi_logit.
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* qk = s.prob + k * P;
        acc_t* dk = s.dpi + k * P;
        for (int64_t j = 0; j < P; ++j) dk[j] = g[j] * qk[j];
        if (grad_al != nullptr) {
          const acc_t* pk = s.pi + k * P;
          const acc_t* vk = s.var + k * P;
          for (int64_t j = 0; j < P; ++j) dk[j] += ga[j] * gmm_aleatoric_dpi<acc_t>(pk[j], vk[j]);
        }
      }
      for (int64_t j = 0; j < P; ++j) s.tmp[j] = acc_t(0);
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* pk = s.pi + k * P;
        const acc_t* dk = s.dpi + k * P;
        for (int64_t j = 0; j < P; ++j) s.tmp[j] += pk[j] * dk[j];
      }
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* pk = s.pi + k * P;
        const acc_t* dk = s.dpi + k * P;
        scalar_t* out = g_pi + k * BC + b0 * C;
        for (int64_t j = 0; j < L; ++j) out[j] = scalar_t(pk[j] * (dk[j] - s.tmp[j]));
      }

      // Component probabilities: dL/dp_k = g * pi_k, through the activation into dz (kept in dpi).
      const int64_t KP = K * P;
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* pk = s.pi + k * P;
        acc_t* dk = s.dpi + k * P;
        for (int64_t j = 0; j < P; ++j) dk[j] = g[j] * pk[j];
      }
      if (cfg.act == HeadActivation::kSigmoid) {
        for (int64_t j = 0; j < KP; ++j) s.dpi[j] = s.dpi[j] * head_sigmoid_grad<acc_t>(s.prob[j]);
      } else {
        for (int64_t k = 0; k < K; ++k) lanes::softmax_rows_backward(s.prob + k * P, s.dpi + k * P, rows, C);
      }

      // z = logit / tau: dlogit = dz / tau; tau collects -sum(dz * logit) / tau^2 (applied later).
      acc_t tsum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* dk = s.dpi + k * P;
        const acc_t* lk = s.logit + k * P;
        for (int64_t j = 0; j < L; ++j) tsum += dk[j] * lk[j];
      }
      tau_part[ch] = double(tsum);
      const acc_t inv_tau = acc_t(1) / tau_c;
      for (int64_t j = 0; j < KP; ++j) s.dpi[j] = s.dpi[j] * inv_tau;  // now dL/dlogit = dL/dmu
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* dk = s.dpi + k * P;
        scalar_t* out = g_mu + k * BC + b0 * C;
        for (int64_t j = 0; j < L; ++j) out[j] = scalar_t(dk[j]);
      }

      // Variance: through the sample (logit = mu + eps * sqrt(var)) and the aleatoric kappa term,
      // then the clamp and the softplus.
      if (!need_var) {
        for (int64_t k = 0; k < K; ++k) {
          scalar_t* out = g_raw + k * BC + b0 * C;
          for (int64_t j = 0; j < L; ++j) out[j] = scalar_t(0);
        }
        continue;
      }
      acc_t* dvar = s.prob;  // prob is no longer needed
      if (sample) {
        for (int64_t j = 0; j < KP; ++j) dvar[j] = (s.dpi[j] * s.eps[j]) / (acc_t(2) * s.sd[j]);
      } else {
        for (int64_t j = 0; j < KP; ++j) dvar[j] = acc_t(0);
      }
      if (grad_al != nullptr) {
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* pk = s.pi + k * P;
          const acc_t* vk = s.var + k * P;
          acc_t* dk = dvar + k * P;
          for (int64_t j = 0; j < P; ++j) dk[j] += ga[j] * gmm_aleatoric_dvar<acc_t>(pk[j], vk[j]);
        }
      }
      const acc_t lo = acc_t(cfg.var_floor), hi = acc_t(cfg.var_ceiling);
      for (int64_t j = 0; j < KP; ++j) {
        const acc_t dsoft = softplus_grad_from_exp<acc_t>(s.raw[j], s.exp_raw[j]);
        dvar[j] = dvar[j] * clamp_pass<acc_t>(s.vpre[j], lo, hi) * dsoft;
      }
      for (int64_t k = 0; k < K; ++k) {
        const acc_t* dk = dvar + k * P;
        scalar_t* out = g_raw + k * BC + b0 * C;
        for (int64_t j = 0; j < L; ++j) out[j] = scalar_t(dk[j]);
      }
    }
  });
  double total = 0;
  for (double p : tau_part) total += p;
  return total;
}

void forward_kernel(const at::Tensor& mu, const at::Tensor& var_raw, const at::Tensor& pi_logit,
                    const std::optional<at::Tensor>& noise, const GmmConfig& cfg, double tau, bool uncertainty,
                    at::Tensor& pred, at::Tensor& aleatoric) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "gmm_mixture_cpu", [&] {
    forward_cpu<scalar_t>(make_inputs<scalar_t>(mu, var_raw, pi_logit, noise), cfg, tau, uncertainty,
                          pred.mutable_data_ptr<scalar_t>(), uncertainty ? aleatoric.mutable_data_ptr<scalar_t>() : nullptr);
  });
}

double backward_kernel(const at::Tensor& mu, const at::Tensor& var_raw, const at::Tensor& pi_logit,
                       const std::optional<at::Tensor>& noise, const GmmConfig& cfg, double tau,
                       const at::Tensor& grad_pred, const at::Tensor& grad_aleatoric, at::Tensor& g_mu,
                       at::Tensor& g_raw, at::Tensor& g_pi) {
  double tau_sum = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "gmm_mixture_backward_cpu", [&] {
    tau_sum = backward_cpu<scalar_t>(make_inputs<scalar_t>(mu, var_raw, pi_logit, noise), cfg, tau,
                                     grad_pred.const_data_ptr<scalar_t>(),
                                     grad_aleatoric.defined() ? grad_aleatoric.const_data_ptr<scalar_t>() : nullptr,
                                     g_mu.mutable_data_ptr<scalar_t>(), g_raw.mutable_data_ptr<scalar_t>(),
                                     g_pi.mutable_data_ptr<scalar_t>());
  });
  return tau_sum;
}

constexpr Kernels kKernels{&forward_kernel, &backward_kernel};
FREMURE_REGISTER_KERNELS(gmm_mixture_detail::kernels, kKernels);
FREMURE_ISA_KERNELS_END

#if FREMURE_CPU_BASELINE
namespace {

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

std::tuple<at::Tensor, at::Tensor> gmm_mixture_cpu(const at::Tensor& mu, const at::Tensor& var_raw,
                                                   const at::Tensor& pi_logit, const at::Tensor& tau,
                                                   const std::optional<at::Tensor>& noise, std::optional<int64_t> seed,
                                                   double var_eps, double var_floor, double var_ceiling,
                                                   c10::string_view activation, bool uncertainty) {
  const GmmConfig cfg = check_gmm(kOp, mu, var_raw, pi_logit, tau, noise, seed, var_eps, var_floor, var_ceiling,
                                  std::string_view(activation.data(), activation.size()));
  const double tau_v = tau.item().toDouble();
  at::Tensor pred = at::empty({cfg.B, cfg.C}, mu.options());
  at::Tensor aleatoric = uncertainty ? at::empty({cfg.B, cfg.C}, mu.options()) : at::empty({0}, mu.options());
  if (pred.numel() == 0) return {pred, aleatoric};
  kernels().forward(mu, var_raw, pi_logit, noise, cfg, tau_v, uncertainty, pred, aleatoric);
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
  const double tau_v = tau.item().toDouble();
  const at::Tensor gp = grad_pred.contiguous();
  const at::Tensor ga = has_ga ? grad_aleatoric->contiguous() : at::Tensor();
  at::Tensor g_mu = at::empty(mu.sizes(), mu.options());
  at::Tensor g_raw = at::empty(mu.sizes(), mu.options());
  at::Tensor g_pi = at::empty(mu.sizes(), mu.options());
  double tau_sum = 0;
  if (mu.numel() > 0) tau_sum = kernels().backward(mu, var_raw, pi_logit, noise, cfg, tau_v, gp, ga, g_mu, g_raw, g_pi);
  // tau enters as z = logit / max(tau, 1e-3): dtau = -sum(dz * logit) / tau_c^2 where the clamp passes.
  const double tau_c = tau_v < kGmmTauMin ? kGmmTauMin : tau_v;
  const double g_tau_v = tau_v >= kGmmTauMin ? -tau_sum / (tau_c * tau_c) : 0.0;
  at::Tensor g_tau = at::full(tau.sizes(), g_tau_v, tau.options());
  return {g_mu, g_raw, g_pi, g_tau};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("gmm_mixture", &gmm_mixture_cpu);
  m.impl("gmm_mixture_backward", &gmm_mixture_backward_cpu);
}
#endif  // FREMURE_CPU_BASELINE
}  // namespace fremure
