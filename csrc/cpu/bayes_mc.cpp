// CPU kernels of bayes_mc (Bayesian head Monte-Carlo mean, docs/method.md 4) and its backward.
//
// Chunks of whole rows are unpacked into float lanes; the S samples are visited one after the
// other with per-sample lane buffers, so S x B x C is never materialised. In seed mode the noise
// of a sample is drawn straight into its lane buffer (Philox, common/philox.h) and redrawn by
// the backward. The kernels are compiled once per vector ISA (cpu/cpu_isa.h); the op, once. GCC
// only if-converts (so vectorises) the lane loops' branch-free selects with this flag (CMake reads it):
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
#include "cpu/bayes_mc.h"
#include "cpu/cpu_isa.h"
#include "cpu/head_lanes.h"

namespace fremure {
namespace bayes_mc_detail {

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

struct Kernels {
  // out [B, C] = the Monte-Carlo mean.
  void (*forward)(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& noise,
                     const BayesConfig& cfg, at::Tensor& out);
  void (*backward)(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& noise,
                   const BayesConfig& cfg, const at::Tensor& grad_out, at::Tensor& g_mu, at::Tensor& g_lv);
};
inline DispatchStub<Kernels> kernels;

}  // namespace bayes_mc_detail
using namespace bayes_mc_detail;

FREMURE_ISA_KERNELS_BEGIN

// Unpacks mu (and sd from logvar when sampling).
template <typename scalar_t, typename acc_t>
void load_chunk(const BayesInputs<scalar_t>& in, const BayesConfig& cfg, int64_t b0, int64_t rows,
                BayesScratch<acc_t>& s) {
  const int64_t C = cfg.C, P = lanes::padded(rows * C);
  lanes::gather_rows(in.mu, in.mu_sb, in.mu_sc, b0, rows, C, s.mu, P);
  if (cfg.sample()) {
    lanes::gather_rows(in.logvar, in.lv_sb, in.lv_sc, b0, rows, C, s.sd, P);
    for (int64_t j = 0; j < P; ++j) s.sd[j] = fm::exp(s.sd[j]);
    sqrt_lanes(s.sd, P);
  }
}

// prob = act(mu + eps_s * sd) for sample `smp` (act(mu) when not sampling).
template <typename scalar_t, typename acc_t>
void sample_chunk(const BayesInputs<scalar_t>& in, const BayesConfig& cfg, int64_t smp, int64_t b0, int64_t rows,
                  BayesScratch<acc_t>& s) {
  const int64_t C = cfg.C, P = lanes::padded(rows * C);
  if (cfg.sample()) {
    if (cfg.has_noise) {
      lanes::gather_rows(in.noise + smp * in.n_ss, in.n_sb, in.n_sc, b0, rows, C, s.eps, P);
    } else {
      const uint64_t offset0 = static_cast<uint64_t>((smp * cfg.B + b0) * C);
      philox_normals<scalar_t>(cfg.seed, offset0, P, s.eps, s.philox_words.data(), s.philox.data());
    }
    for (int64_t j = 0; j < P; ++j) s.prob[j] = bayes_sample_logit<acc_t>(s.mu[j], s.eps[j], s.sd[j]);
  } else {
    for (int64_t j = 0; j < P; ++j) s.prob[j] = s.mu[j];
  }
  if (cfg.act == HeadActivation::kSigmoid) {
    for (int64_t j = 0; j < P; ++j) s.prob[j] = head_sigmoid<acc_t>(s.prob[j]);
  } else {
    lanes::softmax_rows(s.prob, rows, C, P, s.tmp);
  }
}

int64_t task_grain(const BayesConfig& cfg, int64_t chunk_lanes) {
  const int64_t work = (cfg.sample() ? cfg.S : 1) * chunk_lanes;
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(work, 1));
}

template <typename scalar_t>
void forward_cpu(const BayesInputs<scalar_t>& in, const BayesConfig& cfg, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = cfg.B, C = cfg.C;
  const int64_t R = lanes::rows_per_chunk(C, kLanesPerChunk);
  const int64_t chunks = (B + R - 1) / R;
  const int64_t draws = cfg.sample() ? cfg.S : 1;
  at::parallel_for(0, chunks, task_grain(cfg, R * C), [&](int64_t begin, int64_t end) {
    BayesScratch<acc_t> s(lanes::padded(R * C));
    for (int64_t ch = begin; ch < end; ++ch) {
      const auto [b0, rows, L, P] = lanes::chunk_at(ch, R, B, C);
      load_chunk<scalar_t, acc_t>(in, cfg, b0, rows, s);
      for (int64_t j = 0; j < P; ++j) s.acc[j] = acc_t(0);
      for (int64_t smp = 0; smp < draws; ++smp) {
        sample_chunk<scalar_t, acc_t>(in, cfg, smp, b0, rows, s);
        for (int64_t j = 0; j < P; ++j) s.acc[j] += s.prob[j];
      }
      scalar_t* o = out + b0 * C;
      const acc_t inv_count = acc_t(1) / acc_t(draws);
      for (int64_t j = 0; j < L; ++j) o[j] = scalar_t(s.acc[j] * inv_count);
    }
  });
}

template <typename scalar_t>
void backward_cpu(const BayesInputs<scalar_t>& in, const BayesConfig& cfg, const scalar_t* grad_out, scalar_t* g_mu,
                  scalar_t* g_lv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = cfg.B, C = cfg.C;
  const int64_t R = lanes::rows_per_chunk(C, kLanesPerChunk);
  const int64_t chunks = (B + R - 1) / R;
  const int64_t draws = cfg.sample() ? cfg.S : 1;
  at::parallel_for(0, chunks, task_grain(cfg, R * C), [&](int64_t begin, int64_t end) {
    const int64_t Pmax = lanes::padded(R * C);
    BayesScratch<acc_t> s(Pmax);
    std::vector<acc_t> gbuf(static_cast<size_t>(2 * Pmax), acc_t(0));
    acc_t* g = gbuf.data();
    acc_t* dz = g + Pmax;
    for (int64_t ch = begin; ch < end; ++ch) {
      const auto [b0, rows, L, P] = lanes::chunk_at(ch, R, B, C);
      load_chunk<scalar_t, acc_t>(in, cfg, b0, rows, s);
      // The mean over draws hands each draw grad / S.
      const acc_t count = acc_t(draws);
      lanes::gather_rows(grad_out, C, 1, b0, rows, C, g, P);
      const acc_t inv_count = acc_t(1) / count;
      for (int64_t j = 0; j < P; ++j) g[j] = g[j] * inv_count;
      for (int64_t j = 0; j < P; ++j) {
        s.acc[j] = acc_t(0);   // dL/dmu
        s.acc2[j] = acc_t(0);  // dL/dsd
      }
      for (int64_t smp = 0; smp < draws; ++smp) {
        sample_chunk<scalar_t, acc_t>(in, cfg, smp, b0, rows, s);
        if (cfg.act == HeadActivation::kSigmoid) {
          for (int64_t j = 0; j < P; ++j) dz[j] = g[j] * head_sigmoid_grad<acc_t>(s.prob[j]);
        } else {
          for (int64_t j = 0; j < P; ++j) dz[j] = g[j];
          lanes::softmax_rows_backward(s.prob, dz, rows, C);
        }
        for (int64_t j = 0; j < P; ++j) s.acc[j] += dz[j];
        if (cfg.sample()) {
          for (int64_t j = 0; j < P; ++j) s.acc2[j] += dz[j] * s.eps[j];
        }
      }
      scalar_t* om = g_mu + b0 * C;
      scalar_t* ol = g_lv + b0 * C;
      for (int64_t j = 0; j < L; ++j) om[j] = scalar_t(s.acc[j]);
      if (cfg.sample()) {
        for (int64_t j = 0; j < L; ++j) ol[j] = scalar_t(bayes_dlogvar<acc_t>(s.acc2[j], s.sd[j]));
      } else {
        for (int64_t j = 0; j < L; ++j) ol[j] = scalar_t(0);
      }
    }
  });
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

void forward_kernel(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& noise,
                    const BayesConfig& cfg, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "bayes_mc_cpu", [&] {
    forward_cpu<scalar_t>(make_inputs<scalar_t>(mu, logvar, noise), cfg, out.mutable_data_ptr<scalar_t>());
  });
}

void backward_kernel(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& noise,
                     const BayesConfig& cfg, const at::Tensor& grad_out, at::Tensor& g_mu, at::Tensor& g_lv) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "bayes_mc_backward_cpu", [&] {
    backward_cpu<scalar_t>(make_inputs<scalar_t>(mu, logvar, noise), cfg, grad_out.const_data_ptr<scalar_t>(),
                           g_mu.mutable_data_ptr<scalar_t>(), g_lv.mutable_data_ptr<scalar_t>());
  });
}

constexpr Kernels kKernels{&forward_kernel, &backward_kernel};
FREMURE_REGISTER_KERNELS(bayes_mc_detail::kernels, kKernels);
FREMURE_ISA_KERNELS_END

#if FREMURE_CPU_BASELINE
namespace {

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

at::Tensor bayes_mc_cpu(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& noise,
                        std::optional<int64_t> seed, int64_t samples, c10::string_view activation) {
  const BayesConfig cfg = check_bayes("bayes_mc", mu, logvar, noise, seed, samples,
                                      std::string_view(activation.data(), activation.size()));
  at::Tensor out = at::empty({cfg.B, cfg.C}, mu.options());
  if (out.numel() == 0) return out;
  kernels().forward(mu, logvar, noise, cfg, out);
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
  kernels().backward(mu, logvar, noise, cfg, go, g_mu, g_lv);
  return {g_mu, g_lv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fremure, CPU, m) {
  m.impl("bayes_mc", &bayes_mc_cpu);
  m.impl("bayes_mc_backward", &bayes_mc_backward_cpu);
}
#endif  // FREMURE_CPU_BASELINE
}  // namespace fremure
